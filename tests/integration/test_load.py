"""Many users at once: 8 concurrent browser sessions against one `streamlit run` on loopback.

One Chromium (Debian's, through Playwright) with 8 contexts, i.e. 8 independent Streamlit sessions. All 8 pages
are opened first, then each uploads a DIFFERENT image within a few milliseconds of the others, so the server
predicts and runs MDM for 8 sessions at the same time. Every session must then show its own correct result,
equal to a single-session run of the same image computed here with the facade (dprotonet_core.review): the
prediction line, the query pane's heatmap image (byte for byte), the notes under the panes, and the JSON
report (its image sha256 is that session's own file). No session errors, and the server is still healthy
afterwards. Printed: wall time from the first upload to the last complete result, when each session's result was
seen (explanations run one at a time, first come first served: none starves), and the server's peak RSS.

Bounded: 127.0.0.1 only, 8 sessions, one upload and one report download each, every wait has a timeout.

Speed (CI on 2 shared cores): the server is the real `streamlit run` CLI, started through a short launcher
that first cuts every MDM profile (the app's default standard profile among them) to
MDM_TEST_ITERATIONS iterations; DPROTONET_BUNDLED=0 hides the bundled demo checkpoints so every session starts on
the tiny test checkpoint (broken checkpoint folders of tests/bad_checkpoints.py sit beside it, listed as refused);
the single-session reference uses the same profiles. What is tested is that sessions
stay apart under concurrency, not the heatmap's quality.
"""

from __future__ import annotations

import io
import json
import os
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dprotonet_core import review
from tests.app_support import TINY_NAME, make_tiny_checkpoint
from tests.bad_checkpoints import SOME, add_bad_checkpoints
from tests.browser.test_browser import _pane_images
from tests.conftest import REPO
from tests.server_support import CHROMIUM, CHROMIUM_ARGS, few_mdm_steps, streamlit_server

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SESSIONS = 8
RESULT_TIMEOUT_MS = 240_000
TEST_TIMEOUT_S = 540
ARTIFACTS = REPO / "tests" / "artifacts"
MDM_TEST_ITERATIONS = 20

torch.set_num_threads(1)


