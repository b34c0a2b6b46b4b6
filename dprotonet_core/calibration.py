"""The probability a person reads: a calibrator fitted on validation images, stored in the card.

Eq. 3's logits of a two-class DProtoNet give, through a softmax, p(class 1) = sigmoid(m) with the logit
difference m = p(y^1|x) - p(y^0|x). That number is not a probability anyone measured: the prototype activations
of eq. 2 reach 27 and the last layer has no bias, so the softmax saturates (the RSNA model trained before this
module gave its negatives a median p(pneumonia) of 0.0008). Platt scaling fits p = sigmoid(a m + b) by logistic
regression of the labels on m, on validation images the model did not train on, of the mix the model will meet
(RSNA: rsna-real/'s 1:3 films). The app, the report, `predict` and `evaluate` all show this p and decide by a
threshold chosen on it (card "decision_threshold").

    record = fit_platt(margins, labels)                 # {"method": "platt", "slope": a, "intercept": b, ...}
    p = calibrated_probability(margins, record)
    expected_calibration_error(p, labels)               # 10 equal-width bins
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

ECE_BINS = 10


def logit_difference(logits: torch.Tensor | np.ndarray, positive: int = 1) -> np.ndarray:
    """m = logit of class `positive` minus the other class's logit, per row of (B, 2) logits of eq. 3."""
    values = logits.detach().float().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits, float)
    if values.ndim != 2 or values.shape[1] != 2:
        raise ValueError("calibration is for two-class logits (B, 2)")
    return values[:, positive] - values[:, 1 - positive]


@torch.inference_mode()
def dataset_margins(model: torch.nn.Module, dataset: Dataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(logit differences m, labels) over an un-augmented dataset, the model in eval mode (restored)."""
    was = model.training
    model.eval()
    margins, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        out = model(x)
        margins.append(logit_difference(out if torch.is_tensor(out) else out.logits))
        labels.append(np.asarray(y))
    model.train(was)
    return np.concatenate(margins), np.concatenate(labels)


def fit_platt(margins: np.ndarray, labels: np.ndarray, fitted_on: str = "") -> dict:
    """Platt scaling: slope a and intercept b of p = sigmoid(a m + b), by maximum likelihood on (m, label)
    (scikit-learn's logistic regression, no penalty). Needs both classes."""
    from sklearn.linear_model import LogisticRegression

    m = np.asarray(margins, float).reshape(-1, 1)
    y = np.asarray(labels).astype(int)
    if len(set(y.tolist())) != 2:
        raise ValueError("calibration needs validation images of both classes")
    fit = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000).fit(m, y)
    record = {"method": "platt", "slope": float(fit.coef_[0, 0]), "intercept": float(fit.intercept_[0]),
              "input": "logit difference of eq. 3 (class 1 minus class 0)", "images": int(y.size),
              "positives": int(y.sum())}
    if fitted_on:
        record["fitted_on"] = fitted_on
    return record


def calibrated_probability(margins: np.ndarray | float, record: dict | None) -> np.ndarray:
    """p(class 1) = sigmoid(a m + b) under the card's record; None: the model's own softmax, sigmoid(m)."""
    m = np.asarray(margins, float)
    a, b = (1.0, 0.0) if record is None else (float(record["slope"]), float(record["intercept"]))
    return 1.0 / (1.0 + np.exp(-(a * m + b)))


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Equal-width bins of predicted p(class 1): per bin its range, image count, mean predicted probability and
    observed share of class 1 (None for an empty bin). The last bin includes 1.0."""
    p = np.asarray(probabilities, float)
    y = np.asarray(labels).astype(float)
    index = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for k in range(bins):
        keep = index == k
        n = int(keep.sum())
        out.append({"low": k / bins, "high": (k + 1) / bins, "n": n,
                    "mean_predicted": float(p[keep].mean()) if n else None,
                    "observed": float(y[keep].mean()) if n else None})
    return out


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE = sum over equal-width bins of (bin size / N) |observed share - mean predicted| (Guo et al. 2017),
    for p(class 1) of a two-class task."""
    rows = reliability_bins(probabilities, labels, bins)
    total = sum(r["n"] for r in rows)
    if total == 0:
        raise ValueError("no images")
    return float(sum(r["n"] / total * abs(r["observed"] - r["mean_predicted"]) for r in rows if r["n"]))


def calibration_figures(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """What a card or report shows: ECE, the reliability bins, the image count."""
    return {"ece": expected_calibration_error(probabilities, labels, bins), "bins": bins,
            "images": int(np.asarray(labels).size), "reliability": reliability_bins(probabilities, labels, bins)}


def describe(record: dict | None) -> str:
    """One line for a caption: what the shown probability is."""
    if record is None:
        return "the model's softmax of eq. 3 (not calibrated)"
    where = record.get("fitted_on", "validation images")
    return f"calibrated (Platt scaling of eq. 3's logit difference, fitted on {where})"
