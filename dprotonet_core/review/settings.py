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


# A session keeps an image above this many pixels as uint8 (review.case.compact): a 39.5-megapixel PNG held 113 MB
# of float32 working pixels for as long as its session lived, now 30 MB. Smaller images (the bundled 1024 x 1024
# DICOMs among them) are kept as read, so their model input stays bit for bit what `predict` computes.
COMPACT_ABOVE_PIXELS = 2_000_000


MAX_CACHED_EXPLANATIONS = 8  # per session; one entry is 2 x (D, S, S) float32 (about 4 MB at S = 224)


# Wall-clock cap of one explanation (its own optimisation, not the wait for its turn); a capped run is marked so.
# The paper protocol took 155-165 s per 224 px PALM image at 2 threads on this 2-core CPU (make-demo --only
# sample-explanations): 600 s lets it finish on a busy machine and still bounds a stuck request.
MDM_TIME_LIMIT_S = 600.0


# A public demo (DPROTONET_DEMO=1): the 800-step profiles are not offered, each explanation is capped at
# DEMO_MDM_TIME_LIMIT_S, so one visitor cannot hold the explainer for ten minutes while the others wait.
DEMO_ENV = "DPROTONET_DEMO"


LONG_PROFILES = ("paper", "printed")  # 800 steps each: minutes per upload on a CPU


DEMO_MDM_TIME_LIMIT_S = 180.0


# Explanations waiting for their turn (review/queue.py), all sessions together; one more is refused with a message.
# A session holds at most one waiting explanation (a newer one replaces it). 8: every session of the load test.
MAX_WAITING_EXPLANATIONS = 8


def demo_mode(environ: dict[str, str] | None = None) -> bool:
    """True when $DPROTONET_DEMO is 1 / true / yes / on: a deployment open to visitors."""
    value = (environ if environ is not None else os.environ).get(DEMO_ENV, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def offered_profiles(environ: dict[str, str] | None = None) -> list[str]:
    """The MDM profiles this server runs: all of them, or in demo mode all but the 800-step ones."""
    demo = demo_mode(environ)
    return [name for name in MDM_PROFILES if not (demo and name in LONG_PROFILES)]


def mdm_time_limit_s(environ: dict[str, str] | None = None) -> float:
    """The wall-clock cap of one explanation on this server: MDM_TIME_LIMIT_S, or DEMO_MDM_TIME_LIMIT_S."""
    return DEMO_MDM_TIME_LIMIT_S if demo_mode(environ) else MDM_TIME_LIMIT_S


DEFAULT_TOP_K = 5


DISPLAY_SIZE = 448  # pixels per side of each pane (both panes share one coordinate frame)


EMPTY_STACK = 1e-3  # a summed mask stack below this everywhere means MDM kept no region


DISCLAIMER = "Research software, not a medical device. Not for diagnosis or treatment decisions."


SYNTHETIC_WARNING = (
    "DEMONSTRATION MODEL trained on SYNTHETIC images, not on patient data. "
    "Its predictions and heatmaps say nothing about real patients."
)








COLORMAPS = ("jet", "turbo", "viridis", "inferno", "gray")


# Each model starts at the profile its card names (mdm_default_profile; marked in the picker), else "standard"
# (config.DEFAULT_MDM_PROFILE): the fastest profile that met bench.mdm_quality's bar against the 1,600-step
# reference on that checkpoint (figures in config.py next to STANDARD_MDM and THOROUGH_MDM). The paper protocol
# (800 steps) is one click away. Every label names the steps and the loss actually minimised (the deletion-scaled
# distance, a named deviation from eq. 13 as printed, which stays selectable as "printed").
MDM_PROFILES: dict[str, str] = {  # short for the picker; the help text and every caption name the loss
    "standard": "Standard (200 steps)",
    "thorough": "Thorough (400 steps)",
    "paper": "Paper's 800 steps, float32, deletion-scaled distance",
    "fast": "Fast (100 steps, not converged)",
    "printed": "Eq. 13 as printed (800 steps, eta 10)",
}


MDM_PROFILE_HELP = (
    "Every profile but the last minimises eq. 13 with its distance divided by the distance of the fully masked image "
    "(eta 0.4), a named deviation: with eq. 13 as printed (eta 10) the masks of our checkpoints collapse. The last, "
    "'Eq. 13 as printed', minimises the paper's loss unchanged. Each model starts at "
    "its own default (marked): the fastest profile whose answers matched the 1,600-step solution on 12 images of "
    "its dataset (python -m bench.mdm_quality: median eq. 13 objective no higher than the paper protocol's, "
    "median correlation >= 0.95, overlap of the top 20% regions >= 0.80). Standard (the RSNA model's default): "
    "the paper's Adam optimisation continued to 1,600 steps, taken in 8x fewer, longer steps, the step size "
    "decayed over the last quarter. Thorough (the iChallenge-PM model's default): the same path in 4x fewer "
    "steps. Both run the network in bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX; else "
    "float32). Paper's 800 steps: the paper's 800 Adam steps in float32 with the deletion-scaled distance, minutes "
    "for an upload on a CPU. Fast: 100 "
    "steps of the 800-step path; close on some images, far off on others. Eq. 13 as printed: the paper's loss "
    "unchanged, 800 steps. While it runs, the progress bar estimates the time left from this machine's pace."
)


def profile_method(name: str) -> str:
    """What a profile computes, in words: '<name> profile: Adam <steps> steps, <loss>' (as it runs here)."""
    from dprotonet_core.explain import mdm

    return mdm.method_label(mdm.runnable(mdm.profile(name)), name)


PROFILE_SHORT_NAMES = {"standard": "standard profile", "thorough": "thorough profile", "paper": "paper protocol",
                       "fast": "fast profile", "printed": "eq. 13 as printed"}


TORCH_THREADS_ENV = "DPROTONET_TORCH_THREADS"


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, else os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def configure_torch(environ: dict[str, str] | None = None) -> int:
    """Intra-op threads for the server process: $DPROTONET_TORCH_THREADS, default every usable core.

    Explanations run one at a time (review/queue.py), so the one running may use all cores: measured on this
    2-core CPU with AVX512-BF16, one MDM step of the bundled checkpoints costs 65 ms at 2 threads and 96 ms at 1
    (bf16, channels_last); on a 2-core AVX2 CPU without bf16, 311 ms and 470 ms (float32, channels_last; scratch
    timings of 2026-12-02; python -m bench.mdm_quality prints the per-explanation seconds)."""
    value = (environ if environ is not None else os.environ).get(TORCH_THREADS_ENV, "")
    threads = max(1, int(value)) if value.strip().isdigit() else usable_cores()
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
