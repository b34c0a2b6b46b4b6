"""Training phases freeze by requires_grad; the schedule follows section 4.3."""

from __future__ import annotations

import pytest

from dprotonet_core.config import TrainConfig
from dprotonet_core.train.phases import joint_phase, last_layer_phase, schedule, warm_phase

PARTS = ("backbone", "shaping", "prototypes", "last_layer")


def _trainable(model) -> dict[str, bool]:
    modules = {"backbone": model.backbone, "shaping": model.shaping, "last_layer": model.last_layer}
    flags = {name: {p.requires_grad for p in m.parameters()} for name, m in modules.items()}
    flags["prototypes"] = {model.prototypes.requires_grad}
    for name, values in flags.items():
        assert len(values) == 1, f"{name} is partly frozen"
    return {name: values.pop() for name, values in flags.items()}


@pytest.mark.parametrize(
    "make, expected",
    [
        (warm_phase, {"backbone": False, "shaping": True, "prototypes": True, "last_layer": False}),
        (joint_phase, dict.fromkeys(PARTS, True)),
        (last_layer_phase, {"backbone": False, "shaping": False, "prototypes": False, "last_layer": True}),
    ],
)
def test_phase_freezing(tiny_model, make, expected):
    phase = make(TrainConfig())
    phase.apply(tiny_model)
    assert _trainable(tiny_model) == expected
    optimizer = phase.optimizer(tiny_model)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    trainable = {id(p) for p in tiny_model.parameters() if p.requires_grad}
    assert in_optimizer == trainable


def test_joint_learning_rates():
    cfg = TrainConfig()
    rates = joint_phase(cfg).learning_rates
    assert rates == {"backbone": 1e-4, "shaping": 3e-3, "prototypes": 3e-3, "last_layer": 1e-4}
    assert joint_phase(cfg, pretrained_backbone=False).learning_rates["backbone"] == cfg.lr_backbone_scratch


def test_frozen_parts_get_no_gradient(tiny_model, tiny_config):
    import torch

    warm_phase(TrainConfig()).apply(tiny_model)
    tiny_model.zero_grad(set_to_none=True)
    tiny_model(torch.rand(2, 3, tiny_config.input_size, tiny_config.input_size)).logits.sum().backward()
    assert all(p.grad is None for p in tiny_model.backbone.parameters())
    assert tiny_model.last_layer.weight.grad is None
    assert tiny_model.prototypes.grad is not None


def test_schedule_warm_joint_push_every_10_then_last_layer():
    steps = schedule(TrainConfig(epochs=21, warm_epochs=5, push_every=10, last_layer_epochs=2))
    kinds = [(s.kind, s.phase, s.epoch) for s in steps]
    assert kinds[:5] == [("epoch", "warm", e) for e in range(5)]
    assert kinds[5] == ("epoch", "joint", 5)
    push_at = [s.epoch for s in steps if s.kind == "push"]
    assert push_at == [9, 19, 20]  # every 10 epochs, and always after the last
    i = kinds.index(("push", None, 9))
    assert kinds[i + 1 : i + 3] == [("epoch", "last_layer", 9)] * 2
    assert sum(1 for s in steps if s.phase in ("warm", "joint")) == 21
