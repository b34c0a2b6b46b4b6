"""Tiny synthetic two-class images for tests and smoke runs (not a stand-in for any dataset).

Class 1 images carry a bright soft disc at a random place; class 0 images do not. Both share
the same background texture and brightness distribution, so only the disc tells them apart,
and its position is a known ground-truth region for localisation tests.
"""

from __future__ import annotations

import numpy as np
import torch


def make_blob_images(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (images (n, 3, size, size) in [0, 1], labels (n,), masks (n, size, size) bool)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, 3, size, size), np.float32)
    masks = np.zeros((n, size, size), bool)
    labels = np.arange(n) % 2
    rng.shuffle(labels)
    for i in range(n):
        base = 0.35 + 0.1 * rng.random() + 0.08 * rng.standard_normal((size, size)).astype(np.float32)
        img = np.repeat(base[None], 3, axis=0)
        if labels[i] == 1:
            r = size * (0.12 + 0.06 * rng.random())
            cy, cx = rng.uniform(r, size - r, 2)
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            blob = np.exp(-d2 / (2 * (r / 1.5) ** 2)).astype(np.float32)
            img = img + 0.5 * blob[None]
            masks[i] = d2 <= r * r
        images[i] = np.clip(img, 0, 1)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(masks)
