"""Shared by train and project: load a dataset's training and validation splits, un-augmented."""

from __future__ import annotations

import argparse

from dprotonet_core.data.datasets import DatasetLayoutError, ImageDataset
from dprotonet_core.data.registry import DATASETS, load_dataset, train_augmentation


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="layout of --data")
    parser.add_argument("--data", required=True, metavar="DIR", action="extend", nargs="+",
                        help="dataset folder; RSNA takes several (--data A --data B), loaded as one dataset")


def data_root(values):
    """--data as the loaders take it: one folder as a str, several as a list of str."""
    values = [str(v) for v in ([values] if isinstance(values, (str, bytes)) else values)]
    return values[0] if len(values) == 1 else values


def load_splits(
    name: str, root: str, size: int, val_fraction: float, seed: int
) -> tuple[ImageDataset, ImageDataset | None]:
    """(train, val) of the loader's splits, both without transform; val is None when the layout
    has no validation part (the trainer then carves one from train)."""
    train = load_dataset(name, root, "train", size, transform=None, seed=seed, val_fraction=val_fraction)
    try:
        val = load_dataset(name, root, "val", size, transform=None, seed=seed, val_fraction=val_fraction)
    except DatasetLayoutError:
        val = None
    if val is not None and len(val) == 0:
        val = None
    return train, val


def augmentation(name: str, size: int, seed: int):
    """The training augmentation of section 4.3, as the dataset's spec defines it (flip or not).

    Unseeded on purpose: it then draws from torch's global generator, which the trainer reseeds
    from (seed, step) at every step, so an interrupted and resumed run draws what an unbroken one
    would. (`seed` is accepted for symmetry and unused.)"""
    del seed
    return train_augmentation(name, size, seed=None)
