"""MDM decoder (eq. 12-14): detection node, sizes, init, projection, losses, batched ==
separate, the eq. 22 ordering, cancel and time cap."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from dprotonet_core.config import MDM_PROFILES, PAPER_MDM, MDMConfig, time_compressed
from dprotonet_core.evaluate.metrics import mask_agreement
from dprotonet_core.explain import mdm


def _cfg(**kw) -> MDMConfig:
    return dataclasses.replace(MDMConfig(), channels_last=False, **kw)


class RegionModel(nn.Module):
    """A detection node whose region contributions are known by construction:
    z(x) = sum_r w_r * mean_{pixels of region r} x (one feature), regions = vertical stripes."""

    def __init__(self, weights: list[float], size: int = 48):
        super().__init__()
        self.size = size
        self.w = nn.Parameter(torch.tensor(weights))
        r = len(weights)
        self.stripe = torch.arange(size) * r // size  # region of each column

    def region_means(self, x: torch.Tensor) -> torch.Tensor:
        cols = x.mean(dim=(1, 2))  # (B, W)
        return torch.stack([cols[:, self.stripe == k].mean(1) for k in range(len(self.w))], 1)

    def feature_vectors(self, x: torch.Tensor, mask_index=None) -> torch.Tensor:
        return (self.region_means(x) * self.w).sum(1, keepdim=True)


def test_mask_vector_sizes_are_5_plus_i():
    assert mdm.mask_vector_sizes() == [(5 + i, 5 + i) for i in range(1, 11)]
    assert mdm.mask_vector_sizes(_cfg(num_vectors=3, base_size=2)) == [(3, 3), (4, 4), (5, 5)]


def test_init_is_tau_and_upsampling_keeps_constants():
    vecs = mdm.init_mask_vectors(_cfg(tau=0.5), batch=2)
    assert [tuple(v.shape) for v in vecs] == [(2, 5 + i, 5 + i) for i in range(1, 11)]
    assert all(bool((v == 0.5).all()) for v in vecs)
    g = mdm.upsample_mask_vectors(vecs, 32)
    assert g.shape == (2, 10, 32, 32)
    torch.testing.assert_close(g, torch.full_like(g, 0.5))


def test_masked_image_and_baselines():
    x = torch.rand(1, 3, 16, 16)
    g = torch.full((1, 1, 16, 16), 0.25)
    torch.testing.assert_close(mdm.masked_image(x, g), 0.25 * x)  # the paper's g(d_i) x
    mean = mdm.baseline_image(x, "mean")
    torch.testing.assert_close(mdm.masked_image(x, g, mean), 0.25 * x + 0.75 * mean)
    assert mdm.baseline_image(x, "blur", 2.0).shape == x.shape
    with pytest.raises(ValueError):
        mdm.baseline_image(x, "grey")


def test_losses_eq13_eq14_hand_computed():
    z = torch.tensor([[1.0, 2.0]])
    t = torch.tensor([[0.0, 4.0]])
    d = torch.tensor([[[0.0, 1.0], [0.5, 0.5]]])  # mean |d| = 0.5
    # s = 1 + 4 = 5; eta * mean = 10 * 0.5 = 5
    torch.testing.assert_close(mdm.query_loss(z, t, d, 10.0), torch.tensor([10.0]))
    torch.testing.assert_close(mdm.prototype_loss(z, t, d, 2.0), torch.tensor([6.0]))
    # deletion form: s / s(z(b), t); with s(z(b), t) = 20: 5 / 20 + 0.4 * 0.5 = 0.45
    deletion = mdm.deletion_distance(torch.tensor([[2.0, 0.0]]), t)  # 4 + 16 = 20
    torch.testing.assert_close(deletion, torch.tensor([20.0]))
    torch.testing.assert_close(mdm.query_loss(z, t, d, 0.4, "deletion", deletion), torch.tensor([0.45]))
    with pytest.raises(ValueError, match="deletion"):
        mdm.feature_distance(z, t, "deletion")
    # a feature that ignores the image: the floor 1e-6 ||t||^2 keeps the scale finite
    assert float(mdm.deletion_distance(t, t)) == pytest.approx(16e-6)


def test_deletion_form_is_invariant_to_the_feature_scale(tiny_model):
    """The same masks whatever the scale of z: the deletion form divides it out (DEVIATION in config)."""
    model = tiny_model
    x = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3))
    cfg = MDMConfig(iterations=15)
    node = mdm.detection_node(model, x)
    with torch.no_grad():
        target = model.feature_vectors(x[None], node.mask_index)[0]
    base = mdm.optimise_mask_vectors(model, x, node.mask_index, target, cfg)

    class Scaled(torch.nn.Module):
        def __init__(self, inner, k):
            super().__init__()
            self.inner, self.k = inner, k

        def feature_vectors(self, images, index):
            return self.k * self.inner.feature_vectors(images, index)

    scaled = mdm.optimise_mask_vectors(Scaled(model, 7.0), x, node.mask_index, 7.0 * target, cfg)
    for a, b in zip(base.vectors, scaled.vectors):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    paper = mdm.optimise_mask_vectors(model, x, node.mask_index, target, MDMConfig(iterations=15, distance="paper"))
    assert cfg.effective_eta == 0.4 and MDMConfig(distance="paper").effective_eta == 10.0
    assert any(not torch.allclose(a, b) for a, b in zip(base.vectors, paper.vectors))


def test_detection_node_eq12_hand_built(tiny_model):
    model = tiny_model
    x = torch.rand(3, 64, 64)
    with torch.no_grad():
        out = model(x[None])
    node = mdm.detection_node(model, x)
    c = int(out.logits.argmax())
    own = (model.prototype_classes() == c).nonzero().flatten()
    t = int(own[out.activations[0, own].argmax()])
    assert node.predicted_class == c and node.prototype == t and node.prototype_class == c
    z = model.feature_vectors(x[None])[0]  # (n, D)
    j_x = int(torch.linalg.vector_norm(z - model.prototypes[t], dim=1).argmin())
    assert node.mask_index == j_x
    # any prototype may be asked for, also one of another class
    other = int((model.prototype_classes() != c).nonzero()[0])
    node2 = mdm.detection_node(model, x, prototype=other)
    assert node2.prototype == other
    assert node2.mask_index == int(torch.linalg.vector_norm(z - model.prototypes[other], dim=1).argmin())
    with pytest.raises(ValueError):
        mdm.detection_node(model, x, prototype=99)


def test_projection_to_unit_interval_and_frozen_network(tiny_model):
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    x = torch.rand(3, 64, 64)
    res = mdm.explain_query(tiny_model, x, cfg=_cfg(iterations=15, lr=0.5)).result
    assert res.iterations == 15 and len(res.history) == 15
    for v in res.vectors:
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    assert res.stack.shape == (10, 64, 64) and res.stack.dtype == np.float32
    for n, p in tiny_model.named_parameters():
        torch.testing.assert_close(p, before[n])
        assert p.grad is None


def test_batched_equals_separate_optimisations(tiny_model):
    x = torch.rand(3, 64, 64)
    node = mdm.detection_node(tiny_model, x)
    with torch.no_grad():
        target = tiny_model.feature_vectors(x[None], node.mask_index)[0]
    cfg = _cfg(iterations=25, lr=0.05)
    batched = mdm.optimise_mask_vectors(tiny_model, x, node.mask_index, target, cfg)
    for i in range(1, cfg.num_vectors + 1):
        alone = dataclasses.replace(cfg, num_vectors=1, base_size=cfg.base_size + i - 1)
        single = mdm.optimise_mask_vectors(tiny_model, x, node.mask_index, target, alone)
        torch.testing.assert_close(batched.vectors[i - 1], single.vectors[0], atol=1e-4, rtol=0)


def test_prototype_side_batches_all_prototypes(tiny_model):
    k = tiny_model.prototypes.shape[0]
    images = torch.rand(k, 3, 64, 64)
    cfg = _cfg(iterations=5, max_batch=20)  # 2 prototypes per forward: groups must not matter
    res = mdm.explain_prototypes(tiny_model, images, [0, 3, 5, 7], cfg)
    assert [tuple(v.shape) for v in res.vectors] == [(k, 5 + i, 5 + i) for i in range(1, 11)]
    assert res.stack.shape == (k, 10, 64, 64)
    one = mdm.optimise_mask_vectors(tiny_model, images[2], 5, tiny_model.prototypes[2], cfg)
    torch.testing.assert_close(res.vectors[4][2], one.vectors[4], atol=1e-4, rtol=0)


@pytest.mark.parametrize("form", ["paper", "deletion"])
def test_eq22_masks_order_regions_by_contribution(form):
    weights = [4.0, 0.5, 2.0, 1.0]  # contributions I(z_r) by construction
    model = RegionModel(weights)
    x = torch.ones(3, 48, 48)
    target = model.feature_vectors(x[None])[0]
    # partial masks, no region saturates: eta 16 on the paper's scale, the same trade-off in the deletion form
    deletion = float(mdm.deletion_distance(model.feature_vectors(torch.zeros_like(x)[None])[0], target))
    cfg = _cfg(num_vectors=3, iterations=300, lr=0.05, eta=16.0, eta_deletion=16.0 / deletion, distance=form)
    res = mdm.optimise_mask_vectors(model, x, 0, target, cfg)
    s = res.stack.sum(0)
    per_region = [float(s[:, model.stripe.numpy() == k].mean()) for k in range(len(weights))]
    order_by_weight = np.argsort(weights)
    order_by_mask = np.argsort(per_region)
    assert list(order_by_mask) == list(order_by_weight), per_region
    assert per_region[0] > per_region[1] + 0.5  # clearly separated, not a tie


def test_cancel_hook_and_time_cap(tiny_model):
    x = torch.rand(3, 64, 64)
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(mdm.MDMCancelled):
        mdm.explain_query(tiny_model, x, cfg=_cfg(iterations=50), cancel=cancel)
    assert not tiny_model.training  # frozen() restored the model's mode after the cancel
    capped = mdm.explain_query(tiny_model, x, cfg=_cfg(iterations=10_000, time_limit=0.2)).result
    assert capped.stopped_by_time and 0 < capped.iterations < 10_000 and not capped.converged


def test_progress_and_early_stop(tiny_model):
    x = torch.rand(3, 64, 64)
    seen = []
    res = mdm.explain_query(
        tiny_model, x, cfg=_cfg(iterations=400, lr=0.1, tol=1e-2, patience=5),
        progress=lambda step, total, loss: seen.append((step, total)),
    ).result
    assert seen[0] == (1, 400) and seen[-1][0] == res.iterations
    assert res.converged and res.iterations < 400


def test_time_compression_changes_only_the_step_and_the_betas():
    fast = time_compressed(PAPER_MDM, 8)
    assert fast.iterations == 100 and fast.lr == pytest.approx(0.08)
    assert fast.betas == pytest.approx((0.9**8, 0.999**8))
    assert dataclasses.replace(fast, iterations=800, lr=0.01, betas=(0.9, 0.999)) == PAPER_MDM
    assert MDM_PROFILES["fast"] == fast


def test_time_compressed_adam_follows_the_paper_path(tiny_model):
    """8x fewer, 8x longer steps with betas^8 land where 800 paper steps do (the fast profile's claim,
    measured on the shipped checkpoints by bench/mdm_speed.py); keeping torch's betas drifts further away."""
    x = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3))
    node = mdm.detection_node(tiny_model, x)
    with torch.no_grad():
        target = tiny_model.feature_vectors(x[None], node.mask_index)[0]
    paper = _cfg()
    ref = mdm.optimise_mask_vectors(tiny_model, x, node.mask_index, target, paper).stack
    fast = mdm.optimise_mask_vectors(tiny_model, x, node.mask_index, target, time_compressed(paper, 8)).stack
    plain = dataclasses.replace(time_compressed(paper, 8), betas=paper.betas)
    drift = mdm.optimise_mask_vectors(tiny_model, x, node.mask_index, target, plain).stack
    r_fast, iou_fast = mask_agreement(ref, fast)
    r_plain, _ = mask_agreement(ref, drift)
    assert r_fast >= 0.95 and iou_fast >= 0.7, (r_fast, iou_fast)
    assert r_fast > r_plain, (r_fast, r_plain)


