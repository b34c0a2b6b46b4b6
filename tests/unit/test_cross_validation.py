"""K-fold cross-validation (train/cross_validation.py): folds, per-epoch curves, mean and spread, resumable runs."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections import Counter

import numpy as np
import pytest

from dprotonet_core.train.cross_validation import (
    FoldFigures,
    by_epoch,
    card_record,
    mean_sd,
    run_folds,
    stratified_folds,
    summarise,
)


def test_folds_are_disjoint_cover_everything_and_keep_each_keys_share():
    keys = ["1|P"] * 213 + ["0|N"] * 140 + ["0|H"] * 47  # PALM's 400: P, N, H
    folds = stratified_folds(keys, 5, seed=0)
    assert len(folds) == 5
    flat = [i for f in folds for i in f]
    assert sorted(flat) == list(range(400))  # disjoint and covering
    for key, total in Counter(keys).items():
        shares = [sum(keys[i] == key for i in f) for f in folds]
        assert max(shares) - min(shares) <= 1, (key, shares)
        assert sum(shares) == total
    assert max(len(f) for f in folds) - min(len(f) for f in folds) <= 1
    assert stratified_folds(keys, 5, seed=0) == folds  # deterministic
    assert stratified_folds(keys, 5, seed=1) != folds
    with pytest.raises(ValueError):
        stratified_folds(keys, 1)
    with pytest.raises(ValueError):
        stratified_folds(["a", "b"], 3)


def test_by_epoch_reads_projected_states_and_baseline_epochs():
    log = [
        {"phase": "warm", "epoch": 1, "val_accuracy": 0.5, "projected": False},
        {"phase": "push", "epoch": 10, "val_accuracy": 0.8, "projected": True},
        {"phase": "last_layer", "epoch": 10, "val_accuracy": 0.85, "projected": True},  # later entry wins
        {"phase": "joint", "epoch": 11, "val_accuracy": 0.9, "projected": True},
        {"phase": "baseline", "epoch": 1, "val_accuracy": 0.6},
        {"phase": "baseline", "epoch": 2, "val_accuracy": 0.7},
    ]
    assert by_epoch(log) == {10: 0.85, 11: 0.9}
    assert by_epoch(log, "baseline") == {1: 0.6, 2: 0.7}


def _fold(k, d_acc, b_acc, d_curve, b_curve):
    return FoldFigures(fold=k, train_images=8, val_images=2,
                       dprotonet={"accuracy": d_acc, "sensitivity": 1.0, "specificity": d_acc, "selected_epoch": 2},
                       baseline={"accuracy": b_acc, "sensitivity": 0.5, "specificity": b_acc},
                       dprotonet_by_epoch=d_curve, baseline_by_epoch=b_curve, seconds=1.0)


def test_summary_is_mean_and_sample_sd_over_folds_and_the_best_common_epoch():
    folds = [_fold(0, 0.9, 1.0, {1: 0.5, 2: 0.9}, {1: 0.7, 2: 1.0}),
             _fold(1, 0.7, 0.8, {1: 0.6, 2: 0.7, 3: 0.99}, {1: 0.9, 2: 0.8})]
    s = summarise(folds)
    acc = s["dprotonet"]["selected_in_fold"]["accuracy"]
    assert acc["mean"] == pytest.approx(0.8) and acc["sd"] == pytest.approx(statistics.stdev([0.9, 0.7]))
    assert acc["min"] == 0.7 and acc["max"] == 0.9 and acc["n"] == 2
    # epoch 3 is reached by one fold only: only epochs every fold reached count
    assert set(s["dprotonet"]["accuracy_by_epoch"]) == {1, 2}
    assert s["dprotonet"]["best_fixed_epoch"] == 2  # mean 0.8 against 0.55
    assert s["baseline"]["best_fixed_epoch"] == 2  # 0.9 against 0.8
    assert s["dprotonet_minus_baseline_accuracy"] == pytest.approx(0.8 - 0.9)
    # paired at the same epoch of the same fold: epoch 1: 0.5 - 0.7, 0.6 - 0.9; epoch 2: 0.9 - 1.0, 0.7 - 0.8
    paired = s["dprotonet_minus_baseline_by_epoch"]
    assert set(paired) == {1, 2}
    assert paired[1]["mean"] == pytest.approx(-0.25) and paired[2]["mean"] == pytest.approx(-0.1)
    assert paired[2]["sd"] == pytest.approx(0.0, abs=1e-12)
    assert s["dprotonet_minus_baseline_at_last_epoch"] == paired[2]
    assert mean_sd([0.5])["sd"] == 0.0


def test_run_folds_stores_each_fold_and_a_later_run_only_adds_missing_ones(tmp_path):
    keys = [0, 1] * 10
    calls = []

    def train_fold(fold, train, val, folder):
        calls.append(fold)
        assert not set(train) & set(val) and len(train) + len(val) == 20
        assert folder.name == f"fold-{fold}"
        return _fold(fold, 0.5 + 0.1 * fold, 0.5, {1: 0.5}, {1: 0.5})

    first = run_folds(20, keys, 4, 0, tmp_path, train_fold, only=[0, 2])
    assert calls == [0, 2] and first["folds_done"] == [0, 2]
    second = run_folds(20, keys, 4, 0, tmp_path, train_fold)  # 0 and 2 are stored: only 1 and 3 train
    assert calls == [0, 2, 1, 3] and second["folds_done"] == [0, 1, 2, 3]
    assert second["dprotonet"]["selected_in_fold"]["accuracy"]["mean"] == pytest.approx(0.65)
    assert json.loads((tmp_path / "summary.json").read_text())["folds_done"] == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        run_folds(19, keys, 4, 0, tmp_path, train_fold)


def test_card_record_carries_both_models_figures_and_refuses_another_recipe_or_missing_folds(tmp_path):
    import dataclasses

    from dprotonet_core.commands.make_demo import DemoPlan

    plan = dataclasses.asdict(DemoPlan("ichallenge-pm", "ichallenge-pm"))

    def train_fold(fold, train, val, folder):
        return _fold(fold, 0.9 + 0.02 * fold, 0.95, {10: 0.9, 20: 0.92}, {10: 0.95})

    summary = run_folds(20, [0, 1] * 10, 3, 0, tmp_path, train_fold, only=[0, 1])
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "plan": plan}))
    with pytest.raises(ValueError, match=r"folds \[0, 1\] of 3"):
        card_record(tmp_path, plan)
    summary = run_folds(20, [0, 1] * 10, 3, 0, tmp_path, train_fold)
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "plan": plan}))
    record = card_record(tmp_path, plan)
    assert record["k"] == 3 and record["images"] == 20 and record["recipe"]["epochs"] == plan["epochs"]
    assert record["dprotonet"]["selected_in_fold"]["accuracy"]["mean"] == pytest.approx(0.92)
    assert record["baseline"]["best_fixed_epoch"] == 10
    assert record["dprotonet_minus_baseline_accuracy"] == pytest.approx(0.92 - 0.95)
    assert record["dprotonet_minus_baseline_at_last_epoch"]["mean"] == pytest.approx(0.9 - 0.95)  # epoch 10
    with pytest.raises(ValueError, match="epochs"):
        card_record(tmp_path, {**plan, "epochs": 70})


def test_last_state_figures_fill_only_stored_folds_without_them(tmp_path):
    from dprotonet_core.train.cross_validation import fill_missing, load_figures

    def train_fold(fold, train, val, folder):
        return _fold(fold, 0.9, 0.95, {10: 0.9}, {10: 0.95})

    run_folds(20, [0, 1] * 10, 2, 0, tmp_path, train_fold, only=[0])
    seen = []

    def measure(folder, val):
        seen.append((folder.name, len(val)))
        return {"accuracy": 0.8, "sensitivity": 0.7, "specificity": 0.9, "images": len(val)}

    assert fill_missing(tmp_path, 2, "dprotonet_last", measure) == [0]  # fold 1 is not stored: nothing to measure
    assert seen == [("fold-0", 10)]
    assert load_figures(tmp_path / "fold-0" / "figures.json").dprotonet_last["sensitivity"] == 0.7
    assert fill_missing(tmp_path, 2, "dprotonet_last", measure) == []  # filled once
    summary = run_folds(20, [0, 1] * 10, 2, 0, tmp_path, lambda *a: _fold(1, 0.9, 0.95, {10: 0.9}, {10: 0.95}))
    assert "at_last_epoch" not in summary["dprotonet"]  # fold 1 has no last-state figures: no mean over some folds
    assert fill_missing(tmp_path, 2, "dprotonet_last", measure) == [1]
    summary = run_folds(20, [0, 1] * 10, 2, 0, tmp_path, train_fold)
    assert summary["dprotonet"]["at_last_epoch"]["sensitivity"]["mean"] == pytest.approx(0.7)
    assert summary["fold_seconds"] == [1.0, 1.0]


def test_push_effects_read_before_projected_and_after_the_last_layer_epochs():
    from dprotonet_core.train.cross_validation import push_effect_summary, push_effects

    log = [{"epoch": 1, "phase": "warm", "val_accuracy": 0.5},
           {"epoch": 2, "phase": "joint", "val_accuracy": 0.9},
           {"epoch": 2, "phase": "push", "val_accuracy": 0.8},
           {"epoch": 2, "phase": "last_layer", "val_accuracy": 0.85},
           {"epoch": 2, "phase": "last_layer", "val_accuracy": 0.875},
           {"epoch": 3, "phase": "joint", "val_accuracy": 0.95},
           {"epoch": 3, "phase": "push", "val_accuracy": 0.95},  # no last-layer epochs: the push's figure stays
           {"epoch": 3, "phase": "baseline", "val_accuracy": 0.1}]
    effects = push_effects(log)
    assert effects == {2: {"before": 0.9, "before_from": "epoch", "projected": 0.8, "last_layer": 0.875},
                       3: {"before": 0.95, "before_from": "epoch", "projected": 0.95, "last_layer": 0.95}}
    # a push that measured the network itself before moving the prototypes: that figure is "before"
    measured = push_effects([*log[:2], {**log[2], "val_accuracy_before_projection": 0.7}, *log[3:]])
    assert measured[2]["before"] == 0.7 and measured[2]["before_from"] == "push"
    f0 = dataclasses.replace(_fold(0, 0.9, 1.0, {2: 0.875}, {2: 1.0}), push_effects=effects)
    f1 = dataclasses.replace(_fold(1, 0.9, 1.0, {2: 0.9}, {2: 0.9}),
                             push_effects={2: {"before": 0.9, "before_from": "push", "projected": 0.9,
                                               "last_layer": 0.9}})
    summary = push_effect_summary([f0, f1])
    assert set(summary) == {2}  # epoch 3 is in one fold only
    assert summary[2]["projection"]["mean"] == pytest.approx(-0.05)  # (-0.1 + 0) / 2
    assert summary[2]["before_from"] == "mixed"
    assert summary[2]["last_layer_epochs"]["mean"] == pytest.approx(0.0375)
    assert summary[2]["both"]["mean"] == pytest.approx(-0.0125)
    assert summary[2]["unprojected_minus_baseline"]["mean"] == pytest.approx(((0.9 - 1.0) + 0.0) / 2)
    assert push_effect_summary([f0, _fold(1, 0.9, 1.0, {2: 0.9}, {2: 0.9})]) == {}  # a fold without them
    assert "push_effects" in summarise([f0, f1])


def test_out_of_fold_predictions_give_the_recipes_calibration(tmp_path):
    from dprotonet_core.commands.make_demo import cv_calibration
    from dprotonet_core.train.cross_validation import out_of_fold_calibration

    rng = np.random.default_rng(0)
    k = 4
    for fold in range(k):  # an over-confident model: the truth follows sigmoid(0.3 m + 0.5)
        m = rng.normal(0, 6, 500)
        y = (rng.random(500) < 1 / (1 + np.exp(-(0.3 * m + 0.5)))).astype(int)
        folder = tmp_path / f"fold-{fold}"
        folder.mkdir()
        (folder / "figures.json").write_text(json.dumps({"dprotonet_last": {"out_of_fold": {
            "ids": [f"i{fold}-{i}" for i in range(500)], "labels": y.tolist(), "margins": m.tolist()}}}))
    record = out_of_fold_calibration(tmp_path, k)
    assert record["images"] == 2000 and record["slope"] == pytest.approx(0.3, abs=0.05)
    assert record["intercept"] == pytest.approx(0.5, abs=0.15)
    assert record["softmax_as_is"]["ece"] > 0.1 > 0.04 > record["platt_cross_fitted"]["ece"]
    assert "out-of-fold" in record["fitted_on"]
    calibrator = cv_calibration({"out_of_fold_calibration": record})
    assert calibrator["slope"] == record["slope"] and "platt_cross_fitted" not in calibrator
    # a fold without its predictions: no calibration, said so
    (tmp_path / "fold-2" / "figures.json").write_text(json.dumps({"dprotonet_last": {}}))
    assert out_of_fold_calibration(tmp_path, k) is None
    assert cv_calibration({"out_of_fold_calibration": {"status": "not measured"}}) is None
