"""calibration.py: Platt scaling recovers a known curve; ECE and the reliability bins by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dprotonet_core.calibration import (
    calibrated_probability,
    calibration_figures,
    describe,
    expected_calibration_error,
    fit_platt,
    logit_difference,
    reliability_bins,
)


def test_platt_recovers_the_slope_and_intercept_that_made_the_labels():
    rng = np.random.default_rng(0)
    m = rng.normal(0, 2, 40_000)
    y = rng.random(m.size) < 1 / (1 + np.exp(-(0.4 * m - 1.2)))
    record = fit_platt(m, y, "synthetic")
    assert record["slope"] == pytest.approx(0.4, abs=0.02) and record["intercept"] == pytest.approx(-1.2, abs=0.04)
    assert record["images"] == m.size and record["fitted_on"] == "synthetic"
    p = calibrated_probability(m, record)
    assert expected_calibration_error(p, y) < 0.01  # calibrated on its own data
    assert expected_calibration_error(1 / (1 + np.exp(-m)), y) > 0.1  # the raw sigmoid(m) is not


def test_platt_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        fit_platt(np.array([0.1, 0.2]), np.array([1, 1]))


def test_no_record_is_the_softmax():
    assert calibrated_probability(0.0, None) == pytest.approx(0.5)
    assert calibrated_probability(np.log(3.0), None) == pytest.approx(0.75)
    assert "not calibrated" in describe(None) and "Platt" in describe({"slope": 1, "intercept": 0})


def test_logit_difference_is_class_one_minus_class_zero():
    assert logit_difference(np.array([[1.0, 3.0], [2.0, -1.0]])).tolist() == [2.0, -3.0]
    with pytest.raises(ValueError):
        logit_difference(np.zeros((2, 3)))


def test_ece_and_bins_by_hand():
    # bin [0.1, 0.2): p 0.15, 0.15, observed 1 of 2 -> |0.5 - 0.15| = 0.35, weight 2/4
    # bin [0.9, 1.0]: p 0.95, 1.0 (1.0 goes to the last bin), observed 2 of 2 -> |1 - 0.975| = 0.025, weight 2/4
    p = np.array([0.15, 0.15, 0.95, 1.0])
    y = np.array([0, 1, 1, 1])
    bins = reliability_bins(p, y)
    assert [b["n"] for b in bins] == [0, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert bins[1]["mean_predicted"] == pytest.approx(0.15) and bins[1]["observed"] == pytest.approx(0.5)
    assert bins[0]["observed"] is None
    assert expected_calibration_error(p, y) == pytest.approx(0.5 * 0.35 + 0.5 * 0.025)
    figures = calibration_figures(p, y)
    assert figures["images"] == 4 and figures["bins"] == 10 and len(figures["reliability"]) == 10
