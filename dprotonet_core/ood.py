"""Out-of-distribution check: is an image's representation like those of the images the model learned from?

The bundled cards ship the detector of ood_detector.py (score "detector": Mahalanobis distances on f_b's stages,
k-nearest-neighbour distance, input statistics; chosen per checkpoint on bench/ood.py's look-alike figures);
`record_score` reads it. The scores below are the earlier, single-feature ones, still read for a card that names
them (and measured by bench/ood.py as "legacy"):

    feature z-score      mean_d ((zbar_d(x) - m_d) / s_d)^2,  zbar(x) = (1/n) sum_i z_i(x)   (DEFAULT)
    nearest prototype    min_j min_i s(z_i(x), P_j)                                 (eq. 1's s)
    mean nearest         (1/K) sum_j min_i s(z_i(x), P_j)
    softmax              1 - max_c p(c|x)

Larger is stranger. m and s are the per-channel mean and standard deviation of zbar over the checkpoint's
training images, stored in its card with the score's quantiles over the training and validation images; an
image above the validation 99th percentile is flagged. Why the z-score and not the prototype distance (the
first candidate, and the one a prototype network suggests): bench/ood.py on both bundled checkpoints found the
nearest-prototype distance blind to other domains (AUROC 0.67 and 0.46; a blank or noise image lies as close to
some prototype as a real one), the z-score of the pooled features separates them (figures in
assets/checkpoints/README.md). The top activation max_j g_pj (eq. 2) is a decreasing function of the nearest
distance, so it ranks images the same way and is not listed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SCORES = ("feature_zscore", "nearest_prototype", "mean_nearest_prototype", "softmax")
DEFAULT_SCORE = "feature_zscore"
_STD_FLOOR = 1e-3  # relative to the mean std: channels that never vary must not dominate the score
QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)
FLAG_QUANTILE = "q99"
WARNING = ("This image is unlike the images the model learned from (out-of-distribution score above the 99th "
           "percentile of its validation images); its answer may mean nothing.")


def warning(record: dict | None) -> str:
    """The flag's warning for one checkpoint: what was measured, against which images, and what it means."""
    record = record or {}
    if record.get("score") != "detector":
        if record.get("flag_above", "").startswith("training"):
            return ("This image is unlike the images the model learned from (out-of-distribution score above the "
                    "99th percentile of its own training images); its answer may mean nothing.")
        return WARNING
    trained = record.get("training_images")
    unseen = record.get("threshold_images")
    where = record.get("threshold_from", "images")
    return (f"This image is unlike the {trained} images this model learned from: measured on "
            f"{measured_on(record.get('components') or [])}, it lies further from them than 99 in 100 of "
            f"{unseen} {where} it did not train on. Its answer may be meaningless.")


def measured_on(components: list[str]) -> str:
    """The detector's components in words (ood_detector.py)."""
    stages = [c for c in components if str(c).startswith("stage_")]
    words = []
    if stages:
        words.append("its backbone's features at " + (f"{len(stages)} stages" if len(stages) > 1 else
                                                        f"stage {stages[0].split('_')[1]}"))
    if "knn" in components:
        words.append("their nearest training images")
    if "input" in components:
        words.append("the image's intensity, colour and field-of-view statistics")
    return ", ".join(words[:-1]) + (" and " if len(words) > 1 else "") + words[-1] if words else "its features"


@dataclass(frozen=True)
class OODCheck:
    score: float
    threshold: float | None
    flagged: bool

    def to_json(self) -> dict:
        threshold = None if self.threshold is None else round(self.threshold, 6)
        return {"score": round(self.score, 6), "threshold": threshold, "flagged": self.flagged}


def pooled_features(z: torch.Tensor) -> torch.Tensor:
    """zbar (B, D): the mean of the feature vectors z_i over the feature masks."""
    return z.float().mean(dim=1)


