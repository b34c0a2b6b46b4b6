"""The out-of-distribution detector a checkpoint ships (file ood.safetensors, listed in card.json with its hash;
the card's `ood` record names the score, its threshold and where the threshold came from).

Component scores (larger is stranger), each from ood_features.py:

    stage_k    class-conditional Mahalanobis distance of f_b's k-th stage, average-pooled, with one shared
               covariance estimated by Ledoit-Wolf shrinkage on the class-centred training features:
               min_c (f - mu_c)^T Sigma^-1 (f - mu_c) / d
    knn        1 - cos of the k-th nearest training image, on L2-normalised pooled features of f_b's last stage
    input      Mahalanobis distance (Ledoit-Wolf, one class) of the input statistics (histogram, colour, the
               circular field of view, symmetries, sharpness) to those of the training images

A combination divides each chosen component by its own threshold (the 99th percentile over images the model did
not train on) and takes the largest: it flags an image that any one component finds strange. The combination's
own threshold is again the 99th percentile over those images. bench/ood.py measures every component and the
combinations on look-alike images; the card names the one chosen and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DETECTOR_FILE = "ood.safetensors"
KNN_K = 10
FLAG_PERCENTILE = 99.0
MAX_DIM = 4096  # a stage's channels (DenseNet121's last: 1024)
MAX_BANK = 200_000


@dataclass
class Gaussian:
    """Class means (C, d) and the shared precision matrix (d, d) of one feature."""

    means: np.ndarray
    precision: np.ndarray

    def distance(self, features: np.ndarray) -> np.ndarray:
        """min_c (f - mu_c)^T P (f - mu_c) / d for rows f of (B, d)."""
        diff = features[:, None, :] - self.means[None, :, :]  # (B, C, d)
        mahalanobis = np.einsum("bcd,de,bce->bc", diff, self.precision, diff)
        return mahalanobis.min(axis=1) / self.means.shape[1]


def fit_gaussian(features: np.ndarray, labels: np.ndarray | None = None) -> Gaussian:
    """Class means and a Ledoit-Wolf shared covariance of the class-centred features (labels None: one class)."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(features, dtype=np.float64)
    labels = np.zeros(len(features), int) if labels is None else np.asarray(labels, int)
    classes = sorted(set(labels.tolist()))
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    estimator = LedoitWolf(assume_centered=True).fit(centred)
    return Gaussian(means=means, precision=estimator.precision_)


