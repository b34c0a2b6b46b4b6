"""RSNA Pneumonia Detection Challenge, in the layout Kaggle ships it.

    <root>/stage_2_train_labels.csv          patientId,x,y,width,height,Target (one row per box)
    <root>/stage_2_train_images/<patientId>.dcm

A patient with several boxes has several rows; a negative patient has one row with empty box fields.
Splits are by patient (one image per patient), stratified by Target.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import torch

from dprotonet_core.data.datasets import (
    Box,
    DatasetLayoutError,
    ImageDataset,
    Item,
    boxes_to_mask,
    require,
    split_items,
)

CLASSES = ["no pneumonia", "pneumonia"]
LABELS_CSV = "stage_2_train_labels.csv"
IMAGES_DIR = "stage_2_train_images"
BOX_FRAME = 1024  # the labels' boxes are in pixels of the 1024 x 1024 originals, whatever the file size
_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")

__all__ = ["CLASSES", "boxes_to_mask", "load_rsna", "read_rsna_labels"]


def read_rsna_labels(csv_path: Path) -> dict[str, tuple[int, list[Box]]]:
    """patientId -> (Target, boxes) from the labels CSV, in file order."""
    patients: dict[str, tuple[int, list[Box]]] = {}
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetLayoutError(f"{csv_path} lacks column(s) {', '.join(missing)}")
        for row in reader:
            pid = row["patientId"].strip()
            target = int(float(row["Target"]))
            _, boxes = patients.setdefault(pid, (target, []))
            if target == 1 and row["x"].strip():
                boxes.append(tuple(float(row[k]) for k in ("x", "y", "width", "height")))  # type: ignore[arg-type]
            patients[pid] = (max(target, patients[pid][0]), boxes)
    return patients


def rsna_items(root: Path) -> list[Item]:
    """All patients of an RSNA folder as items; the layout is validated, missing paths are named."""
    root = Path(root)
    csv_path = require(root / LABELS_CSV, "RSNA labels CSV")
    images = require(root / IMAGES_DIR, "RSNA image folder")
    items = []
    for pid, (target, boxes) in read_rsna_labels(csv_path).items():
        path = images / f"{pid}.dcm"
        items.append(Item(id=pid, path=path, label=target, boxes=boxes, box_frame=(BOX_FRAME, BOX_FRAME)))
    absent = [it.path for it in items if not it.path.exists()]
    if absent:
        raise DatasetLayoutError(f"missing {len(absent)} RSNA DICOM file(s), e.g. {absent[0]}")
    return items


def load_rsna(
    root: Path | str,
    split: str = "all",
    size: int = 224,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    cache: bool = True,
) -> ImageDataset:
    """The RSNA dataset (classes ["no pneumonia", "pneumonia"]) for one patient-level split."""
    items = split_items(rsna_items(Path(root)), split, val_fraction, test_fraction, seed)
    return ImageDataset(items, CLASSES, size, transform, cache=cache, name="rsna")
