"""The app's facade (dprotonet_core.review): pure functions, no Streamlit."""

from __future__ import annotations

import io
import json
import re
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dprotonet_core import review
from tests.app_support import make_invalid_checkpoint, make_samples_dir, make_tiny_checkpoint
from tests.conftest import PALM_DIR, REAL_DICOM, REPO


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny-test")


@pytest.fixture(scope="module")
def checkpoint(checkpoint_dir):
    return review.load_model(checkpoint_dir)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def case(checkpoint):
    rng = np.random.default_rng(0)
    data = _png((rng.random((80, 96, 3)) * 255).astype(np.uint8))
    loaded = review.read_upload(data)
    return review.cached_case({}, review.file_hash(data), None, checkpoint, loaded)


@pytest.fixture(scope="module")
def explanation(case, checkpoint):
    return review.explain(checkpoint, case.x, review.default_prototype(case.prediction), "fast")


def test_upload_cap_matches_streamlit_config():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == review.MAX_UPLOAD_MB
    assert config["client"]["showErrorDetails"] == "none"
    assert config["browser"]["gatherUsageStats"] is False
    assert config["server"]["enableXsrfProtection"] is True
    assert config["server"]["address"] == "127.0.0.1"  # a plain `streamlit run app.py` is not open to every interface
    hosts = config["server"]["allowedHosts"]
    assert hosts and "*" not in hosts and set(hosts) <= {"localhost", "127.0.0.1"}


def test_list_checkpoints_lists_valid_and_invalid(tmp_path, checkpoint_dir):
    import shutil

    shutil.copytree(checkpoint_dir, tmp_path / "good")
    make_invalid_checkpoint(tmp_path / "bad")
    entries = review.list_checkpoints(tmp_path, bundled_root=tmp_path / "none")
    by_name = {e.path.name: e for e in entries}
    assert by_name["good"].valid and not by_name["bad"].valid
    assert "sha256" in by_name["bad"].problem
    assert review.models_dir({"DPROTONET_MODELS_DIR": str(tmp_path)}) == tmp_path
    assert review.models_dir({}) == review.DEFAULT_MODELS_DIR


def test_load_model_refuses_a_broken_folder_with_one_message(tmp_path):
    with pytest.raises(review.ReviewError, match="cannot be used"):
        review.load_model(make_invalid_checkpoint(tmp_path / "bad"))


@pytest.mark.parametrize("data", [b"", b"hello world", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"DICM" * 50])
def test_broken_upload_is_one_line_review_error(data):
    with pytest.raises(review.ReviewError) as info:
        review.read_upload(data)
    assert "\n" not in str(info.value) and str(info.value)


def test_oversized_upload_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(review.case, "MAX_UPLOAD_MB", 0)
    with pytest.raises(review.ReviewError, match="larger than"):
        review.read_upload(b"x" * 10)


@pytest.mark.skipif(not REAL_DICOM.is_file(), reason="../shared/data DICOM absent")
def test_dicom_window_presets_and_metadata():
    loaded = review.read_upload(REAL_DICOM.read_bytes())
    presets = review.window_presets(loaded)
    assert {"full range", "lung", "bone"} <= set(presets)
    lung = review.apply_window(loaded, presets["lung"])
    assert not np.array_equal(lung.pixels, loaded.pixels)
    assert review.image_key("h", presets["lung"]) != review.image_key("h", None)
    fields = {row["Field"]: row["Value"] for row in review.metadata_rows(loaded)}
    assert fields["Modality"] == "CR"
    assert not any("name" in k.lower() or "id" == k.lower() for k in fields)


def test_prediction_rows_and_default_prototype(case, checkpoint):
    prediction = case.prediction
    assert prediction.class_name in checkpoint.classes
    assert abs(sum(prediction.probabilities) - 1) < 1e-5
    rows = review.summarise_rows(prediction, checkpoint, top_k=3)
    assert len(rows) == 3 and {"Similarity g", "Weight w", "Contribution w·g", "Share of score"} <= set(rows[0])
    choices = review.prototype_choices(prediction)
    p_t = review.default_prototype(prediction)
    assert choices[0] == p_t and checkpoint.prototypes[p_t].class_index == prediction.class_index
    assert "best match" in review.prototype_label(checkpoint, prediction, p_t)


