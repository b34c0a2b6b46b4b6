"""One case under review: reading the upload, the bundled samples, routing an image to the checkpoint made for it,
and the prediction with its rows (cached per image, window and checkpoint)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dprotonet_core import inference, ood
from dprotonet_core.checkpoint import Checkpoint
from dprotonet_core.data import io as image_io
from dprotonet_core.data.io import ImageReadError, LoadedImage, Window
from dprotonet_core.inference import Prediction
from dprotonet_core.ood import OODCheck
from dprotonet_core.review.catalogue import CheckpointEntry, checkpoint_id
from dprotonet_core.review.settings import (
    COMPACT_ABOVE_PIXELS,
    DEFAULT_SAMPLES_DIR,
    DEFAULT_TOP_K,
    DISPLAY_SIZE,
    LOG,
    MAX_PIXELS,
    MAX_UPLOAD_MB,
    SAMPLES_DIR_ENV,
    ReviewError,
)
from dprotonet_core.review.text import plain
from dprotonet_core.task_fit import TaskFit, first_fitting, task_fit


def file_hash(data: bytes) -> str:
    """sha256 of the uploaded bytes: the only thing about an upload the app keeps as a key."""
    return hashlib.sha256(data).hexdigest()


def compact(loaded: LoadedImage) -> LoadedImage:
    """What a session keeps of a decoded image: above COMPACT_ABOVE_PIXELS its working-size pixels as uint8 (a
    quarter of float32; the model sees 224 px and the panes 448 either way), smaller images as read. A grey
    DICOM keeps its modality values for re-windowing."""
    pixels = loaded.pixels
    if pixels.dtype == np.uint8 or loaded.height * loaded.width <= COMPACT_ABOVE_PIXELS:
        return loaded
    scaled = np.multiply(pixels, 255.0, dtype=np.float32)
    np.rint(scaled, out=scaled)
    return dataclasses.replace(loaded, pixels=scaled.astype(np.uint8))


def read_upload(data: bytes, window: Window | None = None) -> LoadedImage:
    """Decode uploaded bytes (DICOM, PNG, JPEG, TIFF); any problem is one ReviewError line. A large image comes
    back compact (uint8 pixels, `compact`): the session holds it until it ends."""
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
    return compact(loaded)


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


def predict(checkpoint: Checkpoint, x: torch.Tensor) -> Prediction:
    """Classify x (1, 3, S, S) in [0, 1]; the reasoning rows explain the logit as a sum of w * g (eq. 3).
    A model whose scores are not finite gives no answer: ReviewError (never "normal, nan%")."""
    try:
        return inference.predict(checkpoint.model, x, checkpoint.classes, checkpoint.decision_threshold,
                                 checkpoint.card.get("ood"), checkpoint.calibration,
                                 checkpoint.ood_detector)
    except ValueError as exc:
        raise ReviewError(f"This model gives no answer for this image: {' '.join(str(exc).split())}.") from None


def ood_warning(checkpoint: Checkpoint) -> str:
    """The out-of-distribution warning, true for this checkpoint's score and threshold (ood.warning)."""
    from dprotonet_core import ood

    return ood.warning(checkpoint.card.get("ood"))


def decision_text(checkpoint: Checkpoint) -> str:
    """How the answer was decided and what the probability is, in plain words (the card's threshold and calibrator,
    or the paper's argmax of an uncalibrated softmax)."""
    from dprotonet_core.calibration import describe

    calibration = checkpoint.calibration
    kind = str((checkpoint.card.get("accepts") or {}).get("what") or "image")
    what = (f"The probability is calibrated: among {kind}s like those it was fitted on "
            f"({calibration.get('fitted_on', 'validation images')}), a probability p means about p x 100 in 100 "
            "had the finding." if calibration else
            f"The probability is {describe(None)}: its ranking of images means something, its value is not a "
            "measured frequency.")
    threshold = checkpoint.decision_threshold
    if threshold is None:
        return f"Decision: the class with the highest score (argmax of eq. 3, the paper's rule). {what}"
    positive = checkpoint.classes[1]
    record = checkpoint.card.get("decision_threshold") or {}
    if record.get("rule") == "argmax":
        return (f"Decision: the class with the highest score (argmax of eq. 3, the paper's rule); on the calibrated "
                f"scale that is {positive} when p({positive}) >= {threshold:.2f}. {what}")
    chosen_for = record.get("chosen_for") or record.get("rule") or "see the model card"
    chosen_on = record.get("chosen_on") or "the validation split"
    return (f"Decision: {positive} when p({positive}) >= {threshold:.2f}, a threshold chosen on {chosen_on} for "
            f"{chosen_for} (not the paper's argmax). {what}")


def probability(prediction: Prediction) -> float:
    """The probability of the predicted class."""
    return float(prediction.probabilities[prediction.class_index])


def prediction_headline(prediction: Prediction, checkpoint: Checkpoint) -> str:
    """"Prediction: PM, 96.4%" (argmax: the predicted class's probability), or, for a checkpoint that decides by
    a threshold, the positive class's probability beside the threshold it was compared with, so that a
    "pneumonia" answer at p = 0.04 is not shown as "pneumonia, 4%" without its reason. A calibrated probability
    says so; an uncalibrated one is called a score."""
    kind = "calibrated probability" if prediction.calibrated else "uncalibrated model score"
    threshold = checkpoint.decision_threshold
    if threshold is None:
        return f"Prediction: {prediction.class_name} ({kind} {probability(prediction) * 100:.1f}%)"
    positive = checkpoint.classes[1]
    p = prediction.probabilities[1]
    sign = ">=" if p >= threshold else "<"
    return (f"Prediction: {prediction.class_name} ({kind} of {positive} {p * 100:.1f}% {sign} "
            f"threshold {threshold * 100:.1f}%)")


def probability_text(prediction: Prediction, classes: list[str]) -> str:
    """All class probabilities in one line, predicted class first, saying whether they are calibrated."""
    order = sorted(range(len(classes)), key=lambda i: -prediction.probabilities[i])
    values = " · ".join(f"{classes[i]} {prediction.probabilities[i] * 100:.1f}%" for i in order)
    return f"{'Calibrated' if prediction.calibrated else 'Uncalibrated'}: {values}"


def default_prototype(prediction: Prediction) -> int:
    """The paper's detection node p_t: the predicted class's prototype with the highest similarity g
    (mdm.top_prototype, the one place it is chosen)."""
    from dprotonet_core.explain.mdm import top_prototype

    rows = prediction.reasoning
    return rows[top_prototype([r.similarity for r in rows], [r.class_index for r in rows],
                              prediction.class_index)].prototype


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
    return f"#{prototype} {plain(row.class_name)}{best}"  # a radio label is markdown; the class name is the card's


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
