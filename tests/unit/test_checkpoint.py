"""Checkpoint round-trip and refusal of untrustworthy folders (no pickle anywhere)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dprotonet_core.checkpoint import CheckpointError, PrototypeRecord, load_checkpoint, save_checkpoint


def _save(model, folder, dtype="float32"):
    k = model.config.num_prototypes
    records = [PrototypeRecord(j, j // 2, "ab"[j // 2], f"img{j}", j, 1, f"proto_{j:03d}.png") for j in range(k)]
    size = model.config.input_size  # prototype images are stored at the model's input size
    images = [np.full((size, size, 3), j * 20, np.uint8) for j in range(k)]
    return save_checkpoint(model, folder, {"classes": ["a", "b"]}, records, images, dtype=dtype)


@pytest.fixture
def x(tiny_config):
    torch.manual_seed(5)
    return torch.rand(2, 3, tiny_config.input_size, tiny_config.input_size)


def test_round_trip_fp32_identical(tiny_model, tmp_path, x):
    folder = _save(tiny_model, tmp_path / "ck")
    loaded = load_checkpoint(folder)
    with torch.no_grad():
        a, b = tiny_model(x), loaded.model(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.distances, b.distances)
    assert loaded.classes == ["a", "b"] and loaded.prototypes[3].source_id == "img3"
    assert loaded.prototype_image(2)[0, 0, 0] == 40


def test_round_trip_fp16_within_tolerance(tiny_model, tmp_path, x):
    loaded = load_checkpoint(_save(tiny_model, tmp_path / "ck16", dtype="float16"))
    with torch.no_grad():
        a, b = tiny_model(x).logits, loaded.model(x).logits
    # stated tolerance: fp16 weights change logits by well under 1% of their scale
    assert torch.allclose(a, b, rtol=1e-2, atol=1e-2 * float(a.abs().max()))


def test_tampered_model_file_refused(tiny_model, tmp_path):
    folder = _save(tiny_model, tmp_path / "ck")
    state = load_file(str(folder / "model.safetensors"))
    state["prototypes"] = state["prototypes"] + 1
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(folder)


def test_tampered_prototype_image_refused(tiny_model, tmp_path):
    folder = _save(tiny_model, tmp_path / "ck")
    (folder / "prototypes" / "proto_001.png").write_bytes(b"\x89PNG changed")
    with pytest.raises(CheckpointError, match="proto_001.png"):
        load_checkpoint(folder)


def test_changed_shape_refused(tiny_model, tmp_path):
    folder = _save(tiny_model, tmp_path / "ck")
    card = json.loads((folder / "card.json").read_text())
    card["tensors"]["prototypes"]["shape"] = [5, 16]
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="model.safetensors.*prototypes"):
        load_checkpoint(folder)


def test_card_class_count_mismatch_refused(tiny_model, tmp_path):
    folder = _save(tiny_model, tmp_path / "ck")
    card = json.loads((folder / "card.json").read_text())
    card["classes"] = ["a", "b", "c"]
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="card.json"):
        load_checkpoint(folder)


@pytest.mark.parametrize("name", ["extra.pt", "prototypes/notes.dat"])
def test_pickle_file_refused(tiny_model, tmp_path, name):
    """By its suffix (never opened), or in prototypes/ without a hash in the card (never opened either)."""
    folder = _save(tiny_model, tmp_path / "ck")
    (folder / name).write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match=name):
        load_checkpoint(folder)


def test_listed_pickle_refused_by_its_header(tiny_model, tmp_path):
    import hashlib

    folder = _save(tiny_model, tmp_path / "ck")
    (folder / "prototypes" / "notes.dat").write_bytes(pickle.dumps({"a": 1}))
    card = json.loads((folder / "card.json").read_text())
    notes = (folder / "prototypes" / "notes.dat").read_bytes()
    card["sha256"]["prototypes/notes.dat"] = hashlib.sha256(notes).hexdigest()
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="notes.dat.*pickle"):
        load_checkpoint(folder)


def test_unlisted_file_outside_prototypes_is_never_opened(tiny_model, tmp_path, monkeypatch):
    """An evaluation report or a training log beside the model is not the loader's: it is not read at all."""
    import builtins

    folder = _save(tiny_model, tmp_path / "ck")
    (folder / "train_log.jsonl").write_bytes(pickle.dumps({"a": 1}))
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    load_checkpoint(folder)
    assert not [f for f in opened if f.endswith("train_log.jsonl")], opened
