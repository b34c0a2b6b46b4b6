"""iChallenge-PM / PALM (pathologic myopia), in the layout of the PALM release.

Training images are named by class: P*.jpg pathologic myopia (class 1, "PM"), N*.jpg normal and H*.jpg
high myopia without PM (class 0, "non-PM"). Validation/test images (V*.jpg, T*.jpg) take their label from
a CSV with columns ID,imgName,Label,... (Label 1 = PM). Optional masks, as in the release: a lesion-mask
folder (e.g. Lesion_Masks/Atrophy) and a disc-mask folder (Disc_Masks), one BMP per image named like it,
lesion pixels black (0) on white. An image without a mask file in a given mask folder has no lesion.
"""

from __future__ import annotations

import csv
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

CLASSES = ["non-PM", "PM"]
_PREFIX_LABELS = {"P": 1, "N": 0, "H": 0}
_MASK_SUFFIXES = (".bmp", ".png", ".jpg", ".tif")


def read_label_csv(csv_path: Path) -> dict[str, int]:
    """imgName -> Label (0/1) from a PALM labels CSV (columns ID,imgName,Label,...)."""
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "imgName" not in reader.fieldnames or "Label" not in reader.fieldnames:
            raise DatasetLayoutError(f"{csv_path} lacks the imgName and Label columns")
        return {row["imgName"].strip(): int(float(row["Label"])) for row in reader if row["imgName"].strip()}


def label_from_name(name: str) -> int | None:
    """Class index from a training file name (P -> 1, N/H -> 0); None for other names."""
    return _PREFIX_LABELS.get(name[:1].upper())


def _find_mask(folder: Path | None, stem: str) -> Path | None:
    """The mask file for `stem` in `folder` (any common suffix); a path that may not exist when absent."""
    if folder is None:
        return None
    for suffix in _MASK_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return folder / f"{stem}.bmp"


def palm_items(image_dir: Path, labels_csv: Path | None = None, mask_dir: Path | None = None) -> list[Item]:
    """Items of a PALM image folder; labels from names, or from `labels_csv` when given."""
    image_dir = require(Path(image_dir), "PALM image folder")
    csv_labels = read_label_csv(require(Path(labels_csv), "PALM labels CSV")) if labels_csv else None
    if mask_dir is not None:
        require(Path(mask_dir), "PALM mask folder")
    items = []
    for path in list_images(image_dir):
        label = csv_labels.get(path.name) if csv_labels is not None else label_from_name(path.name)
        if label is None:
            continue
        mask = _find_mask(Path(mask_dir) if mask_dir else None, path.stem)
        items.append(Item(id=path.stem, path=path, label=label, mask_path=mask, mask_is_dark=True))
    if csv_labels is not None:
        listed = {it.path.name for it in items}
        missing = sorted(set(csv_labels) - listed)
        if missing:
            raise DatasetLayoutError(
                f"missing {len(missing)} image(s) listed in the CSV, e.g. {image_dir / missing[0]}"
            )
    if not items:
        raise DatasetLayoutError(f"no labelled PALM images (P*/N*/H*.jpg or CSV-listed) in {image_dir}")
    return items


def load_palm(
    root: Path | str,
    split: str = "all",
    size: int = 224,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    labels_csv: Path | str | None = None,
    mask_dir: Path | str | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    cache: bool = True,
) -> ImageDataset:
    """The iChallenge-PM dataset (classes ["non-PM", "PM"]); stratified splits of the given folder."""
    items = palm_items(Path(root), Path(labels_csv) if labels_csv else None, Path(mask_dir) if mask_dir else None)
    items = split_items(items, split, val_fraction, test_fraction, seed)
    return ImageDataset(items, CLASSES, size, transform, cache=cache, name="ichallenge-pm")
