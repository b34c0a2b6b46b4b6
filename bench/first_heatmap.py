"""Seconds from the prediction to the first heatmap and to the finished explanation, in Chromium, on the bundled
checkpoints, as a user uploads: `python -m bench.first_heatmap [--profiles standard paper]`.

A real `streamlit run` on loopback (the server's default: every core for the one explanation running),
Debian's Chromium through Playwright. For each image and MDM profile a fresh page uploads the file and the script
times, from the moment "Prediction:" is on the page, (1) the first refining heatmap (both panes drawn, "Refining
in place") and (2) the finished panes ("Download report"). Images: the shared chest CR DICOM (1024 x 1024) and a
PALM photograph of the shared set (224 px) upscaled to 2124 x 2056, the size of the PALM originals, as a stand-in
for a full-resolution fundus photograph (none is on this machine).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from PIL import Image

from bench.common import machine_info
from dprotonet_core.checkpoint import load_checkpoint
from dprotonet_core.config import MDM_PROFILES
from dprotonet_core.explain.mdm import card_default_profile
from dprotonet_core.review.settings import DEFAULT_MODELS_DIR, usable_cores
from dprotonet_core.review.settings import MDM_PROFILES as PROFILE_LABELS
from tests.conftest import PALM_DIR, REAL_DICOM
from tests.server_support import CHROMIUM, CHROMIUM_ARGS, streamlit_server


def _full_size_fundus(folder: Path) -> Path:
    source = PALM_DIR / "P0007.jpg"
    path = folder / "palm-P0007-2124x2056.jpg"
    Image.open(source).convert("RGB").resize((2124, 2056), Image.BICUBIC).save(path, quality=95)
    return path


def _pick_profile(page, profile: str) -> None:
    """Choose the profile in the sidebar (shown once an image is loaded); the page reruns with it."""
    picker = page.locator('[data-testid="stSelectbox"]').filter(has_text="MDM detail")
    picker.get_by_role("combobox").click()
    page.get_by_role("option", name=PROFILE_LABELS[profile], exact=False).first.click()


def measure(browser, url: str, path: Path, profile: str, default: str, timeout_s: float) -> tuple[float, float]:
    """(seconds to the first heatmap, seconds to the finished panes), both from the prediction on screen (for a
    profile other than the model's default: from the moment it is picked, the prediction being on screen
    already)."""
    page = browser.new_page(viewport={"width": 1440, "height": 1100})
    page.set_default_timeout(timeout_s * 1000)
    page.goto(url)
    page.get_by_text("Upload an image").first.wait_for()
    page.locator("input[type=file]").first.set_input_files(str(path))
    page.get_by_text("Prediction:").first.wait_for()
    steps = MDM_PROFILES[profile].iterations
    if profile != default:
        _pick_profile(page, profile)
    start = time.perf_counter()
    page.get_by_text(f"of {steps}. ").first.wait_for()  # the refining caption of this profile's run
    page.locator('[data-testid="stImage"] img').nth(1).wait_for()
    first = time.perf_counter() - start
    page.get_by_text("Download report (PNG)").first.wait_for()
    done = time.perf_counter() - start
    page.close()
    return first, done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["default", "paper"], choices=["default", *PROFILE_LABELS],
                        help="MDM profiles to time; default: each checkpoint's default (its card's)")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from dprotonet_core.explain.mdm import fast_bf16

    print(machine_info(), f"; server: {usable_cores()} torch threads (DPROTONET_TORCH_THREADS default: every core), "
          f"explanations one at a time; native bf16: {'yes' if fast_bf16() else 'no (float32 steps)'}")
    print("| image | profile | first heatmap s | finished s |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        images = {"chest CR DICOM 1024 x 1024": (REAL_DICOM, "rsna-pneumonia"),
                  "fundus JPEG 2124 x 2056": (_full_size_fundus(Path(tmp)), "ichallenge-pm")}
        env = {**os.environ, "DPROTONET_BUNDLED": "1", "DPROTONET_MODELS_DIR": str(Path(tmp) / "none"),
               "DPROTONET_SAMPLES_DIR": str(Path(tmp) / "no-samples")}
        with streamlit_server(env) as (url, _), sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            for wanted in args.profiles:
                for name, (path, checkpoint) in images.items():
                    default = card_default_profile(load_checkpoint(DEFAULT_MODELS_DIR / checkpoint).card)
                    profile = default if wanted == "default" else wanted
                    first, done = measure(browser, url, path, profile, default, args.timeout)
                    shown = f"{profile} ({checkpoint}'s default)" if profile == default else profile
                    print(f"| {name} | {shown} | {first:.1f} | {done:.1f} |", flush=True)
            browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
