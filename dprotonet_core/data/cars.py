"""Stanford Cars, from the devkit annotations or the common CSV form.

Devkit form:
    <root>/devkit/cars_meta.mat                 class_names
    <root>/devkit/cars_train_annos.mat          annotations: bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, fname
    <root>/cars_test_annos_withlabels.mat       (or devkit/...) the labelled test annotations
    <root>/cars_train/<fname>, <root>/cars_test/<fname>
CSV form:
    <root>/names.csv                            one class name per line
    <root>/anno_train.csv, <root>/anno_test.csv fname,x1,y1,x2,y2,class (no header)
    <root>/cars_train/<fname>, <root>/cars_test/<fname>
Classes are 1-based in the files, 0-based here. Boxes become (x, y, width, height).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dprotonet_core.data.datasets import DatasetLayoutError, ImageDataset, Item, require, split_items


def _mat_classes(path: Path) -> list[str]:
    """Class names from cars_meta.mat."""
    from scipy.io import loadmat

    names = np.atleast_1d(loadmat(require(path, "Stanford Cars class list"), squeeze_me=True)["class_names"])
    return [str(n).strip() for n in names]


def _mat_annotations(path: Path) -> list[tuple[str, tuple[float, ...], int]]:
    """(fname, (x1, y1, x2, y2), class 1-based) rows from a devkit annotations .mat file."""
    from scipy.io import loadmat

    annos = np.atleast_1d(loadmat(require(path, "Stanford Cars annotations"), squeeze_me=True)["annotations"])
    if "class" not in (annos.dtype.names or ()):
        raise DatasetLayoutError(f"{path} has no class labels (use cars_test_annos_withlabels.mat for test)")
    keys = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
    return [(str(a["fname"]), tuple(float(a[k]) for k in keys), int(a["class"])) for a in annos]


def _csv_annotations(path: Path) -> list[tuple[str, tuple[float, ...], int]]:
    """(fname, (x1, y1, x2, y2), class 1-based) rows from a CSV annotations file (no header)."""
    rows = []
    with open(require(path, "Stanford Cars annotations CSV"), newline="") as handle:
        for row in csv.reader(handle):
            if len(row) >= 6 and row[1].strip().lstrip("-").replace(".", "").isdigit():
                rows.append((row[0].strip(), tuple(float(v) for v in row[1:5]), int(row[5])))
    return rows


def _test_mat(root: Path) -> Path:
    """The labelled test annotations file, wherever the download put it."""
    for candidate in (
        root / "cars_test_annos_withlabels.mat",
        root / "devkit" / "cars_test_annos_withlabels.mat",
    ):
        if candidate.exists():
            return candidate
    return root / "cars_test_annos_withlabels.mat"


def cars_items(root: Path, part: str) -> tuple[list[Item], list[str]]:
    """Items of the 'train' or 'test' part, and the class names."""
    root = Path(root)
    image_dir = require(root / f"cars_{part}", "Stanford Cars image folder")
    if (root / "devkit").is_dir():
        classes = _mat_classes(root / "devkit" / "cars_meta.mat")
        rows = _mat_annotations(root / "devkit" / "cars_train_annos.mat" if part == "train" else _test_mat(root))
    elif (root / "names.csv").exists():
        classes = [line.strip() for line in (root / "names.csv").read_text().splitlines() if line.strip()]
        rows = _csv_annotations(root / f"anno_{part}.csv")
    else:
        raise DatasetLayoutError(f"missing Stanford Cars annotations: {root / 'devkit'} or {root / 'names.csv'}")
    items = []
    for fname, (x1, y1, x2, y2), cls in rows:
        path = require(image_dir / fname, "Stanford Cars image")
        items.append(Item(Path(fname).stem, path, cls - 1, boxes=[(x1, y1, x2 - x1 + 1, y2 - y1 + 1)]))
    return items, classes


def load_cars(
    root: Path | str,
    split: str = "train",
    size: int = 224,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    crop: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    cache: bool = True,
) -> ImageDataset:
    """Stanford Cars: 'test' is the official test set; 'train'/'val' split the official training set."""
    if split == "test":
        items, classes = cars_items(Path(root), "test")
    else:
        items, classes = cars_items(Path(root), "train")
        items = split_items(items, split, val_fraction, 0.0, seed)
    if crop:
        for item in items:
            item.crop = item.boxes[0]
    return ImageDataset(items, classes, size, transform, cache=cache, name="cars")
