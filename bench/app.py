"""Benchmark of the review app; prints figures, asserts nothing.

    python -m bench.app [--checkpoint DIR] [--image FILE] [--profile fast|paper] [--no-browser]

Measures, on this machine:
  1. cold start: `streamlit run app.py` spawned -> /_stcore/health ok -> first page shown in Chromium
  2. upload -> prediction, and upload -> both heatmaps (in Chromium, end to end; and in the facade alone)
  3. a gamma change: re-render time of the fragment (facade) and in the browser, with the number of model
     calls it made (counted on DProtoNet.feature_map; it should be 0)
The checkpoint is the bundled iChallenge-PM demo when it exists, else the tiny test checkpoint (said so).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import machine_info

REPO = Path(__file__).resolve().parents[1]

SHARED = REPO.parent / "shared" / "data"
DEFAULT_IMAGE = SHARED / "dicom" / "cr-chest-pa-jpeg-baseline.dcm"


def pick_checkpoint(explicit: str | None, scratch: Path) -> tuple[Path, str]:
    from dprotonet_core import review

    if explicit:
        return Path(explicit), "given on the command line"
    bundled = review.DEFAULT_MODELS_DIR / "ichallenge-pm"
    if (bundled / "card.json").is_file():
        return bundled, "bundled iChallenge-PM demo"
    from tests.app_support import make_tiny_checkpoint

    return make_tiny_checkpoint(scratch / "models" / "tiny-test"), "tiny TEST checkpoint (bundled demos not built)"


class Counter:
    def __init__(self) -> None:
        from dprotonet_core.model.dprotonet import DProtoNet

        self.calls = 0
        original = DProtoNet.feature_map

        def counted(model, x):
            self.calls += 1
            return original(model, x)

        DProtoNet.feature_map = counted


def bench_facade(checkpoint_dir: Path, image: Path, profile: str) -> None:
    import torch

    from dprotonet_core import review

    counter = Counter()
    t0 = time.perf_counter()
    checkpoint = review.load_model(checkpoint_dir)
    t_load = time.perf_counter() - t0
    data = image.read_bytes()
    t0 = time.perf_counter()
    loaded = review.read_upload(data)
    case = review.cached_case({}, review.file_hash(data), None, checkpoint, loaded)
    t_pred = time.perf_counter() - t0
    cache = review.ExplanationCache()
    explanation = review.explain_cached(
        cache, case.key, checkpoint, case.x, review.default_prototype(case.prediction), profile
    )
    settings = review.default_settings()
    review.render_case(case, checkpoint, explanation, settings)
    t_heat = time.perf_counter() - t0
    before = counter.calls
    times = []
    for gamma in (1.0, 2.0, 4.0, 5.0, 6.0, 3.0):
        t0 = time.perf_counter()
        review.render_case(case, checkpoint, explanation, review.DisplaySettings(gamma=gamma))
        times.append(time.perf_counter() - t0)
    print(f"facade (no browser), torch threads {torch.get_num_threads()}:")
    print(f"  model load                       {t_load * 1000:8.0f} ms")
    print(f"  upload -> prediction              {t_pred * 1000:8.0f} ms")
    print(f"  upload -> both heatmaps           {t_heat * 1000:8.0f} ms  (MDM {profile}: "
          f"{explanation.iterations} iterations, {explanation.seconds:.2f} s)")
    print(f"  gamma change re-render (median)   {sorted(times)[len(times) // 2] * 1000:8.0f} ms  "
          f"model calls: {counter.calls - before}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_browser(models_dir: Path, image: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        print("browser: skipped (no chromium)")
        return
    from playwright.sync_api import sync_playwright

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DPROTONET_MODELS_DIR": str(models_dir)}
    t_spawn = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                time.sleep(0.1)
            if time.perf_counter() - t_spawn > 120:
                raise RuntimeError("server did not start in 120 s")
        t_health = time.perf_counter() - t_spawn
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1440, "height": 1100})
            page.set_default_timeout(180_000)
            page.goto(url)
            page.get_by_text("Upload an image").first.wait_for()
            t_first = time.perf_counter() - t_spawn
            t0 = time.perf_counter()
            page.locator("input[type=file]").first.set_input_files(str(image))
            page.get_by_text("Prediction:").first.wait_for()
            t_pred = time.perf_counter() - t0
            images = page.locator(".js-plotly-plot .imagelayer image")
            images.nth(1).wait_for(state="attached")
            t_heat = time.perf_counter() - t0
            before = ",".join(images.nth(i).get_attribute("href") for i in range(2))
            t0 = time.perf_counter()
            slider = page.get_by_role("slider", name="Threshold gamma")
            slider.focus()
            slider.press("ArrowRight")
            page.wait_for_function(
                "(old) => [...document.querySelectorAll('.js-plotly-plot .imagelayer image')]"
                ".map(e => e.getAttribute('href')).join() !== old", arg=before,
            )
            t_gamma = time.perf_counter() - t0
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
    print("browser (Chromium, end to end, includes Plotly drawing):")
    print(f"  cold start: spawn -> health ok    {t_health:8.1f} s")
    print(f"  cold start: spawn -> first page   {t_first:8.1f} s")
    print(f"  upload -> prediction              {t_pred:8.1f} s")
    print(f"  upload -> both heatmaps           {t_heat:8.1f} s")
    print(f"  gamma change -> panes redrawn     {t_gamma:8.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--image", default=str(DEFAULT_IMAGE))
    parser.add_argument("--profile", default="fast", choices=["fast", "paper"])
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    print(f"machine: {machine_info()}; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint, why = pick_checkpoint(args.checkpoint, Path(scratch))
        print(f"checkpoint: {checkpoint} ({why}); image: {args.image}")
        bench_facade(checkpoint, Path(args.image), args.profile)
        if not args.no_browser:
            bench_browser(checkpoint.parent, Path(args.image))


if __name__ == "__main__":
    main()