def feature_stats(features: np.ndarray) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation of pooled features (N, D) of the training images (card field)."""
    features = np.asarray(features, dtype=np.float64)
    std = features.std(axis=0)
    std = np.maximum(std, _STD_FLOOR * float(std.mean() or 1.0))
    return {"mean": [round(float(v), 6) for v in features.mean(axis=0)], "std": [round(float(v), 6) for v in std]}


def ood_scores(distances: torch.Tensor, logits: torch.Tensor | None = None, name: str = DEFAULT_SCORE,
               z: torch.Tensor | None = None, stats: dict | None = None) -> torch.Tensor:
    """Scores (B,) from a forward pass: distances s (B, n, K); logits (B, C) for "softmax"; z (B, n, D) and the
    card's feature stats for "feature_zscore"."""
    if name == "feature_zscore":
        if z is None or not stats:
            raise ValueError("the feature z-score needs z and the checkpoint's feature statistics")
        mean = torch.tensor(stats["mean"], dtype=torch.float32, device=z.device)
        std = torch.tensor(stats["std"], dtype=torch.float32, device=z.device)
        return (((pooled_features(z) - mean) / std) ** 2).mean(dim=1)
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


def needs_stages(record: dict | None) -> bool:
    """Whether the card's score reads f_b's stages (the forward pass must be made with stages=True)."""
    return bool(record) and record.get("score") == "detector"


def record_score(out, record: dict | None, detector=None, x01: torch.Tensor | None = None) -> torch.Tensor:
    """The score a card's `ood` record names, for a forward pass `out` (of the inputs x01); "detector": the
    checkpoint's ood_detector (ood_detector.py) on f_b's stages and the input statistics; a card without a record
    gets the nearest-prototype distance (it needs no statistics), which its missing threshold never flags."""
    if needs_stages(record):
        from dprotonet_core.ood_detector import score_from_record
        from dprotonet_core.ood_features import features_of_output

        if detector is None or out.stages is None or x01 is None:
            raise ValueError("the card's out-of-distribution score needs its detector and f_b's stages")
        return torch.as_tensor(score_from_record(detector, record, features_of_output(out, x01)),
                               dtype=torch.float32)
    if record and record.get("score") == "feature_zscore" and record.get("feature_stats"):
        return ood_scores(out.distances, out.logits, "feature_zscore", out.z, record["feature_stats"])
    name = (record or {}).get("score", "nearest_prototype")
    return ood_scores(out.distances, out.logits, "nearest_prototype" if name == "feature_zscore" else name)


@torch.inference_mode()
def score_images(model, images: torch.Tensor, name: str = DEFAULT_SCORE, batch_size: int = 32,
                 stats: dict | None = None) -> np.ndarray:
    """Scores of a stack of model inputs (N, 3, S, S) in [0, 1]."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        result = model(images[start:start + batch_size])
        out.append(ood_scores(result.distances, result.logits, name, result.z, stats).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


@torch.inference_mode()
def image_features(model, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """Pooled features zbar (N, D) of a stack of model inputs."""
    out = [pooled_features(model(images[s:s + batch_size]).z).cpu().numpy()
           for s in range(0, images.shape[0], batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0))


def quantiles(scores: np.ndarray) -> dict[str, float]:
    """{"q50": ..., "q99": ...} of a set of scores (what a card stores)."""
    scores = np.asarray(scores, dtype=np.float64)
    return {f"q{round(q * 100, 1):g}".replace(".", "_"): float(np.quantile(scores, q)) for q in QUANTILES}


def card_record(train_scores: np.ndarray, val_scores: np.ndarray, name: str = DEFAULT_SCORE,
                stats: dict | None = None) -> dict:
    """The card's `ood` field: the score used, its quantiles on the training and validation images, the flag
    threshold (validation 99th percentile), and for the z-score the training images' feature statistics."""
    val_q = quantiles(val_scores)
    record = {"score": name, "flag_above": f"validation {FLAG_QUANTILE}", "threshold": val_q[FLAG_QUANTILE],
              "validation_quantiles": val_q, "validation_images": int(len(val_scores)),
              "training_quantiles": quantiles(train_scores), "training_images": int(len(train_scores))}
    if stats is not None:
        record["feature_stats"] = stats
    return record


def check(score: float, record: dict | None) -> OODCheck:
    """Compare one image's score with the card's threshold (no record: never flagged, threshold None)."""
    threshold = None if not record else record.get("threshold")
    return OODCheck(float(score), threshold, threshold is not None and float(score) > float(threshold))
