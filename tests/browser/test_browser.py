"""The review app in a real browser: Debian's Chromium through Playwright against `streamlit run` on loopback.

The server runs on a free 127.0.0.1 port with DPROTONET_MODELS_DIR pointing at the tiny test checkpoint;
readiness is polled on /_stcore/health. Screenshots of every page go to tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app_support import make_models_dir
from tests.conftest import PALM_DIR, REAL_DICOM, REPO
from tests.server_support import CHROMIUM, CHROMIUM_ARGS, streamlit_server

pytestmark = pytest.mark.browser

ARTIFACTS = REPO / "tests" / "artifacts"
RESULT_TIMEOUT_MS = 90_000

if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (make system-deps)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    models = make_models_dir(tmp_path_factory.mktemp("models"))
    env = {**os.environ, "DPROTONET_MODELS_DIR": str(models),
           "DPROTONET_SAMPLES_DIR": str(tmp_path_factory.mktemp("no-samples")), "OMP_NUM_THREADS": "1"}
    with streamlit_server(env) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1440, "height": 1100}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(RESULT_TIMEOUT_MS)
    page.goto(server)
    page.get_by_text("Upload an image").first.wait_for()
    yield page
    context.close()


def _screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # Streamlit scrolls inside its main block: grow the viewport to the content, then take the picture.
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('[data-testid=stMain], [data-testid=stMainBlockContainer]')]"
        ".map(e => e.scrollHeight), 800)"
    )
    page.set_viewport_size({"width": 1440, "height": min(int(height) + 40, 6000)})
    charts = page.locator('[data-testid="stPlotlyChart"]')
    for i in range(charts.count()):  # every chart drawn before the picture
        charts.nth(i).locator(".main-svg").first.wait_for(state="attached")
    page.wait_for_timeout(300)  # let plotly finish redrawing at the new size
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 1100})


def _upload_and_wait(page, path: Path) -> None:
    page.locator("input[type=file]").first.set_input_files(str(path))
    page.get_by_text("Prediction:").first.wait_for()
    page.get_by_role("button", name="Download report (PNG)").wait_for()  # the finished panes, not a preview
    _pane_images(page, wait=True)


def _pane_images(page, wait: bool = False) -> list[str]:
    images = page.locator(".js-plotly-plot .imagelayer image")
    if wait:
        images.nth(1).wait_for(state="attached")
    return [images.nth(i).get_attribute("href") for i in range(images.count())]


def _move_gamma(page, steps: int) -> None:
    thumb = page.get_by_role("slider", name="Threshold gamma")
    thumb.focus()
    for _ in range(steps):
        thumb.press("ArrowRight")


@pytest.mark.skipif(not REAL_DICOM.is_file(), reason="../shared/data DICOM absent")
def test_dicom_prediction_heatmaps_gamma_and_report(page, tmp_path):
    _upload_and_wait(page, REAL_DICOM)
    before = _pane_images(page)
    assert len(before) == 2
    _screenshot(page, "review-dicom")

    _move_gamma(page, 4)
    page.wait_for_function(
        "(old) => { const i = [...document.querySelectorAll('.js-plotly-plot .imagelayer image')]"
        ".map(e => e.getAttribute('href')); return i.length === 2 && i.join() !== old; }",
        arg=",".join(before),
    )
    assert page.get_by_text("Threshold gamma").count() == 1

    with page.expect_download() as info:
        page.get_by_role("button", name="Download report (PNG)").click()
    report = tmp_path / "report.png"
    info.value.save_as(report)
    data = report.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert b"tEXt" not in data and b"iTXt" not in data and b"zTXt" not in data and b"eXIf" not in data
    with page.expect_download() as info:
        page.get_by_role("button", name="Download report (JSON)").click()
    text = Path(info.value.path()).read_text()
    assert '"prediction"' in text and "chest" not in text.lower()  # no file name, no header field

    # the DICOM objects for a PACS: SEG + SR + SC of this upload, accepted by dciodvfy, in the source's study
    import shutil
    import subprocess
    import zipfile

    import pydicom

    assert page.get_by_text("contain the patient's identifiers").count() >= 1
    with page.expect_download() as info:
        page.get_by_role("button", name="Download DICOM objects for a PACS (ZIP)").click()
    with zipfile.ZipFile(info.value.path()) as archive:
        names = sorted(archive.namelist())
        assert names == ["SC.dcm", "SEG.dcm", "SR.dcm"]
        archive.extractall(tmp_path / "dicom")
    source = pydicom.dcmread(REAL_DICOM)
    for name in names:
        ds = pydicom.dcmread(tmp_path / "dicom" / name)
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        if shutil.which("dciodvfy"):
            run = subprocess.run(["dciodvfy", str(tmp_path / "dicom" / name)], capture_output=True, text=True,
                                 timeout=60)
            assert not [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")], name


@pytest.mark.skipif(not PALM_DIR.is_dir(), reason="../shared/data PALM images absent")
def test_palm_image_and_every_page(page):
    _upload_and_wait(page, sorted(PALM_DIR.glob("P*.jpg"))[0])
    assert len(_pane_images(page)) == 2
    _screenshot(page, "review-palm")
    for title, marker, name in (
        ("Prototypes", "Prototype detail", "prototypes"),
        ("Evaluation", "No evaluation is stored", "evaluation"),
        ("Model card", "Integrity", "model-card"),
    ):
        page.get_by_role("link", name=title).click()
        page.get_by_text(marker).first.wait_for()
        _screenshot(page, name)
