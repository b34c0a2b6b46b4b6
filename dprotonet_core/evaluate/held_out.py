"""Two-class figures on a held-out split, overall and within each view, and the Table 4 comparison.

`binary_figures` is the one computation of accuracy / sensitivity / specificity / ROC AUC for a subset; the
evaluation report (runner.py, from its stored predictions) and the figures a checkpoint's card carries
(`held_out_metrics`, from a model and a dataset) both use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dprotonet_core.evaluate import metrics as M


def binary_figures(labels: np.ndarray, predicted: np.ndarray, scores: np.ndarray, positive: int = 1) -> dict:
    """n, positives, accuracy, sensitivity, specificity and ROC AUC (None when one class is missing)."""
    y, p = np.asarray(labels), np.asarray(predicted)
    both = len(set(y.tolist())) == 2
    return {"n": int(y.size), "positives": int((y == positive).sum()), "accuracy": M.accuracy(y, p),
            "sensitivity": M.sensitivity(y, p, positive), "specificity": M.specificity(y, p, positive),
            "roc_auc": M.roc_auc(y, np.asarray(scores), positive) if both else None}


def figures_by_view(labels: np.ndarray, predicted: np.ndarray, scores: np.ndarray, views: Sequence[str | None],
                    positive: int = 1) -> dict[str, dict]:
    """binary_figures within each view (e.g. AP / PA radiographs); {} when no item names a view."""
    if not any(views):
        return {}
    out = {}
    for view in sorted({v for v in views if v}):
        keep = np.asarray([v == view for v in views])
        out[view] = binary_figures(np.asarray(labels)[keep], np.asarray(predicted)[keep], np.asarray(scores)[keep],
                                   positive)
    return out


def shortcut_auc(labels: np.ndarray, views: Sequence[str | None], shortcut_view: str = "AP",
                 positive: int = 1) -> float | None:
    """ROC AUC of the view alone as the score (1 for a `shortcut_view` film, 0 otherwise): what recognising a
    bedside film earns on these images. None when a class is missing or no image names a view."""
    y = np.asarray(labels)
    if not any(views) or len(set(y.tolist())) != 2:
        return None
    score = np.asarray([1.0 if v == shortcut_view else 0.0 for v in views])
    return M.roc_auc(y, score, positive)


def subset_figures(labels: np.ndarray, predicted: np.ndarray, scores: np.ndarray,
                   views: Sequence[str | None], calibrated: bool) -> dict:
    """binary_figures in the card's names, with the view shortcut's own AUC on the same images and, for a
    calibrated probability, its calibration figures (ECE, reliability bins)."""
    from dprotonet_core.calibration import calibration_figures

    out = _card_keys(binary_figures(labels, predicted, scores))
    out["view_shortcut_auc"] = shortcut_auc(labels, views)
    if calibrated and len(labels):
        out["calibration"] = calibration_figures(scores, labels)
    return out


def held_out_metrics(model, dataset, threshold: float | None = None, batch_size: int = 32,
                     calibration: dict | None = None) -> dict:
    """The card's figures on a split: binary_figures deciding by the card's threshold (None: argmax) on p(class 1)
    (calibrated by the card's `calibration` record when given), with the split's size as `images`, the view
    shortcut's AUC, `by_view` and `by_folder` when the items carry them, and ECE with the reliability bins when
    the probability is calibrated. `model` is a DProtoNet or a plain classifier; positive = class 1."""
    from dprotonet_core.calibration import calibrated_probability, dataset_margins
    from dprotonet_core.inference import decide

    margins, labels = dataset_margins(model, dataset, batch_size)
    scores = calibrated_probability(margins, calibration)
    predicted = decide(np.stack([1 - scores, scores], 1), threshold)
    items = getattr(dataset, "items", [])
    views = [getattr(it, "attributes", {}).get("view") for it in items] or [None] * len(labels)
    folders = [getattr(it, "attributes", {}).get("folder") for it in items] or [None] * len(labels)
    calibrated = calibration is not None
    out = subset_figures(labels, predicted, scores, views, calibrated)
    for key, values in (("by_view", views), ("by_folder", folders)):
        names = sorted({v for v in values if v})
        if key == "by_folder" and len(names) < 2:
            continue
        if names:
            out[key] = {}
            for name in names:
                keep = np.asarray([v == name for v in values])
                out[key][name] = subset_figures(labels[keep], predicted[keep], scores[keep],
                                                [v for v, k in zip(views, keep) if k], calibrated)
    return out


def _card_keys(figures: dict) -> dict:
    """The card's field names (`images` for the count; the rest as binary_figures names them)."""
    figures = dict(figures)
    figures["images"] = figures.pop("n")
    return figures


def projection_comparison(model, train_ds, test_ds, views: int, augment, seed: int,
                          threshold: float | None = None, distinct: bool = False,
                          calibration: dict | None = None) -> dict:
    """Table 4 on a trained network: held-out accuracy after single-image (R = 1) and after multi-image
    (R = views) projection (eq. 9-11) from the same prototypes. The model is left unchanged."""
    from dprotonet_core.train.projection import project_prototypes

    original = model.prototypes.detach().clone()
    out = {}
    for r in sorted({1, views}):
        with torch.no_grad():
            model.prototypes.copy_(original)
        project_prototypes(model, train_ds, views=r, augment=None if r == 1 else augment,
                           labels=train_ds.labels, generator_seed=seed, distinct=distinct)
        out[f"R={r}"] = held_out_metrics(model, test_ds, threshold, calibration=calibration)["accuracy"]
    with torch.no_grad():
        model.prototypes.copy_(original)
    return out


__all__ = ["binary_figures", "figures_by_view", "held_out_metrics", "projection_comparison", "shortcut_auc",
           "subset_figures"]
