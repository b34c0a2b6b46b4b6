"""Reliability diagrams: does a shown probability of p mean that about p of such images had the finding?

The figures come from what the card (make-demo's held-out test figures) or a stored evaluation (evaluate's
classification block) recorded with calibration.calibration_figures: ECE over 10 equal-width bins and, per bin,
the mean shown probability and the observed share of positives.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go


def _usable(figures: Any) -> bool:
    return isinstance(figures, dict) and isinstance(figures.get("reliability"), list) and "ece" in figures


def card_reliability(card: dict) -> list[tuple[str, dict]]:
    """(title, calibration figures) of the card's test split: overall, then per data folder."""
    m = card.get("metrics") or {}
    out = []
    if _usable(m.get("test_calibration")):
        out.append(("test split, all images", m["test_calibration"]))
    for name, fig in sorted((m.get("test_by_folder") or {}).items()):
        if isinstance(fig, dict) and _usable(fig.get("calibration")):
            out.append((f"test split, {name}", fig["calibration"]))
    return out


def _plot_text(value) -> str:
    """Text from a stored evaluation for a plotly title: plotly renders a few HTML tags (links among them), so
    none is let through."""
    return str(value).replace("<", "\u2039").replace(">", "\u203a")[:120]


def evaluation_reliability(metrics: dict) -> list[tuple[str, dict]]:
    """(title, calibration figures) of a stored evaluation: the split overall, then per data folder."""
    cls = metrics.get("classification") or {}
    split = _plot_text((metrics.get("dataset") or {}).get("split", "?"))
    out = []
    if _usable(cls.get("calibration")):
        out.append((f"{split} split, all images", cls["calibration"]))
    for name, fig in sorted((cls.get("by_folder") or {}).items()):
        if isinstance(fig, dict) and _usable(fig.get("calibration")):
            out.append((f"{split} split, {_plot_text(name)}", fig["calibration"]))
    return out


def reliability_figure(figures: dict, title: str, positive: str = "class 1") -> go.Figure:
    """Observed share of positives against the mean shown probability per bin (marker area ~ image count), the
    diagonal of perfect calibration, and the ECE in the title."""
    bins = [b for b in figures["reliability"] if b.get("n")]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                             line={"dash": "dash", "color": "grey"}))
    sizes = [b["n"] for b in bins]
    biggest = max(sizes) if sizes else 1
    fig.add_trace(go.Scatter(
        x=[b["mean_predicted"] for b in bins], y=[b["observed"] for b in bins], mode="lines+markers",
        name="this model", marker={"size": [8 + 22 * (n / biggest) ** 0.5 for n in sizes]},
        text=[f"{b['n']} images, shown {b['mean_predicted']:.2f}, observed {b['observed']:.2f}" for b in bins],
        hoverinfo="text"))
    fig.update_layout(
        title={"text": f"{title}<br>ECE {figures['ece']:.3f}, {figures.get('images', '?')} images, "
                       f"{figures.get('bins', 10)} bins", "font": {"size": 13}},
        xaxis={"title": f"shown probability of {positive}", "range": [0, 1]},
        yaxis={"title": f"observed share with {positive}", "range": [0, 1]},
        height=380, margin={"l": 50, "r": 10, "t": 70, "b": 45}, showlegend=False)
    return fig


RELIABILITY_CAPTION = (
    "Each point is a bin of images with similar shown probabilities: where it lies on the dashed diagonal, a shown "
    "probability of p meant that a share p of those images had the finding. ECE: the average distance from the "
    "diagonal, weighted by the images in each bin. Measured on test images, never on the images the calibrator "
    "was fitted on."
)
