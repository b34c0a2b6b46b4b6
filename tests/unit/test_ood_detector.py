"""The out-of-distribution detector (ood_detector.py, ood_features.py): its distances against hand-computed
values, the stages it reads composing to f_b, its file (read without pickle, refused when broken), and a
checkpoint that ships it answering with its score."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dprotonet_core import ood, ood_detector
from dprotonet_core.checkpoint import CARD_FILE, CheckpointError, load_checkpoint, sha256_file
from dprotonet_core.inference import predict
from dprotonet_core.ood_features import INPUT_STATISTICS, input_statistics, model_features
from tests.app_support import make_tiny_checkpoint


def test_class_conditional_mahalanobis_by_hand():
    g = ood_detector.Gaussian(means=np.array([[0.0, 0.0], [2.0, 0.0]]), precision=np.diag([1.0, 4.0]))
    # (1, 1): (1, 1) P (1, 1) = 1 + 4 from either class mean, / d = 2; (2, 0.5): class 1, 4 * 0.25 / 2
    assert g.distance(np.array([[1.0, 1.0], [2.0, 0.5]])) == pytest.approx([2.5, 0.5])


def test_fit_gaussian_takes_class_means_and_a_shrunk_shared_covariance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (200, 3)), rng.normal(5, 1, (200, 3))
    g = ood_detector.fit_gaussian(np.r_[a, b], np.r_[np.zeros(200), np.ones(200)])
    assert g.means == pytest.approx(np.stack([a.mean(0), b.mean(0)]))
    # class-centred features have unit variance: the precision is near the identity, not blown up by the 5 apart
    assert np.diag(g.precision) == pytest.approx(np.ones(3), abs=0.25)
    assert g.distance(np.array([[5.0, 5.0, 5.0]]))[0] < g.distance(np.array([[2.5, 2.5, 2.5]]))[0]


def test_knn_is_one_minus_the_cosine_of_the_kth_nearest_training_image():
    bank = np.eye(3)
    detector = ood_detector.Detector(bank=bank, bank_feature="stage_1")
    x = np.array([[1.0, 1.0, 0.0]])  # cos 0.707 to two bank rows, 0 to the third: with 3 rows, k = 3
    assert detector.component_scores({"stage_1": x})["knn"] == pytest.approx([1.0])
    many = ood_detector.Detector(bank=np.repeat(np.eye(3), 10, axis=0), bank_feature="stage_1")
    assert many.component_scores({"stage_1": x})["knn"] == pytest.approx([1 - 2 ** -0.5])  # 10th nearest


def test_combination_is_the_largest_component_over_its_threshold():
    scores = {"a": np.array([1.0, 4.0]), "b": np.array([3.0, 1.0])}
    assert ood_detector.combine(scores, ["a", "b"], {"a": 2.0, "b": 6.0}) == pytest.approx([0.5, 2.0])
    unseen = {"a": np.arange(101.0), "b": np.zeros(101) + 1.0}
    choice = ood_detector.choose(unseen, "a+b", ["a", "b"], "validation images", 7)
    assert choice.normalisers["a"] == pytest.approx(99.0) and choice.normalisers["b"] == pytest.approx(1.0)
    assert choice.threshold == pytest.approx(1.0)  # max(a / 99, 1): the 99th percentile of that is 1
    record = choice.record()
    assert record["score"] == "detector" and record["threshold_images"] == 101 and record["training_images"] == 7


def test_stage_outputs_compose_to_f_b_and_do_not_change_the_answer(tiny_model):
    x = torch.rand(2, 3, tiny_model.config.input_size, tiny_model.config.input_size)
    with torch.no_grad():
        fb, pooled = tiny_model.backbone_with_stages(x)
        assert torch.allclose(fb, tiny_model.backbone((x - tiny_model.mean) / tiny_model.std), atol=1e-6)
        assert [p.shape for p in pooled] == [torch.Size([2, w]) for w in tiny_model.stage_widths]
        plain, staged = tiny_model(x), tiny_model(x, stages=True)
    assert plain.stages is None and torch.allclose(plain.logits, staged.logits, atol=1e-6)
    assert torch.allclose(pooled[-1], fb.mean(dim=(-2, -1)), atol=1e-6)  # the last stage is f_b's output


def test_input_statistics_tell_a_fundus_field_of_view_from_a_flat_grey_image():
    size = 112
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - 55.5) ** 2 + (xx - 55.5) ** 2 <= 50 ** 2).astype(np.float32)
    fundus = torch.tensor(np.stack([0.8 * disc, 0.35 * disc, 0.1 * disc]))[None]
    grey = torch.full((1, 3, size, size), 0.5)
    stats = dict(zip(INPUT_STATISTICS, input_statistics(torch.cat([fundus, grey])).T))
    assert stats["dark_outside_circle"][0] > 0.95 and stats["dark_outside_circle"][1] == 0.0
    assert stats["red_share"][0] > 0.5 and stats["red_share"][1] == pytest.approx(1 / 3, abs=1e-3)
    assert stats["mirror_symmetry"][0] == pytest.approx(1.0, abs=1e-3)


def _with_detector(folder, tiny_model_images=None):
    """The tiny checkpoint with a detector fitted on random images and the card's record for "stages"."""
    ck = load_checkpoint(folder)
    torch.manual_seed(0)
    images = torch.rand(40, 3, ck.model.config.input_size, ck.model.config.input_size)
    features = model_features(ck.model, images)
    detector = ood_detector.fit_detector(features, np.arange(40) % 2)
    components = ood_detector.candidate_names(detector.components)["stages+knn+input"]
    choice = ood_detector.choose(detector.component_scores(features), "stages+knn+input", components,
                                 "validation images", 40)
    detector.save(folder / ood_detector.DETECTOR_FILE)
    card = json.loads((folder / CARD_FILE).read_text())
    card["ood"] = choice.record()
    card["sha256"][ood_detector.DETECTOR_FILE] = sha256_file(folder / ood_detector.DETECTOR_FILE)
    (folder / CARD_FILE).write_text(json.dumps(card))
    return images, detector, choice


