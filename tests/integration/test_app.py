"""AppTest over every page of the review app, against the tiny test checkpoint (tests/app_support.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.app_support import ModelCallCounter, make_models_dir, make_samples_dir, upload
from tests.conftest import PALM_DIR, REAL_DICOM, REPO

APP = str(REPO / "app.py")
TIMEOUT = 60


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return make_models_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture
def app(models_dir, monkeypatch, tmp_path) -> AppTest:
    monkeypatch.setenv("DPROTONET_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("DPROTONET_SAMPLES_DIR", str(tmp_path / "no-samples"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "subheader", "title", "error", "warning", "info")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def _panes(at: AppTest) -> list:
    return at.get("plotly_chart")


def _image_traces(at: AppTest) -> list[dict]:
    import json

    charts = _panes(at)
    assert charts, "no linked-pane figure shown"
    figure = json.loads(charts[0].proto.spec)
    return [t for t in figure["data"] if t["type"] == "image"]


def test_landing_page_shows_uploader_disclaimer_and_synthetic_banner(app):
    assert app.file_uploader(key="upload") is not None
    text = _texts(app)
    assert "not a medical device" in text
    assert "SYNTHETIC" in text
    picker = app.sidebar.selectbox(key="checkpoint_picker")
    assert "tiny-test" in str(picker.value)
    assert "broken-example" in "\n".join(str(e.value) for e in app.sidebar.markdown)  # listed as invalid


@pytest.mark.skipif(not REAL_DICOM.is_file(), reason="../shared/data DICOM absent")
def test_dicom_upload_gives_prediction_two_heatmaps_and_gamma_needs_no_model_call(app, monkeypatch):
    counter = ModelCallCounter(monkeypatch)
    upload(app, "chest.dcm", REAL_DICOM.read_bytes())
    assert counter.calls > 0  # prediction and MDM ran
    assert any(s.value.startswith("Prediction:") for s in app.subheader)
    assert len(_image_traces(app)) == 2  # query and prototype panes, each with its heatmap
    assert app.sidebar.selectbox(key="window_preset").options  # DICOM window presets offered
    metadata = str(app.sidebar.table[0].value)
    assert "CR" in metadata and "CHEST" in metadata

    before = counter.calls
    first = [t["source"] for t in _image_traces(app)]
    app.slider(key="gamma").set_value(6.0).run()
    assert not app.exception
    assert counter.calls == before, "moving gamma called the model"
    assert [t["source"] for t in _image_traces(app)] != first  # the panes did change
    app.slider(key="alpha").set_value(0.8).run()
    app.radio(key="view").set_value("outline").run()
    app.selectbox(key="colormap").set_value("viridis").run()
    assert not app.exception
    assert counter.calls == before


@pytest.mark.skipif(not REAL_DICOM.is_file(), reason="../shared/data DICOM absent")
def test_window_preset_and_other_prototype(app, monkeypatch):
    upload(app, "chest.dcm", REAL_DICOM.read_bytes())
    app.sidebar.selectbox(key="window_preset").set_value("lung").run()
    assert not app.exception
    app.sidebar.selectbox(key="window_preset").set_value("manual").run()
    app.sidebar.number_input(key="win_w:manual").set_value(80.0).run()
    assert not app.exception and any(s.value.startswith("Prediction:") for s in app.subheader)
    radio = next(r for r in app.radio if r.label == "Explain with prototype")
    other = radio.options[1]
    radio.set_value(int(other.split()[0].lstrip("#"))).run()
    assert not app.exception
    assert len(_image_traces(app)) == 2


def test_broken_upload_shows_one_message_and_page_keeps_working(app):
    upload(app, "scan.dcm", b"DICM" + os.urandom(300))
    assert len(app.error) >= 1
    assert any("file" in e.value.lower() for e in app.error)
    png = (PALM_DIR / "H0001.jpg") if PALM_DIR.is_dir() else None
    if png is not None:
        upload(app, "fundus.jpg", png.read_bytes())
        assert any(s.value.startswith("Prediction:") for s in app.subheader)


@pytest.mark.skipif(not PALM_DIR.is_dir(), reason="../shared/data PALM images absent")
def test_each_sample_loads(models_dir, monkeypatch, tmp_path):
    palm = sorted(PALM_DIR.glob("P*.jpg"))[0]
    folder = make_samples_dir(tmp_path / "samples", [(palm, "PM", "iChallenge-PM"), (REAL_DICOM, "none", "SIIM")])
    monkeypatch.setenv("DPROTONET_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("DPROTONET_SAMPLES_DIR", str(folder))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    box = at.selectbox(key="sample")
    assert len(box.options) == 2  # the row whose file is missing is skipped
    from dprotonet_core import review

    for sample in review.list_samples(folder):
        at.selectbox(key="sample").set_value(sample).run()
        assert not at.exception
        assert any(s.value.startswith("Prediction:") for s in at.subheader), sample.file


def test_bundled_samples_load(models_dir, monkeypatch):
    from dprotonet_core import review

    samples = review.list_samples(review.DEFAULT_SAMPLES_DIR)
    if not samples:
        pytest.skip("no bundled samples in assets/samples yet")
    for sample in samples:
        review.read_upload(sample.path.read_bytes())  # every bundled sample decodes


@pytest.mark.parametrize("page", ["pages/prototypes.py", "pages/evaluation.py", "pages/model_card.py"])
def test_other_pages_render(app, page):
    app.switch_page(page).run()
    assert not app.exception
    text = _texts(app)
    assert "not a medical device" in text
    if page.endswith("prototypes.py"):
        assert len(app.get("image")) >= 5 and _panes(app)  # 4 prototypes + detail
        app.selectbox(key="proto_detail").set_value(3).run()
        assert not app.exception
    if page.endswith("evaluation.py"):
        assert "No evaluation is stored" in text
    if page.endswith("model_card.py"):
        assert "tiny-test" in text and "Intended use" in "\n".join(e.label for e in app.expander)
        assert "Measured performance" in text  # the card's figures as a table, not only as JSON
        table = app.dataframe[0].value
        assert list(table["Value"]) == ["50.0%"] and "8 images" in table["Measured on"][0]


def test_no_valid_checkpoint_keeps_app_working(monkeypatch, tmp_path):
    from tests.app_support import make_invalid_checkpoint

    make_invalid_checkpoint(tmp_path / "only-broken")
    monkeypatch.setenv("DPROTONET_MODELS_DIR", str(tmp_path))
    monkeypatch.setattr("dprotonet_core.review.catalogue.DEFAULT_MODELS_DIR", tmp_path / "none")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("No usable checkpoint" in w.value for w in at.sidebar.warning)


@pytest.mark.parametrize("name", ["ichallenge-pm", "rsna-pneumonia"])
def test_bundled_sample_shows_its_stored_explanation_at_once(name, monkeypatch, tmp_path):
    """The demo path of `make run`: a bundled checkpoint and one of its samples give the prediction and both
    heatmaps from the explanation stored when the demo was built: no MDM optimisation runs."""
    monkeypatch.setenv("DPROTONET_BUNDLED", "1")
    monkeypatch.setenv("DPROTONET_MODELS_DIR", str(tmp_path / "no-models"))
    monkeypatch.delenv("DPROTONET_SAMPLES_DIR", raising=False)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["checkpoint_path"] = str(REPO / "assets" / "checkpoints" / name)  # as the picker stores it
    at.run()
    assert not at.exception, at.exception
    assert at.sidebar.selectbox(key="checkpoint_picker").value.endswith(name)
    from dprotonet_core import review

    sample = next(s for s in review.list_samples() if s.dataset == name)
    assert sample.title in at.selectbox(key="sample").options
    counter = ModelCallCounter(monkeypatch)
    at.selectbox(key="sample").set_value(sample)
    at.run()
    assert not at.exception, at.exception
    # the answer: as a subheader, or (rsna-1, an AP pneumonia film and one of the 16 of 541 test films the chest
    # model's out-of-distribution detector flags) in grey under the warning
    flagged = [w.value for w in at.warning if "images this model learned from" in w.value]
    greyed = any(":gray[Answer for an image unlike its training images: Prediction:" in m.value for m in at.markdown)
    assert any(str(s.value).startswith("Prediction:") for s in at.subheader) != bool(flagged)
    assert greyed == bool(flagged)
    assert len(_image_traces(at)) == 2
    assert counter.calls <= 2, f"{counter.calls} network calls: the stored explanation was not used"
    assert "computed when the demo was built" in _texts(at)
    # each pane says what made it: the query side the profile this model's card names as its default (the picker
    # starts there), the prototype side what the card records (made with that same profile)
    from dprotonet_core.checkpoint import load_checkpoint
    from dprotonet_core.explain import mdm

    card = load_checkpoint(REPO / "assets" / "checkpoints" / name).card
    default = mdm.card_default_profile(card)
    assert at.sidebar.selectbox(key="mdm_profile").value == default
    steps = {"standard": "200 steps, lr decayed over the last 25% of steps, network in bf16, lr 0.08, betas (0.430, "
                         "0.992)",
             "thorough": "400 steps, lr decayed over the last 25% of steps, network in bf16, lr 0.04, betas (0.656, "
                         "0.996)"}[default]
    label = (f"{default} profile: Adam {steps}, loss eq. 13 / 14 with the deletion-scaled distance, eta 0.4 (a named "
             "deviation)")
    assert f"Your image: {label}; computed when the demo was built" in _texts(at)
    assert card["prototype_mdm"]["profile"] == default
    assert f"Prototype: {default} profile: Adam {mdm.profile(default).iterations} steps" in _texts(at)


def test_each_model_starts_at_the_profile_its_card_names_and_keeps_the_users_choice(monkeypatch, tmp_path):
    """A card's mdm_default_profile is where the MDM picker starts for that model, marked as its default; a choice
    the user makes holds across reruns; a card without one starts at the config's default."""
    import json

    from dprotonet_core.config import DEFAULT_MDM_PROFILE
    from tests.app_support import make_tiny_checkpoint

    folder = make_tiny_checkpoint(tmp_path / "models" / "tiny-fast-default")
    card = json.loads((folder / "card.json").read_text())
    card["mdm_default_profile"] = {"profile": "fast"}
    (folder / "card.json").write_text(json.dumps(card))  # the card's hashes cover the other files, not itself
    monkeypatch.setenv("DPROTONET_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("DPROTONET_SAMPLES_DIR", str(tmp_path / "no-samples"))
    monkeypatch.setenv("DPROTONET_BUNDLED", "0")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    upload(at, "chest.dcm", REAL_DICOM.read_bytes())
    picker = at.sidebar.selectbox(key="mdm_profile")
    from dprotonet_core import review

    labels = dict(zip(review.MDM_PROFILES, picker.options))
    assert picker.value == "fast" and DEFAULT_MDM_PROFILE != "fast"
    assert labels["fast"].endswith(": this model's default")
    assert [name for name, text in labels.items() if "default" in text] == ["fast"]
    assert "Your image: fast profile: Adam 100 steps" in _texts(at)
    picker.set_value(DEFAULT_MDM_PROFILE).run()
    at.run()
    assert not at.exception and at.sidebar.selectbox(key="mdm_profile").value == DEFAULT_MDM_PROFILE


def _bundled_page(monkeypatch, tmp_path, name: str, page: str) -> AppTest:
    monkeypatch.setenv("DPROTONET_BUNDLED", "1")
    monkeypatch.setenv("DPROTONET_MODELS_DIR", str(tmp_path / "no-models"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["checkpoint_path"] = str(REPO / "assets" / "checkpoints" / name)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def test_the_evaluation_page_never_shows_a_training_image_figure_as_accuracy(monkeypatch, tmp_path):
    """iChallenge-PM trained on all 400 photographs: its stored evaluation ran on them. The page says so, labels
    every such figure "on training images", and shows the cross-validation's figures as the accuracy."""
    if not (REPO / "assets" / "checkpoints" / "ichallenge-pm" / "evaluation" / "metrics.json").is_file():
        pytest.skip("no stored iChallenge-PM evaluation")
    at = _bundled_page(monkeypatch, tmp_path, "ichallenge-pm", "pages/evaluation.py")
    assert any("trained on" in w.value and "not how accurate it is" in w.value for w in at.warning)
    labels = [m.label for m in at.metric]
    assert labels and all(label.endswith("on training images") for label in labels)
    assert "expected accuracy" in _texts(at) and "cross-validation" in _texts(at)
    cv_table = at.dataframe[0].value
    assert any("fold" in str(on) for on in cv_table["Measured on"])


def test_the_sidebar_names_the_model_in_full_and_keeps_credits_one_click_away(monkeypatch, tmp_path):
    """The picker's entries fit its width (the full names were cut: "RSNA pneumonia (real radiograp"); the full
    name is spelled out under it; the data credits sit in an expander, not in the sidebar's running text."""
    monkeypatch.setenv("DPROTONET_BUNDLED", "1")
    monkeypatch.setenv("DPROTONET_MODELS_DIR", str(tmp_path / "no-models"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["checkpoint_path"] = str(REPO / "assets" / "checkpoints" / "ichallenge-pm")
    at.run()
    assert not at.exception, at.exception
    picker = at.sidebar.selectbox(key="checkpoint_picker")
    assert picker.options and all(len(label) <= 26 for label in picker.options), picker.options
    assert "iChallenge-PM (demo)" in picker.options
    sidebar_text = "\n".join(str(m.value) for m in at.sidebar.markdown)
    assert "**Answering:** iChallenge-PM (PALM) demo" in sidebar_text
    assert "Fang et al." not in "\n".join(str(c.value) for c in at.sidebar.caption if c not in
                                          [c2 for e in at.sidebar.expander for c2 in e.caption])
    credits = [e for e in at.sidebar.expander if e.label == "Training data and credits"]
    assert credits and any("Fang et al." in str(c.value) for c in credits[0].caption)
    at.switch_page("pages/model_card.py").run()  # and on the Model card, in its summary, not only in the JSON
    assert not at.exception, at.exception
    summary = "\n".join(review_unescaped(str(m.value)) for m in at.markdown)
    assert "**Data credit:** PALM / iChallenge-PM 2019" in summary and "Fang et al." in summary


def review_unescaped(text: str) -> str:
    from dprotonet_core import review

    return review.unescaped(text)
