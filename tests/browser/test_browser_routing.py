"""The right model for the image, in Chromium, on the bundled checkpoints: a chest DICOM uploaded while the fundus
model is selected is reviewed with the RSNA model and the page says so in one line. MDM runs a few steps only
(the server is launched with every profile cut short): what is checked is the notice and which model answered."""

from __future__ import annotations

import os

import pytest

from dprotonet_core import review
from tests.conftest import REAL_DICOM, REPO
from tests.server_support import CHROMIUM, CHROMIUM_ARGS, few_mdm_steps, streamlit_server

pytestmark = pytest.mark.browser
ARTIFACTS = REPO / "tests" / "artifacts"
BUNDLED = REPO / "assets" / "checkpoints"

if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (make system-deps)", allow_module_level=True)
if not all((BUNDLED / n / "card.json").is_file() for n in review.BUNDLED_CHECKPOINTS) or not REAL_DICOM.is_file():
    pytest.skip("bundled checkpoints or the shared chest DICOM absent", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {**os.environ, "DPROTONET_BUNDLED": "1", "DPROTONET_MODELS_DIR": str(tmp_path_factory.mktemp("none")),
           "OMP_NUM_THREADS": "1"}
    env.pop("DPROTONET_SAMPLES_DIR", None)
    with streamlit_server(env, launcher=few_mdm_steps(2)) as (url, _):
        yield url


def test_chest_dicom_on_the_fundus_model_switches_with_a_notice(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1440, "height": 1100})
        page.set_default_timeout(120_000)
        page.goto(server)
        page.get_by_text("Upload an image").first.wait_for()
        sidebar = page.locator('[data-testid="stSidebar"]')
        sidebar.get_by_text("from colour fundus photographs").first.wait_for()  # opens on the fundus model
        page.locator("input[type=file]").first.set_input_files(str(REAL_DICOM))
        notice = page.get_by_text("Frontal chest radiograph: reviewed with the RSNA")
        notice.first.wait_for()
        page.get_by_text("Prediction:").first.wait_for()
        sidebar.get_by_text("from frontal chest radiographs").first.wait_for()  # the sidebar follows
        assert sidebar.get_by_text("from colour fundus photographs").count() == 0
        page.get_by_role("button", name="Download report (PNG)").wait_for()  # finished, not a refining preview
        page.locator(".js-plotly-plot .imagelayer image").nth(1).wait_for(state="attached")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review-routed-chest-dicom.png"), full_page=True)
        browser.close()


def test_a_look_alike_photograph_gets_the_warning_and_a_greyed_answer(server, tmp_path):
    """scikit-image's coffee cup, a colour photograph: it passes the fundus model's task-fit check (colour), and
    the out-of-distribution detector flags it; the answer is shown in grey under the warning, and the report says
    the same."""
    import json

    from PIL import Image
    from playwright.sync_api import sync_playwright
    from skimage import data as skdata

    photo = tmp_path / "coffee.png"
    Image.fromarray(skdata.coffee()).save(photo)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1440, "height": 1100})
        page.set_default_timeout(120_000)
        page.goto(server)
        page.get_by_text("Upload an image").first.wait_for()
        page.locator("input[type=file]").first.set_input_files(str(photo))
        page.get_by_text("unlike the 400 images this model learned from").first.wait_for()
        page.get_by_text("Answer for an image unlike its training images: Prediction:").first.wait_for()
        assert page.get_by_text("Frontal chest radiograph: reviewed with").count() == 0  # the fundus model answers
        page.locator(".js-plotly-plot .imagelayer image").nth(1).wait_for(state="attached")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review-look-alike-warning.png"), full_page=True)
        with page.expect_download() as download:
            page.get_by_role("button", name="Download report (JSON)").click()
        report = json.loads(open(download.value.path()).read())
        assert report["ood"]["flagged"] is True and "400 images" in report["ood"]["warning"]
        browser.close()