def test_cached_case_is_bounded_and_hits_without_a_model_call(checkpoint, monkeypatch):
    store: dict = {}
    loaded = review.read_upload(_png(np.zeros((32, 32, 3), np.uint8)))
    first = review.cached_case(store, "a", None, checkpoint, loaded)
    monkeypatch.setattr(review.case, "predict", lambda *a: pytest.fail("cache hit called the model"))
    assert review.cached_case(store, "a", None, checkpoint, loaded) is first
    monkeypatch.undo()
    for i in range(review.MAX_CACHED_CASES + 3):
        review.cached_case(store, f"k{i}", None, checkpoint, loaded)
    assert len(store["cases"]) == review.MAX_CACHED_CASES


def test_explanation_stacks_and_cache(case, checkpoint, explanation, monkeypatch):
    d, s = explanation.query_stack.shape[0], checkpoint.model.config.input_size
    assert explanation.query_stack.shape == explanation.prototype_stack.shape == (d, s, s)
    assert 0 <= explanation.query_stack.min() and explanation.query_stack.max() <= 1
    cache = review.ExplanationCache(max_entries=2)
    calls = []
    monkeypatch.setattr(review.explanation, "explain", lambda *a, **k: calls.append(a) or explanation)
    for prototype in (0, 1, 0, 2, 3):
        review.explain_cached(cache, case.key, checkpoint, case.x, prototype, "fast")
    assert len(cache) == 2 and len(calls) == 4  # the second 0 was a hit; LRU kept the last two
    assert review.explanation_key(case.key, checkpoint, 3, "fast") in cache
    assert cache.nbytes() == 2 * (explanation.query_stack.nbytes + explanation.prototype_stack.nbytes)


def test_explain_previews_the_heatmap_while_it_refines(case, checkpoint, monkeypatch):
    """The first preview comes after the first step, later ones at most every PREVIEW_EVERY_S, each a whole
    explanation the panes can render; the final result is what the optimisation returns."""
    monkeypatch.setattr(review.explanation, "PREVIEW_EVERY_S", 0.0)  # every step, so the test sees several
    seen = []
    final = review.explain(checkpoint, case.x, 0, "fast", preview=lambda e, step, total: seen.append((e, step, total)))
    steps = [step for _, step, _ in seen]
    assert steps[0] == 1 and steps == sorted(steps) and steps[-1] == final.iterations
    first, _, total = seen[0]
    assert total == final.iterations and "refining: step 1 of" in first.query_method
    assert first.query_stack.shape == final.query_stack.shape
    np.testing.assert_allclose(seen[-1][0].query_stack, final.query_stack, atol=1e-6)  # the last preview is the end
    view = review.render_refining(case, checkpoint, first, review.default_settings(), 1, total)
    final_view = review.render_case(case, checkpoint, final, review.default_settings())
    assert view.query.shape == final_view.query.image.shape and view.query.dtype == np.uint8
    np.testing.assert_array_equal(view.prototype, final_view.prototype.image)  # the stored side, both times
    assert view.caption.startswith(f"Refining in place: step 1 of {total}. Your image: fast profile: Adam")
    assert "refining:" not in view.caption  # the step is said once
    assert view.titles[1] == review.prototype_title(checkpoint, 0)
    later = review.render_refining(case, checkpoint, first, review.default_settings(), 1, total, with_prototype=False)
    assert later.prototype is None and np.array_equal(later.query, view.query)  # the page sent the prototype once
    monkeypatch.setattr(review.explanation, "PREVIEW_EVERY_S", 3600.0)
    seen.clear()
    review.explain(checkpoint, case.x, 0, "fast", preview=lambda e, step, total: seen.append(step))
    assert seen == [1]  # the first one at once, then none within the hour


