"""The results of an evaluation run, as types: predictions, per-image CAM scores, and their Table-5 rows.

The runner fills them, the report writes and reads them; both import this module and not each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dprotonet_core.evaluate import metrics as M
from dprotonet_core.evaluate.cams import DISPLAY_NAMES
from dprotonet_core.inference import decide

EVALUATION_DIR = "evaluation"  # inside a checkpoint folder, with --attach
TABLE5_COLUMNS = ("AD", "AI", "D", "I", "DICE", "IoU", "PPV", "Sensitivity", "s/img")
LOCALISATION_COLUMNS = ("DICE", "IoU", "PPV", "Sensitivity")
# Which way is better, for the reports: True = higher.
HIGHER_IS_BETTER = {
    "AD": False, "AI": True, "D": False, "I": True, "DICE": True, "IoU": True, "PPV": True,
    "Sensitivity": True, "s/img": False,
}


@dataclass
class Predictions:
    ids: list[str]
    labels: np.ndarray  # (N,)
    probabilities: np.ndarray  # (N, C)
    seconds: float
    threshold: float | None = None  # the checkpoint's decision threshold on p(class 1); None: argmax (eq. 3)
    calibrated: bool = False  # probabilities are the card's calibrated ones (calibration.py)

    @property
    def predicted(self) -> np.ndarray:
        return decide(self.probabilities, self.threshold)


@dataclass
class MethodScores:
    """Per-image results of one method, in image order."""

    ids: list[str] = field(default_factory=list)
    original: list[float] = field(default_factory=list)  # Y_i^c
    explained: list[float] = field(default_factory=list)  # O_i^c
    deletion: list[np.ndarray] = field(default_factory=list)
    insertion: list[np.ndarray] = field(default_factory=list)
    localisation: list[dict[str, float] | None] = field(default_factory=list)  # None: no ground truth
    seconds: list[float] = field(default_factory=list)


@dataclass
class CamEvaluation:
    methods: dict[str, MethodScores]
    fractions: np.ndarray
    image_ids: list[str]
    targets: list[int]


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def table5_row(method: str, scores: MethodScores, fractions: np.ndarray) -> dict:
    """One Table-5 row: AD, AI, D, I, DICE, IoU, PPV, Sensitivity and seconds per image."""
    row: dict = {"method": method, "name": DISPLAY_NAMES.get(method, method)}
    row["AD"] = M.average_drop(scores.original, scores.explained) if scores.original else math.nan
    row["AI"] = M.average_increase(scores.original, scores.explained) if scores.original else math.nan
    row["D"] = _nanmean([M.curve_auc(fractions, c) for c in scores.deletion])
    row["I"] = _nanmean([M.curve_auc(fractions, c) for c in scores.insertion])
    located = [loc for loc in scores.localisation if loc is not None]
    for key in LOCALISATION_COLUMNS:
        row[key] = _nanmean([loc[key] for loc in located])
    row["s/img"] = _nanmean(scores.seconds)
    row["n_images"] = len(scores.original)
    row["n_localisation"] = len(located)
    return row


def per_image_rows(cams: CamEvaluation) -> list[dict]:
    """One record per (method, image): Y, O, D, I, localisation and seconds, for per_image.csv."""
    records = []
    for method, scores in cams.methods.items():
        for i, item_id in enumerate(scores.ids):
            loc = scores.localisation[i] or {}
            records.append({
                "method": method, "id": item_id, "target": cams.targets[i],
                "Y": scores.original[i], "O": scores.explained[i],
                "D": M.curve_auc(cams.fractions, scores.deletion[i]),
                "I": M.curve_auc(cams.fractions, scores.insertion[i]),
                **{key: loc.get(key) for key in LOCALISATION_COLUMNS},
                "seconds": scores.seconds[i],
            })
    return records