def test_profiles():
    assert mdm.profile("paper") == MDM_PROFILES["paper"]
    paper, printed = mdm.profile("paper"), mdm.profile("printed")
    # the paper protocol's 800 Adam steps minimise the deletion-scaled distance with eta_deletion; "printed" is
    # eq. 13 as printed, whose eta (10) is the one that term uses
    assert paper.iterations == 800 and paper.distance == "deletion" and paper.effective_eta == 0.4
    assert printed.iterations == 800 and printed.distance == "paper" and printed.effective_eta == 10.0
    assert mdm.profile("fast").iterations < 800
    with pytest.raises(ValueError):
        mdm.profile("slow")


def test_top_prototype_is_the_most_activated_of_the_class():
    activations = [0.9, 0.2, 3.0, 0.1, 2.5, 7.0]
    classes = [0, 0, 0, 1, 1, 1]
    assert mdm.top_prototype(activations, classes, 0) == 2
    assert mdm.top_prototype(torch.tensor(activations), torch.tensor(classes), 1) == 5
    with pytest.raises(ValueError):
        mdm.top_prototype(activations, classes, 2)


def test_eq13_target_is_the_query_feature_at_the_detection_mask(tiny_model, monkeypatch):
    x = torch.rand(3, 64, 64)
    seen = {}
    real = mdm.optimise_mask_vectors

    def spy(model, image, mask_index, target, cfg, *args, **kwargs):
        seen.update(mask_index=mask_index, target=target.detach().clone())
        return real(model, image, mask_index, target, cfg, *args, **kwargs)

    monkeypatch.setattr(mdm, "optimise_mask_vectors", spy)
    explained = mdm.explain_query(tiny_model, x, cfg=_cfg(iterations=2))
    with torch.no_grad():
        z_jx = tiny_model.feature_vectors(x[None], explained.node.mask_index)[0]
    assert seen["mask_index"] == explained.node.mask_index
    torch.testing.assert_close(seen["target"], z_jx)


