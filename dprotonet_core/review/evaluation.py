"""What the Evaluation page shows of a checkpoint's stored evaluation (read by evaluate/report.py)."""

from __future__ import annotations

import re
from typing import Any

from dprotonet_core.evaluate.report import EvaluationView, load_evaluation  # noqa: F401 - the page reads it here


def format_timestamp(value: Any) -> str:
    """'2026-11-27T07:00:00+00:00' -> '2026-11-27 07:00 UTC'; anything else as text."""
    text = str(value or "?")
    match = re.fullmatch(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d)(:\d\d(\.\d+)?)?(\+00:00|Z)?", text)
    if not match:
        return text
    return f"{match.group(1)} {match.group(2)}" + (" UTC" if match.group(5) else "")


_FIGURES = (("accuracy", "Accuracy"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
            ("roc_auc", "ROC AUC"))


def _figure_text(value) -> str:
    """A stored figure as text: 'n/a' where it was not measured (missing, None or NaN)."""
    return "n/a" if not isinstance(value, (int, float)) or value != value else f"{value:.3f}"


def classification_metrics(view: EvaluationView) -> dict[str, str]:
    """Headline classification numbers as text ('n/a' where not measured)."""
    cls = view.metrics.get("classification") or {}
    return {label: _figure_text(cls.get(key)) for key, label in _FIGURES}


def classification_by_view(view: EvaluationView) -> list[dict[str, str]]:
    """One row per view (AP / PA radiographs) of the stored classification, when the data had views."""
    rows = []
    for name, fig in sorted(((view.metrics.get("classification") or {}).get("by_view") or {}).items()):
        if not isinstance(fig, dict):
            continue
        row = {"View": str(name), "Images": str(fig.get("n", "?")), "Positives": str(fig.get("positives", "?"))}
        row.update({label: _figure_text(fig.get(key)) for key, label in _FIGURES})
        rows.append(row)
    return rows


def classification_by_folder(view: EvaluationView) -> list[dict[str, str]]:
    """One row per data folder of the stored classification (an evaluation over several folders), with the view
    shortcut's own AUC and the calibration error on the same images."""
    rows = []
    cls = view.metrics.get("classification") or {}
    for name, fig in sorted((cls.get("by_folder") or {}).items()):
        if not isinstance(fig, dict):
            continue
        row = {"Folder": str(name), "Images": str(fig.get("images", "?")), "Positives": str(fig.get("positives", "?"))}
        row.update({label: _figure_text(fig.get(key)) for key, label in _FIGURES})
        row["AUC of the view alone"] = _figure_text(fig.get("view_shortcut_auc"))
        row["ECE"] = _figure_text((fig.get("calibration") or {}).get("ece"))
        rows.append(row)
    return rows


def on_training_images(view: EvaluationView, card: dict | None) -> bool:
    """The stored evaluation ran on images the checkpoint trained on (its notes say so, or the card says it trained
    on every image of its dataset and the whole dataset was evaluated)."""
    from dprotonet_core.evaluate.data import trained_on_every_image

    data = view.metrics.get("dataset") or {}
    noted = any("training images" in str(note) for note in data.get("notes") or [])
    return noted or (bool(card) and trained_on_every_image(card) and data.get("split") == "all")


TRAINING_IMAGES_WARNING = (
    "Measured on the images this model was trained on. These figures say how well it fits its own training data, "
    "not how accurate it is: they are shown for the explanations (Table 5), not as the model's accuracy."
)


def classification_headline(view: EvaluationView, card: dict | None) -> dict[str, str]:
    """classification_metrics with labels that say where they were measured: "on training images" when so."""
    figures = classification_metrics(view)
    if not on_training_images(view, card):
        return figures
    return {f"{label} on training images": value for label, value in figures.items()}


def table5_caption(view: EvaluationView, card: dict | None) -> str:
    """Under Table 5's heading: how many images, whether the model trained on them, which probability the
    recognition metrics use, and which class the maps explain."""
    table = view.metrics.get("table5") or {}
    probability = (view.metrics.get("classification") or {}).get("probability") or "the model's softmax of eq. 3"
    target = {"label": "the class the image's ground truth marks", "predicted": "the predicted class"}.get(
        table.get("target"), "the predicted class")
    where = (" (training images: these show how the maps behave, not how well the model generalises)"
             if on_training_images(view, card) else "")
    top = (view.metrics.get("config") or {}).get("top_percent_used")
    cut = f"top {top:g}%" if isinstance(top, (int, float)) and not isinstance(top, bool) else "top-k%"
    return (f"CAMs on {table.get('n_images', '?')} images of this split{where}, each for {target}; average drop / "
            f"increase and deletion / insertion on the probability {probability}. Localisation: the CAM's {cut} "
            "against the ground truth; section 4.3 gives that cut-off for sensitivity, and it is applied to DICE, "
            "IoU and PPV too (a named deviation, data/registry.py).")
