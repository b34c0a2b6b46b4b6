"""The images an evaluation runs on: one split of a dataset, with labels and ground truth.

`--split val` means the checkpoint's own held-out images: the ids its card lists under
training_data.split.val_ids, looked up in the whole dataset, so evaluation never sees a training
image even when the trainer split the data itself. `test` and `all` are the loader's splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dprotonet_core.data.registry import load_dataset


@dataclass
class EvalData:
    """Indices `indices` of `dataset` (items (image (3, S, S) in [0, 1], label))."""

    dataset: Dataset
    indices: list[int]
    name: str
    root: str
    split: str
    classes: list[str]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, k: int) -> torch.Tensor:
        """Image k of the split, (3, S, S) in [0, 1]."""
        return self.dataset[self.indices[k]][0]

    def label(self, k: int) -> int:
        return int(self.dataset[self.indices[k]][1])

    def labels(self) -> np.ndarray:
        """All labels of the split, without decoding images when the dataset lists them."""
        listed = getattr(self.dataset, "labels", None)
        if listed is not None:
            return np.asarray([listed[i] for i in self.indices], dtype=np.int64)
        return np.asarray([self.label(k) for k in range(len(self))], dtype=np.int64)

    def item_id(self, k: int) -> str:
        ids = getattr(self.dataset, "ids", None)
        return str(ids[self.indices[k]]) if ids is not None else str(self.indices[k])

    def attribute(self, k: int, name: str) -> str | None:
        """An item attribute of image k (e.g. "view" of a radiograph), None when the dataset has none."""
        items = getattr(self.dataset, "items", None)
        if items is None:
            return None
        return getattr(items[self.indices[k]], "attributes", {}).get(name)

    def has_ground_truth(self, k: int) -> bool:
        check = getattr(self.dataset, "has_ground_truth", None)
        return bool(check(self.indices[k])) if check is not None else False

    def mask(self, k: int) -> np.ndarray | None:
        """Ground-truth mask (S, S) bool (boxes are filled in), or None when the item has none."""
        getter = getattr(self.dataset, "mask", None)
        if getter is None:
            return None
        mask = getter(self.indices[k])
        return None if mask is None else np.asarray(mask, bool)


def held_out_ids(card: dict) -> list[str]:
    """The validation ids the checkpoint's card lists (empty when it lists none)."""
    split = (card.get("training_data") or {}).get("split") or {}
    return [str(i) for i in split.get("val_ids") or []]


def _split_options(card: dict) -> dict:
    """The seed and validation fraction the checkpoint was trained with, so the loader's splits
    are the trainer's splits."""
    options = {"seed": int(card.get("seed", 0))}
    split = (card.get("training_data") or {}).get("split") or {}
    for key in ("val_fraction", "test_fraction"):  # test_fraction: a held-out test split (make-demo's cards)
        if split.get(key) is not None:
            options[key] = float(split[key])
    return options


def trained_on_every_image(card: dict) -> bool:
    """The card says the checkpoint trained on every image of its dataset (no validation, no test split)."""
    split = (card.get("training_data") or {}).get("split") or {}
    return split.get("val_fraction") == 0 and not split.get("test_fraction") and "val_fraction" in split


def load_eval_data(name: str, root: str | Path, split: str, size: int, card: dict) -> EvalData:
    """The evaluation split of dataset `name` at `root`, images at `size` x `size` px."""
    notes: list[str] = []
    options = _split_options(card)
    if trained_on_every_image(card):
        if split != "all":
            raise ValueError(f"this checkpoint was trained on every image of its dataset (no {split!r} split is held "
                             "out): evaluate it on other images with --split all, or on its training images with "
                             "--split all and say so")
        notes.append("the checkpoint was trained on every image of its dataset: if these are those images, the "
                     "figures are on training images")
    if split == "val" and held_out_ids(card):
        dataset = load_dataset(name, root, split="all", size=size, transform=None, **options)
        wanted = set(held_out_ids(card))
        ids = [str(i) for i in getattr(dataset, "ids", [])]
        indices = [i for i, item_id in enumerate(ids) if item_id in wanted]
        if indices:
            notes.append(f"split 'val' = the {len(indices)} held-out ids listed in the checkpoint's card")
            return _checked(EvalData(dataset, indices, name, str(root), split, list(dataset.classes), notes), card)
        notes.append("the card's held-out ids are not in this dataset; using the loader's 'val' split instead")
    dataset = load_dataset(name, root, split=split, size=size, transform=None, **options)
    everything = list(range(len(dataset)))
    return _checked(EvalData(dataset, everything, name, str(root), split, list(dataset.classes), notes), card)


def _checked(data: EvalData, card: dict) -> EvalData:
    """Refuse a dataset with more classes than the model; note differing class names."""
    model_classes = [str(c) for c in card.get("classes", [])]
    if model_classes and len(data.classes) > len(model_classes):
        raise ValueError(
            f"the dataset has {len(data.classes)} classes {data.classes}, the checkpoint {len(model_classes)}"
        )
    if model_classes and [c.lower() for c in data.classes] != [c.lower() for c in model_classes]:
        data.notes.append(
            f"class names differ: dataset {data.classes}, checkpoint {model_classes}; labels are matched by index"
        )
    if not len(data):
        raise ValueError(f"split {data.split!r} of {data.root} holds no images")
    return data
