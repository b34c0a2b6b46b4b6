"""train/last_layer.py: the last-layer phase solved until its loss settles (eq. 4 over f_h alone, convex)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dprotonet_core.config import LossConfig, TrainConfig
from dprotonet_core.train.last_layer import fit_last_layer, last_layer_objective, prototype_activations
from dprotonet_core.train.phases import schedule


def _activations(n: int = 400, k: int = 4):
    torch.manual_seed(0)
    labels = torch.arange(n) % 2
    g = torch.rand(n, k) * 3
    g[:, 2] += 2.0 * labels  # prototype 2 (class 1's first) fires on class 1
    g[:, 0] += 2.0 * (1 - labels)  # prototype 0 (class 0's first) fires on class 0
    return g, labels


def test_the_fit_moves_the_last_layer_and_settles(tiny_model):
    g, labels = _activations()
    before = tiny_model.last_layer.weight.detach().clone()
    identity = tiny_model.prototype_class_identity.detach().float()
    start, _ = last_layer_objective(g, labels, before, identity, LossConfig())
    record = fit_last_layer(tiny_model, g, labels, LossConfig(), TrainConfig())
    after = tiny_model.last_layer.weight.detach()
    assert record["converged"] and record["fit_steps"] < TrainConfig().last_layer_max_steps
    assert record["loss"] < float(start) - 0.05
    assert (after - before).abs().max() > 0.1  # moved far beyond what 5 epochs at lr 1e-4 could
    curve = [row[1] for row in record["loss_curve"]]
    assert curve[-1] <= curve[0] and record["loss_curve"][-1][0] == record["fit_steps"]
    assert record["train_accuracy"] > 0.8


def test_a_longer_or_tighter_fit_finds_the_same_minimum(tiny_model):
    g, labels = _activations()
    first = fit_last_layer(tiny_model, g, labels, LossConfig(), TrainConfig())["loss"]
    tight = dataclasses.replace(TrainConfig(), last_layer_tol=1e-8, last_layer_max_steps=20000)
    second = fit_last_layer(tiny_model, g, labels, LossConfig(), tight)["loss"]
    assert second == pytest.approx(first, abs=2e-3)  # convex: settled means (nearly) at the minimum


def test_sample_weights_weigh_the_cross_entropy():
    g, labels = _activations(8)
    w = torch.eye(2, 4)
    identity = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.float32)
    cfg = LossConfig(lambda_l1=0.0)
    plain, _ = last_layer_objective(g, labels, w, identity, cfg)
    only_first = torch.zeros(8)
    only_first[0] = 1.0
    single, _ = last_layer_objective(g, labels, w, identity, cfg, only_first)
    per_image = torch.nn.functional.cross_entropy(g @ w.t(), labels, reduction="none")
    assert float(plain) == pytest.approx(float(per_image.mean()), rel=1e-6)
    assert float(single) == pytest.approx(float(per_image[0]), rel=1e-6)


def test_activations_come_from_the_model_in_eval_mode(tiny_model, tiny_config):
    from dprotonet_core.train.data import TensorImages

    images = torch.rand(5, 3, tiny_config.input_size, tiny_config.input_size)
    tiny_model.train()
    g, y = prototype_activations(tiny_model, TensorImages(images, torch.tensor([0, 1, 0, 1, 1])), 2,
                                 torch.device("cpu"))
    assert tiny_model.training  # restored
    tiny_model.eval()
    with torch.no_grad():
        assert torch.allclose(g, tiny_model(images).activations, atol=1e-5)
    assert y.tolist() == [0, 1, 0, 1, 1]


def test_a_converged_fit_is_one_schedule_step_per_push():
    cfg = TrainConfig(epochs=12, last_layer_fit="converged")
    kinds = [(s.kind, s.phase) for s in schedule(cfg)]
    assert kinds.count(("epoch", "last_layer")) == 2 and kinds.count(("push", None)) == 2
    assert [(s.kind, s.phase) for s in schedule(TrainConfig(epochs=12))].count(("epoch", "last_layer")) == 10


def test_only_states_after_the_fit_are_candidates_for_selection(tmp_path):
    """With the converged fit, the push state (still the joint phase's last layer) is never the selected one."""
    from dprotonet_core.config import ModelConfig
    from dprotonet_core.train.data import TensorImages
    from dprotonet_core.train.loop import TrainOptions, train

    torch.manual_seed(0)
    images, labels = torch.rand(16, 3, 32, 32), torch.tensor([0, 1] * 8)
    cfg = TrainConfig(epochs=2, warm_epochs=1, push_every=1, batch_size=8, projection_views=1,
                      last_layer_fit="converged", last_layer_max_steps=50, val_fraction=0.25)
    result = train(TensorImages(images, labels), tmp_path / "run",
                   ModelConfig(backbone="tiny_cnn", input_size=32, prototypes_per_class=2, prototype_channels=8,
                               shaping_hidden_channels=8, num_feature_masks=4),
                   cfg, options=TrainOptions(progress=False))
    candidates = [h for h in result.history if h["projected"]]
    assert candidates and all(h["phase"] == "last_layer" for h in candidates)
    assert result.selected["phase"] == "last_layer"