def _normalise(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


@dataclass
class Detector:
    """Fitted components: a Gaussian per stage and for the input statistics, and the kNN bank."""

    gaussians: dict[str, Gaussian] = field(default_factory=dict)
    bank: np.ndarray | None = None  # (N, d) L2-normalised last-stage features of the training images
    bank_feature: str = ""

    @property
    def components(self) -> list[str]:
        return [*self.gaussians, *(["knn"] if self.bank is not None else [])]

    def component_scores(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scores = {name: g.distance(np.asarray(features[name], dtype=np.float64)) for name, g in self.gaussians.items()}
        if self.bank is not None:
            similarity = _normalise(features[self.bank_feature]) @ self.bank.T  # (B, N)
            k = min(KNN_K, self.bank.shape[0])
            scores["knn"] = 1.0 - np.sort(similarity, axis=1)[:, -k]
        return scores

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        tensors = {}
        for name, g in self.gaussians.items():
            tensors[f"{name}.means"] = g.means.astype(np.float32)
            tensors[f"{name}.precision"] = g.precision.astype(np.float32)
        if self.bank is not None:
            tensors[f"knn.{self.bank_feature}"] = self.bank.astype(np.float16)
        save_file(tensors, str(path))


def fit_detector(features: dict[str, np.ndarray], labels: np.ndarray) -> Detector:
    """Every component from the training images' features (model_features) and class labels."""
    stages = sorted((k for k in features if k.startswith("stage_")), key=lambda k: int(k.split("_")[1]))
    gaussians = {name: fit_gaussian(features[name], labels) for name in stages}
    gaussians["input"] = fit_gaussian(features["input"], None)
    last = stages[-1]
    return Detector(gaussians=gaussians, bank=_normalise(features[last]), bank_feature=last)


def detector_from_tensors(tensors: dict[str, np.ndarray], stage_dims: list[int]) -> Detector:
    """A Detector from ood.safetensors' tensors, checked against the model's stage widths (ValueError when not)."""
    from dprotonet_core.ood_features import INPUT_STATISTICS

    dims = {f"stage_{k + 1}": d for k, d in enumerate(stage_dims)} | {"input": len(INPUT_STATISTICS)}
    gaussians, bank, bank_feature = {}, None, ""
    names = {key.rsplit(".", 1)[0] for key in tensors if not key.startswith("knn.")}
    if names - set(dims):
        raise ValueError(f"unexpected tensors for {sorted(names - set(dims))}")
    for name in (n for n in dims if n in names):  # the order fit_detector gives: stages, then input
        if {f"{name}.means", f"{name}.precision"} - set(tensors):
            raise ValueError(f"{name!r} needs both its means and its precision")
        means, precision = (np.asarray(tensors[f"{name}.{part}"], np.float64) for part in ("means", "precision"))
        d = dims[name]
        if means.ndim != 2 or not 1 <= means.shape[0] <= 64 or means.shape[1] != d or precision.shape != (d, d):
            raise ValueError(f"{name}: shapes {list(means.shape)} / {list(precision.shape)} do not fit the model")
        gaussians[name] = Gaussian(means, precision)
    for key in tensors:
        if key.startswith("knn."):
            bank_feature = key.split(".", 1)[1]
            bank = np.asarray(tensors[key], np.float64)
            if bank_feature not in dims or bank.ndim != 2 or bank.shape[1] != dims[bank_feature] \
                    or not 1 <= bank.shape[0] <= MAX_BANK:
                raise ValueError(f"{key}: shape {list(bank.shape)} does not fit the model")
    if any(d > MAX_DIM for d in dims.values()):
        raise ValueError("a stage wider than the detector allows")
    return Detector(gaussians=gaussians, bank=bank, bank_feature=bank_feature)


def load_detector(path: Path, stage_dims: list[int]) -> Detector:
    """ood.safetensors (read without pickle) as a Detector; ValueError for a file that is not safetensors, holds a
    non-finite value, or does not fit the model's stage widths."""
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise ValueError(f"cannot be read as safetensors ({' '.join(str(exc).split())[:160]})") from None
    for key, value in tensors.items():
        if not np.isfinite(value.astype(np.float64)).all():
            raise ValueError(f"tensor {key!r} holds values that are not finite")
    if not tensors:
        raise ValueError("holds no tensors")
    return detector_from_tensors(tensors, stage_dims)


def combine(scores: dict[str, np.ndarray], components: list[str], normalisers: dict[str, float]) -> np.ndarray:
    """max over the chosen components of score / that component's threshold."""
    return np.max(np.stack([np.asarray(scores[c], np.float64) / float(normalisers[c]) for c in components]), axis=0)


def percentile(scores: np.ndarray) -> float:
    return float(np.percentile(np.asarray(scores, np.float64), FLAG_PERCENTILE))


def candidate_names(components: list[str]) -> dict[str, list[str]]:
    """The scores bench/ood.py compares: each component, all stages, stages + kNN, and each with the input
    statistics."""
    stages = [c for c in components if c.startswith("stage_")]
    out = {c: [c] for c in components}
    out["stages"] = stages
    out["stages+input"] = [*stages, "input"]
    out["stages+knn+input"] = [*stages, "knn", "input"]
    out["last_stage+knn+input"] = [stages[-1], "knn", "input"]
    return out


@dataclass(frozen=True)
class Choice:
    """The score a card ships: its components, their normalisers, its threshold and where they came from."""

    name: str
    components: list[str]
    normalisers: dict[str, float]
    threshold: float
    threshold_images: int
    threshold_from: str
    training_images: int

    def record(self, extra: dict | None = None) -> dict:
        return {"score": "detector", "detector": self.name, "detector_file": DETECTOR_FILE,
                "components": list(self.components), "combine": "max of component / its threshold",
                "normalisers": {k: round(v, 6) for k, v in self.normalisers.items()},
                "threshold": round(self.threshold, 6), "percentile": FLAG_PERCENTILE,
                "threshold_images": self.threshold_images, "threshold_from": self.threshold_from,
                "training_images": self.training_images, **(extra or {})}


def choose(unseen: dict[str, np.ndarray], name: str, components: list[str], threshold_from: str,
           training_images: int) -> Choice:
    """Normalisers and threshold of the combination `components` from scores of images the model did not train on."""
    normalisers = {c: max(percentile(unseen[c]), 1e-12) for c in components}
    combined = combine(unseen, components, normalisers)
    return Choice(name, list(components), normalisers, percentile(combined), int(len(combined)), threshold_from,
                  training_images)


def score_from_record(detector: Detector, record: dict, features: dict[str, np.ndarray]) -> np.ndarray:
    """The card's score for the features of a batch."""
    scores = detector.component_scores(features)
    return combine(scores, record["components"], record["normalisers"])


def check_record(record: dict, detector: Detector) -> None:
    """ValueError unless a card's detector record names components the detector has, each with a positive finite
    normaliser, and a positive finite threshold."""
    components = record.get("components")
    normalisers = record.get("normalisers")
    if not (isinstance(components, list) and components and isinstance(normalisers, dict)):
        raise ValueError("the record needs a list of components and their normalisers")
    for name in components:
        value = normalisers.get(name)
        if name not in detector.components:
            raise ValueError(f"component {name!r} is not in the detector file")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
            raise ValueError(f"component {name!r} needs a positive finite normaliser")
    threshold = record.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not np.isfinite(threshold) \
            or threshold <= 0:
        raise ValueError("the threshold must be a positive finite number")
