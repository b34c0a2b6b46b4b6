"""A plain class-per-folder layout: <root>/<class name>/<image>, optionally under train/val/test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from dprotonet_core.data.datasets import (
    DatasetLayoutError,
    ImageDataset,
    Item,
    list_images,
    require,
    split_items,
)

SPLIT_NAMES = ("train", "val", "test")


def folder_items(root: Path, classes: list[str] | None = None) -> tuple[list[Item], list[str]]:
    """Items of <root>/<class>/*; class order is sorted folder names unless `classes` is given."""
    root = require(Path(root), "image folder")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = classes or found
    if not classes:
        raise DatasetLayoutError(f"missing class folders (<class>/<image>) in {root}")
    items = []
    for label, name in enumerate(classes):
        for path in list_images(require(root / name, f"folder of class {name!r}")):
            items.append(Item(f"{name}/{path.stem}", path, label))
    if not items:
        raise DatasetLayoutError(f"no images (.dcm, .png, .jpg, .tif) in the class folders of {root}")
    return items, classes


def load_folder(
    root: Path | str,
    split: str = "all",
    size: int = 224,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    cache: bool = True,
) -> ImageDataset:
    """Class-per-folder data; uses <root>/<split>/ when the root has train/val/test folders."""
    root = Path(root)
    if (root / "train").is_dir():
        train_classes = folder_items(root / "train")[1]
        if split == "all":
            items = [it for s in SPLIT_NAMES if (root / s).is_dir() for it in folder_items(root / s, train_classes)[0]]
        else:
            items = folder_items(require(root / split, f"{split} folder"), train_classes)[0]
        return ImageDataset(items, train_classes, size, transform, cache=cache, name="folder")
    items, classes = folder_items(root)
    items = split_items(items, split, val_fraction, test_fraction, seed)
    return ImageDataset(items, classes, size, transform, cache=cache, name="folder")