@pytest.mark.parametrize("side", ["query", "prototype"])
def test_the_optimiser_minimises_the_eq13_eq14_functions(tiny_model, monkeypatch, side):
    """The loss that runs is query_loss (eq. 13) / prototype_loss (eq. 14): spied on, and the reported final
    objective equals that function evaluated by hand at the returned vectors."""
    name = "query_loss" if side == "query" else "prototype_loss"
    calls = []
    real = getattr(mdm, name)
    monkeypatch.setattr(mdm, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.rand(3, 64, 64)
    node = mdm.detection_node(tiny_model, x)
    with torch.no_grad():
        target = (tiny_model.feature_vectors(x[None], node.mask_index)[0] if side == "query"
                  else tiny_model.prototypes[node.prototype])
    cfg = _cfg(iterations=4, lr=0.05)
    res = mdm.optimise_mask_vectors(tiny_model, x, node.mask_index, target, cfg, side=side)
    assert len(calls) >= cfg.iterations * cfg.num_vectors
    blank = mdm.baseline_image(x[None], cfg.baseline)
    with torch.no_grad():
        scale = mdm.deletion_distance(tiny_model.feature_vectors(blank, node.mask_index), target[None])[0]
        for i, v in enumerate(res.vectors):
            g = mdm.upsample_mask_vectors([v[None]], 64)[:, 0:1]
            z = tiny_model.feature_vectors(mdm.masked_image(x[None], g), node.mask_index)[0]
            by_hand = real(z, target, v, cfg.effective_eta, cfg.distance, scale)
            assert abs(float(by_hand) - res.final_objective[i]) < 1e-4


def test_method_labels_name_the_loss():
    assert "deletion-scaled" in mdm.method_label(MDM_PROFILES["paper"], "paper")
    assert "800 steps" in mdm.method_label(MDM_PROFILES["paper"])
    assert "as printed, eta 10" in mdm.loss_label(MDMConfig(distance="paper"))
    assert "deletion-scaled distance, eta 0.4" in mdm.loss_label(MDMConfig())


def _bf16_query(model, monkeypatch):
    """bf16 taken as native, a random image, its detection node and eq. 13's target z_jx(x)."""
    monkeypatch.setattr(mdm, "fast_bf16", lambda device_type="cpu": True)
    x = torch.rand(3, 64, 64)
    node = mdm.detection_node(model, x)
    with torch.no_grad():
        target = model.feature_vectors(x[None], node.mask_index)[0]
    return x, node, target


def _record_feature_dtypes(model, monkeypatch):
    """(the real feature_vectors, the list its patched twin appends each call's output dtype to)."""
    dtypes = []
    real = model.feature_vectors
    monkeypatch.setattr(model, "feature_vectors", lambda *a, **k: dtypes.append(real(*a, **k).dtype) or
                        real(*a, **k))
    return real, dtypes


def test_bf16_steps_keep_a_float32_objective_and_follow_the_float32_path(tiny_model, monkeypatch):
    """precision "bf16": the network runs under autocast during the steps, the reported objective is float32 at the
    returned vectors (equal to eq. 13 by hand), and the answer stays close to the float32 run's."""
    x, node, target = _bf16_query(tiny_model, monkeypatch)
    cfg = _cfg(iterations=30, lr=0.05)
    real, dtypes = _record_feature_dtypes(tiny_model, monkeypatch)
    low = mdm.optimise_mask_vectors(tiny_model, x, node.mask_index, target, dataclasses.replace(cfg, precision="bf16"))
    assert torch.bfloat16 in dtypes  # the steps ran in bf16 ...
    assert dtypes[-1] == torch.float32  # ... and the final objective in float32
    monkeypatch.setattr(tiny_model, "feature_vectors", real)
    full = mdm.optimise_mask_vectors(tiny_model, x, node.mask_index, target, cfg)
    r, iou = mask_agreement(full.stack, low.stack)
    assert r > 0.9 and iou > 0.6, (r, iou)
    with torch.no_grad():  # the bf16 run's final objective is eq. 13 at its vectors, in float32
        g = mdm.upsample_mask_vectors([low.vectors[0][None]], 64)[:, 0:1]
        z = real(mdm.masked_image(x[None], g), node.mask_index)[0]
        blank = mdm.baseline_image(x[None], cfg.baseline)
        scale = mdm.deletion_distance(real(blank, node.mask_index), target[None])[0]
        by_hand = mdm.query_loss(z, target, low.vectors[0], cfg.effective_eta, cfg.distance, scale)
    assert abs(float(by_hand) - low.final_objective[0]) < 1e-4


def test_an_fp32_tail_computes_the_last_steps_of_a_bf16_run_in_float32_and_the_label_counts_them(tiny_model,
                                                                                                 monkeypatch):
    """fp32_tail: the last round(iterations * fp32_tail) steps run without autocast. All of them in float32 is the
    float32 run, vector for vector; a quarter of 8 steps is the last 2 network passes of the steps in float32."""
    x, node, target = _bf16_query(tiny_model, monkeypatch)
    cfg = _cfg(iterations=8, lr=0.05)
    full = mdm.optimise_mask_vectors(tiny_model, x, node.mask_index, target, cfg)
    all_fp32 = dataclasses.replace(cfg, precision="bf16", fp32_tail=1.0)
    same = mdm.optimise_mask_vectors(tiny_model, x, node.mask_index, target, all_fp32)
    assert all(torch.equal(a, b) for a, b in zip(full.vectors, same.vectors))
    real, dtypes = _record_feature_dtypes(tiny_model, monkeypatch)
    quarter = dataclasses.replace(cfg, precision="bf16", fp32_tail=0.25)
    mdm.optimise_mask_vectors(tiny_model, x, node.mask_index, target, quarter)
    steps = dtypes[1:-1]  # after the blank image's scale, before the final float32 objective
    assert steps == [torch.bfloat16] * 6 + [torch.float32] * 2
    assert mdm.fp32_tail_steps(quarter) == 2
    assert mdm.fp32_tail_steps(dataclasses.replace(quarter, precision="fp32")) == 0
    assert "network in bf16 (its last 2 steps in float32)" in mdm.method_label(quarter)
    assert "float32)" not in mdm.method_label(dataclasses.replace(quarter, fp32_tail=0.0))


def test_bf16_falls_back_to_float32_where_it_is_not_native_and_the_label_says_so(monkeypatch):
    cfg = dataclasses.replace(PAPER_MDM, precision="bf16")
    monkeypatch.setattr(mdm, "fast_bf16", lambda device_type="cpu": False)
    assert mdm.runnable(cfg).precision == "fp32"
    assert "bf16" not in mdm.method_label(mdm.runnable(cfg))
    monkeypatch.setattr(mdm, "fast_bf16", lambda device_type="cpu": True)
    assert mdm.runnable(cfg).precision == "bf16"
    assert "network in bf16" in mdm.method_label(mdm.runnable(cfg))
    assert mdm.runnable(PAPER_MDM) == PAPER_MDM
    with pytest.raises(ValueError):
        mdm.network_precision("fp8")


def test_frozen_leaves_a_channels_last_model_as_it_is_and_restores_one_it_converted(tiny_model):
    assert not mdm.is_channels_last(tiny_model)
    with mdm.frozen(tiny_model, channels_last=True):
        assert mdm.is_channels_last(tiny_model)
    assert not mdm.is_channels_last(tiny_model)  # converted for the duration only
    tiny_model.to(memory_format=torch.channels_last)
    try:
        with mdm.frozen(tiny_model, channels_last=True):
            assert mdm.is_channels_last(tiny_model)
        assert mdm.is_channels_last(tiny_model)  # the app's shared model keeps its layout
    finally:
        tiny_model.to(memory_format=torch.contiguous_format)


def test_tail_schedule_is_constant_then_a_cosine_to_lr_min_and_the_label_says_so():
    cfg = dataclasses.replace(PAPER_MDM, iterations=9, lr=0.04, lr_schedule="tail", lr_tail=0.5)
    lrs = [mdm._learning_rate(cfg, step) for step in range(9)]
    # constant for steps 0..4 (start 4.5), then 0.5 * 0.04 * (1 + cos(pi * t)), t = (step - 4.5) / 3.5
    assert lrs[:5] == [0.04] * 5
    for step in (5, 6, 7, 8):
        t = (step - 4.5) / 3.5
        assert lrs[step] == pytest.approx(0.02 * (1 + np.cos(np.pi * t)))
    assert lrs[8] == pytest.approx(0.0, abs=1e-12)
    assert "lr decayed over the last 50% of steps" in mdm.method_label(cfg)
    assert "decayed" not in mdm.method_label(PAPER_MDM)
    with pytest.raises(ValueError):
        mdm._learning_rate(dataclasses.replace(cfg, lr_schedule="step"), 0)


def test_a_card_names_its_default_profile_and_anything_else_falls_back_to_the_configs():
    from dprotonet_core.commands._demo_mdm import mdm_default_record
    from dprotonet_core.config import DEFAULT_MDM_PROFILE

    assert mdm.card_default_profile({"mdm_default_profile": {"profile": "paper"}}) == "paper"
    for card in (None, {}, {"mdm_default_profile": {"profile": "no-such-profile"}}, {"mdm_default_profile": "paper"}):
        assert mdm.card_default_profile(card) == DEFAULT_MDM_PROFILE
    record = mdm_default_record("paper")
    assert mdm.card_default_profile({"mdm_default_profile": record}) == "paper"
    assert record["method"] == mdm.method_label(MDM_PROFILES["paper"], "paper") and "quality bar" in record["chosen_by"]


def test_labels_name_the_step_size_and_betas_where_they_differ_from_the_papers():
    assert mdm.method_label(MDM_PROFILES["standard"], "standard") == (
        "standard profile: Adam 200 steps, lr decayed over the last 25% of steps, network in bf16, lr 0.08, "
        "betas (0.430, 0.992), loss eq. 13 / 14 with the deletion-scaled distance, eta 0.4 (a named deviation)")
    assert mdm.method_label(MDM_PROFILES["paper"]) == (
        "Adam 800 steps, loss eq. 13 / 14 with the deletion-scaled distance, eta 0.4 (a named deviation)")
    from dprotonet_core.review.settings import MDM_PROFILES as PICKER

    assert "deletion-scaled" in PICKER["paper"] and "as printed" in PICKER["printed"]
