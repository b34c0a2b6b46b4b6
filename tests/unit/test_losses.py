"""Eq. 4-7 by hand, and the separation sign (the loss falls as other-class prototypes move away)."""

from __future__ import annotations

import math

import pytest
import torch

from dprotonet_core.config import LossConfig
from dprotonet_core.model.dprotonet import class_identity
from dprotonet_core.train.losses import (
    cluster_cost,
    cross_entropy_term,
    last_layer_l1,
    separation_cost,
    total_loss,
)

# 2 classes x 2 prototypes: p0, p1 of class 0; p2, p3 of class 1.
IDENTITY = class_identity(2, 2)
# s for 2 images, 2 masks, 4 prototypes
S = torch.tensor(
    [
        [[4.0, 9.0, 1.0, 7.0], [2.0, 5.0, 3.0, 6.0]],  # image 0; per-prototype min over masks: [2, 5, 1, 6]
        [[8.0, 3.0, 0.5, 2.5], [6.0, 1.0, 4.0, 0.2]],  # image 1; min: [6, 1, 0.5, 0.2]
    ]
)
Y = torch.tensor([0, 1])


def test_eq5_cluster_cost_by_hand():
    # image 0 (class 0): min(2, 5) = 2; image 1 (class 1): min(0.5, 0.2) = 0.2
    assert float(cluster_cost(S, Y, IDENTITY)) == pytest.approx((2 + 0.2) / 2)


def test_eq6_separation_cost_by_hand_with_printed_minus():
    # image 0: other-class min(1, 6) = 1; image 1: min(6, 1) = 1
    assert float(separation_cost(S, Y, IDENTITY)) == pytest.approx(-(1 + 1) / 2)


def test_eq7_l1_off_class_only():
    w = torch.tensor([[1.0, 2.0, -3.0, 0.5], [-0.25, 4.0, 1.0, 1.0]])
    # class 0's off-class prototypes are 2, 3; class 1's are 0, 1
    assert float(last_layer_l1(w, IDENTITY)) == pytest.approx(3 + 0.5 + 0.25 + 4)


def test_eq4_total_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    w = torch.tensor([[1.0, 1.0, -0.5, -0.5], [-0.5, -0.5, 1.0, 1.0]])
    cfg = LossConfig(lambda_clst=0.8, lambda_sep=0.08, lambda_l1=1e-4)
    ce = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    expected = ce + 0.8 * 1.1 + 0.08 * (-1.0) + 1e-4 * 2.0
    parts = total_loss(logits, S, Y, IDENTITY, w, cfg)
    assert float(parts.cross_entropy) == pytest.approx(ce, rel=1e-6)
    assert float(cross_entropy_term(logits, Y)) == pytest.approx(ce, rel=1e-6)
    assert float(parts.total) == pytest.approx(expected, rel=1e-6)
    assert set(parts.as_floats()) == {"loss", "cross_entropy", "cluster", "separation", "l1"}


def test_separation_sign_loss_falls_as_other_class_prototypes_move_away():
    cfg = LossConfig()
    assert cfg.lambda_sep > 0  # see the sign note in config.py
    logits = torch.zeros(2, 2)
    w = torch.zeros(2, 4)
    losses = []
    for far in (1.0, 2.0, 4.0):
        s = S.clone()
        s[0, :, 2:] = far  # image 0's other-class prototypes at distance `far`
        s[1, :, :2] = far  # image 1's other-class prototypes at distance `far`
        losses.append(float(total_loss(logits, s, Y, IDENTITY, w, cfg).total))
    assert losses[0] > losses[1] > losses[2]


def test_cluster_and_separation_gradients_point_the_right_way():
    s = S.clone().requires_grad_(True)
    (cluster_cost(s, Y, IDENTITY) + separation_cost(s, Y, IDENTITY)).backward()
    # own-class nearest distance is pushed down (positive gradient), other-class nearest up (negative)
    assert s.grad[0, 1, 0] > 0 and s.grad[0, 0, 2] < 0


def test_weighted_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    per_image = [math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(-1.0)), math.log(2.0)]
    weights = (1.0, 3.0)
    expected = (1 * per_image[0] + 3 * per_image[1] + 3 * per_image[2]) / (1 + 3 + 3)  # torch's weighted mean
    assert float(cross_entropy_term(logits, labels, class_weights=weights)) == pytest.approx(expected, rel=1e-6)
    assert float(cross_entropy_term(logits, labels)) == pytest.approx(sum(per_image) / 3, rel=1e-6)
