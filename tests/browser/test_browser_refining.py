"""Never a blank wait, in Chromium: after the prediction the upload's heatmap is drawn while MDM still runs and
refined in place, then replaced by the finished panes with their controls. The server runs every profile for
REFINING_STEPS steps, long enough on the tiny model for several refinements; the test checks the order of what
the page shows, not how long anything takes (`python -m bench.first_heatmap` measures that on the real models)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tests.app_support import make_models_dir
from tests.server_support import CHROMIUM, CHROMIUM_ARGS, few_mdm_steps, streamlit_server

pytestmark = pytest.mark.browser
REFINING_STEPS = 1500

if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (make system-deps)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    models = make_models_dir(tmp_path_factory.mktemp("models"))
    env = {**os.environ, "DPROTONET_MODELS_DIR": str(models),
           "DPROTONET_SAMPLES_DIR": str(tmp_path_factory.mktemp("no-samples")), "OMP_NUM_THREADS": "1"}
    with streamlit_server(env, launcher=few_mdm_steps(REFINING_STEPS)) as (url, _):
        yield url


def test_the_heatmap_is_drawn_while_mdm_runs_then_finished_in_place(server, tmp_path):
    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(3)
    path = tmp_path / "upload.png"
    Image.fromarray((rng.random((96, 96, 3)) * 255).astype(np.uint8)).save(path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1440, "height": 1100})
        page.set_default_timeout(180_000)
        page.goto(server)
        page.get_by_text("Upload an image").first.wait_for()
        page.locator("input[type=file]").first.set_input_files(str(path))
        page.get_by_text("Prediction:").first.wait_for()
        refining = page.get_by_text("Refining in place: step")
        refining.first.wait_for()
        # while it refines: both panes are drawn, and the finished view's controls are not there yet
        page.locator('[data-testid="stImage"] img').nth(1).wait_for()
        assert refining.count() >= 1 and page.get_by_text("Download report (PNG)").count() == 0
        first = refining.first.inner_text()
        # refined in place: the caption's step moves on while the prototype pane, sent once, stays drawn
        page.wait_for_function(
            """first => { const m = document.body.innerText.match(/Refining in place: step (\\d+)/);
                           const f = first.match(/step (\\d+)/); return m && f && Number(m[1]) > Number(f[1]); }""",
            arg=first)
        assert page.locator('[data-testid="stImage"] img').count() >= 2
        page.screenshot(path=str(tmp_path / "refining.png"), full_page=True)
        page.get_by_text("Download report (PNG)").first.wait_for()  # finished
        assert refining.count() == 0
        assert page.get_by_text(f"Adam {REFINING_STEPS} steps").count() >= 1
        assert "step" in first and f"of {REFINING_STEPS}" in first
        browser.close()
