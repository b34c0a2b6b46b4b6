"""The trainer's view of data: datasets that apply the training augmentation on the fly.

The stratified split the trainer carves a validation part with is data.datasets.stratified_split (the
one the loaders split with, so a carved split and a loader's split agree), and the augmentation is
data.registry.train_augmentation; neither is redefined here.

The trainer takes any torch Dataset of (image (3, S, S) float in [0, 1], label int); a
dataset may expose `labels` (avoids reading every image to stratify), `classes` (names) and
`ids` (stable image ids for the prototype records).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from dprotonet_core.data.transforms import Transform
from dprotonet_core.train.projection import dataset_ids, dataset_labels


class SubsetView(Dataset):
    """Items `indices` of `base`, optionally augmented; keeps `labels` and `ids` for the trainer."""

    def __init__(self, base: Dataset, indices: Sequence[int], transform: Transform | None = None,
                 labels: Sequence[int] | None = None, ids: Sequence[str] | None = None):
        self.base = base
        self.indices = list(indices)
        self.transform = transform
        all_labels = list(labels) if labels is not None else dataset_labels(base)
        all_ids = list(ids) if ids is not None else dataset_ids(base)
        self.labels = [all_labels[i] for i in self.indices]
        self.ids = [all_ids[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[self.indices[i]][:2]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(label)

    def with_transform(self, transform: Transform | None) -> SubsetView:
        """The same items with another transform (e.g. none, for projection and validation)."""
        view = copy.copy(self)
        view.transform = transform
        return view


class TensorImages(Dataset):
    """Images (N, 3, S, S) in [0, 1] and labels (N,) as a Dataset (tests, synthetic data)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] | None = None,
                 ids: Sequence[str] | None = None):
        self.images = images
        self.labels = [int(v) for v in labels]
        n_classes = max(self.labels) + 1 if self.labels else 0
        self.classes = list(classes) if classes is not None else [f"class {i}" for i in range(n_classes)]
        self.ids = list(ids) if ids is not None else [f"image_{i:05d}" for i in range(len(self.labels))]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], self.labels[i]


def attribute_values(dataset: Dataset, key: str) -> list[str | None]:
    """Item attribute `key` (e.g. "view") of every index of `dataset` (an ImageDataset, or a SubsetView of one);
    None where an item has no such attribute or the dataset carries no items."""
    if isinstance(dataset, SubsetView):
        base = attribute_values(dataset.base, key)
        return [base[i] for i in dataset.indices] if base else [None] * len(dataset)
    items = getattr(dataset, "items", None)
    if items is None:
        return [None] * len(dataset)
    return [getattr(it, "attributes", {}).get(key) for it in items]
