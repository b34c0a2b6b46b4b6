"""The paper's metrics on constructed cases whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dprotonet_core.data.datasets import boxes_to_mask
from dprotonet_core.evaluate import metrics as M

SIZE = 16


# --- classification ---------------------------------------------------------------------------


def test_classification_metrics_by_hand():
    y_true = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    y_pred = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 1])
    # TP 3, FN 1, TN 4, FP 2
    assert M.accuracy(y_true, y_pred) == pytest.approx(7 / 10)
    assert M.sensitivity(y_true, y_pred) == pytest.approx(3 / 4)
    assert M.specificity(y_true, y_pred) == pytest.approx(4 / 6)
    np.testing.assert_array_equal(M.confusion_matrix(y_true, y_pred, 2), [[4, 2], [1, 3]])


def test_wilson_interval_by_hand():
    # 75 of 80: p = 0.9375, z^2 = 3.841459, z^2/n = 0.048018; centre (0.9375 + 0.024009) / 1.048018 = 0.917454;
    # half 1.959964 * sqrt(0.9375 * 0.0625 / 80 + 3.841459 / 25600) / 1.048018 = 1.959964 * 0.029707 / 1.048018
    # = 0.055556
    low, high = M.wilson_interval(75, 80)
    assert low == pytest.approx(0.861898, abs=1e-5) and high == pytest.approx(0.973010, abs=1e-5)
    assert M.wilson_interval(10, 10)[1] == pytest.approx(1.0) and M.wilson_interval(10, 10)[0] < 1.0
    assert M.wilson_interval(0, 10)[0] == 0.0 and M.wilson_interval(0, 10)[1] > 0.0
    assert all(math.isnan(v) for v in M.wilson_interval(0, 0))


def test_roc_auc_by_hand():
    y = np.array([0, 0, 1, 1])
    # pairs (pos, neg): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3 of 4
    assert M.roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert M.roc_auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(1.0)
    assert M.roc_auc(y, np.array([0.4, 0.3, 0.2, 0.1])) == pytest.approx(0.0)
    # a tie between a positive and a negative counts one half
    assert M.roc_auc(y, np.array([0.1, 0.5, 0.5, 0.9])) == pytest.approx(3.5 / 4)
    assert math.isnan(M.roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_roc_auc_matches_rank_statistic():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 1)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    expected = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    assert M.roc_auc(y, s) == pytest.approx(expected)


# --- localisation -----------------------------------------------------------------------------


def _half_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[:, : SIZE // 2] = True  # exactly 50% of the pixels
    return mask


def test_perfect_cam_scores_one_and_inverted_zero():
    truth = _half_mask()
    perfect = M.localisation_scores(truth.astype(float), truth, top_percent=50)
    inverted = M.localisation_scores(1.0 - truth, truth, top_percent=50)
    assert perfect == {"DICE": 1.0, "IoU": 1.0, "PPV": 1.0, "Sensitivity": 1.0}
    assert inverted == {"DICE": 0.0, "IoU": 0.0, "PPV": 0.0, "Sensitivity": 0.0}


def test_localisation_by_hand():
    pred = np.zeros((4, 4), bool)
    truth = np.zeros((4, 4), bool)
    pred[0, :3] = True  # 3 pixels
    truth[0, 1:] = True  # 3 pixels; overlap 2 -> TP 2, FP 1, FN 1
    assert M.dice(pred, truth) == pytest.approx(4 / 6)
    assert M.iou(pred, truth) == pytest.approx(2 / 4)
    assert M.ppv(pred, truth) == pytest.approx(2 / 3)
    assert M.localisation_sensitivity(pred, truth) == pytest.approx(2 / 3)


def test_empty_cam_localises_nothing():
    scores = M.localisation_scores(np.zeros((SIZE, SIZE)), _half_mask(), top_percent=50)
    assert scores == {"DICE": 0.0, "IoU": 0.0, "PPV": 0.0, "Sensitivity": 0.0}
    assert math.isnan(M.ppv(np.zeros((2, 2), bool), np.ones((2, 2), bool)))


def test_top_percent_binarisation():
    cam = np.arange(100, dtype=float).reshape(10, 10)
    assert M.binarize_top_percent(cam, 50).sum() == 50
    assert M.binarize_top_percent(cam, 80).sum() == 80
    assert M.binarize_top_percent(cam, 50)[-1].all()
    assert not M.binarize_top_percent(np.zeros((5, 5)), 50).any()  # flat: nothing is "top"


def test_boxes_to_mask():
    # Boxes already in the mask's pixels: original size = output size (the loaders' function, re-exported).
    mask = M.boxes_to_mask([(1, 2, 3, 1)], (5, 6), (5, 6))
    assert mask.shape == (5, 6) and mask.sum() == 3 and mask[2, 1:4].all()
    assert M.boxes_to_mask is boxes_to_mask
    # fractional edges cover every pixel they touch; boxes past the border are clipped
    partial = M.boxes_to_mask([(0.5, 0.5, 1.0, 1.0), (4, 3, 10, 10)], (5, 6), (5, 6))
    assert partial[0:2, 0:2].all() and partial[3:, 4:].all() and partial.sum() == 4 + 4


# --- recognition on a model whose answer is known -------------------------------------------


class RegionModel(nn.Module):
    """P(class 1) = sigmoid(k (mean intensity inside `region` - 0.5)); class 0 the rest."""

    def __init__(self, region: np.ndarray, k: float = 20.0):
        super().__init__()
        self.register_buffer("region", torch.as_tensor(region, dtype=torch.float32))
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = (x.mean(1) * self.region).sum((-2, -1)) / self.region.sum()
        logit = self.k * (inside - 0.5)
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


def _prob_fn(model: nn.Module):
    return lambda images: torch.softmax(model(images), dim=1)


def _region() -> np.ndarray:
    region = np.zeros((SIZE, SIZE), bool)
    region[4:8, 4:8] = True  # 16 of 256 pixels
    return region


def test_oracle_cam_deletes_faster_than_a_random_cam():
    region = _region()
    prob = _prob_fn(RegionModel(region))
    image = torch.zeros(3, SIZE, SIZE)
    image[:, torch.as_tensor(region)] = 1.0
    rng = np.random.default_rng(0)
    oracle = region + 0.01 * rng.random(region.shape)
    randoms = [rng.random(region.shape) for _ in range(5)]
    d_oracle = M.deletion(prob, image, oracle, 1, step_fraction=1 / 64, batch_size=16)
    d_random = np.mean([M.deletion(prob, image, r, 1, step_fraction=1 / 64, batch_size=16) for r in randoms])
    assert d_oracle < 0.1 < 0.3 < d_random
    i_oracle = M.insertion(prob, image, oracle, 1, step_fraction=1 / 64, batch_size=16)
    i_random = np.mean([M.insertion(prob, image, r, 1, step_fraction=1 / 64, batch_size=16) for r in randoms])
    assert i_oracle > 0.9 and i_random < i_oracle - 0.2


def test_deletion_curve_shape_and_batches():
    region = _region()
    prob = _prob_fn(RegionModel(region))
    image = torch.rand(3, SIZE, SIZE)
    cam = np.random.default_rng(1).random((SIZE, SIZE))
    f1, p1 = M.deletion_curve(prob, image, cam, 1, step_fraction=1 / 16, batch_size=3)
    f2, p2 = M.deletion_curve(prob, image, cam, 1, step_fraction=1 / 16, batch_size=100)
    np.testing.assert_allclose(p1, p2, atol=1e-6)
    assert f1[0] == 0 and f1[-1] == 1 and len(f1) == 17
    assert p1[0] == pytest.approx(float(prob(image[None])[0, 1]))
    assert p1[-1] == pytest.approx(float(prob(torch.zeros(1, 3, SIZE, SIZE))[0, 1]))


def test_average_drop_and_increase_by_hand():
    assert M.average_drop([0.8, 0.5], [0.4, 0.6]) == pytest.approx(100 * (0.5 + 0) / 2)
    assert M.average_increase([0.8, 0.5], [0.4, 0.6]) == pytest.approx(50.0)


def test_average_drop_on_the_region_model():
    """Keeping the region keeps the answer (AD 0); removing it drops P to sigmoid(-10)."""
    region = _region()
    prob = _prob_fn(RegionModel(region))
    image = torch.ones(3, SIZE, SIZE)
    y = float(prob(image[None])[0, 1])  # sigmoid(20 * 0.5) = sigmoid(10)
    oracle = region.astype(float) + 0.001 * np.random.default_rng(0).random(region.shape)
    inverted = 1.0 - region
    kept = M.explained_map(image, oracle, keep_percent=50)
    removed = M.explained_map(image, inverted, keep_percent=50)
    o_kept, o_removed = (float(prob(e[None])[0, 1]) for e in (kept, removed))
    assert M.average_drop([y], [o_kept]) == pytest.approx(0.0, abs=1e-6)
    expected = 100 * (y - 1 / (1 + math.exp(10))) / y
    assert M.average_drop([y], [o_removed]) == pytest.approx(expected, rel=1e-5)
    assert M.average_increase([y, y], [o_kept, o_removed]) == 0.0


def test_explained_map_forms():
    image = torch.ones(3, 4, 4)
    cam = np.linspace(0, 1, 16).reshape(4, 4)
    kept = M.explained_map(image, cam, 25)
    assert int(kept[0].sum()) == 4
    np.testing.assert_allclose(M.explained_map(image, cam, 25, "multiply")[0].numpy(), cam, atol=1e-6)
    with pytest.raises(ValueError):
        M.explained_map(image, cam, 25, "other")


def test_mask_agreement_pearson_and_top20_iou():
    from dprotonet_core.evaluate.metrics import mask_agreement

    ramp = np.arange(100, dtype=float).reshape(1, 10, 10)
    assert mask_agreement(ramp, 3 * ramp + 1) == (pytest.approx(1.0), 1.0)  # same order, any scale
    r, iou_20 = mask_agreement(ramp, -ramp)
    assert r == pytest.approx(-1.0) and iou_20 == 0.0  # top 20% of one is the bottom of the other
    # rolled by 10 pixels: its top 20 sit at positions 90..99 and 0..9, the ramp's at 80..99: IoU 10 / 30
    assert mask_agreement(ramp, np.roll(ramp, 10))[1] == pytest.approx(1 / 3)
    flat = np.ones((1, 10, 10))  # constant maps: no top region (strict threshold), r by equality
    r, iou_flat = mask_agreement(flat, flat)
    assert r == 1.0 and math.isnan(iou_flat) and mask_agreement(flat, 2 * flat)[0] == 0.0


def test_choose_threshold_by_hand() -> None:
    from dprotonet_core.evaluate.metrics import choose_threshold

    y = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.9])
    # candidates >= 0.9: J = 0.5 - 0 = 0.5; >= 0.6: 0.5 - 0.25 = 0.25; >= 0.4: 1 - 0.25 = 0.75 (best);
    # >= 0.3: 1 - 0.5. Best at 0.4, placed midway to the next lower score 0.3.
    assert choose_threshold(y, scores, "youden") == pytest.approx(0.35)
    # accuracy: >= 0.9 -> 5/6, >= 0.4 -> 5/6 (tie: the higher threshold wins) -> midway 0.9 / 0.6
    assert choose_threshold(y, scores, "accuracy") == pytest.approx(0.75)
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.ones(3), np.ones(3))


def test_auc_interval_hanley_mcneil_by_hand() -> None:
    from dprotonet_core.evaluate.metrics import auc_interval

    # A = 0.8, 60 positives, 180 negatives: Q1 = 0.8 / 1.2 = 0.6667, Q2 = 1.28 / 1.8 = 0.7111
    # SE^2 = (0.16 + 59 * 0.02667 + 179 * 0.07111) / 10800 = (0.16 + 1.5733 + 12.7289) / 10800 = 0.0013391
    low, high = auc_interval(0.8, 60, 180)
    half = 1.959964 * 0.0013391 ** 0.5
    assert (low, high) == pytest.approx((0.8 - half, 0.8 + half), abs=2e-4)
    assert auc_interval(1.0, 5, 5) == (1.0, 1.0)
    with pytest.raises(ValueError):
        auc_interval(0.7, 0, 10)


def test_threshold_for_the_highest_accuracy_that_keeps_a_sensitivity():
    from dprotonet_core.evaluate.metrics import choose_threshold

    # scores high -> low with labels: 0.9 P, 0.8 N, 0.7 N, 0.6 P, 0.5 N, 0.4 N, 0.3 P, 0.2 N
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    y = np.array([1, 0, 0, 1, 0, 0, 1, 0])
    # plain accuracy is best at >= 0.9 (1 TP, 5 TN: 6/8) with sensitivity 1/3; keeping sensitivity >= 0.5 needs
    # >= 0.6 (2 TP, 3 TN: 5/8); midway to the next lower score 0.5 -> 0.55
    assert choose_threshold(y, scores, "accuracy") == pytest.approx(0.85)
    assert choose_threshold(y, scores, "accuracy_at_sensitivity", min_sensitivity=0.5) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="unknown threshold rule"):
        choose_threshold(y, scores, "f1")


def test_pixel_order_breaks_ties_without_position_bias():
    from dprotonet_core.evaluate.metrics import pixel_order

    cam = np.zeros((56, 56))
    cam[40:44, 40:44] = 1.0  # 16 salient pixels, the other 3,120 tied at 0
    order = pixel_order(cam)
    assert sorted(order.tolist()) == list(range(56 * 56))
    assert set(order[:16].tolist()) == set(np.flatnonzero(cam.ravel()).tolist())  # the salient block first
    rows = order[16:16 + 780] // 56  # the first quarter of the tie: raster order would take rows 0-13 only
    assert 20 < rows.mean() < 35 and rows.max() > 40
    assert np.array_equal(order, pixel_order(cam))  # the same order every time (fixed seed)
    assert not np.array_equal(order, pixel_order(cam, seed=1))
