"""The review app's facade: everything the Streamlit pages do, as plain functions and small classes.

The pages under `pages/` only lay widgets out and call this module; nothing here imports Streamlit, so every
step (reading an upload, predicting, explaining, rendering the panes, the report) is testable without a
browser, and thread-safe: models are in eval mode and frozen, prediction runs under `torch.inference_mode`,
and no function keeps state between calls. Per-user state (the explanation cache) is an object the caller
owns and keeps in its own session.

Nothing about an upload is written to disk or logged here: bytes are read in memory, only their sha256 is
kept as a cache key, and the report carries no DICOM header field.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import sys
import textwrap
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dprotonet_core import inference, ood
from dprotonet_core.checkpoint import Checkpoint, CheckpointError, find_checkpoints, load_checkpoint, model_digest
from dprotonet_core.config import DEFAULT_MDM_PROFILE, OverlayConfig
from dprotonet_core.data import io as image_io
from dprotonet_core.data.io import ImageReadError, LoadedImage, Window
from dprotonet_core.evaluate.metrics import auc_interval, wilson_interval
from dprotonet_core.inference import Prediction
from dprotonet_core.ood import OODCheck
from dprotonet_core.task_fit import TaskFit, first_fitting, task_fit

REPO = Path(__file__).resolve().parents[1]
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

View = Literal["heatmap", "binary", "outline"]
VIEWS: dict[str, str] = {"heatmap": "Heatmap", "binary": "Binary mask", "outline": "Outline + box"}
COLORMAPS = ("jet", "turbo", "viridis", "inferno", "gray")
# The paper protocol is the default (config.DEFAULT_MDM_PROFILE); "fast" (config.time_compressed) is close to it
# but not the same, and short of issue 3's bars for a default: the figures are in config.py next to FAST_MDM.
MDM_PROFILES: dict[str, str] = {"paper": "Paper protocol (800 steps)", "fast": "Fast (8x fewer steps)"}
MDM_PROFILE_HELP = (
    "Paper protocol: the paper's 800 optimisation steps; for an upload this takes minutes on a CPU. "
    "Fast: the same optimisation in 8x fewer, longer steps (about 10-20 s on 2 CPU threads). Its heatmaps are "
    "close to the paper protocol's but not identical (bench/mdm.py on the bundled checkpoints: median "
    "correlation 0.97-0.99, overlap of the top 20% regions 0.79-0.89)."
)


PROFILE_SHORT_NAMES = {"paper": "paper protocol", "fast": "fast profile (8x fewer steps; close to the paper's)"}

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


# ------------------------------------------------------------------------------------ checkpoints


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint folder the picker offers (valid) or lists as invalid (with the problem)."""

    path: Path
    card: dict | None
    problem: str | None
    bundled: bool

    @property
    def valid(self) -> bool:
        return self.problem is None and self.card is not None

    @property
    def label(self) -> str:
        name = (self.card or {}).get("name") or self.path.name
        return f"{name} (demo)" if self.bundled else str(name)