def test_explain_reports_progress_and_can_be_cancelled(case, checkpoint, monkeypatch):
    seen: list[float] = []
    monkeypatch.setattr(review.explanation, "PROGRESS_EVERY_S", 0.0)  # every step
    texts: list[str] = []
    review.explain(checkpoint, case.x, 0, "fast", progress=lambda f, text: seen.append(f) or texts.append(text))
    assert seen and 0 < seen[-1] <= 1 and seen == sorted(seen)
    assert texts[0] == "Explaining: step 1 of at most 100" and "left" in texts[50] and "left" not in texts[-1]
    monkeypatch.setattr(review.explanation, "PROGRESS_EVERY_S", 3600.0)
    texts.clear()
    review.explain(checkpoint, case.x, 0, "fast", progress=lambda f, text: texts.append(text))
    assert texts == ["Explaining: step 1 of at most 100", "Explaining: step 100 of at most 100"]  # first and last
    with pytest.raises(review.ReviewError, match="cancelled"):
        review.explain(checkpoint, case.x, 0, "fast", cancel=lambda: True)
    capped = review.explain(checkpoint, case.x, 0, "paper", time_limit_s=0.0)
    assert capped.stopped_by_time and capped.iterations < 800


def test_progress_text_estimates_the_time_left_from_the_pace_so_far():
    assert review.explanation.progress_text(3, 200, 1.0, 2) == "Explaining: step 3 of at most 200"  # too few timed
    assert review.explanation.progress_text(10, 200, 2.0, 8) == "Explaining: step 10 of at most 200, about 48 s left"
    assert review.explanation.progress_text(10, 800, 2.0, 8) == "Explaining: step 10 of at most 800, about 3 min left"
    assert review.explanation.progress_text(200, 200, 9.0, 199) == "Explaining: step 200 of at most 200"


def test_render_needs_no_model_and_follows_the_settings(case, checkpoint, explanation, monkeypatch):
    from dprotonet_core.model.dprotonet import DProtoNet

    monkeypatch.setattr(DProtoNet, "feature_map", lambda *a: pytest.fail("rendering called the model"))
    images = {}
    for view in review.VIEWS:
        for gamma in (0.0, 3.0):
            rendered = review.render_case(case, checkpoint, explanation, review.DisplaySettings(gamma=gamma, view=view))
            assert rendered.query.image.shape == (review.DISPLAY_SIZE, review.DISPLAY_SIZE, 3)
            assert rendered.query.image.dtype == np.uint8
            images[(view, gamma)] = rendered.query.image
            figure = rendered.figure
            kinds = [t["type"] for t in figure["data"]]
            assert kinds.count("image") == 2
            assert figure["layout"]["xaxis2"]["matches"] == "x" and figure["layout"]["yaxis2"]["matches"] == "y"
    assert len({v.tobytes() for v in images.values()}) > 3
    high = review.render_case(case, checkpoint, explanation, review.DisplaySettings(gamma=10.0))
    assert any("gamma" in n or "no region" in n for n in high.notes) or not high.query.empty


def test_colorscale_matches_overlay_colormap():
    from dprotonet_core.explain import overlay

    scale = review.colorscale("jet")
    assert scale[0][0] == 0 and scale[-1][0] == 1
    r, g, b = overlay.colormap_lut("jet")[255]
    assert scale[-1][1] == f"rgb({r},{g},{b})"


def test_report_png_and_json_carry_no_patient_data(case, checkpoint, explanation):
    settings = review.default_settings()
    rendered = review.render_case(case, checkpoint, explanation, settings)
    inputs = review.report_inputs(case, checkpoint, explanation, settings, rendered)
    data = json.loads(review.report_json(inputs))
    assert data["prediction"]["class"] == case.prediction.class_name
    assert data["display"]["gamma"] == settings.gamma and len(data["reasoning"]) == min(5, len(checkpoint.prototypes))
    assert data["image"] == {"sha256": case.image_sha256, "kind": "png", "window": None}
    assert data["disclaimer"] == review.DISCLAIMER
    png = review.report_png(inputs)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and not image.info.get("dpi") and not image.text
    assert not re.search(rb"tEXt|iTXt|zTXt|eXIf|tIME", png)


