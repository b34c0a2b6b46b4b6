"""Stored sample explanations (explain/store.py): used only when every input matches, never guessed."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dprotonet_core import review
from dprotonet_core.config import MDMConfig
from dprotonet_core.explain import mdm, store
from tests.app_support import ModelCallCounter, make_tiny_checkpoint

CFG = MDMConfig(iterations=5)


def _vectors(value: float = 0.25) -> list[torch.Tensor]:
    return [torch.full((a, a), value) for a, _ in mdm.mask_vector_sizes(CFG)]


def _save(folder, x, sha="ab" * 32, prototype=3, vectors=None, cfg=CFG):
    return store.save(folder, x, sha, prototype, "paper", cfg, vectors or _vectors(), 7, 5, 1.5, "test machine")


def test_round_trip_and_every_mismatch_is_a_miss(tmp_path):
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    _save(tmp_path, x)
    found = store.load(tmp_path, x, "ab" * 32, 3, "paper", CFG)
    assert found is not None and found.mask_index == 7 and found.iterations == 5 and found.seconds == 1.5
    for a, b in zip(found.vectors, _vectors()):
        torch.testing.assert_close(a, b)
    assert store.stack(found, 32).shape == (10, 32, 32)
    other = x.clone()
    other[0, 0, 0] += 1e-6  # one pixel, barely: another input
    assert store.load(tmp_path, other, "ab" * 32, 3, "paper", CFG) is None
    assert store.load(tmp_path, x, "cd" * 32, 3, "paper", CFG) is None  # another model
    assert store.load(tmp_path, x, "ab" * 32, 4, "paper", CFG) is None  # another prototype
    assert store.load(tmp_path, x, "ab" * 32, 3, "fast", CFG) is None  # another profile
    changed = dataclasses.replace(CFG, eta_deletion=0.5)  # the same name, other settings
    assert store.load(tmp_path, x, "ab" * 32, 3, "paper", changed) is None
    # settings that do not change the result do not invalidate it
    assert store.load(tmp_path, x, "ab" * 32, 3, "paper", dataclasses.replace(CFG, time_limit=9.0)) is not None


def test_damaged_or_out_of_range_files_are_ignored(tmp_path):
    x = torch.rand(3, 16, 16)
    path = _save(tmp_path, x, vectors=_vectors(1.5))  # outside [0, 1]
    assert store.load(tmp_path, x, "ab" * 32, 3, "paper", CFG) is None
    path.write_bytes(b"not a safetensors file")
    assert store.load(tmp_path, x, "ab" * 32, 3, "paper", CFG) is None


def test_the_app_shows_a_stored_sample_explanation_without_a_model_call(tmp_path, monkeypatch):
    folder = make_tiny_checkpoint(tmp_path / "ck")
    checkpoint = review.load_model(folder)
    x = torch.rand(1, 3, checkpoint.model.config.input_size, checkpoint.model.config.input_size)
    cfg = mdm.profile("paper")
    samples = tmp_path / "samples"
    monkeypatch.setenv(review.SAMPLES_DIR_ENV, str(samples))
    sha = checkpoint.card["sha256"]["model.safetensors"]
    vectors = [torch.rand(a, a) for a, _ in mdm.mask_vector_sizes(cfg)]
    store.save(review.stored_explanations_dir(), x[0], sha, 1, "paper", cfg, vectors, 2, 800, 123.0, "test")
    counter = ModelCallCounter(monkeypatch)
    cache = review.ExplanationCache()
    got = review.explain_cached(cache, "key", checkpoint, x, 1, "paper")
    assert counter.calls == 0 and got.precomputed and got.iterations == 800
    assert got.query_stack.shape[0] == cfg.num_vectors
    expected = mdm.mask_stack(vectors, x.shape[-1])
    torch.testing.assert_close(torch.from_numpy(got.query_stack), torch.from_numpy(expected))
    # another prototype of the same image is computed (fast profile: a quick run)
    fresh = review.explain_cached(cache, "key", checkpoint, x, 0, "fast")
    assert counter.calls > 0 and not fresh.precomputed


# What make-demo stored for each bundled checkpoint's samples: the RSNA rebuild of 2026-12-04 stored its default
# (standard) and the fast profile only; the paper protocol's 800 steps run live (assets/checkpoints/README.md).
STORED_PROFILES = {"ichallenge-pm": ["thorough", "standard", "paper", "fast"], "rsna-pneumonia": ["standard", "fast"]}


@pytest.mark.parametrize(("name", "profile"), [(n, p) for n, ps in STORED_PROFILES.items() for p in ps])
def test_bundled_samples_have_their_stored_explanations(name, profile):
    """make-demo stored each bundled sample's explanation under these MDM profiles; the app must find it
    again (same decoding, same window, same pixels, same model file, same MDM settings)."""
    from dprotonet_core.commands._demo_mdm import SAMPLE_CHECKPOINTS, sample_inputs

    checkpoint = review.load_model(review.ASSETS / "checkpoints" / name)
    rows = [p for p, dataset in sample_inputs(review.DEFAULT_SAMPLES_DIR) if SAMPLE_CHECKPOINTS.get(dataset) == name]
    assert rows
    for path in rows:
        x = review.default_model_input(checkpoint, path.read_bytes())
        prototype = review.default_prototype(review.predict(checkpoint, x))
        found = review.stored_explanation(checkpoint, x, prototype, profile)
        assert found is not None, f"{path.name}: no stored {profile} explanation matches"
        assert found.precomputed and found.iterations == mdm.profile(profile).iterations
