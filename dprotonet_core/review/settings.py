"""The review app's settings: where checkpoints and samples live, server limits, labels of the choices the
pages offer, torch threads and the audit log."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch

from dprotonet_core.data import io as image_io

REPO = Path(__file__).resolve().parents[2]


ASSETS = REPO / "assets"


BUNDLED_CHECKPOINTS = ("ichallenge-pm", "rsna-pneumonia")


MODELS_DIR_ENV = "DPROTONET_MODELS_DIR"


BUNDLED_ENV = "DPROTONET_BUNDLED"  # "0": do not list the bundled demo checkpoints


DEFAULT_MODELS_DIR = ASSETS / "checkpoints"


SAMPLES_DIR_ENV = "DPROTONET_SAMPLES_DIR"


DEFAULT_SAMPLES_DIR = ASSETS / "samples"


# Limits that protect the server (README, deployment). MAX_UPLOAD_MB equals .streamlit/config.toml's
# server.maxUploadSize: 40 megapixels (the reader's cap) at 3 bytes per pixel, plus headers.
MAX_UPLOAD_MB = 128


MAX_PIXELS = image_io.DEFAULT_MAX_PIXELS


MAX_CACHED_EXPLANATIONS = 8  # per session; one entry is 2 x (D, S, S) float32 (about 4 MB at S = 224)


# Wall-clock cap of one explanation; a capped run is marked so. The paper protocol took 155-165 s per 224 px
# PALM image at 2 threads on this 2-core CPU (make-demo --only sample-explanations), about twice that at the
# app's default 1 thread: 600 s lets it finish on a busy machine and still bounds a stuck request.
MDM_TIME_LIMIT_S = 600.0


DEFAULT_TOP_K = 5


DISPLAY_SIZE = 448  # pixels per side of each pane (both panes share one coordinate frame)


EMPTY_STACK = 1e-3  # a summed mask stack below this everywhere means MDM kept no region


DISCLAIMER = "Research software, not a medical device. Not for diagnosis or treatment decisions."


SYNTHETIC_WARNING = (
    "DEMONSTRATION MODEL trained on SYNTHETIC images, not on patient data. "
    "Its predictions and heatmaps say nothing about real patients."
)








COLORMAPS = ("jet", "turbo", "viridis", "inferno", "gray")


# The paper protocol is the default (config.DEFAULT_MDM_PROFILE); "fast" (config.time_compressed) is close to it
# but not the same, and not shown to be good enough for a default: the figures are in config.py next to FAST_MDM.
# Every label names the steps and the loss actually minimised (the default is the deletion-scaled distance, a
# named deviation from eq. 13 as printed, which stays selectable as "printed").
MDM_PROFILES: dict[str, str] = {  # short for the picker; the help text and every caption name the loss
    "paper": "Paper protocol (800 steps)",
    "fast": "Fast (100 steps)",
    "printed": "Eq. 13 as printed (800 steps)",
}


MDM_PROFILE_HELP = (
    "Paper protocol: the paper's 800 Adam steps; the loss is eq. 13 with its distance divided by the distance of "
    "the fully masked image (eta 0.4), a named deviation: with eq. 13 as printed (eta 10) the masks of our "
    "checkpoints collapse. For an upload this takes minutes on a CPU. Fast: the same optimisation in 8x fewer, "
    "longer steps (about 10-30 s on 2 CPU threads); its heatmaps are close to the paper protocol's but not "
    "identical (python -m bench.mdm_speed on the bundled checkpoints: median correlation 0.97-0.99, overlap of "
    "the top 20% regions 0.79-0.89). Eq. 13 as printed: the paper's loss unchanged, 800 steps."
)


def profile_method(name: str) -> str:
    """What a profile computes, in words: '<name> profile: Adam <steps> steps, <loss>'."""
    from dprotonet_core.explain import mdm

    return mdm.method_label(mdm.profile(name), name)


PROFILE_SHORT_NAMES = {"paper": "paper protocol", "fast": "fast profile", "printed": "eq. 13 as printed"}


TORCH_THREADS_ENV = "DPROTONET_TORCH_THREADS"


def configure_torch(environ: dict[str, str] | None = None) -> int:
    """Intra-op threads for the server process: $DPROTONET_TORCH_THREADS, default 1.

    A server runs one request per session thread; several OpenMP threads per request oversubscribe the
    cores (measured on 2 shared cores: one MDM explanation took 21 s with 2 threads, 2 s with 1)."""
    value = (environ if environ is not None else os.environ).get(TORCH_THREADS_ENV, "1")
    threads = max(1, int(value)) if value.strip().isdigit() else 1
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


LOG = logging.getLogger("dprotonet_core.review")


LOG_LEVEL_ENV = "DPROTONET_LOG_LEVEL"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(environ: dict[str, str] | None = None) -> int:
    """The server's audit log: the `dprotonet_core` loggers on stderr at $DPROTONET_LOG_LEVEL (default INFO).

    Records carry the first 12 hex digits of an upload's sha256, the checkpoint id, the image kind and size,
    and timings; never pixels, file names, DICOM header fields or the reader's messages."""
    name = (environ if environ is not None else os.environ).get(LOG_LEVEL_ENV, "INFO").strip().upper()
    level = logging.getLevelName(name)
    level = level if isinstance(level, int) else logging.INFO
    logger = logging.getLogger("dprotonet_core")
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    return level


class ReviewError(Exception):
    """Something the user can fix or should know; the message is one line, shown as is."""
