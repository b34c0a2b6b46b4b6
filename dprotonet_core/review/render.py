"""The two panes of a case side by side, from its explanation and the display settings (zero model calls).

One pane is explain/overlay.render_pane, shared with the explain command and the Prototypes page."""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from dprotonet_core.checkpoint import Checkpoint
from dprotonet_core.explain.overlay import (  # noqa: F401 - the pages reach them as review.X
    VIEWS,
    DisplaySettings,
    Pane,
    View,
    default_settings,
    render_pane,
    settings_from,
)
from dprotonet_core.review.case import Case
from dprotonet_core.review.explanation import REFINING, Explanation
from dprotonet_core.review.settings import EMPTY_STACK, PROFILE_SHORT_NAMES, mdm_time_limit_s


def colorscale(colormap: str) -> list[list[Any]]:
    """A plotly colorscale equal to the overlay's colormap (for the legend)."""
    from dprotonet_core.explain import overlay

    lut = overlay.colormap_lut(colormap)
    idx = np.linspace(0, 255, 17).round().astype(int)
    return [[float(i / 255), f"rgb({r},{g},{b})"] for i, (r, g, b) in zip(idx, lut[idx])]


def png_bytes(image: np.ndarray, compress_level: int = 6) -> bytes:
    """A uint8 RGB array as PNG bytes with no text chunks (no metadata at all)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def panes_figure(
    query: np.ndarray,
    prototype: np.ndarray,
    titles: tuple[str, str],
    settings: DisplaySettings,
    height: int = 540,
    truth_boxes: Iterable[tuple[float, ...]] = (),
) -> dict[str, Any]:
    """A plotly figure (as a dict) with two image panes whose axes are linked: zoom or pan one and the
    other follows. Both panes use the same square frame (the model's input, scaled to the display size).

    Built as a plain dict (no make_subplots): building is then a few milliseconds per slider move."""
    import base64

    n = int(query.shape[0])
    data: list[dict[str, Any]] = []
    for suffix, image in (("", query), ("2", prototype)):
        uri = "data:image/png;base64," + base64.b64encode(png_bytes(image, compress_level=1)).decode("ascii")
        data.append({"type": "image", "source": uri, "xaxis": f"x{suffix}", "yaxis": f"y{suffix}",
                     "hoverinfo": "skip"})
    if settings.view == "heatmap":
        data.append({
            "type": "scatter", "x": [None], "y": [None], "mode": "markers", "showlegend": False,
            "hoverinfo": "skip", "xaxis": "x2", "yaxis": "y2",
            "marker": {
                "colorscale": colorscale(settings.colormap), "cmin": 0, "cmax": 1, "color": [0], "showscale": True,
                "colorbar": {"title": {"text": "Relevance for<br>the decision", "side": "right"},
                             "tickvals": [0, 0.5, 1], "ticktext": ["low", "", "high"], "len": 0.9,
                             "thickness": 14},
            },
        })
    axis = {"showticklabels": False, "showgrid": False, "zeroline": False, "ticks": "", "showline": False,
            "range": [-0.5, n - 0.5]}
    layout = {
        "height": height, "margin": {"l": 4, "r": 4, "t": 36, "b": 4}, "dragmode": "zoom",
        "paper_bgcolor": "white", "plot_bgcolor": "white",
        "xaxis": {**axis, "domain": [0.0, 0.47]},
        "xaxis2": {**axis, "domain": [0.5, 0.97], "matches": "x"},
        "yaxis": {**axis, "range": [n - 0.5, -0.5], "scaleanchor": "x"},
        "yaxis2": {**axis, "range": [n - 0.5, -0.5], "matches": "y", "scaleanchor": "x2"},
        "annotations": [
            {"text": f"<b>{titles[0]}</b>", "x": 0.235, "y": 1.0, "xref": "paper", "yref": "paper",
             "xanchor": "center", "yanchor": "bottom", "showarrow": False, "font": {"size": 15}},
            {"text": f"<b>{titles[1]}</b>", "x": 0.735, "y": 1.0, "xref": "paper", "yref": "paper",
             "xanchor": "center", "yanchor": "bottom", "showarrow": False, "font": {"size": 15}},
        ],
    }
    shapes = [{"type": "rect", "xref": "x", "yref": "y", "x0": x0, "y0": y0, "x1": x1, "y1": y1,
               "line": {"color": "#00e676", "width": 2, "dash": "dash"}} for x0, y0, x1, y1 in truth_boxes]
    if shapes:
        layout["shapes"] = shapes
    return {"data": data, "layout": layout}


@dataclass(frozen=True)
class RenderedCase:
    """Both panes at one set of display settings, the linked figure and the words under it."""

    query: Pane
    prototype: Pane
    figure: dict[str, Any]  # plotly figure as a dict
    caption: str
    notes: list[str]


@dataclass(frozen=True)
class RefiningView:
    """Both panes of an explanation that is still running, as plain images (no figure): what the page shows
    while MDM refines (cheap to send and draw, so the browser does not compete with the optimisation)."""

    query: np.ndarray  # (448, 448, 3) uint8
    prototype: np.ndarray | None  # None when not asked for (it does not change while the query side refines)
    titles: tuple[str, str]
    caption: str


def prototype_title(checkpoint: Checkpoint, prototype: int) -> str:
    """'Prototype #j (class), learned from <source>' (the prototype pane's title)."""
    record = checkpoint.prototypes[prototype] if checkpoint.prototypes else None
    title = f"Prototype #{prototype}"
    if record is not None:
        title += f" ({record.class_name}), learned from {record.source_id}"
    return title


def render_refining(
    case: Case, checkpoint: Checkpoint, explanation: Explanation, settings: DisplaySettings, step: int, total: int,
    with_prototype: bool = True,
) -> RefiningView:
    """The panes of a running explanation at `settings` (no model call): the query's mask stack as it stands
    after `step` of `total` steps, the prototype's stored one (only `with_prototype`: the page draws it once and
    sends only the query pane with each later preview, so the browser decodes one image per refinement)."""
    query = render_pane(case.display, explanation.query_stack, settings)
    proto = None
    if with_prototype:
        proto = render_pane(checkpoint.prototype_image(explanation.prototype), explanation.prototype_stack,
                            settings).image
    method = explanation.query_method.split(REFINING)[0]  # the step is said once, first
    caption = (f"Refining in place: step {step} of {total}. Your image: {method}. Prototype: "
               f"{explanation.prototype_method or 'stored in the checkpoint'}. The zoomable panes, the display "
               "controls and the report come when the explanation is complete.")
    return RefiningView(query.image, proto, ("Your image", prototype_title(checkpoint, explanation.prototype)),
                        caption)


def render_case(
    case: Case, checkpoint: Checkpoint, explanation: Explanation, settings: DisplaySettings,
    truth_boxes: Iterable[tuple[float, ...]] = (),
) -> RenderedCase:
    """Render the query and the matched prototype's source image with their CAMs (no model call); `truth_boxes`
    (x0, y0, x1, y1 in pane pixels, `display_boxes`) are drawn dashed on the query pane."""
    truth_boxes = list(truth_boxes)
    query = render_pane(case.display, explanation.query_stack, settings)
    proto = render_pane(checkpoint.prototype_image(explanation.prototype), explanation.prototype_stack, settings)
    proto_title = prototype_title(checkpoint, explanation.prototype)
    figure = panes_figure(query.image, proto.image, ("Your image", proto_title), settings, truth_boxes=truth_boxes)
    size = checkpoint.model.config.input_size
    query_method = explanation.query_method or (
        f"{explanation.iterations} iterations, {PROFILE_SHORT_NAMES.get(explanation.profile, explanation.profile)}")
    caption = (
        f"Both images are shown square, as the model sees them ({size} x {size} input); zoom or pan one and the "
        f"other follows (double-click resets). Heatmaps: MDM, {explanation.depth} mask vectors each. "
        f"Your image: {query_method}. Prototype: {explanation.prototype_method or 'stored in the checkpoint'}."
        + (" Dashed green: the sample's true box(es) from the dataset's labels." if truth_boxes else "")
    )
    notes = []
    for name, pane in (("your image", query), ("the prototype", proto)):
        if pane.empty and pane.max_sum < EMPTY_STACK:
            notes.append(f"The explanation kept no region of {name}: every mask faded out, nothing to show.")
        elif pane.empty:
            notes.append(
                f"No region of {name} reaches gamma = {settings.gamma:g} (its strongest region reaches "
                f"{pane.max_sum:.1f}). Lower gamma to see it."
            )
    if explanation.stopped_by_time:
        notes.append(f"The explanation stopped at the {mdm_time_limit_s():.0f} s time limit; it may be less "
                     "precise.")
    return RenderedCase(query, proto, figure, caption, notes)
