"""One user cannot starve the others: a demo server offers no 800-step profile and caps each explanation, a full
explanation queue says so at once on the page, and a session keeps only the working-size image, as uint8.

Through AppTest (the page and the facade it calls); the queue itself is tested in tests/unit/test_queue.py.
"""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from dprotonet_core import review
from dprotonet_core.review import queue as queue_module
from tests.app_support import TINY_NAME, make_tiny_checkpoint
from tests.conftest import REPO

APP = str(REPO / "app.py")
TIMEOUT = 60

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_checkpoint(root / TINY_NAME)
    return root


@pytest.fixture(autouse=True)
def quick_mdm(monkeypatch):
    from dataclasses import replace

    from dprotonet_core.explain import mdm

    for name in list(mdm.MDM_PROFILES):
        monkeypatch.setitem(mdm.MDM_PROFILES, name, replace(mdm.profile(name), iterations=5))


def _png(shape=(70, 90, 3), seed: int = 3) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _app(models, tmp_path, monkeypatch) -> AppTest:
    monkeypatch.setenv("DPROTONET_MODELS_DIR", str(models))
    monkeypatch.setenv("DPROTONET_SAMPLES_DIR", str(tmp_path / "no-samples"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["checkpoint_path"] = str(models / TINY_NAME)
    at.run()
    assert not at.exception, at.exception
    return at


def test_a_demo_server_offers_no_long_profile_and_refuses_one(models, tmp_path, monkeypatch):
    monkeypatch.setenv("DPROTONET_DEMO", "1")
    at = _app(models, tmp_path, monkeypatch)
    at.file_uploader(key="upload").set_value(("x.png", _png(), "image/png")).run()
    assert not at.exception, at.exception
    options = at.sidebar.selectbox(key="mdm_profile").options
    assert options and not any("800 steps" in o for o in options), options
    assert any(str(s.value).startswith("Prediction:") for s in at.subheader)

    checkpoint = review.load_model(models / TINY_NAME)
    x = review.default_model_input(checkpoint, _png())
    with pytest.raises(review.ReviewError, match="turned off on this server"):
        review.explain(checkpoint, x, 0, "paper")


def test_a_full_queue_is_a_clear_message_not_a_wait(models, tmp_path, monkeypatch):
    """Another session's explanation runs and the queue takes no more: the page says so at once."""
    monkeypatch.setattr(queue_module.EXPLAINER, "max_waiting", 0)
    at = _app(models, tmp_path, monkeypatch)
    release, holding = threading.Event(), threading.Event()

    def other_session() -> None:
        with queue_module.EXPLAINER.turn(owner="another session"):
            holding.set()
            release.wait(60)

    thread = threading.Thread(target=other_session)
    thread.start()
    try:
        assert holding.wait(10)
        at.file_uploader(key="upload").set_value(("x.png", _png(), "image/png")).run()
        assert not at.exception, at.exception
        assert any("The explainer is busy" in str(e.value) for e in at.error), [e.value for e in at.error]
    finally:
        release.set()
        thread.join(10)
    at.run()  # the other explanation is done: this one now runs
    assert not at.exception and not any("busy" in str(e.value) for e in at.error)
    assert at.get("plotly_chart"), "no panes after the queue emptied"


def _array_bytes(value, seen: set[int]) -> int:
    """Bytes of every numpy array and tensor reachable from `value` (dataclasses, dicts, lists), each counted once."""
    import dataclasses

    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(_array_bytes(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return sum(_array_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_array_bytes(v, seen) for v in value)
    if hasattr(value, "__dict__") and type(value).__module__.startswith("dprotonet_core"):
        return sum(_array_bytes(v, seen) for v in vars(value).values())
    return 0


def test_a_session_keeps_the_working_image_as_uint8_only(models, tmp_path, monkeypatch):
    """A 12-megapixel colour PNG (under the working size, so it is kept at full size): the session holds about
    12 M x 3 bytes of pixels, not float32 (4 x that) nor several copies."""
    at = _app(models, tmp_path, monkeypatch)
    height, width = 3000, 4000
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([(xx * 255 // width), (yy * 255 // height), ((xx + yy) % 256)], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG", compress_level=1)
    at.file_uploader(key="upload").set_value(("big.png", buffer.getvalue(), "image/png")).run()
    assert not at.exception, at.exception
    assert any(str(s.value).startswith("Prediction:") for s in at.subheader)
    seen: set[int] = set()
    held = sum(_array_bytes(v, seen) for v in at.session_state.to_dict().values())
    pixels = height * width * 3
    assert held <= pixels + 8 * 1024 * 1024, f"the session holds {held / 2**20:.0f} MB for {pixels / 2**20:.0f} MB"
    loaded = at.session_state["loaded"]
    assert loaded.pixels.dtype == np.uint8 and loaded.pixels.shape == (height, width, 3)