def make_images(folder: Path, n: int = SESSIONS) -> list[Path]:
    """n different RGB PNGs (different sizes, seeds and a bright blob in a different place)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        h, w = 72 + 4 * i, 96 - 2 * i
        image = rng.random((h, w, 3)) * 0.4
        cy, cx = (i * 13) % h, (i * 29) % w
        yy, xx = np.mgrid[:h, :w]
        image[((yy - cy) ** 2 + (xx - cx) ** 2) < (8 + i) ** 2] = [0.9, 0.8 - 0.05 * i, 0.2 + 0.05 * i]
        path = folder / f"session-{i}.png"
        Image.fromarray((image * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def single_session_result(checkpoint, data: bytes) -> dict:
    """What one session must show for `data`: computed with the facade directly, as the page does."""
    loaded = review.read_upload(data)
    case = review.cached_case({}, review.file_hash(data), None, checkpoint, loaded)
    prototype = review.default_prototype(case.prediction)
    profile = next(iter(review.MDM_PROFILES))  # the page's selectbox default: its first option
    explanation = review.explain(checkpoint, case.x, prototype, profile)
    settings = review.default_settings()
    rendered = review.render_case(case, checkpoint, explanation, settings)
    report = review.report_dict(review.report_inputs(case, checkpoint, explanation, settings, rendered))
    return {
        "subheader": review.prediction_headline(case.prediction, checkpoint),
        "query_pane": rendered.figure["data"][0]["source"],
        "notes": sorted(rendered.notes),
        "report": report,
    }


def _status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as response:
            return response.status == 200 and response.read().strip() == b"ok"
    except OSError:
        return False


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """The tiny checkpoint, with broken checkpoint folders beside it (listed as refused; nobody's page breaks)."""
    root = tmp_path_factory.mktemp("models")
    good = make_tiny_checkpoint(root / TINY_NAME)
    add_bad_checkpoints(root, good, SOME)
    return root


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "stderr.txt"
    env = {**os.environ, "DPROTONET_MODELS_DIR": str(models),
           "DPROTONET_SAMPLES_DIR": str(tmp_path_factory.mktemp("no-samples")),
           "OMP_NUM_THREADS": "1", "DPROTONET_TORCH_THREADS": "1", "DPROTONET_BUNDLED": "0"}
    with open(log, "wb") as stderr, streamlit_server(
        env, stderr=stderr, launcher=few_mdm_steps(MDM_TEST_ITERATIONS)
    ) as (url, process):
        yield url, process, log


def _choose_tiny_checkpoint(page) -> None:
    """Bundled demo checkpoints are listed first when present: pick the tiny one in the sidebar."""
    from playwright.sync_api import expect

    combo = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.get_by_role("combobox")
    combo.wait_for()
    if combo.input_value() == TINY_NAME:
        return
    combo.click()
    page.get_by_role("option", name=TINY_NAME, exact=True).click()
    expect(combo).to_have_value(TINY_NAME)


def _alerts(page) -> list[str]:
    """Alert texts on the page except the permanent synthetic-data banner."""
    texts = page.locator('[data-testid="stMain"] [data-testid="stAlert"]').all_inner_texts()
    return sorted(t.strip() for t in texts if "SYNTHETIC" not in t)


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_eight_concurrent_sessions_each_get_their_own_correct_result(server, models, tmp_path, monkeypatch):
    from dataclasses import replace

    from playwright.sync_api import sync_playwright

    from dprotonet_core.explain import mdm

    for name in list(mdm.MDM_PROFILES):
        monkeypatch.setitem(mdm.MDM_PROFILES, name, replace(mdm.profile(name), iterations=MDM_TEST_ITERATIONS))

    url, process, log = server
    images = make_images(tmp_path / "images")
    datas = [p.read_bytes() for p in images]
    assert len({review.file_hash(d) for d in datas}) == SESSIONS

    checkpoint = review.load_model(models / TINY_NAME)
    expected = [single_session_result(checkpoint, d) for d in datas]
    assert len({e["query_pane"] for e in expected}) == SESSIONS, "the images must give different heatmaps"

    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            pages = []
            for _ in range(SESSIONS):
                context = browser.new_context(viewport={"width": 1440, "height": 1100}, accept_downloads=True)
                page = context.new_page()
                page.set_default_timeout(RESULT_TIMEOUT_MS)
                page.goto(url)
                pages.append(page)
            for page in pages:
                page.get_by_text("Upload an image").first.wait_for()
                _choose_tiny_checkpoint(page)
            rss_before_kb = _status_kb(process.pid, "VmRSS")

            start, cpu0 = time.perf_counter(), _cpu_s(process.pid)
            done_by: list[float] = []  # seconds from the first upload until each session's result was seen
            for page, path in zip(pages, images):  # all 8 uploads go out before any result is awaited
                page.locator("input[type=file]").first.set_input_files(str(path))
            for i, page in enumerate(pages):
                try:
                    page.get_by_text("Prediction:").first.wait_for()
                    # finished, not a refining preview: the report buttons come with the final panes only
                    page.get_by_role("button", name="Download report (JSON)").wait_for()
                    _pane_images(page, wait=True)
                    done_by.append(time.perf_counter() - start)
                except Exception:
                    ARTIFACTS.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(ARTIFACTS / f"load-session-{i}.png"), full_page=True)
                    raise AssertionError(
                        f"session {i}: no complete result in time (screenshot tests/artifacts/load-session-{i}.png)"
                        f"; server log:\n{log.read_text()[-3000:]}"
                    ) from None
            wall_s = time.perf_counter() - start
            server_cpu_s = _cpu_s(process.pid) - cpu0
            peak_kb = _status_kb(process.pid, "VmHWM")

            for i, (page, want) in enumerate(zip(pages, expected)):
                who = f"session {i} ({images[i].name})"
                if page.locator('[data-testid="stException"]').count():
                    problems.append(f"{who}: an exception is shown")
                shown = page.get_by_text("Prediction:").first.inner_text().strip()
                if shown != want["subheader"]:
                    problems.append(f"{who}: shows {shown!r}, a single session gives {want['subheader']!r}")
                panes = _pane_images(page)
                if len(panes) != 2 or panes[0] != want["query_pane"]:
                    problems.append(f"{who}: its heatmap differs from the single-session run")
                if _alerts(page) != want["notes"]:
                    problems.append(f"{who}: messages {_alerts(page)} != {want['notes']}")
                with page.expect_download() as info:
                    page.get_by_role("button", name="Download report (JSON)").click()
                report = json.loads(Path(info.value.path()).read_text())
                if report["image"]["sha256"] != review.file_hash(datas[i]):
                    problems.append(f"{who}: the report is about another image")
                for key in ("prediction", "reasoning"):
                    if report[key] != json.loads(json.dumps(want["report"][key])):
                        problems.append(f"{who}: report {key} differs from the single-session run")
                mine, theirs = report["explanation"], want["report"]["explanation"]
                for key in ("prototype", "query_mask_index", "iterations", "mdm_profile"):
                    if mine[key] != theirs[key]:
                        problems.append(f"{who}: report explanation {key} {mine[key]} != {theirs[key]}")
        finally:
            browser.close()

    healthy_after = _healthy(url) and process.poll() is None
    print(
        f"\nload test: {SESSIONS} concurrent sessions, wall time {wall_s:.1f} s (first upload to last result; "
        f"server CPU {server_cpu_s:.1f} s, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs), "
        f"server RSS {(rss_before_kb or 0) / 1024:.0f} MB before the uploads, peak (VmHWM) "
        f"{(peak_kb or 0) / 1024:.0f} MB; healthy after: {healthy_after}; problems: {len(problems)}; "
        f"each session's result seen by (s, in upload order; explanations queue first come first served): "
        f"{', '.join(f'{t:.1f}' for t in done_by)}"
    )
    assert healthy_after, "the server is down after the load:\n" + log.read_text()[-3000:]
    assert not problems, "\n".join(problems)
    server_log = log.read_text()
    assert "Traceback" not in server_log, server_log[-3000:]


def test_upload_bytes_round_trip():
    """make_images writes decodable PNGs the reader accepts (guards the load test's inputs)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    assert review.read_upload(buffer.getvalue()).pixels.shape == (8, 8, 3)