def test_a_checkpoint_with_a_detector_answers_with_its_score(tmp_path):
    folder = make_tiny_checkpoint(tmp_path / "ck")
    images, detector, choice = _with_detector(folder)
    ck = load_checkpoint(folder)
    assert ck.ood_detector is not None and ck.ood_detector.components == detector.components
    expected = ood_detector.score_from_record(detector, ck.card["ood"], model_features(ck.model, images[:1]))
    result = predict(ck.model, images[:1], ck.classes, ood_record=ck.card["ood"], ood_detector=ck.ood_detector)
    assert result.ood_score == pytest.approx(float(expected[0]), rel=1e-4)
    blank = predict(ck.model, torch.zeros_like(images[:1]), ck.classes, ood_record=ck.card["ood"],
                    ood_detector=ck.ood_detector)
    assert ood.check(blank.ood_score, ck.card["ood"]).flagged  # a black square is nothing like random images
    warning = ood.warning(ck.card["ood"])
    assert "unlike the 40 images this model learned from" in warning and "99 in 100 of 40 validation images" in warning
    with pytest.raises(ValueError, match="needs its detector"):
        predict(ck.model, images[:1], ck.classes, ood_record=ck.card["ood"])


@pytest.mark.parametrize("damage", ["unlisted", "nan", "narrow", "component", "threshold"])
def test_a_broken_detector_refuses_the_checkpoint(tmp_path, damage):
    from safetensors.numpy import load_file, save_file

    folder = make_tiny_checkpoint(tmp_path / "ck")
    _with_detector(folder)
    card = json.loads((folder / CARD_FILE).read_text())
    path = folder / ood_detector.DETECTOR_FILE
    tensors = load_file(str(path))
    if damage == "unlisted":
        del card["sha256"][ood_detector.DETECTOR_FILE]
    elif damage in ("nan", "narrow"):
        key = next(k for k in tensors if k.endswith(".means"))
        tensors[key] = (tensors[key] * np.nan) if damage == "nan" else tensors[key][:, :-1].copy()
        save_file(tensors, str(path))
        card["sha256"][ood_detector.DETECTOR_FILE] = sha256_file(path)
    elif damage == "component":
        card["ood"]["components"] = ["stage_9"]
    else:
        card["ood"]["threshold"] = -1.0
    (folder / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError):
        load_checkpoint(folder)


def test_warnings_say_where_their_threshold_came_from():
    legacy_training = {"score": "feature_zscore", "flag_above": "training q99 (no validation images: ...)"}
    assert "its own training images" in ood.warning(legacy_training)
    assert "validation images" in ood.warning({"score": "feature_zscore", "flag_above": "validation q99"})
    record = {"score": "detector", "training_images": 400, "threshold_images": 400,
              "threshold_from": "out-of-fold images of 5 cross-validation folds",
              "components": ["stage_4", "knn", "input"]}
    assert ood.warning(record) == (
        "This image is unlike the 400 images this model learned from: measured on its backbone's features at "
        "stage 4, their nearest training images and the image's intensity, colour and field-of-view statistics, "
        "it lies further from them than 99 in 100 of 400 out-of-fold images of 5 cross-validation folds it did "
        "not train on. Its answer may be meaningless.")
    four = {**record, "components": ["stage_1", "stage_2", "stage_3", "stage_4"]}
    assert "measured on its backbone's features at 4 stages, it lies" in ood.warning(four)
