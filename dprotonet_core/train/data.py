"""The trainer's view of data: a stratified validation split carved from the training data,
and datasets that apply the training augmentation on the fly.

The trainer takes any torch Dataset of (image (3, S, S) float in [0, 1], label int); a
dataset may expose `labels` (avoids reading every image to stratify), `classes` (names) and
`ids` (stable image ids for the prototype records).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from dprotonet_core.train.projection import dataset_ids, dataset_labels

Transform = Callable[[torch.Tensor], torch.Tensor]


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, val indices): `val_fraction` of each class (at least one image of a class
    with two or more) goes to validation, drawn by a seeded generator. Sorted, so the split
    depends only on the labels, the fraction and the seed."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in sorted(set(int(v) for v in labels)):
        members = [i for i, v in enumerate(labels) if int(v) == c]
        order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        n_val = round(len(members) * val_fraction)
        if val_fraction > 0 and n_val == 0 and len(members) >= 2:
            n_val = 1
        val += order[:n_val]
        train += order[n_val:]
    return sorted(train), sorted(val)


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


def paper_augmentation(size: int) -> Transform:
    """Section 4.3: "rotated, perspective, sheared, and distorted" (torchvision transforms v2).

    Used when the data package's `train_transform` is not available; works on (3, S, S)
    float tensors and keeps the size.
    """
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomRotation(15),
            v2.RandomPerspective(distortion_scale=0.2, p=0.5),
            v2.RandomAffine(degrees=0, shear=10),
            v2.RandomApply([v2.ElasticTransform(alpha=20.0, sigma=5.0)], p=0.3),
            v2.RandomHorizontalFlip(),
        ]
    )
