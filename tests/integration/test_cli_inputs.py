"""The CLI and the app with inputs that are not image files, and a model whose scores are not finite.

`predict` checks each path before reading it: a FIFO (which would block forever), /dev/zero (endless), a folder,
a missing or empty file and a file over the upload limit each give one JSON error line, and the batch goes on to
the next file. `explain` on an empty file or a FIFO prints one line, no traceback. A checkpoint whose weights are
finite but whose scores overflow gives a JSON error line from `predict`, one line from `explain`, and a clear
message on the review page (never "Prediction: normal, nan%").

The CLI runs as a subprocess with a 4 GB address-space limit and a timeout, so a reader that slurps /dev/zero or
blocks on the FIFO fails the test instead of the machine.
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from streamlit.testing.v1 import AppTest

from dprotonet_core import review
from tests.app_support import TINY_NAME, make_tiny_checkpoint
from tests.bad_checkpoints import rehash
from tests.conftest import REPO

APP = str(REPO / "app.py")
CLI_TIMEOUT_S = 120
ADDRESS_SPACE = 4 << 30

torch.set_num_threads(1)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dprotonet_core", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S, preexec_fn=_limit_memory)


def _png(path, seed: int = 0):
    Image.fromarray((np.random.default_rng(seed).random((70, 90, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The tiny checkpoint, and a copy whose every tensor is finite but whose scores overflow."""
    root = tmp_path_factory.mktemp("models")
    good = make_tiny_checkpoint(root / TINY_NAME)
    overflow = make_tiny_checkpoint(root / "overflowing")
    state = load_file(str(overflow / "model.safetensors"))
    state["std"] = torch.full_like(state["std"], 1e-30)  # the model's input normalisation: pixels become ~1e30
    save_file(state, str(overflow / "model.safetensors"))
    rehash(overflow, "model.safetensors")
    return good, overflow


def test_predict_refuses_what_is_not_an_image_file_and_goes_on(checkpoints, tmp_path):
    good, _ = checkpoints
    first, last = _png(tmp_path / "first.png", 1), _png(tmp_path / "last.png", 2)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    big = tmp_path / "big.dcm"
    with open(big, "wb") as f:  # sparse: 129 MB long, nothing written
        f.truncate((review.MAX_UPLOAD_MB + 1) * 1024 * 1024)
    files = [first, "/dev/zero", fifo, empty, folder, tmp_path / "missing.png", big, last]
    done = _cli("predict", "--checkpoint", str(good), *map(str, files))
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # every line valid JSON
    assert [line["file"] for line in lines] == [str(f) for f in files]
    assert done.returncode == 2
    assert "prediction" in lines[0] and "prediction" in lines[-1]  # the batch went on past every refusal
    expected = ["device", "pipe", "empty", "folder", "No such file", "larger than"]
    for line, words in zip(lines[1:-1], expected):
        assert set(line) == {"file", "error"} and words in line["error"] and "\n" not in line["error"], line


def test_non_finite_scores_give_an_error_line_not_nan(checkpoints, tmp_path):
    _, overflow = checkpoints
    image = _png(tmp_path / "x.png")
    done = _cli("predict", "--checkpoint", str(overflow), str(image))
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    (line,) = [json.loads(text) for text in done.stdout.splitlines()]
    assert done.returncode == 2 and set(line) == {"file", "error"} and "non-finite" in line["error"], line

    out = tmp_path / "out"
    done = _cli("explain", "--checkpoint", str(overflow), str(image), "--out", str(out), "--iterations", "2")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "non-finite" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("kind", ["empty", "fifo"])
def test_explain_on_a_bad_file_says_so_in_one_line(checkpoints, tmp_path, kind):
    good, _ = checkpoints
    path = tmp_path / "x.png"
    if kind == "empty":
        path.write_bytes(b"")
    else:
        os.mkfifo(path)
    done = _cli("explain", "--checkpoint", str(good), str(path), "--out", str(tmp_path / "out"), "--iterations", "2")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1 and str(path) in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_the_review_page_says_a_model_gives_no_answer(checkpoints, tmp_path, monkeypatch):
    _, overflow = checkpoints
    monkeypatch.setenv("DPROTONET_MODELS_DIR", str(overflow.parent))
    monkeypatch.setenv("DPROTONET_SAMPLES_DIR", str(tmp_path / "no-samples"))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["checkpoint_path"] = str(overflow)
    at.run()
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(3).random((70, 90, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
    at.file_uploader(key="upload").set_value(("x.png", buffer.getvalue(), "image/png")).run()
    assert not at.exception, at.exception
    assert not any(str(s.value).startswith("Prediction:") for s in at.subheader)
    assert any("gives no answer" in str(e.value) and "non-finite" in str(e.value) for e in at.error), at.error


def test_an_unforeseen_failure_is_one_line_and_predict_goes_on(checkpoints, tmp_path, monkeypatch, capsys):
    """A reader or a model that fails in a way no check foresaw: predict gives that file one JSON error line and
    answers the next; explain prints one line for a checkpoint that fails to load that way."""
    from dprotonet_core import cli, inference
    from dprotonet_core.data import io as data_io

    good, first, second = checkpoints[0], _png(tmp_path / "a.png"), _png(tmp_path / "b.png", 1)
    real_read = data_io.read_image
    calls = []

    def flaky(data, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a codec failed in a way nobody checked")
        return real_read(data, *args, **kwargs)

    monkeypatch.setattr(data_io, "read_image", flaky)
    assert cli.main(["predict", "--checkpoint", str(good), "--threads", "1", str(first), str(second)]) == 2
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"file": str(first), "error": "could not be read (RuntimeError)"}
    assert "prediction" in lines[1]

    monkeypatch.setattr(data_io, "read_image", real_read)
    monkeypatch.setattr(inference, "predict_batch", lambda *a, **k: (_ for _ in ()).throw(KeyError("x")))
    assert cli.main(["predict", "--checkpoint", str(good), "--threads", "1", str(first)]) == 2
    assert json.loads(capsys.readouterr().out) == {"file": str(first), "error": "no prediction (KeyError)"}

    import dprotonet_core.checkpoint as checkpoint_module

    monkeypatch.setattr(checkpoint_module, "load_checkpoint", lambda *a, **k: (_ for _ in ()).throw(KeyError("x")))
    assert cli.main(["explain", "--checkpoint", str(good), str(first), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: checkpoint {good}: could not be loaded (KeyError)"