def models_dir(environ: dict[str, str] | None = None) -> Path:
    """The models directory: $DPROTONET_MODELS_DIR, else assets/checkpoints."""
    value = (environ if environ is not None else os.environ).get(MODELS_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else DEFAULT_MODELS_DIR


def list_checkpoints(root: Path | None = None, bundled_root: Path = DEFAULT_MODELS_DIR) -> list[CheckpointEntry]:
    """The bundled demo checkpoints that exist, then every folder with a card.json under `root`.

    Only cards and hashes are checked (cheap); a folder that fails is listed with its problem."""
    root = models_dir() if root is None else root
    entries: dict[Path, CheckpointEntry] = {}
    sources = [(bundled_root, True), (root, False)]
    if os.environ.get(BUNDLED_ENV, "1").strip() == "0":  # a deployment serving only its own checkpoints
        sources = sources[1:]
    for base, is_bundled in sources:
        for path, card, problem in find_checkpoints(base):
            resolved = path.resolve()
            if resolved in entries:
                continue
            bundled = is_bundled and path.name in BUNDLED_CHECKPOINTS
            if is_bundled and not bundled:
                continue  # other folders under assets/ only when assets/ is the models dir
            entries[resolved] = CheckpointEntry(path=path, card=card, problem=problem, bundled=bundled)
    bundled_first = sorted(entries.values(), key=lambda e: (not e.bundled, e.path.name))
    return bundled_first


def load_model(path: str | Path) -> Checkpoint:
    """Load and verify a checkpoint (eval mode, frozen). Wrap with st.cache_resource in the app."""
    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        raise ReviewError(f"This checkpoint cannot be used: {exc}") from None


def checkpoint_summary(card: dict) -> dict[str, Any]:
    """The sidebar's lines about a checkpoint: title, task, classes, trained on, synthetic."""
    data = card.get("data") if isinstance(card.get("data"), dict) else {}
    trained_on = card.get("trained_on") or data.get("dataset") or "not stated in the card"
    return {
        "title": card.get("name", "checkpoint"),
        "task": card.get("task", "not stated in the card"),
        "classes": list(card.get("classes", [])),
        "trained_on": str(trained_on),
        "synthetic": bool(card.get("synthetic", False)),
        "backbone": (card.get("model_config") or {}).get("backbone", "?"),
        "input_size": (card.get("model_config") or {}).get("input_size", "?"),
        "credit": data_credit(card),
    }


def data_credit(card: dict) -> str:
    """Who made the data a checkpoint learned from (training and pretraining), as the card credits it."""
    training = card.get("training_data") if isinstance(card.get("training_data"), dict) else {}
    credits = [str(training.get("credit") or "").strip()]
    pretraining = training.get("pretraining") if isinstance(training.get("pretraining"), dict) else {}
    if pretraining.get("credit"):
        credits.append(f"backbone pretrained on {pretraining['credit']}")
    return "; ".join(c for c in credits if c)


def checkpoint_id(checkpoint: Checkpoint) -> str:
    """A stable id for cache keys: the sha256 of the model file (from the verified card)."""
    digest = model_digest(checkpoint.card)
    return digest[:16] or str(checkpoint.path)


# ----------------------------------------------------------------------------------------- images


def file_hash(data: bytes) -> str:
    """sha256 of the uploaded bytes: the only thing about an upload the app keeps as a key."""
    return hashlib.sha256(data).hexdigest()


def read_upload(data: bytes, window: Window | None = None) -> LoadedImage:
    """Decode uploaded bytes (DICOM, PNG, JPEG, TIFF); any problem is one ReviewError line."""
    digest, start = file_hash(data)[:12], time.perf_counter()
    if len(data) > MAX_UPLOAD_MB * 1024 * 1024:
        LOG.info("upload refused: image %s, %d bytes, over %d MB", digest, len(data), MAX_UPLOAD_MB)
        raise ReviewError(f"The file is larger than {MAX_UPLOAD_MB} MB; please upload a smaller image.")
    try:
        loaded = image_io.read_image(data, max_pixels=MAX_PIXELS, window=window)
    except ImageReadError as exc:
        LOG.info("upload refused: image %s, %d bytes, unreadable (%.3f s)", digest, len(data),
                 time.perf_counter() - start)
        raise ReviewError(str(exc)) from None
    LOG.info("upload read: image %s, %s, %d x %d px (%.3f s)", digest, loaded.kind, loaded.pixels.shape[1],
             loaded.pixels.shape[0], time.perf_counter() - start)
    return loaded


def is_windowable(loaded: LoadedImage) -> bool:
    """True for a grey DICOM, whose display window the user may change."""
    return loaded.kind == "dicom" and loaded.modality_values is not None


def window_presets(loaded: LoadedImage) -> dict[str, Window]:
    """Named windows for a grey DICOM (file default, full range, lung, bone); empty for other images."""
    return image_io.window_presets(loaded) if is_windowable(loaded) else {}


def apply_window(loaded: LoadedImage, window: Window | None) -> LoadedImage:
    """The image shown (and classified) through `window`; unchanged when None or not a grey DICOM."""
    if window is None or not is_windowable(loaded):
        return loaded
    return image_io.rewindow(loaded, window)


def image_key(data_hash: str, window: Window | None) -> str:
    """Cache key of the pixels the model sees: file hash plus the window applied."""
    if window is None:
        return data_hash
    return f"{data_hash}:{window.center:.6g}:{window.width:.6g}:{window.function}"


def default_model_input(checkpoint: Checkpoint, data: bytes) -> torch.Tensor:
    """A file's model input as the review page first shows it (a DICOM under its first window preset)."""
    loaded = read_upload(data)
    presets = window_presets(loaded)
    return model_input(checkpoint, apply_window(loaded, next(iter(presets.values())) if presets else None))


def model_input(checkpoint: Checkpoint, loaded: LoadedImage) -> torch.Tensor:
    """(1, 3, S, S) float32 in [0, 1], exactly as the model expects."""
    return image_io.to_model_input(loaded, int(checkpoint.model.config.input_size))


def display_pixels(loaded: LoadedImage, size: int = DISPLAY_SIZE) -> np.ndarray:
    """The image as shown in the panes: (size, size, 3) float in [0, 1], the model's square frame."""
    tensor = image_io.resize_square(image_io.pixels_to_tensor(loaded.pixels, 3), size)
    return tensor.permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Sample:
    """One bundled sample image listed in assets/samples/samples.csv."""

    file: str
    label: str
    dataset: str
    credit: str
    path: Path
    boxes: tuple[tuple[float, float, float, float], ...] = ()  # true boxes (x, y, w, h) in the file's pixels

    @property
    def title(self) -> str:
        return f"{self.file} ({self.dataset}, label: {self.label})"


def samples_dir(environ: dict[str, str] | None = None) -> Path:
    """$DPROTONET_SAMPLES_DIR, else assets/samples."""
    value = (environ if environ is not None else os.environ).get(SAMPLES_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else DEFAULT_SAMPLES_DIR


def list_samples(folder: Path | None = None) -> list[Sample]:
    """Samples listed in samples.csv (file,label,dataset,credit) whose file exists; an absent or
    malformed samples.csv gives an empty list."""
    root = samples_dir() if folder is None else folder
    index = root / "samples.csv"
    if not index.is_file():
        return []
    samples = []
    try:
        with open(index, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                name = (row.get("file") or "").strip()
                path = root / name
                if not name or "/" in name or "\\" in name or not path.is_file():
                    continue
                samples.append(
                    Sample(
                        file=name,
                        label=(row.get("label") or "").strip(),
                        dataset=(row.get("dataset") or "").strip(),
                        credit=(row.get("credit") or "").strip(),
                        path=path,
                        boxes=_sample_boxes(row.get("boxes")),
                    )
                )
    except (OSError, csv.Error, UnicodeDecodeError):
        return []
    return samples


# ------------------------------------------------------------------------------------- task fit


@dataclass(frozen=True)
class Routing:
    """Which checkpoint reviews an image: the chosen one, or another that fits (said in one line)."""

    path: Path  # the checkpoint to use
    switched: bool
    fit: TaskFit  # of the image with that checkpoint
    notice: str | None  # the one line the page shows when it switched, or why nothing fits


def route(loaded: LoadedImage, current: CheckpointEntry, entries: Iterable[CheckpointEntry]) -> Routing:
    """Keep the chosen checkpoint when the image fits it; else switch to the first listed one that fits."""
    fit = task_fit(loaded, (current.card or {}).get("accepts"))
    if fit.fits:
        return Routing(current.path, False, fit, None)
    others = [(str(e.path), e.card) for e in entries if e.valid and e.path != current.path and e.card]
    found = first_fitting(loaded, others)
    if found is None:
        return Routing(current.path, False, fit, f"This image does not fit this model: {fit.reason}. No listed "
                       "model is made for it, so no prediction is shown as if it were valid.")
    target = next(e for e in entries if str(e.path) == found)
    what = str((target.card or {}).get("accepts", {}).get("what", "image"))
    before = (current.card or {}).get("accepts", {}).get("what", "other images")
    name = (target.card or {}).get("name") or target.path.name
    was = (current.card or {}).get("name") or current.path.name
    return Routing(target.path, True, task_fit(loaded, (target.card or {}).get("accepts")),
                   f"{what[:1].upper() + what[1:]}: reviewed with the {name} model (the {was} model is made "
                   f"for: {before}).")


def samples_for(samples: list[Sample], checkpoint_path: Path) -> list[Sample]:
    """The bundled samples of the chosen checkpoint (samples.csv's dataset = its folder name); all samples when
    none belong to it."""
    own = [s for s in samples if s.dataset == checkpoint_path.name]
    return own or samples


def _sample_boxes(text: str | None) -> tuple[tuple[float, float, float, float], ...]:
    """samples.csv's boxes column: a JSON list of [x, y, w, h]; anything malformed gives no boxes."""
    try:
        boxes = json.loads(text or "[]")
        return tuple((float(x), float(y), float(w), float(h)) for x, y, w, h in boxes)
    except (ValueError, TypeError):
        return ()


def display_boxes(boxes, image_size: tuple[int, int], size: int = DISPLAY_SIZE) -> list[tuple[float, ...]]:
    """Boxes (x, y, w, h) in pixels of an image of `image_size` (h, w) as (x0, y0, x1, y1) in the square panes."""
    h, w = image_size
    sx, sy = size / w, size / h
    return [(x * sx, y * sy, (x + bw) * sx, (y + bh) * sy) for x, y, bw, bh in boxes]


# ------------------------------------------------------------------------------------- prediction


def predict(checkpoint: Checkpoint, x: torch.Tensor) -> Prediction:
    """Classify x (1, 3, S, S) in [0, 1]; the reasoning rows explain the logit as a sum of w * g (eq. 3)."""
    return inference.predict(checkpoint.model, x, checkpoint.classes, checkpoint.decision_threshold,
                             checkpoint.card.get("ood"))


def decision_text(checkpoint: Checkpoint) -> str:
    """How the answer was decided, in one line (the card's threshold, or the paper's argmax)."""
    threshold = checkpoint.decision_threshold
    if threshold is None:
        return "Decision: the class with the highest score (argmax of eq. 3, the paper's rule)."
    positive = checkpoint.classes[1]
    rule = (checkpoint.card.get("decision_threshold") or {}).get("rule", "")
    return (f"Decision: {positive} when p({positive}) >= {threshold:.2f}, a threshold chosen on the validation "
            f"split ({rule or 'see the model card'}), not the paper's argmax (0.50).")


def probability(prediction: Prediction) -> float:
    """The probability of the predicted class."""
    return float(prediction.probabilities[prediction.class_index])


def prediction_headline(prediction: Prediction, checkpoint: Checkpoint) -> str:
    """"Prediction: PM, 96.4%" (argmax: the predicted class's probability), or, for a checkpoint that decides by
    a threshold, the positive class's probability beside the threshold it was compared with, so that a
    "pneumonia" answer at p = 0.04 is not shown as "pneumonia, 4%" without its reason."""
    threshold = checkpoint.decision_threshold
    if threshold is None:
        return f"Prediction: {prediction.class_name}, {probability(prediction) * 100:.1f}%"
    positive = checkpoint.classes[1]
    p = prediction.probabilities[1]
    sign = ">=" if p >= threshold else "<"
    return f"Prediction: {prediction.class_name} (p({positive}) = {p:.3f} {sign} threshold {threshold:.3f})"


def probability_text(prediction: Prediction, classes: list[str]) -> str:
    """All class probabilities in one line, predicted class first."""
    order = sorted(range(len(classes)), key=lambda i: -prediction.probabilities[i])
    return " · ".join(f"{classes[i]} {prediction.probabilities[i] * 100:.1f}%" for i in order)


def default_prototype(prediction: Prediction) -> int:
    """The paper's detection node p_t: the predicted class's prototype with the highest similarity g."""
    own = [r for r in prediction.reasoning if r.class_index == prediction.class_index]
    return max(own or prediction.reasoning, key=lambda r: r.similarity).prototype


def prototype_choices(prediction: Prediction, top_k: int = DEFAULT_TOP_K) -> list[int]:
    """The prototypes the user may explain with: p_t first, then the rest of the top-k rows."""
    first = default_prototype(prediction)
    rest = [r.prototype for r in prediction.top_prototypes(top_k) if r.prototype != first]
    return [first, *rest]


def source_id(checkpoint: Checkpoint, prototype: int) -> str:
    records = checkpoint.prototypes
    return records[prototype].source_id if 0 <= prototype < len(records) else "unknown source"


def prototype_label(checkpoint: Checkpoint, prediction: Prediction, prototype: int) -> str:
    """'#3 finding' (+ ', closest match' for p_t): the radio option text."""
    row = next(r for r in prediction.reasoning if r.prototype == prototype)
    best = " (best match)" if prototype == default_prototype(prediction) else ""
    return f"#{prototype} {row.class_name}{best}"


def summarise_rows(prediction: Prediction, checkpoint: Checkpoint, top_k: int = DEFAULT_TOP_K) -> list[dict]:
    """The reasoning table in words a clinician reads (top-k rows by contribution)."""
    rows = []
    for r in prediction.top_prototypes(top_k):
        share = "–" if r.share != r.share else f"{r.share * 100:.0f}%"  # NaN when the logit is 0
        rows.append(
            {
                "Prototype": f"#{r.prototype}",
                "Class": r.class_name,
                "Similarity g": round(r.similarity, 3),
                "Weight w": round(r.weight, 3),
                "Contribution w·g": round(r.contribution, 3),
                "Share of score": share,
                "Learned from": source_id(checkpoint, r.prototype),
            }
        )
    return rows


def metadata_rows(loaded: LoadedImage) -> list[dict[str, str]]:
    """The de-identified metadata panel (the reader's allow-list only), plus the window in use."""
    rows = [{"Field": k, "Value": v} for k, v in loaded.metadata.items()]
    if loaded.window is not None:
        rows.append({"Field": "Window", "Value": f"C {loaded.window.center:g} / W {loaded.window.width:g}"})
    return rows


@dataclass(frozen=True)
class Case:
    """One image as the model saw it: the input tensor, the prediction and the pixels the panes show."""

    image_sha256: str
    key: str  # image_key: file hash + window
    kind: str
    x: torch.Tensor  # (1, 3, S, S)
    prediction: Prediction
    display: np.ndarray  # (DISPLAY_SIZE, DISPLAY_SIZE, 3) float in [0, 1]
    fit: TaskFit = TaskFit(True, "not checked")  # is the file what the checkpoint's card accepts
    ood: OODCheck = OODCheck(float("nan"), None, False)  # is the image unlike the model's validation images


MAX_CACHED_CASES = 4


def cached_case(
    store: MutableMapping[str, Any], data_hash: str, window: Window | None, checkpoint: Checkpoint,
    loaded: LoadedImage,
) -> Case:
    """Predict once per (image, window, checkpoint) in a session `store` (e.g. st.session_state),
    keeping at most MAX_CACHED_CASES cases; a hit costs no model call."""
    cases: OrderedDict = store.setdefault("cases", OrderedDict())
    key = image_key(data_hash, window)
    ck = (key, checkpoint_id(checkpoint))
    if ck in cases:
        cases.move_to_end(ck)
        return cases[ck]
    start = time.perf_counter()
    x = model_input(checkpoint, loaded)
    prediction = predict(checkpoint, x)
    case = Case(data_hash, key, loaded.kind, x, prediction, display_pixels(loaded),
                task_fit(loaded, checkpoint.card.get("accepts")), ood.check(prediction.ood_score,
                                                                             checkpoint.card.get("ood")))
    LOG.info("prediction: image %s, checkpoint %s (%.3f s)", data_hash[:12], ck[1], time.perf_counter() - start)
    cases[ck] = case
    while len(cases) > MAX_CACHED_CASES:
        cases.popitem(last=False)
    return case


# ------------------------------------------------------------------------------------ explanation


@dataclass(frozen=True)
class Explanation:
    """Both mask stacks of one detection node; everything the panes need, no model required."""

    prototype: int
    mask_index: int  # j_x, eq. 12
    prototype_mask_index: int  # j_pt
    query_stack: np.ndarray  # (D, S, S) g(d_i^x) in [0, 1]
    prototype_stack: np.ndarray  # (D, S, S) g(d_i^{x^pt}) from the checkpoint
    profile: str
    iterations: int
    seconds: float
    stopped_by_time: bool = False
    precomputed: bool = False  # read from the samples' stored explanations (explain/store.py)
    query_vectors: tuple[torch.Tensor, ...] = ()  # the D optimised d_i^x (what explain/store.py keeps)

    @property
    def depth(self) -> int:
        return int(self.query_stack.shape[0])


CacheKey = tuple[str, str, int, str]


class ExplanationCache:
    """A bounded LRU of explanations keyed by (image key, checkpoint id, prototype, profile).

    One per user session; the lock only guards against a page and a fragment of the same session."""

    def __init__(self, max_entries: int = MAX_CACHED_EXPLANATIONS) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[CacheKey, Explanation] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> Explanation | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: CacheKey, value: Explanation) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def nbytes(self) -> int:
        with self._lock:
            return sum(e.query_stack.nbytes + e.prototype_stack.nbytes for e in self._items.values())


def explanation_key(key_image: str, checkpoint: Checkpoint, prototype: int, profile: str) -> CacheKey:
    """(image hash + window, checkpoint, prototype, MDM profile): what an explanation depends on."""
    return (key_image, checkpoint_id(checkpoint), int(prototype), profile)


def prototype_stack(checkpoint: Checkpoint, prototype: int) -> np.ndarray:
    """The stored prototype-side stack g(d_i^{x^pt}) (eq. 14/16) at the model's input size."""
    from dprotonet_core.explain import mdm

    vectors = checkpoint.prototype_mask_vectors
    if not vectors:
        raise ReviewError("This checkpoint stores no prototype heatmaps (mask vectors); re-run projection.")
    size = int(checkpoint.model.config.input_size)
    return mdm.mask_stack([v[prototype] for v in vectors], size)


ProgressCallback = Callable[[float, str], None]


def explain(
    checkpoint: Checkpoint,
    x: torch.Tensor,
    prototype: int,
    profile: str = DEFAULT_MDM_PROFILE,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    time_limit_s: float = MDM_TIME_LIMIT_S,
) -> Explanation:
    """MDM on the query (eq. 12-13) for one prototype, plus the stored prototype side (eq. 14).

    `progress(fraction, text)` is called as iterations run; `cancel()` returning True stops the run
    (ReviewError). The run stops at `time_limit_s` and the result says so."""
    from dprotonet_core.explain import mdm

    if profile not in MDM_PROFILES:
        raise ReviewError(f"Unknown explanation profile {profile!r}.")
    # channels_last=False: mdm.frozen() would otherwise convert the shared model's memory format back and forth,
    # and the model is shared by every session of the server (st.cache_resource).
    cfg = dataclasses.replace(mdm.profile(profile), time_limit=time_limit_s, channels_last=False)

    def report(step: int, total: int, _loss: float) -> None:
        if progress is not None:
            progress(min(1.0, step / max(total, 1)), f"Explaining: iteration {step} of at most {total}")

    try:
        result = mdm.explain_query(checkpoint.model, x[0], prototype, cfg, progress=report, cancel=cancel)
    except mdm.MDMCancelled:
        raise ReviewError("The explanation was cancelled.") from None
    record = checkpoint.prototypes[prototype] if checkpoint.prototypes else None
    return Explanation(
        prototype=prototype,
        mask_index=int(result.node.mask_index),
        prototype_mask_index=int(record.mask_index) if record else -1,
        query_stack=np.asarray(result.result.stack, dtype=np.float32),
        prototype_stack=prototype_stack(checkpoint, prototype),
        profile=profile,
        iterations=int(result.result.iterations),
        seconds=float(result.result.seconds),
        stopped_by_time=bool(result.result.stopped_by_time),
        query_vectors=tuple(result.result.vectors),
    )


def explain_cached(
    cache: ExplanationCache,
    key_image: str,
    checkpoint: Checkpoint,
    x: torch.Tensor,
    prototype: int,
    profile: str = DEFAULT_MDM_PROFILE,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    time_limit_s: float = MDM_TIME_LIMIT_S,
) -> Explanation:
    """`explain` through the session's cache, then the bundled samples' stored explanations: a hit
    costs no model call."""
    key = explanation_key(key_image, checkpoint, prototype, profile)
    hit = cache.get(key)
    if hit is not None:
        return hit
    value = stored_explanation(checkpoint, x, prototype, profile)
    if value is not None:
        cache.put(key, value)
        return value
    value = explain(checkpoint, x, prototype, profile, progress, cancel, time_limit_s)
    cache.put(key, value)
    LOG.info("explanation: image %s, checkpoint %s, prototype %d, %s profile, %d iterations%s (%.2f s)",
             key_image[:12], key[1], prototype, profile, value.iterations,
             ", stopped by the time limit" if value.stopped_by_time else "", value.seconds)
    return value


def stored_explanations_dir(environ: dict[str, str] | None = None) -> Path:
    """Where make-demo stores the samples' precomputed explanations: <samples>/explanations."""
    return samples_dir(environ) / "explanations"


def stored_explanation(checkpoint: Checkpoint, x: torch.Tensor, prototype: int, profile: str) -> Explanation | None:
    """A sample's explanation computed when the demo was built, if it matches exactly (explain/store.py)."""
    from dprotonet_core.explain import mdm, store

    digest = model_digest(checkpoint.card)
    if not digest or profile not in MDM_PROFILES:
        return None
    found = store.load(stored_explanations_dir(), x[0], digest, prototype, profile, mdm.profile(profile))
    if found is None:
        return None
    record = checkpoint.prototypes[prototype] if checkpoint.prototypes else None
    return Explanation(
        prototype=prototype,
        mask_index=found.mask_index,
        prototype_mask_index=int(record.mask_index) if record else -1,
        query_stack=store.stack(found, int(checkpoint.model.config.input_size)),
        prototype_stack=prototype_stack(checkpoint, prototype),
        profile=profile,
        iterations=found.iterations,
        seconds=found.seconds,
        precomputed=True,
        query_vectors=tuple(found.vectors),
    )


# -------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class DisplaySettings:
    """The controls of the image fragment (eq. 15-18): nothing here needs a model call."""

    gamma: float = 3.0
    alpha: float = 0.5
    beta: float = 0.3
    view: View = "heatmap"
    colormap: str = "jet"

    def describe(self) -> str:
        return (
            f"gamma {self.gamma:g}, alpha {self.alpha:g}, beta {self.beta:g}, "
            f"view: {VIEWS.get(self.view, self.view).lower()}, colormap {self.colormap}"
        )


def default_settings() -> DisplaySettings:
    """The paper's defaults (gamma 3, alpha 0.5, beta 0.3)."""
    cfg = OverlayConfig()
    return DisplaySettings(gamma=cfg.gamma, alpha=cfg.alpha, beta=cfg.beta, colormap=cfg.colormap)


@dataclass(frozen=True)
class Pane:
    """One rendered pane and what the page says under it."""

    image: np.ndarray  # uint8 (size, size, 3)
    empty: bool  # no pixel reached gamma
    max_sum: float  # the largest gamma that still leaves a region
    boxes: int  # connected decision regions


def render_pane(image: np.ndarray, stack: np.ndarray, settings: DisplaySettings, size: int = DISPLAY_SIZE) -> Pane:
    """One pane: the image (H, W[, 3], [0, 1] or uint8) overlaid with its CAM at `settings`.

    S = sum_i g(d_i) is summed at the stack's resolution and upsampled to the display once; then
    eq. 15/16 (CAM at gamma) and eq. 17 (heatmap), eq. 18 (binary mask image) or the decision region's
    outline with its bounding box. Pure numpy: no model call."""
    from dprotonet_core.explain import overlay

    rgb = _as_rgb01(image)
    if rgb.shape[:2] != (size, size):
        rgb = _resize_rgb(rgb, size)
    total = _resize_map(overlay.mask_sum(stack), size)
    a = overlay.cam(total, settings.gamma)
    if settings.view == "binary":
        out = overlay.binary_image(rgb, a.map)
    elif settings.view == "outline":
        out = overlay.outline_image(rgb, a)
    else:
        out = overlay.heatmap_image(rgb, a.map, settings.alpha, settings.beta, settings.colormap)
    boxes = 0 if a.empty else len(overlay.decision_boxes(a, min_area=max(1, size * size // 2000)))
    return Pane(image=np.asarray(out, dtype=np.uint8), empty=a.empty, max_sum=a.max_sum, boxes=boxes)


def _resize_map(values: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a 2-D map to (size, size), float32."""
    if values.shape == (size, size):
        return values.astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def _resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    return image_io.resize_square(tensor, size).permute(1, 2, 0).numpy()


def _as_rgb01(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3), uint8 or float [0, 1] -> float32 (H, W, 3) in [0, 1]."""
    array = np.asarray(image)
    rgb = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return np.clip(rgb, 0, 1)


def colorscale(colormap: str) -> list[list[Any]]:
    """A plotly colorscale equal to the overlay's colormap (for the legend)."""
    from dprotonet_core.explain import overlay

    lut = overlay.colormap_lut(colormap)
    idx = np.linspace(0, 255, 17).round().astype(int)
    return [[float(i / 255), f"rgb({r},{g},{b})"] for i, (r, g, b) in zip(idx, lut[idx])]


def png_bytes(image: np.ndarray, compress_level: int = 6) -> bytes:
    """A uint8 RGB array as PNG bytes with no text chunks (no metadata at all)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def panes_figure(
    query: np.ndarray,
    prototype: np.ndarray,
    titles: tuple[str, str],
    settings: DisplaySettings,
    height: int = 540,
    truth_boxes: Iterable[tuple[float, ...]] = (),
) -> dict[str, Any]:
    """A plotly figure (as a dict) with two image panes whose axes are linked: zoom or pan one and the
    other follows. Both panes use the same square frame (the model's input, scaled to the display size).

    Built as a plain dict (no make_subplots): building is then a few milliseconds per slider move."""
    import base64

    n = int(query.shape[0])
    data: list[dict[str, Any]] = []
    for suffix, image in (("", query), ("2", prototype)):
        uri = "data:image/png;base64," + base64.b64encode(png_bytes(image, compress_level=1)).decode("ascii")
        data.append({"type": "image", "source": uri, "xaxis": f"x{suffix}", "yaxis": f"y{suffix}",
                     "hoverinfo": "skip"})
    if settings.view == "heatmap":
        data.append({
            "type": "scatter", "x": [None], "y": [None], "mode": "markers", "showlegend": False,
            "hoverinfo": "skip", "xaxis": "x2", "yaxis": "y2",
            "marker": {
                "colorscale": colorscale(settings.colormap), "cmin": 0, "cmax": 1, "color": [0], "showscale": True,
                "colorbar": {"title": {"text": "Relevance for<br>the decision", "side": "right"},
                             "tickvals": [0, 0.5, 1], "ticktext": ["low", "", "high"], "len": 0.9,
                             "thickness": 14},
            },
        })
    axis = {"showticklabels": False, "showgrid": False, "zeroline": False, "ticks": "", "showline": False,
            "range": [-0.5, n - 0.5]}
    layout = {
        "height": height, "margin": {"l": 4, "r": 4, "t": 36, "b": 4}, "dragmode": "zoom",
        "paper_bgcolor": "white", "plot_bgcolor": "white",
        "xaxis": {**axis, "domain": [0.0, 0.47]},
        "xaxis2": {**axis, "domain": [0.5, 0.97], "matches": "x"},
        "yaxis": {**axis, "range": [n - 0.5, -0.5], "scaleanchor": "x"},
        "yaxis2": {**axis, "range": [n - 0.5, -0.5], "matches": "y", "scaleanchor": "x2"},
        "annotations": [
            {"text": f"<b>{titles[0]}</b>", "x": 0.235, "y": 1.0, "xref": "paper", "yref": "paper",
             "xanchor": "center", "yanchor": "bottom", "showarrow": False, "font": {"size": 15}},
            {"text": f"<b>{titles[1]}</b>", "x": 0.735, "y": 1.0, "xref": "paper", "yref": "paper",
             "xanchor": "center", "yanchor": "bottom", "showarrow": False, "font": {"size": 15}},
        ],
    }
    shapes = [{"type": "rect", "xref": "x", "yref": "y", "x0": x0, "y0": y0, "x1": x1, "y1": y1,
               "line": {"color": "#00e676", "width": 2, "dash": "dash"}} for x0, y0, x1, y1 in truth_boxes]
    if shapes:
        layout["shapes"] = shapes
    return {"data": data, "layout": layout}


@dataclass(frozen=True)
class RenderedCase:
    """Both panes at one set of display settings, the linked figure and the words under it."""

    query: Pane
    prototype: Pane
    figure: dict[str, Any]  # plotly figure as a dict
    caption: str
    notes: list[str]


def render_case(
    case: Case, checkpoint: Checkpoint, explanation: Explanation, settings: DisplaySettings,
    truth_boxes: Iterable[tuple[float, ...]] = (),
) -> RenderedCase:
    """Render the query and the matched prototype's source image with their CAMs (no model call); `truth_boxes`
    (x0, y0, x1, y1 in pane pixels, `display_boxes`) are drawn dashed on the query pane."""
    truth_boxes = list(truth_boxes)
    query = render_pane(case.display, explanation.query_stack, settings)
    proto = render_pane(checkpoint.prototype_image(explanation.prototype), explanation.prototype_stack, settings)
    record = checkpoint.prototypes[explanation.prototype] if checkpoint.prototypes else None
    proto_title = f"Prototype #{explanation.prototype}"
    if record is not None:
        proto_title += f" ({record.class_name}), learned from {record.source_id}"
    figure = panes_figure(query.image, proto.image, ("Your image", proto_title), settings, truth_boxes=truth_boxes)
    size = checkpoint.model.config.input_size
    caption = (
        f"Both images are shown square, as the model sees them ({size} x {size} input); zoom or pan one and the "
        f"other follows (double-click resets). Heatmap: MDM, {explanation.depth} mask vectors, "
        f"{explanation.iterations} iterations, {PROFILE_SHORT_NAMES.get(explanation.profile, explanation.profile)}"
        + (
            "; this bundled sample's heatmap was computed when the demo was built."
            if explanation.precomputed
            else "."
        )
        + (" Dashed green: the sample's true box(es) from the dataset's labels." if truth_boxes else "")
    )
    notes = []
    for name, pane in (("your image", query), ("the prototype", proto)):
        if pane.empty and pane.max_sum < EMPTY_STACK:
            notes.append(f"The explanation kept no region of {name}: every mask faded out, nothing to show.")
        elif pane.empty:
            notes.append(
                f"No region of {name} reaches gamma = {settings.gamma:g} (its strongest region reaches "
                f"{pane.max_sum:.1f}). Lower gamma to see it."
            )
    if explanation.stopped_by_time:
        notes.append(f"The explanation stopped at the {MDM_TIME_LIMIT_S:.0f} s time limit; it may be less precise.")
    return RenderedCase(query, proto, figure, caption, notes)


# ----------------------------------------------------------------------------------------- report


@dataclass
class ReportInputs:
    """Everything a report holds. No DICOM header field and no file name: nothing that identifies a patient."""

    checkpoint: Checkpoint
    prediction: Prediction
    explanation: Explanation
    settings: DisplaySettings
    query_pane: np.ndarray  # uint8 (N, N, 3) as rendered
    prototype_pane: np.ndarray
    image_sha256: str
    image_kind: str
    window: Window | None = None
    top_k: int = DEFAULT_TOP_K
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    fit: TaskFit = TaskFit(True, "not checked")
    ood: OODCheck = OODCheck(float("nan"), None, False)


def report_inputs(
    case: Case, checkpoint: Checkpoint, explanation: Explanation, settings: DisplaySettings,
    rendered: RenderedCase, window: Window | None = None,
) -> ReportInputs:
    return ReportInputs(
        checkpoint=checkpoint, prediction=case.prediction, explanation=explanation, settings=settings,
        query_pane=rendered.query.image, prototype_pane=rendered.prototype.image,
        image_sha256=case.image_sha256, image_kind=case.kind, window=window, fit=case.fit, ood=case.ood,
    )


def report_dict(inputs: ReportInputs) -> dict[str, Any]:
    """The JSON report: checkpoint, prediction, reasoning, explanation and display settings."""
    ck, pred, ex = inputs.checkpoint, inputs.prediction, inputs.explanation
    record = ck.prototypes[ex.prototype] if ck.prototypes else None
    reasoning = []
    for r in pred.top_prototypes(inputs.top_k):
        reasoning.append({
            "prototype": r.prototype, "class": r.class_name, "similarity": r.similarity, "weight": r.weight,
            "contribution": r.contribution, "share": None if r.share != r.share else r.share,
            "source_id": source_id(ck, r.prototype),
        })
    return {
        "report": "DProtoNet Review",
        "disclaimer": DISCLAIMER,
        "created": inputs.created,
        "checkpoint": {
            "name": ck.card.get("name", ck.path.name),
            "model_sha256": ck.card.get("sha256", {}).get("model.safetensors"),
            "synthetic": ck.synthetic,
            "classes": ck.classes,
        },
        "image": {
            "sha256": inputs.image_sha256,
            "kind": inputs.image_kind,
            "window": None if inputs.window is None else {"center": inputs.window.center, "width": inputs.window.width},
        },
        "prediction": {
            "class": pred.class_name,
            "probability": probability(pred),
            "probabilities": dict(zip(ck.classes, pred.probabilities)),
            "logits": pred.logits,
            "decision": decision_text(ck),
            "valid_for_this_image": inputs.fit.fits,
        },
        "task_fit": inputs.fit.to_json(),
        "ood": {**inputs.ood.to_json(), "warning": ood.WARNING if inputs.ood.flagged else None},
        "reasoning": reasoning,
        "explanation": {
            "prototype": ex.prototype,
            "prototype_class": record.class_name if record else None,
            "prototype_source_id": record.source_id if record else None,
            "query_mask_index": ex.mask_index,
            "prototype_mask_index": ex.prototype_mask_index,
            "mdm_profile": ex.profile,
            "iterations": ex.iterations,
            "seconds": round(ex.seconds, 3),
            "stopped_by_time_limit": ex.stopped_by_time,
            "computed_when_the_demo_was_built": ex.precomputed,
            "mask_vectors": ex.depth,
        },
        "display": dataclasses.asdict(inputs.settings),
    }


def report_json(inputs: ReportInputs) -> str:
    return json.dumps(report_dict(inputs), indent=2)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _report_warnings(inputs: ReportInputs) -> list[str]:
    """The task-fit and out-of-distribution warnings of a report, wrapped to the PNG's width."""
    lines = []
    if not inputs.fit.fits:
        lines += textwrap.wrap(f"This image is not what the model was made for: {inputs.fit.reason}.", 110)
    if inputs.ood.flagged:
        lines += textwrap.wrap(ood.WARNING, 110)
    return lines


def report_png(inputs: ReportInputs) -> bytes:
    """The report as one PNG: header, prediction, both panes, reasoning table, settings. No metadata."""
    data = report_dict(inputs)
    pane = inputs.query_pane.shape[0]
    margin, gap = 24, 16
    width = 2 * margin + 2 * inputs.query_pane.shape[1] + gap + 48
    h1, h2, small = _font(26), _font(18), _font(15)
    rows = data["reasoning"]
    height = (margin + 40 + 30 + 30 + 30 + pane + 40 + 30 + 24 * (len(rows) + 1) + 30 + 60 + margin
              + 20 * len(_report_warnings(inputs)))
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = margin
    draw.text((margin, y), "DProtoNet Review: report", fill="black", font=h1)
    y += 40
    draw.text((margin, y), DISCLAIMER, fill=(150, 0, 0), font=small)
    y += 24
    if data["checkpoint"]["synthetic"]:
        for line in textwrap.wrap(SYNTHETIC_WARNING, 110):
            draw.text((margin, y), line, fill=(160, 80, 0), font=small)
            y += 20
    y += 10
    invalid = "" if inputs.fit.fits else "NOT VALID FOR THIS IMAGE: "
    draw.text((margin, y), invalid + prediction_headline(inputs.prediction, inputs.checkpoint),
              fill="black" if inputs.fit.fits else (170, 0, 0), font=h2)
    y += 34
    for line in _report_warnings(inputs):
        draw.text((margin, y), line, fill=(170, 0, 0), font=small)
        y += 20
    ex = data["explanation"]
    draw.text((margin, y), "Your image", fill="black", font=small)
    draw.text(
        (margin + pane + gap, y),
        f"Prototype #{ex['prototype']} ({ex['prototype_class']}, from {ex['prototype_source_id']})",
        fill="black", font=small,
    )
    y += 22
    canvas.paste(Image.fromarray(inputs.query_pane), (margin, y))
    canvas.paste(Image.fromarray(inputs.prototype_pane), (margin + pane + gap, y))
    if inputs.settings.view == "heatmap":  # the legend: colormap(A), A = 1 at the top
        from dprotonet_core.explain import overlay

        x_bar = margin + 2 * pane + gap + 10
        canvas.paste(Image.fromarray(overlay.colorbar_image(inputs.settings.colormap, pane - 40, 14)), (x_bar, y + 20))
        draw.text((x_bar - 6, y), "high", fill="black", font=small)
        draw.text((x_bar - 4, y + pane - 18), "low", fill="black", font=small)
    y += pane + 16
    draw.text((margin, y), "Why: this looks like that (top prototypes)", fill="black", font=h2)
    y += 30
    columns = ("prototype", "class", "similarity g", "weight w", "contribution w*g", "share of logit")
    xs = [margin + i * ((width - 2 * margin) // len(columns)) for i in range(len(columns))]
    for x_pos, name in zip(xs, columns):
        draw.text((x_pos, y), name, fill=(60, 60, 60), font=small)
    y += 24
    for r in rows:
        share = "-" if r["share"] is None else f"{r['share'] * 100:.1f}%"
        cells = (f"#{r['prototype']}", r["class"], f"{r['similarity']:.3f}", f"{r['weight']:.3f}",
                 f"{r['contribution']:.3f}", share)
        for x_pos, text in zip(xs, cells):
            draw.text((x_pos, y), text, fill="black", font=small)
        y += 24
    y += 8
    draw.text((margin, y), f"Display: {inputs.settings.describe()}", fill="black", font=small)
    y += 22
    draw.text(
        (margin, y),
        f"Model: {data['checkpoint']['name']} (sha256 {str(data['checkpoint']['model_sha256'])[:12]}...), "
        f"MDM {ex['mdm_profile']}, {ex['iterations']} iterations; {data['created']}",
        fill=(60, 60, 60), font=small,
    )
    return png_bytes(np.asarray(canvas))


# ------------------------------------------------------------------------------------- prototypes


@dataclass(frozen=True)
class PrototypeCard:
    """One prototype for the researchers' gallery: provenance and its stored MDM heatmap."""

    index: int
    class_index: int
    class_name: str
    source_id: str
    mask_index: int
    views: int  # R, the augmented views of eq. 9-11
    weights: dict[str, float]  # last-layer weight w_j^c to each class c
    image: np.ndarray  # uint8 source image x^{p_t}, with its heatmap when the checkpoint stores one


def prototype_card(
    checkpoint: Checkpoint, index: int, settings: DisplaySettings | None = None, size: int | None = None
) -> PrototypeCard:
    """One prototype with its stored heatmap rendered at `settings` (no model call)."""
    settings = settings or default_settings()
    size = size or int(checkpoint.model.config.input_size)
    record = checkpoint.prototypes[index]
    weight = checkpoint.model.last_layer.weight.detach().float().cpu().numpy()  # (C, K)
    source = checkpoint.prototype_image(record.index)
    if checkpoint.prototype_mask_vectors:
        image = render_pane(source, prototype_stack(checkpoint, record.index), settings, size).image
    else:
        image = (_resize_rgb(_as_rgb01(source), size) * 255).round().astype(np.uint8)
    return PrototypeCard(
        index=record.index, class_index=record.class_index, class_name=record.class_name,
        source_id=record.source_id, mask_index=record.mask_index, views=record.views,
        weights={c: float(weight[i, record.index]) for i, c in enumerate(checkpoint.classes)},
        image=image,
    )


def prototype_cards(
    checkpoint: Checkpoint, classes: Iterable[str] | None = None, settings: DisplaySettings | None = None,
    size: int | None = None,
) -> list[PrototypeCard]:
    """Every prototype (or those of `classes`), in class order."""
    wanted = set(classes) if classes is not None else None
    records = sorted(checkpoint.prototypes, key=lambda r: (r.class_index, r.index))
    return [prototype_card(checkpoint, r.index, settings, size) for r in records
            if wanted is None or r.class_name in wanted]


def weights_figure(checkpoint: Checkpoint, classes: Iterable[str] | None = None):
    """Last-layer weights w_j^c (eq. 3) as grouped bars: one bar per prototype and output class."""
    import plotly.graph_objects as go

    weight = checkpoint.model.last_layer.weight.detach().float().cpu().numpy()
    wanted = set(classes) if classes is not None else None
    records = [r for r in sorted(checkpoint.prototypes, key=lambda r: (r.class_index, r.index))
               if wanted is None or r.class_name in wanted]
    labels = [f"#{r.index} ({r.class_name})" for r in records]
    fig = go.Figure()
    for c, name in enumerate(checkpoint.classes):
        fig.add_trace(go.Bar(x=labels, y=[float(weight[c, r.index]) for r in records], name=f"to class {name}"))
    fig.update_layout(
        barmode="group", template="plotly_white", height=340, margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title="Last-layer weights: how much each prototype's similarity adds to each class's score",
        yaxis_title="weight w", xaxis_title="prototype (its own class)", legend={"orientation": "h", "y": -0.3},
    )
    return fig


# ------------------------------------------------------------------------------------- evaluation

EVALUATION_DIR = "evaluation"


@dataclass
class EvaluationView:
    """What `python -m dprotonet_core evaluate --attach` stored in <checkpoint>/evaluation/."""

    folder: Path
    metrics: dict
    table5: list[dict]  # rows of Table 5, formatted
    figures: dict[str, Any]  # name -> plotly Figure (read from the stored JSON)
    problems: list[str]


def load_evaluation(checkpoint_path: Path) -> EvaluationView | None:
    """Read the stored evaluation; None when there is none. Only JSON/CSV are read (no pickles)."""
    import plotly.io as pio

    folder = Path(checkpoint_path) / EVALUATION_DIR
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        return None
    problems: list[str] = []
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return EvaluationView(folder, {}, [], {}, [f"metrics.json cannot be read ({exc})"])
    table = metrics.get("table5") or {}
    columns = table.get("columns") or []
    better = table.get("higher_is_better") or {}
    rows = []
    for row in table.get("rows") or []:
        out = {"Method": row.get("name", row.get("method", "?"))}
        for c in columns:
            value = row.get(c)
            out[f"{c} {'↑' if better.get(c) else '↓'}"] = "n/a" if value is None else f"{float(value):.3f}"
        out["images"] = row.get("n_images")
        rows.append(out)
    figures: dict[str, Any] = {}
    for name, entry in ((metrics.get("figures") or {}).get("files") or {}).items():
        rel = entry.get("json") if isinstance(entry, dict) else None
        path = (folder / rel).resolve() if rel else None
        if path is None or folder.resolve() not in path.parents or not path.is_file():
            continue
        try:
            figures[name] = pio.read_json(str(path))
        except Exception as exc:  # a damaged figure must not take the page down
            problems.append(f"figure {name} cannot be read ({type(exc).__name__})")
    return EvaluationView(folder, metrics, rows, figures, problems)


def format_timestamp(value: Any) -> str:
    """'2026-11-27T07:00:00+00:00' -> '2026-11-27 07:00 UTC'; anything else as text."""
    text = str(value or "?")
    match = re.fullmatch(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d)(:\d\d(\.\d+)?)?(\+00:00|Z)?", text)
    if not match:
        return text
    return f"{match.group(1)} {match.group(2)}" + (" UTC" if match.group(5) else "")


def classification_metrics(view: EvaluationView) -> dict[str, str]:
    """Headline classification numbers as text ('n/a' where not measured)."""
    cls = view.metrics.get("classification") or {}
    out = {}
    for key, label in (("accuracy", "Accuracy"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
                       ("roc_auc", "ROC AUC")):
        value = cls.get(key)
        out[label] = "n/a" if not isinstance(value, (int, float)) else f"{value:.3f}"
    return out


def classification_by_view(view: EvaluationView) -> list[dict[str, str]]:
    """One row per view (AP / PA radiographs) of the stored classification, when the data had views."""
    rows = []
    for name, fig in sorted(((view.metrics.get("classification") or {}).get("by_view") or {}).items()):
        if not isinstance(fig, dict):
            continue
        row = {"View": str(name), "Images": str(fig.get("n", "?")), "Positives": str(fig.get("positives", "?"))}
        for key, label in (("accuracy", "Accuracy"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
                           ("roc_auc", "ROC AUC")):
            value = fig.get(key)
            row[label] = "n/a" if not isinstance(value, (int, float)) or value != value else f"{value:.3f}"
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------- model card

CARD_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Intended use and limits", ("intended_use", "limitations", "warnings", "out_of_scope")),
    ("What it accepts, and how it decides", ("accepts", "decision_threshold", "ood")),
    ("Data", ("data", "trained_on", "dataset", "training_data", "split", "synthetic", "prototype_sources")),
    ("Training", ("training", "train_config", "loss_config", "mdm_config", "projection", "demo_plan",
                  "backbone_weights", "command_line", "seed", "build_seconds", "epoch_seconds")),
    ("Metrics", ("metrics",)),
    ("Model", ("classes", "backbone", "input_size", "model_config", "normalisation", "dtype")),
    ("Versions", ("software", "format_version")),
)


def card_sections(card: dict) -> list[tuple[str, dict[str, Any]]]:
    """card.json grouped for display; fields not named above go under 'Other'; hashes and tensor
    shapes are shown separately (see card_integrity)."""
    used = {"sha256", "tensors", "name", "task"}
    sections = []
    for title, keys in CARD_SECTIONS:
        fields = {k: card[k] for k in keys if k in card}
        used.update(fields)
        if fields:
            sections.append((title, fields))
    rest = {k: v for k, v in card.items() if k not in used}
    if rest:
        sections.append(("Other", rest))
    return sections


def _percent(value: Any) -> str | None:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else None


PERFORMANCE_CAPTION = (
    "The held-out test split was never used for training, model selection or choosing the threshold. The 95% "
    "interval (Wilson for proportions, Hanley & McNeil for ROC AUC) is the range a test set of that size cannot "
    "tell apart."
)


def performance_rows(card: dict) -> list[dict[str, str]]:
    """The card's measured figures as readable rows (Measure, Value, 95% interval, Measured on), most important
    first: held-out test, the backbone-only baseline on the same images (Table 3), single- vs multi-image
    projection (Table 4), validation, fp16. Accuracies on a stated number of images carry their Wilson
    interval (how far a test set that small can pin them down). Figures a card does not have are left out."""
    m = card.get("metrics") if isinstance(card.get("metrics"), dict) else {}
    n_test, n_val = m.get("test_images"), m.get("val_images")
    test_on = f"held-out test split ({n_test} images)" if n_test else "held-out test split"
    val_on = f"validation split ({n_val} images, selects the epoch)" if n_val else "validation split"
    rows: list[dict[str, str]] = []

    def add(measure: str, value: Any, on: str, n: Any = None, fmt=_percent) -> None:
        text = fmt(value)
        if text is None:
            return
        interval = ""
        if isinstance(n, int) and n > 0 and 0.0 <= value <= 1.0:
            low, high = wilson_interval(round(value * n), n)
            interval = f"{100 * low:.1f}% to {100 * high:.1f}%"
        rows.append({"Measure": measure, "Value": text, "95% interval": interval, "Measured on": on})

    def add_auc(measure: str, value: Any, on: str, positives: Any, negatives: Any) -> None:
        if not isinstance(value, (int, float)) or value != value:
            return
        interval = ""
        if isinstance(positives, int) and isinstance(negatives, int) and positives > 0 and negatives > 0:
            low, high = auc_interval(float(value), positives, negatives)
            interval = f"{low:.3f} to {high:.3f}"
        rows.append({"Measure": measure, "Value": f"{value:.3f}", "95% interval": interval, "Measured on": on})

    n_pos = m.get("test_positives")
    n_neg = n_test - n_pos if isinstance(n_test, int) and isinstance(n_pos, int) else None
    threshold = (card.get("decision_threshold") or {}).get("value")
    at = f"; answer at p({card['classes'][1]}) >= {threshold:.3f}" if threshold is not None else ""
    add("Accuracy", m.get("test_accuracy"), test_on + at, n_test)
    add("Sensitivity (recall of the positive class)", m.get("test_sensitivity"), test_on + at, n_pos)
    add("Specificity", m.get("test_specificity"), test_on + at, n_neg)
    add_auc("ROC AUC", m.get("test_roc_auc"), test_on, n_pos, n_neg)
    for view, fig in sorted((m.get("test_by_view") or {}).items()):
        if not isinstance(fig, dict):
            continue
        on = f"{view} films of the test split ({fig.get('images')} images, {fig.get('positives')} positive){at}"
        v_pos, v_n = fig.get("positives"), fig.get("images")
        v_neg = v_n - v_pos if isinstance(v_n, int) and isinstance(v_pos, int) else None
        add(f"{view} view: accuracy", fig.get("accuracy"), on, v_n)
        add(f"{view} view: sensitivity", fig.get("sensitivity"), on, v_pos)
        add_auc(f"{view} view: ROC AUC", fig.get("roc_auc"), on, v_pos, v_neg)
    argmax = m.get("test_at_argmax") if isinstance(m.get("test_at_argmax"), dict) else {}
    add("Accuracy at the paper's argmax (eq. 3)", argmax.get("accuracy"), test_on + "; p >= 0.5", n_test)
    add("Sensitivity at the paper's argmax (eq. 3)", argmax.get("sensitivity"), test_on + "; p >= 0.5", n_pos)
    b_at = (f"; its own threshold {m['baseline_decision_threshold']:.3f}" if m.get("baseline_decision_threshold")
            is not None else "")
    add("Backbone-only classifier, accuracy (Table 3)", m.get("baseline_test_accuracy"),
        test_on + "; same backbone and epochs, no prototypes" + b_at, n_test)
    add_auc("Backbone-only classifier, ROC AUC (Table 3)", m.get("baseline_test_roc_auc"),
            test_on + "; same backbone and epochs, no prototypes", n_pos, n_neg)
    table4 = m.get("table4_test_accuracy") if isinstance(m.get("table4_test_accuracy"), dict) else {}
    def views(key: Any) -> str:  # "R=40" -> "40"
        return str(key).split("=")[-1]

    for key, value in sorted(table4.items(), key=lambda kv: (not views(kv[0]).isdigit(), views(kv[0]).zfill(9))):
        r = views(key)
        kind = "single-image" if r == "1" else "multi-image"
        add(f"Accuracy after {kind} projection, R = {r} (Table 4)", value, test_on + at, n_test)
    add("Accuracy", m.get("val_accuracy"), val_on, n_val)
    add("Backbone-only classifier, accuracy (Table 3)", m.get("baseline_val_accuracy"), val_on, n_val)
    change = m.get("fp16_accuracy_change")
    add("Accuracy change fp32 -> fp16 (as shipped)", change, val_on,
        fmt=lambda v: None if _percent(v) is None else f"{100 * v:+.1f} points")
    return rows


def card_integrity(card: dict) -> list[dict[str, str]]:
    """One row per file with its sha256 (verified on load) and, for the model, the tensor count."""
    rows = [{"File": name, "sha256": digest} for name, digest in sorted((card.get("sha256") or {}).items())]
    return rows


def card_label(key: str) -> str:
    """'intended_use' -> 'Intended use'."""
    return key.replace("_", " ").capitalize()


def _card_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def card_value_markdown(key: str, value: Any) -> str | None:
    """Markdown for a scalar or a list of scalars; None for nested values (shown as JSON)."""
    if isinstance(value, bool):
        return f"**{card_label(key)}:** {'yes' if value else 'no'}"
    if isinstance(value, (str, int, float)) or value is None:
        return f"**{card_label(key)}:** {value}"
    if isinstance(value, dict) and value and all(isinstance(v, (str, int, float, bool)) or v is None
                                                  for v in value.values()):
        lines = "\n".join(f"- {card_label(str(k))}: {_card_scalar(v)}" for k, v in value.items())
        return f"**{card_label(key)}**\n\n{lines}"
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        if all(isinstance(v, str) and len(v) > 30 for v in value):
            return f"**{card_label(key)}:**\n" + "\n".join(f"- {v}" for v in value)
        return f"**{card_label(key)}:** {', '.join(map(str, value))}"
    return None


def prototype_provenance(card: PrototypeCard) -> list[dict[str, str]]:
    """The detail table of one prototype."""
    rows = [
        {"Field": "Prototype", "Value": f"#{card.index}"},
        {"Field": "Class", "Value": card.class_name},
        {"Field": "Source image", "Value": card.source_id},
        {"Field": "Feature mask index (j)", "Value": str(card.mask_index)},
        {"Field": "Augmented views R (eq. 9-11)", "Value": str(card.views)},
    ]
    rows += [{"Field": f"Weight to {c}", "Value": f"{w:.3f}"} for c, w in card.weights.items()]
    return rows
