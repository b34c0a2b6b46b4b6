"""inference.predict: the reasoning table adds up to the logit (eq. 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dprotonet_core.inference import predict, predict_batch, preprocess


def test_reasoning_rows_add_up_to_the_logit(tiny_model, tiny_config):
    torch.manual_seed(0)
    x = torch.rand(1, 3, tiny_config.input_size, tiny_config.input_size)
    result = predict(tiny_model, x, ["a", "b"])
    with torch.no_grad():
        logits = tiny_model(x).logits[0]
    assert result.class_index == int(logits.argmax()) and result.class_name == "ab"[result.class_index]
    assert sum(r.contribution for r in result.reasoning) == pytest.approx(float(logits.max()), rel=1e-5)
    assert sum(r.share for r in result.reasoning) == pytest.approx(1.0, rel=1e-5)
    contributions = [r.contribution for r in result.reasoning]
    assert contributions == sorted(contributions, reverse=True)
    assert all(r.contribution == pytest.approx(r.weight * r.similarity, rel=1e-5) for r in result.reasoning)
    assert sum(result.probabilities) == pytest.approx(1.0, rel=1e-6)
    assert set(result.to_json(2)) == {"prediction", "class_index", "probabilities", "probabilities_are",
                                      "model_softmax", "top_prototypes"}
    assert result.to_json(2)["probabilities_are"] == "the model's softmax of eq. 3 (not calibrated)"


def test_batch_matches_single_and_eval_mode_required(tiny_model, tiny_config):
    x = torch.rand(3, 3, tiny_config.input_size, tiny_config.input_size)
    batch = predict_batch(tiny_model, x)
    assert [p.class_index for p in batch] == [predict(tiny_model, x[i]).class_index for i in range(3)]
    tiny_model.train()
    with pytest.raises(ValueError, match="eval mode"):
        predict(tiny_model, x[0])


def test_preprocess_uint8_and_tensor():
    image = np.zeros((10, 20, 3), np.uint8)
    image[..., 0] = 255
    x = preprocess(image, 16)
    assert x.shape == (1, 3, 16, 16) and float(x[0, 0].min()) == pytest.approx(1.0)
    assert preprocess(torch.rand(3, 16, 16), 16).shape == (1, 3, 16, 16)


def test_decide_argmax_or_the_cards_threshold(tiny_model, tiny_config):
    from dprotonet_core.inference import decide

    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]])
    assert decide(probs).tolist() == [0, 1, 0]
    assert decide(probs, 0.25).tolist() == [1, 1, 0]  # p(class 1) >= 0.25
    assert decide(probs.numpy(), 0.65).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="two-class"):
        decide(torch.ones(1, 3) / 3, 0.5)
    x = torch.rand(1, 3, tiny_config.input_size, tiny_config.input_size)
    p1 = predict(tiny_model, x, ["a", "b"]).probabilities[1]
    assert predict(tiny_model, x, ["a", "b"], threshold=p1 - 1e-6).class_index == 1
    assert predict(tiny_model, x, ["a", "b"], threshold=p1 + 1e-6).class_index == 0
    # the reasoning table explains the class the threshold chose
    low = predict(tiny_model, x, ["a", "b"], threshold=0.0)
    assert low.class_name == "b" and low.reasoning[0].weight == pytest.approx(
        float(tiny_model.last_layer.weight.detach()[1, low.reasoning[0].prototype]))


def test_a_calibrated_prediction_shows_platt_probabilities_and_decides_on_them(tiny_model, tiny_config):
    torch.manual_seed(1)
    x = torch.rand(1, 3, tiny_config.input_size, tiny_config.input_size)
    with torch.no_grad():
        logits = tiny_model(x).logits[0]
    margin = float(logits[1] - logits[0])
    record = {"slope": 0.5, "intercept": -1.0}
    p1 = 1.0 / (1.0 + np.exp(-(0.5 * margin - 1.0)))
    result = predict(tiny_model, x, ["a", "b"], calibration=record)
    assert result.calibrated and result.probabilities[1] == pytest.approx(p1, rel=1e-5)
    assert result.model_probabilities[1] == pytest.approx(float(torch.softmax(logits, 0)[1]), rel=1e-5)
    assert result.to_json()["probabilities_are"] == "calibrated (the card's calibrator)"
    # the threshold compares the calibrated probability: just above it answers "b", just below "a"
    assert predict(tiny_model, x, ["a", "b"], p1 - 1e-4, calibration=record).class_name == "b"
    assert predict(tiny_model, x, ["a", "b"], p1 + 1e-4, calibration=record).class_name == "a"


def test_non_finite_scores_are_refused(tiny_model, tiny_config):
    with torch.no_grad():
        tiny_model.last_layer.weight[0, 0] = float("nan")
    x = torch.rand(1, 3, tiny_config.input_size, tiny_config.input_size)
    with pytest.raises(ValueError, match="non-finite"):
        predict(tiny_model, x, ["a", "b"])