def test_samples_listing(tmp_path):
    assert review.list_samples(tmp_path / "absent") == []
    if PALM_DIR.is_dir():
        folder = make_samples_dir(tmp_path / "s", [(sorted(PALM_DIR.glob("*.jpg"))[0], "PM", "iChallenge-PM")])
        samples = review.list_samples(folder)
        assert [s.label for s in samples] == ["PM"]  # the row naming a missing file is skipped
        assert "iChallenge-PM" in samples[0].title
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "samples.csv").write_bytes(b"\xff\xfe\x00garbage")
    assert review.list_samples(tmp_path / "bad") == []


def test_prototype_cards_weights_and_card_sections(checkpoint):
    cards = review.prototype_cards(checkpoint)
    assert len(cards) == len(checkpoint.prototypes)
    assert [c.class_index for c in cards] == sorted(c.class_index for c in cards)
    only = review.prototype_cards(checkpoint, [checkpoint.classes[1]])
    assert {c.class_name for c in only} == {checkpoint.classes[1]}
    rows = review.prototype_provenance(cards[0])
    assert any(r["Field"].startswith("Augmented views R") for r in rows)
    figure = review.weights_figure(checkpoint)
    assert len(figure.data) == len(checkpoint.classes)
    titles = [t for t, _ in review.card_sections(checkpoint.card)]
    assert titles[0] == "Intended use and limits" and "Versions" in titles
    assert review.card_integrity(checkpoint.card)[0]["sha256"]


def test_performance_rows_read_the_card_in_order_and_skip_what_is_missing():
    card = {"metrics": {"val_accuracy": 0.984375, "val_images": 64, "test_accuracy": 0.975, "test_images": 80,
                        "test_sensitivity": None, "test_specificity": 1.0, "baseline_test_accuracy": 0.9625,
                        "table4_test_accuracy": {"R=40": 0.975, "R=1": 0.95}, "fp16_accuracy_change": -0.015625}}
    rows = review.performance_rows(card)
    assert [r["Value"] for r in rows] == ["97.5%", "100.0%", "96.2%", "95.0%", "97.5%", "98.4%", "-1.6 points"]
    assert rows[0]["Measure"] == "Accuracy" and "80 images" in rows[0]["Measured on"]
    assert rows[0]["95% interval"] == "91.3% to 99.3%"  # Wilson, 78 of 80
    assert rows[1]["95% interval"] == ""  # the card does not say how many test images are positive
    assert "R = 1" in rows[3]["Measure"] and "single-image" in rows[3]["Measure"]
    assert "R = 40" in rows[4]["Measure"] and "multi-image" in rows[4]["Measure"]
    assert "64 images" in rows[5]["Measured on"]
    assert review.performance_rows({}) == [] and review.performance_rows({"metrics": "garbage"}) == []
    odd = review.performance_rows({"metrics": {"test_accuracy": 7.0, "test_images": 80,
                                               "table4_test_accuracy": {"R=x": 0.5, "R=2": 0.6}}})
    assert odd[0]["95% interval"] == "" and [r["Value"] for r in odd] == ["700.0%", "60.0%", "50.0%"]


