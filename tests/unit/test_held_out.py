"""The one computation of two-class figures (held_out.py), against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from dprotonet_core.evaluate.held_out import binary_figures, figures_by_view


def test_binary_figures_hand_computed() -> None:
    figures = binary_figures(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 1]), np.array([0.9, 0.4, 0.2, 0.6]))
    assert figures["n"] == 4 and figures["positives"] == 2
    assert figures["accuracy"] == 0.5 and figures["sensitivity"] == 0.5 and figures["specificity"] == 0.5
    assert figures["roc_auc"] == pytest.approx(0.75)  # 3 of the 4 positive-negative pairs ranked right


def test_figures_by_view_split_the_items_and_skip_auc_without_both_classes() -> None:
    views = ["AP", "AP", "PA", "PA", None]
    out = figures_by_view(np.array([1, 1, 0, 1, 0]), np.array([1, 0, 0, 1, 0]), np.array([.9, .4, .2, .6, .1]), views)
    assert sorted(out) == ["AP", "PA"]
    assert out["AP"]["n"] == 2 and out["AP"]["roc_auc"] is None and out["AP"]["sensitivity"] == 0.5
    assert out["PA"]["roc_auc"] == 1.0 and out["PA"]["accuracy"] == 1.0
    assert figures_by_view(np.array([1]), np.array([1]), np.array([0.5]), [None]) == {}


def test_the_view_shortcut_auc_by_hand() -> None:
    from dprotonet_core.evaluate.held_out import shortcut_auc

    # positives: AP, AP, PA; negatives: AP, PA, PA, PA. Score 1 for AP.
    # pairs (pos, neg): AP>PA wins, AP=AP ties (1/2), PA=PA ties, PA<AP loses.
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    views = ["AP", "AP", "PA", "AP", "PA", "PA", "PA"]
    # wins: 2 AP positives x 3 PA negatives = 6; ties: 2 x 1 (AP-AP) + 1 x 3 (PA-PA) = 5 -> (6 + 2.5) / 12
    assert shortcut_auc(labels, views) == pytest.approx(8.5 / 12)
    assert shortcut_auc(labels, [None] * 7) is None
    assert shortcut_auc(np.ones(3), ["AP", "PA", "AP"]) is None
