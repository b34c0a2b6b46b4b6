"""One entry point for every dataset loader: `load_dataset(name, root, split, size, ...)`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dprotonet_core.data.cars import load_cars
from dprotonet_core.data.cub import load_cub
from dprotonet_core.data.datasets import ImageDataset
from dprotonet_core.data.folder import load_folder
from dprotonet_core.data.palm import load_palm
from dprotonet_core.data.rsna import load_rsna
from dprotonet_core.data.transforms import eval_transform, train_transform

LOADERS: dict[str, Callable[..., ImageDataset]] = {
    "rsna": load_rsna,
    "ichallenge-pm": load_palm,
    "cub": load_cub,
    "cars": load_cars,
    "folder": load_folder,
}
# Horizontal flips are sensible augmentation except for chest radiographs (heart on the left).
HFLIP = {"rsna": False, "ichallenge-pm": True, "cub": True, "cars": True, "folder": False}


def default_transform(name: str, split: str, size: int, seed: int | None = None) -> Callable:
    """Section 4.3 augmentation for 'train', the plain resize otherwise."""
    if split == "train":
        return train_transform(size, seed, hflip=HFLIP.get(name, False))
    return eval_transform(size)


def load_dataset(
    name: str,
    root: Path | str,
    split: str = "train",
    size: int = 224,
    transform: Callable | None | str = "default",
    seed: int = 0,
    **kwargs: Any,
) -> ImageDataset:
    """Load dataset `name` (rsna | ichallenge-pm | cub | cars | folder) from `root`, one split.

    transform="default" picks the augmentation for 'train' and a plain resize otherwise; None gives the
    untransformed images. Other keyword arguments go to the loader (val_fraction, crop, labels_csv, ...).
    """
    key = name.lower().replace("_", "-")
    if key in ("palm", "ichallengepm", "pm"):
        key = "ichallenge-pm"
    if key not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(LOADERS)}")
    if transform == "default":
        transform = default_transform(key, split, size, seed)
    return LOADERS[key](root, split=split, size=size, transform=transform, seed=seed, **kwargs)
