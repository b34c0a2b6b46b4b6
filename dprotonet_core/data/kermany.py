"""Kermany et al.'s pediatric chest radiographs (normal vs pneumonia), a pretraining corpus for chest backbones.

    <root>/labels.csv            file,label,subtype,patient   (file relative to root, e.g. NORMAL/IM-0129-0001.jpg)
    <root>/NORMAL/*.jpg, <root>/PNEUMONIA/*.jpg

Another population (children aged 1-5, one hospital in Guangzhou) and another task than RSNA: only ever used to
initialise a backbone, never as RSNA training or test data. Splits keep each patient's films together: the
patient key is the `patient` column (pneumonia files, "personNNN") or the "IM-NNNN" prefix of a normal file.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import torch

from dprotonet_core.data.datasets import DatasetLayoutError, ImageDataset, Item, require, split_items

CLASSES = ["normal", "pneumonia"]
LABELS_CSV = "labels.csv"
CREDIT = (
    "Kermany, Zhang, Goldbaum et al., Cell 2018; data: Labeled Optical Coherence Tomography (OCT) and Chest X-Ray "
    "Images for Classification, Mendeley Data v2, CC BY 4.0 (6,754 pediatric chest radiographs, 224 x 224)"
)


def patient_key(file: str, patient: str) -> str:
    """The patient a film belongs to: the CSV's key, else the "IM-NNNN" prefix of the file name."""
    if patient.strip():
        return patient.strip()
    stem = Path(file).stem
    return "-".join(stem.split("-")[:2])


def kermany_items(root: Path) -> list[Item]:
    """Every film of the corpus as an item (label 1 = pneumonia), with its patient key as group."""
    root = Path(root)
    csv_path = require(root / LABELS_CSV, "Kermany labels CSV")
    items = []
    with open(csv_path, newline="") as handle:
        for row in csv.DictReader(handle):
            label = row["label"].strip().upper()
            if label not in ("NORMAL", "PNEUMONIA"):
                raise DatasetLayoutError(f"{csv_path}: unknown label {row['label']!r} for {row['file']}")
            path = root / row["file"]
            items.append(Item(id=row["file"], path=path, label=int(label == "PNEUMONIA"),
                              group=patient_key(row["file"], row.get("patient", ""))))
    absent = [it.path for it in items if not it.path.exists()]
    if absent:
        raise DatasetLayoutError(f"missing {len(absent)} Kermany image(s), e.g. {absent[0]}")
    return items


def load_kermany(
    root: Path | str,
    split: str = "all",
    size: int = 224,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    cache: bool = True,
) -> ImageDataset:
    """The corpus for one patient-grouped split (classes ["normal", "pneumonia"])."""
    items = split_items(kermany_items(Path(root)), split, val_fraction, test_fraction, seed)
    return ImageDataset(items, CLASSES, size, transform, cache=cache, name="kermany")
