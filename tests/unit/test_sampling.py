"""train/sampling.py: view x label balanced draws make view and label independent."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from dprotonet_core.train.sampling import balanced_sampler, cell_shares, view_label_weights


def _confounded():
    # 8 AP positives, 2 PA positives, 3 AP negatives, 12 PA negatives: the view predicts the label
    views = ["AP"] * 8 + ["PA"] * 2 + ["AP"] * 3 + ["PA"] * 12
    labels = [1] * 10 + [0] * 15
    return views, labels


def test_every_view_label_cell_gets_the_same_weight():
    views, labels = _confounded()
    weights = view_label_weights(views, labels)
    assert sum(weights) == pytest.approx(1.0)
    assert cell_shares(views, labels, weights) == {"AP|0": 0.25, "AP|1": 0.25, "PA|0": 0.25, "PA|1": 0.25}
    # under the weights, P(label = 1 | view) is the same for both views: independence
    for view in ("AP", "PA"):
        mass = sum(w for w, v in zip(weights, views) if v == view)
        pos = sum(w for w, v, y in zip(weights, views, labels) if v == view and y == 1)
        assert pos / mass == pytest.approx(0.5)


def test_unknown_view_is_its_own_cell():
    shares = cell_shares([None, None, "AP"], [0, 1, 1], view_label_weights([None, None, "AP"], [0, 1, 1]))
    assert shares == {"AP|1": pytest.approx(1 / 3, abs=1e-4), "unknown|0": pytest.approx(1 / 3, abs=1e-4),
                      "unknown|1": pytest.approx(1 / 3, abs=1e-4)}


def test_the_sampler_draws_the_cells_evenly_and_reproducibly():
    views, labels = _confounded()
    draws = list(balanced_sampler(views, labels, torch.Generator().manual_seed(0), num_samples=8000))
    again = list(balanced_sampler(views, labels, torch.Generator().manual_seed(0), num_samples=8000))
    assert draws == again
    counts = Counter((views[i], labels[i]) for i in draws)
    assert all(abs(n / 8000 - 0.25) < 0.03 for n in counts.values()) and len(counts) == 4


def test_weights_need_one_view_per_label():
    with pytest.raises(ValueError):
        view_label_weights(["AP"], [0, 1])
