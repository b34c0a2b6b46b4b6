"""Checkpoint folders that cannot be trusted: refused with a message naming the problem, listed as invalid,
and the app keeps working with them in DPROTONET_MODELS_DIR.

Each variant is the tiny test checkpoint (tests/app_support.py) with one thing wrong: a file whose hash
disagrees with card.json, tensor shapes that disagree with the card (or the card's model), a card that
disagrees with itself, or a pickle somewhere in the folder (by suffix, by pickle header, or torch.save's zip
format under the model's name with a matching hash).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from streamlit.testing.v1 import AppTest

from dprotonet_core import review
from dprotonet_core.checkpoint import CheckpointError, find_checkpoints, load_checkpoint
from tests.app_support import TINY_NAME, make_tiny_checkpoint
from tests.conftest import REPO

APP = str(REPO / "app.py")
TIMEOUT = 60

torch.set_num_threads(1)


def _card(folder: Path) -> dict:
    return json.loads((folder / "card.json").read_text())


def _write_card(folder: Path, card: dict) -> None:
    (folder / "card.json").write_text(json.dumps(card, indent=1))


def _rehash(folder: Path, rel: str) -> None:
    card = _card(folder)
    card["sha256"][rel] = hashlib.sha256((folder / rel).read_bytes()).hexdigest()
    _write_card(folder, card)


def tampered_model(folder: Path) -> None:
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF  # one byte of the last tensor
    (folder / "model.safetensors").write_bytes(bytes(data))


def tampered_prototype_image(folder: Path) -> None:
    path = folder / "prototypes" / "proto_001.png"
    path.write_bytes(path.read_bytes() + b"\x00")


def card_shape(folder: Path) -> None:
    card = _card(folder)
    card["tensors"]["prototypes"]["shape"] = [4, 8]
    _write_card(folder, card)


def model_shape(folder: Path) -> None:
    """Tensors, card and hash agree with each other, but not with the model the card describes."""
    state = load_file(str(folder / "model.safetensors"))
    state["prototypes"] = state["prototypes"][:, :8].contiguous()
    save_file(state, str(folder / "model.safetensors"))
    card = _card(folder)
    card["tensors"]["prototypes"]["shape"] = [4, 8]
    _write_card(folder, card)
    _rehash(folder, "model.safetensors")


def card_classes(folder: Path) -> None:
    card = _card(folder)
    card["classes"] = ["normal", "finding", "other"]
    _write_card(folder, card)


def card_without_hashes(folder: Path) -> None:
    card = _card(folder)
    del card["sha256"]
    _write_card(folder, card)


def card_not_json(folder: Path) -> None:
    (folder / "card.json").write_text("{ not json")


def pickle_by_suffix(folder: Path) -> None:
    (folder / "optimizer.pt").write_bytes(b"anything")


def pickle_by_header(folder: Path) -> None:
    (folder / "prototypes" / "extra.dat").write_bytes(pickle.dumps({"a": 1}, protocol=4))


def torch_save_as_model(folder: Path) -> None:
    """torch.save (a zip holding a pickle) under the model's name, with card.json's hash updated to match."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    (folder / "model.safetensors").write_bytes(buffer.getvalue())
    _rehash(folder, "model.safetensors")


# (name, how to break the folder, words the message must contain)
VARIANTS: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
    ("tampered-model", tampered_model, ("model.safetensors", "sha256")),
    ("tampered-prototype-image", tampered_prototype_image, ("proto_001.png", "sha256")),
    ("card-shape", card_shape, ("prototypes", "shape", "card.json")),
    ("model-shape", model_shape, ("prototypes", "shape")),
    ("card-classes", card_classes, ("classes",)),
    ("card-without-hashes", card_without_hashes, ("card.json", "sha256")),
    ("card-not-json", card_not_json, ("card.json", "JSON")),
    ("pickle-by-suffix", pickle_by_suffix, ("optimizer.pt", "pickle")),
    ("pickle-by-header", pickle_by_header, ("extra.dat", "pickle")),
    ("torch-save-as-model", torch_save_as_model, ("model.safetensors", "pickle")),
]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """The tiny checkpoint plus one broken copy per variant."""
    root = tmp_path_factory.mktemp("models")
    good = make_tiny_checkpoint(root / TINY_NAME)
    for name, breaker, _ in VARIANTS:
        shutil.copytree(good, root / name)
        breaker(root / name)
    return root


@pytest.mark.parametrize("name,words", [(n, w) for n, _, w in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_broken_checkpoint_is_refused_naming_the_problem(models_dir, name, words):
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(models_dir / name)
    message = str(refused.value)
    assert all(w.lower() in message.lower() for w in words), message
    assert "\n" not in message

    with pytest.raises(review.ReviewError, match="cannot be used"):
        review.load_model(models_dir / name)

    listed = {p.name: (card, problem) for p, card, problem in find_checkpoints(models_dir)}
    card, problem = listed[name]
    assert card is None and problem, f"{name} is listed as valid"
    assert all(w.lower() in problem.lower() for w in words), problem
    assert str(models_dir) not in problem, "the app shows this text: no server paths"


def test_the_good_checkpoint_still_loads(models_dir):
    assert load_checkpoint(models_dir / TINY_NAME).classes == ["normal", "finding"]
    valid = [e for e in review.list_checkpoints(models_dir) if e.valid and e.path.parent == models_dir]
    assert [e.path.name for e in valid] == [TINY_NAME]


def test_app_lists_broken_checkpoints_as_invalid_and_keeps_working(models_dir, monkeypatch, tmp_path):
    import numpy as np
    from PIL import Image

    monkeypatch.setenv("DPROTONET_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("DPROTONET_SAMPLES_DIR", str(tmp_path / "no-samples"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["checkpoint_path"] = str(models_dir / TINY_NAME)  # bundled demos may be listed first
    at.run()
    assert not at.exception, at.exception
    picker = at.sidebar.selectbox(key="checkpoint_picker")
    offered = [p for p in picker.options if not p.endswith("(demo)")]
    assert offered == [TINY_NAME], picker.options  # only the good one is offered
    assert picker.value == str(models_dir / TINY_NAME)

    expander = next(e for e in at.sidebar.expander if e.label.startswith("Invalid checkpoints"))
    assert f"({len(VARIANTS)})" in expander.label
    listed = "\n".join(str(m.value) for m in expander.markdown)
    for name, _, words in VARIANTS:
        line = next((ln for ln in listed.splitlines() if ln.startswith(f"**{name}**")), None)
        assert line is not None, f"{name} not listed as invalid"
        assert all(w.lower() in line.lower() for w in words), line

    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(3).random((70, 90, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
    at.file_uploader(key="upload").set_value(("x.png", buffer.getvalue(), "image/png")).run()
    assert not at.exception, at.exception
    assert any(str(s.value).startswith("Prediction:") for s in at.subheader)
    for page in ("pages/model_card.py", "pages/prototypes.py"):
        at.switch_page(page).run()
        assert not at.exception, f"{page}: {at.exception}"
