"""Sampling that takes a shortcut away: view x label balanced draws of the training images.

The RSNA radiographs confound the film's view with the label (78% of the positives of rsna-real + rsna-real-256
are bedside AP films, against 25% of the negatives), so a network rewarded for recognising an AP film scores
well without looking at the lungs. Drawing every (view, label) cell with the same total probability makes view
and label independent in what the network is trained on (and the classes balanced): recognising the view then
predicts nothing. Images whose view is unknown form their own cell per label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch.utils.data import WeightedRandomSampler

BALANCING = ("view_label",)  # TrainConfig.balanced_sampling values (None: uniform shuffling, the paper)


def view_label_weights(views: Sequence[str | None], labels: Sequence[int]) -> list[float]:
    """Per-image draw weights giving every (view, label) cell the same total weight (1 / number of cells); they
    sum to 1. Under these weights P(view, label) = P(view) P(label): the view carries no information on the
    label."""
    if len(views) != len(labels):
        raise ValueError("one view per label")
    cells = [(v or "unknown", int(y)) for v, y in zip(views, labels)]
    counts = Counter(cells)
    return [1.0 / (len(counts) * counts[c]) for c in cells]


def balanced_sampler(views: Sequence[str | None], labels: Sequence[int], generator: torch.Generator,
                     num_samples: int | None = None) -> WeightedRandomSampler:
    """Draws (with replacement) `num_samples` (default: as many as there are images) indices by
    view_label_weights, from `generator` (so a resumed run draws what an unbroken one would)."""
    weights = view_label_weights(views, labels)
    return WeightedRandomSampler(weights, num_samples or len(weights), replacement=True, generator=generator)


def cell_shares(views: Sequence[str | None], labels: Sequence[int], weights: Sequence[float] | None = None) -> dict:
    """Share of each (view, label) cell under `weights` (None: uniform), e.g. to log what the sampler does."""
    weights = list(weights) if weights is not None else [1.0 / max(len(labels), 1)] * len(labels)
    total = sum(weights) or 1.0
    shares: dict[str, float] = {}
    for v, y, w in zip(views, labels, weights):
        key = f"{v or 'unknown'}|{int(y)}"
        shares[key] = shares.get(key, 0.0) + w / total
    return {k: round(s, 4) for k, s in sorted(shares.items())}
