"""The Grad-CAM family behind one calling convention, on the tiny DProtoNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dprotonet_core.explain import baselines


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("method", list(baselines.METHODS))
def test_each_method_gives_a_unit_map_and_releases_hooks(tiny_model, method):
    tiny_model.requires_grad_(False)  # as load_checkpoint leaves it
    layer_before = baselines.target_layer(tiny_model)
    x = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))
    cam = baselines.saliency(method, tiny_model, x, target_class=1, batch_size=8)
    assert cam.shape == (64, 64) and cam.dtype == np.float32
    assert np.isfinite(cam).all() and cam.min() >= 0.0 and cam.max() <= 1.0
    assert _hook_count(tiny_model) == 0
    assert baselines.target_layer(tiny_model) is layer_before  # Ablation-CAM put the layer back
    assert not tiny_model.training
    assert not any(p.requires_grad for p in tiny_model.parameters())


def test_hooks_released_when_the_call_fails(tiny_model, monkeypatch):
    def broken(self, *args, **kwargs):
        raise IndexError("inside the package")  # BaseCAM.__exit__ swallows IndexError

    monkeypatch.setattr(baselines.GradCAM, "get_cam_weights", broken)
    with pytest.raises(RuntimeError, match="gradcam failed"):
        baselines.saliency("gradcam", tiny_model, torch.rand(3, 64, 64), target_class=1)
    assert _hook_count(tiny_model) == 0


def test_target_class_out_of_range(tiny_model):
    with pytest.raises(ValueError, match="out of range"):
        baselines.saliency("gradcam", tiny_model, torch.rand(3, 64, 64), target_class=7)
    assert _hook_count(tiny_model) == 0


def test_unknown_method_and_shape(tiny_model):
    with pytest.raises(ValueError):
        baselines.saliency("nonsense", tiny_model, torch.rand(3, 64, 64), 0)
    with pytest.raises(ValueError):
        baselines.saliency("gradcam", tiny_model, torch.rand(2, 3, 64, 64), 0)


def test_target_layer_is_the_backbone(tiny_model):
    assert baselines.target_layer(tiny_model) is tiny_model.backbone
    assert baselines.target_layer(baselines.logits_model(tiny_model)) is tiny_model.backbone
