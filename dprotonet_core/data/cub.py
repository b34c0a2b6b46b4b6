"""CUB-200-2011, in the layout Caltech ships it.

    <root>/CUB_200_2011/images.txt             <image_id> <class_folder>/<file>.jpg
    <root>/CUB_200_2011/image_class_labels.txt <image_id> <class_id 1..200>
    <root>/CUB_200_2011/classes.txt            <class_id> <class_name>
    <root>/CUB_200_2011/bounding_boxes.txt     <image_id> <x> <y> <width> <height>
    <root>/CUB_200_2011/train_test_split.txt   <image_id> <1 train | 0 test>
    <root>/CUB_200_2011/images/...
    <root>/segmentations/<class_folder>/<file>.png   (optional, separate download)

`root` may also be the CUB_200_2011 folder itself. With crop=True each image is cropped to its box.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from dprotonet_core.data.datasets import ImageDataset, Item, require, split_items

FILES = ("images.txt", "image_class_labels.txt", "classes.txt", "bounding_boxes.txt", "train_test_split.txt")


def _table(path: Path) -> dict[str, list[str]]:
    """A whitespace-separated id -> fields table (the first field is the key)."""
    rows: dict[str, list[str]] = {}
    for line in require(path, "CUB metadata file").read_text().splitlines():
        parts = line.split(maxsplit=1 if path.name in ("images.txt", "classes.txt") else -1)
        if parts:
            rows[parts[0]] = parts[1:]
    return rows


def cub_base(root: Path) -> Path:
    """The folder holding images.txt: root/CUB_200_2011 or root itself."""
    nested = Path(root) / "CUB_200_2011"
    return nested if nested.is_dir() else require(Path(root), "CUB folder")


def cub_classes(base: Path) -> list[str]:
    """Class names in class-id order (ids 1..N)."""
    table = _table(base / "classes.txt")
    return [table[k][0].strip() for k in sorted(table, key=int)]


def cub_items(root: Path, crop: bool = False) -> tuple[list[Item], list[bool], list[str]]:
    """(items, is_train flags, class names) of a CUB folder."""
    base = cub_base(Path(root))
    for name in FILES:
        require(base / name, "CUB metadata file")
    images_dir = require(base / "images", "CUB image folder")
    images, labels = _table(base / "images.txt"), _table(base / "image_class_labels.txt")
    boxes, is_train = _table(base / "bounding_boxes.txt"), _table(base / "train_test_split.txt")
    seg_dir = base.parent / "segmentations"
    items, flags = [], []
    for image_id in sorted(images, key=int):
        rel = images[image_id][0].strip()
        box = tuple(float(v) for v in boxes[image_id])
        mask = seg_dir / Path(rel).with_suffix(".png") if seg_dir.is_dir() else None
        path = require(images_dir / rel, "CUB image")
        items.append(
            Item(
                image_id,
                path,
                int(labels[image_id][0]) - 1,
                boxes=[box],
                mask_path=mask,
                crop=box if crop else None,
            )  # type: ignore[list-item, arg-type]
        )
        flags.append(is_train[image_id][0] == "1")
    return items, flags, cub_classes(base)


def load_cub(
    root: Path | str,
    split: str = "train",
    size: int = 224,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    crop: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
    cache: bool = True,
) -> ImageDataset:
    """CUB-200-2011: 'test' is the official test split; 'train'/'val' split the official training set."""
    items, flags, classes = cub_items(Path(root), crop)
    if split == "test":
        chosen = [it for it, train in zip(items, flags) if not train]
    elif split == "all":
        chosen = items
    else:
        chosen = split_items([it for it, train in zip(items, flags) if train], split, val_fraction, 0.0, seed)
    return ImageDataset(chosen, classes, size, transform, cache=cache, name="cub")
