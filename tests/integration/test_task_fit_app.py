"""The right model for each image, on the bundled checkpoints (AppTest): an image no listed model is made for gets
no valid prediction (one can still ask, clearly marked); an image the model's own score finds foreign gets the
out-of-distribution warning; a bundled sample of the model's own kind gets neither.

The switch to another checkpoint (a chest DICOM uploaded on the fundus model) happens in the sidebar before the
picker is drawn; under st.navigation AppTest re-runs only the page script after a widget changes, so that path
is tested in Chromium (tests/browser/test_browser_routing.py) and by `review.route`'s unit test."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from dprotonet_core import review
from tests.app_support import upload
from tests.conftest import REAL_DICOM, REPO

APP = str(REPO / "app.py")
BUNDLED = REPO / "assets" / "checkpoints"
pytestmark = pytest.mark.skipif(
    not all((BUNDLED / n / "card.json").is_file() for n in review.BUNDLED_CHECKPOINTS)
    or not REAL_DICOM.is_file(), reason="bundled checkpoints or the shared chest DICOM absent")


@pytest.fixture
def bundled_app(monkeypatch, tmp_path):
    """The app on the bundled checkpoints, the fundus model selected, MDM cut to a few steps (what is tested is
    which model answers and what the page says, not the heatmap)."""
    from dprotonet_core.explain import mdm

    original = mdm.profile
    monkeypatch.setattr(mdm, "profile", lambda name: dataclasses.replace(original(name), iterations=2))
    monkeypatch.setenv("DPROTONET_BUNDLED", "1")
    monkeypatch.setenv("DPROTONET_MODELS_DIR", str(tmp_path / "no-models"))
    monkeypatch.delenv("DPROTONET_SAMPLES_DIR", raising=False)
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["checkpoint_path"] = str(BUNDLED / "ichallenge-pm")
    at.run()
    assert not at.exception, at.exception
    return at


def _ood_warnings(at: AppTest) -> list[str]:
    return [w.value for w in at.warning if "images this model learned from" in w.value]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _answer_is_greyed(at: AppTest) -> bool:
    """The flagged answer: grey text under the warning, no subheader and no confident bar."""
    return (any(":gray[Answer for an image unlike its training images: Prediction:" in m.value for m in at.markdown)
            and not any(str(s.value).startswith("Prediction:") for s in at.subheader))


def test_colour_noise_gets_the_out_of_distribution_warning(bundled_app):
    """A colour image fits the fundus model's `accepts` (colour), so only the model's own score can catch it."""
    rng = np.random.default_rng(0)
    at = upload(bundled_app, "noise.png", _png(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)))
    assert at.session_state["checkpoint_path"].endswith("ichallenge-pm")  # colour: the task fits
    assert len(_ood_warnings(at)) == 1 and _answer_is_greyed(at)


def test_a_photograph_passes_the_task_fit_check_and_gets_the_warning(bundled_app):
    """scikit-image's astronaut: a colour photograph, so it fits the fundus model's `accepts`; the detector (its
    backbone's last stage, nearest training images, input statistics) is what catches it. The warning says how
    many images the model learned from and where its threshold came from (the cross-validation's out-of-fold
    photographs)."""
    from skimage import data as skdata

    at = upload(bundled_app, "photo.png", _png(skdata.astronaut()))
    assert at.session_state["checkpoint_path"].endswith("ichallenge-pm")
    (warning,) = _ood_warnings(at)
    assert "unlike the 400 images this model learned from" in warning and "out-of-fold" in warning
    assert _answer_is_greyed(at)


def test_an_mr_fits_no_model_and_gets_no_valid_prediction(bundled_app):
    from pydicom.data import get_testdata_file  # pydicom's own MR test file: no listed model takes an MR

    at = upload(bundled_app, "mr.dcm", open(get_testdata_file("MR_small.dcm"), "rb").read())
    assert any("not what this model was made for" in e.value and "modality MR" in e.value for e in at.error)
    assert not any(str(s.value).startswith("Prediction:") for s in at.subheader)
    at.toggle[0].set_value(True).run()
    # the answer, asked for, is marked not valid; an MR is also unlike the photographs, so it is greyed too
    assert any(str(s.value).startswith("NOT VALID FOR THIS IMAGE: Prediction:") for s in at.subheader) or any(
        ":gray[NOT VALID FOR THIS IMAGE: Answer for an image unlike its training images: Prediction:" in m.value
        for m in at.markdown)


def test_own_sample_gets_neither_notice_nor_warning(bundled_app):
    # P0003: a PALM photograph of the fundus model's own dataset (it trained on all 400; none is flagged)
    sample = next(s for s in review.list_samples() if s.file == "P0003.jpg")
    at = bundled_app
    at.selectbox(key="sample").set_value(sample).run()
    assert not at.exception, at.exception
    assert at.session_state["checkpoint_path"].endswith("ichallenge-pm")
    assert not [i for i in at.info if "reviewed with the" in i.value]
    assert not _ood_warnings(at) and not at.error
    own = review.samples_for(review.list_samples(), BUNDLED / "ichallenge-pm")
    assert own and all(s.dataset == "ichallenge-pm" for s in own)
