"""DProtoNet's equations 1, 2, 3 and 8 against hand-computed values; masks; init; shapes."""

from __future__ import annotations

import math

import pytest
import torch

from dprotonet_core.model.dprotonet import (
    DProtoNet,
    class_identity,
    class_logits,
    draw_feature_masks,
    feature_vectors,
    prototype_activation,
    similarity_score,
)


def test_eq8_feature_vectors_by_hand():
    # F(x): D=2 channels on a 1x2 map; two masks.
    fmap = torch.tensor([[[[1.0, 3.0]], [[2.0, 4.0]]]])  # (1, 2, 1, 2)
    masks = torch.tensor(
        [
            [[[1.0, 0.0]], [[0.0, 1.0]]],  # mask 0: channel 0 keeps left, channel 1 keeps right
            [[[0.5, 0.5]], [[1.0, 1.0]]],  # mask 1
        ]
    )
    z = feature_vectors(fmap, masks)
    # GAP over 2 positions: mask 0 -> [(1+0)/2, (0+4)/2] = [0.5, 2]; mask 1 -> [(0.5+1.5)/2, (2+4)/2] = [1, 3]
    assert z.shape == (1, 2, 2)
    assert torch.allclose(z, torch.tensor([[[0.5, 2.0], [1.0, 3.0]]]))


def test_eq1_similarity_score_by_hand():
    z = torch.tensor([[[0.0, 0.0], [1.0, 2.0]]])  # (1, n=2, D=2)
    p = torch.tensor([[1.0, 1.0], [3.0, 0.0]])  # (K=2, D=2)
    s = similarity_score(z, p)
    # ||(0,0)-(1,1)||^2 = 2, ||(0,0)-(3,0)||^2 = 9, ||(1,2)-(1,1)||^2 = 1, ||(1,2)-(3,0)||^2 = 8
    assert torch.allclose(s, torch.tensor([[[2.0, 9.0], [1.0, 8.0]]]))


def test_eq1_never_negative():
    z = torch.full((1, 1, 4), 1e4)
    s = similarity_score(z, z[0].clone())
    assert float(s.min()) >= 0.0


def test_eq2_activation_by_hand():
    s = torch.tensor([[[2.0, 9.0], [1.0, 8.0]]])
    g = prototype_activation(s, 1e-4)
    # max over masks: the smallest s wins (1 and 8)
    expected = torch.tensor([[math.log(2.0 / (1.0 + 1e-4)), math.log(9.0 / (8.0 + 1e-4))]])
    assert torch.allclose(g, expected, atol=1e-6)


def test_epsilon_float32_is_finite_and_bounded():
    s = torch.tensor([[[0.0], [1e-30], [1e-6]]], dtype=torch.float32, requires_grad=True)
    g = prototype_activation(s, 1e-12)
    assert torch.isfinite(g).all()
    # at s = 0 the activation reaches its bound log(1 / eps) = log(1e12)
    assert float(g.detach()) == pytest.approx(math.log(1e12), rel=1e-5)
    g.sum().backward()
    assert torch.isfinite(s.grad).all()


def test_eq3_logits_by_hand():
    g = torch.tensor([[2.0, 1.0, 0.5]])
    w = torch.tensor([[1.0, -0.5, 0.0], [0.0, 1.0, 2.0]])
    assert torch.allclose(class_logits(g, w), torch.tensor([[1.5, 2.0]]))


def test_masks_reproducible_from_seed_and_in_unit_interval():
    a = draw_feature_masks(5, 3, 2, 2, seed=7)
    b = draw_feature_masks(5, 3, 2, 2, seed=7)
    c = draw_feature_masks(5, 3, 2, 2, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(torch.round(a * 255) / 255, a)  # on 256 levels: stored losslessly as uint8


def test_model_masks_follow_config_seed(tiny_config):
    torch.manual_seed(1)
    m1 = DProtoNet(tiny_config)
    torch.manual_seed(2)
    m2 = DProtoNet(tiny_config)
    assert torch.equal(m1.feature_masks, m2.feature_masks)


def test_last_layer_init(tiny_model, tiny_config):
    w = tiny_model.last_layer.weight
    identity = class_identity(tiny_config.num_classes, tiny_config.prototypes_per_class).t()
    assert torch.equal(w[identity.bool()], torch.ones(tiny_config.num_prototypes))
    assert torch.equal(w[~identity.bool()], torch.full((tiny_config.num_prototypes,), -0.5))


def test_forward_shapes_and_consistency(tiny_model, tiny_config):
    x = torch.rand(3, 3, tiny_config.input_size, tiny_config.input_size)
    with torch.no_grad():
        out = tiny_model(x)
    b, n, k, d = 3, tiny_config.num_feature_masks, tiny_config.num_prototypes, tiny_config.prototype_channels
    assert out.logits.shape == (b, tiny_config.num_classes)
    assert out.activations.shape == (b, k)
    assert out.distances.shape == (b, n, k)
    assert out.z.shape == (b, n, d)
    # the returned parts agree with the equations applied to each other
    assert torch.allclose(out.distances, similarity_score(out.z, tiny_model.prototypes))
    assert torch.allclose(out.logits, class_logits(out.activations, tiny_model.last_layer.weight))
    # feature_vectors(x, j) gives z_j for one mask
    with torch.no_grad():
        zj = tiny_model.feature_vectors(x, 4)
    assert torch.allclose(zj, out.z[:, 4], atol=1e-5)


@pytest.mark.parametrize("name", ["tiny_cnn", "small_resnet"])
def test_an_own_backbone_file_loads_tensor_for_tensor(tmp_path, name):
    """A safetensors f_b file with our own names (pretrain-backbone's) loads every tensor into the same place:
    safetensors lists keys sorted ("10.bias" before "4.bias"), which matching by order alone swapped."""
    from safetensors.torch import save_file

    from dprotonet_core.model.backbones import build_backbone

    torch.manual_seed(0)
    source, _ = build_backbone(name, None)
    for p in source.parameters():  # distinct values everywhere, so a swap cannot go unseen
        torch.nn.init.uniform_(p.data, -1.0, 1.0)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "f_b.safetensors"))
    loaded, _ = build_backbone(name, str(tmp_path / "f_b.safetensors"))
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
