"""Tensor transforms on (C, H, W) float images in [0, 1] (torchvision.transforms.v2).

Training augmentation follows the paper's section 4.3: "each image is rotated, perspective, sheared, and
distorted" (elastic). `train_transform` is the only training augmentation in the code; train, project and
the trainer get it through registry.train_augmentation, which sets `hflip` from the dataset's DatasetSpec
(backbone pretraining on chest films, not a registry dataset, passes hflip=False itself).
DEVIATION (addition): the paper names no flips; a random horizontal flip is added where the spec allows it
(birds, cars, fundus photographs), never for chest radiographs. No mean/std normalisation here: the model
takes [0, 1] pixels and normalises internally.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from dprotonet_core.data.io import resize_square

Transform = Callable[[torch.Tensor], torch.Tensor]


class _ResizeSquare(torch.nn.Module):
    """Resize to (size, size) with the same function uploads go through (bilinear, antialiased)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return resize_square(image.float(), self.size)


class SeededTransform:
    """Run a random transform with its own reproducible random stream, independent of global RNG use.

    Call i (per DataLoader worker) draws from torch.manual_seed(seed, worker, i) inside a forked RNG.
    """

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor], seed: int) -> None:
        self.transform = transform
        self.seed = seed
        self.calls = 0

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        stream = hash((self.seed, worker, self.calls)) & 0x7FFF_FFFF_FFFF
        self.calls += 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream)
            return self.transform(image)


def eval_transform(size: int) -> Transform:
    """Deterministic evaluation transform: float [0, 1], resized to (size, size)."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), _ResizeSquare(size)])


def train_transform(
    size: int, seed: int | None = None, *, hflip: bool, strength: float = 1.0
) -> Transform:
    """Section 4.3 augmentation: rotation, perspective, shear, elastic distortion (+ flip when `hflip`).

    `hflip` has no default: whether mirroring keeps the label is a fact about the dataset, so callers pass
    their DatasetSpec's (registry.train_augmentation does). `strength` scales all magnitudes (1.0 = moderate
    defaults). With `seed`, the sequence of random draws is reproducible; without, it draws from torch's
    global generator.
    """
    steps: list[torch.nn.Module] = [v2.ToDtype(torch.float32, scale=True), _ResizeSquare(size)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps += [
        v2.RandomApply([v2.RandomRotation(degrees=15 * strength)], p=0.5),
        v2.RandomPerspective(distortion_scale=0.2 * strength, p=0.3),
        v2.RandomApply([v2.RandomAffine(degrees=0, shear=(-10 * strength, 10 * strength))], p=0.3),
        v2.RandomApply([v2.ElasticTransform(alpha=30.0 * strength, sigma=5.0)], p=0.3),
        _Clamp01(),
    ]
    transform = v2.Compose(steps)
    return SeededTransform(transform, seed) if seed is not None else transform


class _Clamp01(torch.nn.Module):
    """Keep values in [0, 1] after interpolation."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.clamp(0.0, 1.0)
