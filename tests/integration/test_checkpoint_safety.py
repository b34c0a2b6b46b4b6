"""Checkpoint folders that cannot be trusted: refused with a one-line message naming the problem, listed as
invalid, and the app keeps working with them in DPROTONET_MODELS_DIR.

Each variant (tests/bad_checkpoints.py) is the tiny test checkpoint with one thing wrong: a file whose hash
disagrees with card.json, tensor shapes that disagree with the card (or the card's model), a card that disagrees
with itself, is too large or too deep, or has fields of the wrong type, an unknown backbone, sizes that would
allocate gigabytes, names pointing outside the folder, a symbolic link, an unlisted file, a pickle somewhere in
the folder, NaN or infinite weights, a prototype image far larger than the model's input.
"""

from __future__ import annotations

import hashlib
import io

import pytest
import torch
from streamlit.testing.v1 import AppTest

from dprotonet_core import checkpoint as checkpoint_module
from dprotonet_core import review
from dprotonet_core.checkpoint import CheckpointError, find_checkpoints, load_checkpoint
from tests.app_support import TINY_NAME, make_tiny_checkpoint
from tests.bad_checkpoints import OUTSIDE_FILE, VARIANTS, add_bad_checkpoints
from tests.conftest import REPO

APP = str(REPO / "app.py")
TIMEOUT = 60

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """The tiny checkpoint plus one broken copy per variant."""
    root = tmp_path_factory.mktemp("models")
    good = make_tiny_checkpoint(root / TINY_NAME)
    add_bad_checkpoints(root, good)
    return root


@pytest.fixture(scope="module")
def listed(models_dir) -> dict:
    """The catalogue's view of the folder: name -> (card, problem)."""
    return {p.name: (card, problem) for p, card, problem in find_checkpoints(models_dir)}


@pytest.mark.parametrize("name,words", [(n, w) for n, _, w in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_broken_checkpoint_is_refused_naming_the_problem(models_dir, listed, name, words):
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(models_dir / name)
    message = str(refused.value)
    assert all(w.lower() in message.lower() for w in words), message
    assert "\n" not in message

    with pytest.raises(review.ReviewError, match="cannot be used"):
        review.load_model(models_dir / name)

    card, problem = listed[name]
    assert card is None and problem, f"{name} is listed as valid"
    assert all(w.lower() in problem.lower() for w in words), problem
    assert str(models_dir) not in problem, "the app shows this text: no server paths"
    assert "\n" not in problem


@pytest.mark.parametrize("name", ["traversal-in-hash-list", "absolute-in-hash-list"])
def test_a_file_named_outside_the_folder_is_never_read(models_dir, monkeypatch, name):
    """The sha256 list names /etc/passwd: refused from the name; the file is not opened, its hash not shown."""
    import builtins

    real_open, opened = builtins.open, []
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(models_dir / name)
    assert not [f for f in opened if f.endswith("passwd")], opened
    if OUTSIDE_FILE.is_file():
        assert hashlib.sha256(OUTSIDE_FILE.read_bytes()).hexdigest()[:12] not in str(refused.value)


@pytest.mark.parametrize("name", ["card-shape", "model-shape", "huge-mask-count", "huge-mask-tensor"])
def test_the_model_is_not_built_before_the_header_and_sizes_are_checked(models_dir, monkeypatch, name):
    """A card whose tensors or sizes are wrong is refused before DProtoNet allocates anything on the CPU."""
    built: list[str] = []
    real = checkpoint_module.DProtoNet

    def spy(config, *args, **kwargs):
        device = torch.empty(0).device.type  # the default device in force: "meta" for the header check
        built.append(device)
        if device != "meta":
            raise AssertionError(f"DProtoNet built on {device} before the refusal")
        return real(config, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "DProtoNet", spy)
    with pytest.raises(CheckpointError):
        load_checkpoint(models_dir / name)
    assert all(d == "meta" for d in built), built


def test_a_folder_failing_in_an_unforeseen_way_is_listed_with_one_line(models_dir, monkeypatch):
    real = checkpoint_module._verify_folder

    def fails_once(folder):
        if folder.name == TINY_NAME:
            raise ZeroDivisionError("something nobody planned for at /srv/models/x")
        return real(folder)

    monkeypatch.setattr(checkpoint_module, "_verify_folder", fails_once)
    listed = {p.name: problem for p, _, problem in find_checkpoints(models_dir)}
    assert listed[TINY_NAME] == "could not be checked: ZeroDivisionError; refused"


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
    listed = "\n".join(review.unescaped(str(m.value)) for m in expander.markdown)  # as the reader sees it
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
