"""Out-of-distribution score from the model itself: how far an image's feature vectors are from every prototype.

    nearest-prototype distance  d(x) = min_j min_i s(z_i(x), P_j)       (eq. 1's s, over all masks and prototypes)

Larger is stranger. The top prototype activation max_j g_pj (eq. 2) is a decreasing function of the same number,
so it ranks images identically. bench/ood.py compares it with the mean over prototypes of min_i s and with
1 - max softmax probability; the nearest-prototype distance is what the cards use (the figures are in
assets/checkpoints/README.md). Each card stores the quantiles of d over its own training and validation
images at build time; an image above the validation 99th percentile is flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SCORES = ("nearest_prototype", "mean_nearest_prototype", "softmax")
DEFAULT_SCORE = "nearest_prototype"
QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)
FLAG_QUANTILE = "q99"
WARNING = ("This image is unlike the images the model learned from (out-of-distribution score above the 99th "
           "percentile of its validation images); its answer may mean nothing.")


@dataclass(frozen=True)
class OODCheck:
    score: float
    threshold: float | None
    flagged: bool

    def to_json(self) -> dict:
        threshold = None if self.threshold is None else round(self.threshold, 6)
        return {"score": round(self.score, 6), "threshold": threshold, "flagged": self.flagged}


def ood_scores(distances: torch.Tensor, logits: torch.Tensor | None = None,
               name: str = DEFAULT_SCORE) -> torch.Tensor:
    """Scores (B,) from a forward pass: distances s (B, n, K) and, for "softmax", logits (B, C)."""
    nearest = distances.float().min(dim=1).values  # (B, K): min over feature masks
    if name == "nearest_prototype":
        return nearest.min(dim=1).values
    if name == "mean_nearest_prototype":
        return nearest.mean(dim=1)
    if name == "softmax":
        if logits is None:
            raise ValueError("the softmax score needs the logits")
        return 1.0 - torch.softmax(logits.float(), dim=1).max(dim=1).values
    raise ValueError(f"unknown OOD score {name!r}: use one of {', '.join(SCORES)}")


@torch.inference_mode()
def score_images(model, images: torch.Tensor, name: str = DEFAULT_SCORE, batch_size: int = 32) -> np.ndarray:
    """Scores of a stack of model inputs (N, 3, S, S) in [0, 1]."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        result = model(images[start:start + batch_size])
        out.append(ood_scores(result.distances, result.logits, name).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def quantiles(scores: np.ndarray) -> dict[str, float]:
    """{"q50": ..., "q99": ...} of a set of scores (what a card stores)."""
    scores = np.asarray(scores, dtype=np.float64)
    return {f"q{round(q * 100, 1):g}".replace(".", "_"): float(np.quantile(scores, q)) for q in QUANTILES}


def card_record(train_scores: np.ndarray, val_scores: np.ndarray, name: str = DEFAULT_SCORE) -> dict:
    """The card's `ood` field: the score used, its quantiles on the training and validation images, the flag
    threshold (validation 99th percentile)."""
    val_q = quantiles(val_scores)
    return {"score": name, "flag_above": f"validation {FLAG_QUANTILE}", "threshold": val_q[FLAG_QUANTILE],
            "validation_quantiles": val_q, "validation_images": int(len(val_scores)),
            "training_quantiles": quantiles(train_scores), "training_images": int(len(train_scores))}


def check(score: float, record: dict | None) -> OODCheck:
    """Compare one image's score with the card's threshold (no record: never flagged, threshold None)."""
    threshold = None if not record else record.get("threshold")
    return OODCheck(float(score), threshold, threshold is not None and float(score) > float(threshold))