def test_cross_validated_rows_come_first_with_their_spread_and_the_caption_says_what_the_column_means():
    def fig(mean, sd, lo, hi):
        return {"mean": mean, "sd": sd, "min": lo, "max": hi, "n": 5}

    cv = {"k": 5, "images": 400, "recipe": {"epochs": 40},
          "dprotonet": {"at_last_epoch": {"accuracy": fig(0.975, 0.0125, 0.9625, 0.9875),
                                          "sensitivity": fig(0.97, 0.02, 0.95, 1.0)},
                        "selected_in_fold": {"accuracy": fig(0.98, 0.01, 0.97, 0.99)}},
          "baseline": {"accuracy_at_last_epoch": fig(0.98, 0.01, 0.9625, 0.9875)},
          "dprotonet_minus_baseline_at_last_epoch": {"mean": -0.005, "sd": 0.01, "min": -0.0125, "max": 0.0125}}
    card = {"cross_validation": cv, "training_data": {"split": {"val_fraction": 0.0, "test_fraction": 0.0}},
            "metrics": {"val_images": 0}}
    rows = review.performance_rows(card)
    assert [r["Value"] for r in rows] == ["97.5%", "97.0%", "98.0%", "-0.5 points", "98.0%"]
    assert rows[0]["Measure"] == "Accuracy, cross-validated"
    assert rows[0]["95% interval"] == "sd 1.2 points; folds 96.2% to 98.8%"
    assert "5-fold cross-validation over 400 images" in rows[0]["Measured on"]
    assert "after the last epoch (40), no selection" in rows[0]["Measured on"]
    assert "Table 3" in rows[2]["Measure"] and "paired by fold" in rows[3]["Measured on"]
    assert "optimistic" in rows[4]["Measured on"]
    assert review.performance_caption(card) == review.card.CROSS_VALIDATION_CAPTION
    assert review.performance_caption({}) == review.PERFORMANCE_CAPTION
    held_out = {**card, "training_data": {"split": {"val_fraction": 0.2, "test_fraction": 0.2}}}
    assert review.performance_caption(held_out).startswith(review.PERFORMANCE_CAPTION)
    assert "spread over the folds" in review.performance_caption(held_out)
    assert review.cross_validation_rows("garbage") == []


def test_a_stacked_recipe_names_its_first_stage_as_the_baseline_and_pairs_the_final_states():
    fig = {"mean": 0.97, "sd": 0.011, "min": 0.9625, "max": 0.9875, "n": 5}
    cv = {"k": 5, "images": 400, "recipe": {"epochs": 20, "backbone_pretraining": "same-images",
                                            "pretrain_epochs": 40},
          "dprotonet": {"at_last_epoch": {"accuracy": {**fig, "mean": 0.9725}}},
          "baseline": {"accuracy_at_last_epoch": fig},
          "dprotonet_last_minus_baseline": {"accuracy": {"mean": 0.0025, "sd": 0.016, "min": -0.025, "max": 0.0125}}}
    rows = review.cross_validation_rows(cv)
    assert [r["Value"] for r in rows] == ["97.2%", "97.0%", "+0.2 points"]
    assert "after the last epoch (20)" in rows[0]["Measured on"]
    assert "DProtoNet starts from" in rows[1]["Measure"] and "after its last epoch (40)" in rows[1]["Measured on"]
    assert rows[2]["95% interval"] == "sd 1.6 points; folds -2.5 to +1.2"


def test_evaluation_absent_then_read(checkpoint_dir, tmp_path):
    import shutil

    assert review.format_timestamp("2026-11-27T07:00:00+00:00") == "2026-11-27 07:00 UTC"
    folder = shutil.copytree(checkpoint_dir, tmp_path / "ck")
    assert review.load_evaluation(folder) is None
    (folder / "evaluation").mkdir()
    metrics = {
        "classification": {"accuracy": 0.75, "sensitivity": None},
        "dataset": {"name": "x", "split": "test", "n": 4},
        "table5": {"columns": ["AD", "DICE"], "higher_is_better": {"AD": False, "DICE": True},
                   "rows": [{"name": "DProtoNet", "AD": 12.5, "DICE": None, "n_images": 4}]},
        "figures": {"files": {"roc": {"json": "figures/roc.json"}, "evil": {"json": "../../etc/passwd"}}},
    }
    (folder / "evaluation" / "metrics.json").write_text(json.dumps(metrics))
    view = review.load_evaluation(folder)
    assert view.table5 == [{"Method": "DProtoNet", "AD ↓": "12.500", "DICE ↑": "n/a", "images": 4}]
    assert review.classification_metrics(view)["Accuracy"] == "0.750"
    assert review.classification_metrics(view)["Sensitivity"] == "n/a"
    assert view.figures == {}  # roc.json absent, the path outside the folder ignored


