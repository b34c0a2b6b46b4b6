"""The prototype gallery: one card per prototype (source image, class, weights, its MDM heatmap)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from dprotonet_core.checkpoint import Checkpoint
from dprotonet_core.explain.overlay import DisplaySettings, as_rgb01, default_settings, render_pane, resize_rgb
from dprotonet_core.review.explanation import prototype_stack


@dataclass(frozen=True)
class PrototypeCard:
    """One prototype for the researchers' gallery: provenance and its stored MDM heatmap."""

    index: int
    class_index: int
    class_name: str
    source_id: str
    mask_index: int
    views: int  # R, the augmented views of eq. 9-11
    weights: dict[str, float]  # last-layer weight w_j^c to each class c
    image: np.ndarray  # uint8 source image x^{p_t}, with its heatmap when the checkpoint stores one


def prototype_card(
    checkpoint: Checkpoint, index: int, settings: DisplaySettings | None = None, size: int | None = None
) -> PrototypeCard:
    """One prototype with its stored heatmap rendered at `settings` (no model call)."""
    settings = settings or default_settings()
    size = size or int(checkpoint.model.config.input_size)
    record = checkpoint.prototypes[index]
    weight = checkpoint.model.last_layer.weight.detach().float().cpu().numpy()  # (C, K)
    source = checkpoint.prototype_image(record.index)
    if checkpoint.prototype_mask_vectors:
        image = render_pane(source, prototype_stack(checkpoint, record.index), settings, size).image
    else:
        image = (resize_rgb(as_rgb01(source), size) * 255).round().astype(np.uint8)
    return PrototypeCard(
        index=record.index, class_index=record.class_index, class_name=record.class_name,
        source_id=record.source_id, mask_index=record.mask_index, views=record.views,
        weights={c: float(weight[i, record.index]) for i, c in enumerate(checkpoint.classes)},
        image=image,
    )


def prototype_cards(
    checkpoint: Checkpoint, classes: Iterable[str] | None = None, settings: DisplaySettings | None = None,
    size: int | None = None,
) -> list[PrototypeCard]:
    """Every prototype (or those of `classes`), in class order."""
    wanted = set(classes) if classes is not None else None
    records = sorted(checkpoint.prototypes, key=lambda r: (r.class_index, r.index))
    return [prototype_card(checkpoint, r.index, settings, size) for r in records
            if wanted is None or r.class_name in wanted]


def weights_figure(checkpoint: Checkpoint, classes: Iterable[str] | None = None):
    """Last-layer weights w_j^c (eq. 3) as grouped bars: one bar per prototype and output class."""
    import plotly.graph_objects as go

    weight = checkpoint.model.last_layer.weight.detach().float().cpu().numpy()
    wanted = set(classes) if classes is not None else None
    records = [r for r in sorted(checkpoint.prototypes, key=lambda r: (r.class_index, r.index))
               if wanted is None or r.class_name in wanted]
    labels = [f"#{r.index} ({r.class_name})" for r in records]
    fig = go.Figure()
    for c, name in enumerate(checkpoint.classes):
        fig.add_trace(go.Bar(x=labels, y=[float(weight[c, r.index]) for r in records], name=f"to class {name}"))
    fig.update_layout(
        barmode="group", template="plotly_white", height=340, margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title="Last-layer weights: how much each prototype's similarity adds to each class's score",
        yaxis_title="weight w", xaxis_title="prototype (its own class)", legend={"orientation": "h", "y": -0.3},
    )
    return fig


def stored_prototype_method(checkpoint: Checkpoint) -> str:
    """How the checkpoint's stored prototype heatmaps were made (profile, steps, loss), from its card."""
    from dprotonet_core.explain.pair import stored_method

    return stored_method(checkpoint.card)
