"""A real `streamlit run` on a free loopback port, for the browser and load tests (one copy of the start-up,
health polling and shutdown), and the Chromium they drive."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from tests.conftest import REPO

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
STARTUP_TIMEOUT_S = 90
SERVER_FLAGS = ["--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Poll /_stcore/health until it answers ok; fail at once if the server exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200 and response.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.2)  # polling interval, not a wait for a fixed duration
    raise RuntimeError(f"streamlit did not become healthy within {timeout_s} s")


@contextlib.contextmanager
def streamlit_server(env: dict[str, str], stderr: IO[bytes] | int = subprocess.DEVNULL,
                     launcher: Sequence[str] = ("-m", "streamlit")) -> Iterator[tuple[str, subprocess.Popen]]:
    """`python <launcher> run app.py` from the repository on a free 127.0.0.1 port; yields (url, process),
    stops the server afterwards. `launcher` replaces `-m streamlit` (e.g. `-c CODE ARG` that patches first)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, *launcher, "run", "app.py", "--server.port", str(port), *SERVER_FLAGS],
        cwd=Path(REPO), env=env, stdout=subprocess.DEVNULL, stderr=stderr,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# `python -c LAUNCHER N run app.py ...`: the real streamlit CLI, with every MDM profile cut to N steps first (the
# tests check what the page shows and when, not the heatmap's quality).
LAUNCHER = (
    "import dataclasses, sys\n"
    "from dprotonet_core.explain import mdm\n"
    "n = int(sys.argv.pop(1))\n"
    "for name in list(mdm.MDM_PROFILES):\n"
    "    mdm.MDM_PROFILES[name] = dataclasses.replace(mdm.MDM_PROFILES[name], iterations=n)\n"
    "from streamlit.web.cli import main\n"
    "sys.argv[0] = 'streamlit'\n"
    "sys.exit(main())\n"
)


def few_mdm_steps(iterations: int) -> tuple[str, str, str]:
    """The `launcher` of `streamlit_server` that runs every MDM profile for `iterations` steps."""
    return ("-c", LAUNCHER, str(iterations))