def test_concurrent_predict_and_explain_agree(checkpoint, case, explanation):
    """One shared model, several threads: each gets the single-thread answer, and the model is left unchanged."""
    expected = review.predict(checkpoint, case.x).probabilities
    results, stacks, errors = [], [], []

    def work(i):
        try:
            if i % 2:
                stacks.append(review.explain(checkpoint, case.x, explanation.prototype, "fast").query_stack)
            else:
                results.append(review.predict(checkpoint, case.x).probabilities)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(np.allclose(r, expected) for r in results)
    assert len(stacks) == 2 and all(np.allclose(s, explanation.query_stack, atol=1e-5) for s in stacks)
    assert not checkpoint.model.training and not any(p.requires_grad for p in checkpoint.model.parameters())
    assert torch.is_grad_enabled()


def test_prediction_headline_names_the_threshold_it_was_compared_with(checkpoint):
    import dataclasses
    import math

    x = torch.rand(1, 3, checkpoint.model.config.input_size, checkpoint.model.config.input_size)
    argmax = review.predict(checkpoint, x)
    assert review.prediction_headline(argmax, checkpoint) == (
        f"Prediction: {argmax.class_name} (uncalibrated model score {100 * review.probability(argmax):.1f}%)")
    assert "argmax" in review.decision_text(checkpoint) and "not calibrated" in review.decision_text(checkpoint)
    # a calibrator of slope 0 gives every image p = 0.30; the threshold 0.25 then answers the positive class
    card = {**checkpoint.card, "accepts": {"what": "frontal chest radiograph"},
            "calibration": {"slope": 0.0, "intercept": math.log(0.3 / 0.7),
                                               "fitted_on": "192 validation images of rsna-real"},
            "decision_threshold": {"value": 0.25, "rule": "accuracy_at_sensitivity", "chosen_on": "192 films",
                                   "chosen_for": "the highest accuracy that keeps sensitivity >= 0.5"}}
    thresholded = dataclasses.replace(checkpoint, card=card)
    pred = review.predict(thresholded, x)
    assert pred.class_index == 1 and pred.calibrated and pred.probabilities[1] == pytest.approx(0.3)
    assert review.prediction_headline(pred, thresholded) == (
        f"Prediction: {checkpoint.classes[1]} (calibrated probability of {checkpoint.classes[1]} 30.0% >= "
        "threshold 25.0%)")
    assert review.probability_text(pred, checkpoint.classes) == (
        f"Calibrated: {checkpoint.classes[0]} 70.0% · {checkpoint.classes[1]} 30.0%")
    assert review.decision_text(thresholded) == (
        f"Decision: {checkpoint.classes[1]} when p({checkpoint.classes[1]}) >= 0.25, a threshold chosen on 192 films "
        "for the highest accuracy that keeps sensitivity >= 0.5 (not the paper's argmax). The probability is "
        "calibrated: among frontal chest radiographs like those it was fitted on (192 validation images of "
        "rsna-real), a probability p means about p x 100 in 100 had the finding.")
    # a threshold that only restates eq. 3's argmax on the calibrated scale (the PALM card) says so
    argmax_card = {**card, "decision_threshold": {"value": 0.34, "rule": "argmax"}}
    assert review.decision_text(dataclasses.replace(checkpoint, card=argmax_card)).startswith(
        "Decision: the class with the highest score (argmax of eq. 3, the paper's rule); on the calibrated scale "
        f"that is {checkpoint.classes[1]} when p({checkpoint.classes[1]}) >= 0.34.")


def test_stored_prototype_heatmaps_say_how_they_were_made(checkpoint):
    bundled = review.load_model(REPO / "assets" / "checkpoints" / "ichallenge-pm")
    default = review.card_default_profile(bundled.card)  # the prototype side is made with the model's default
    assert default == "thorough"
    assert review.stored_prototype_method(bundled).startswith("thorough profile: Adam 400 steps, lr decayed")
    assert "not recorded" in review.stored_prototype_method(checkpoint)  # the tiny test model keeps no record
