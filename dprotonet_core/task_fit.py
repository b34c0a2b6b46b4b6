"""Is this image one the checkpoint was made for? Read from what the file itself says, before any prediction.

A checkpoint's card declares what it accepts:

    "accepts": {"what": "frontal chest radiograph", "modalities": ["CR", "DX"], "body_parts": ["CHEST"],
                "colour": "grey"}

and an upload is described by its DICOM header (Modality, BodyPartExamined, PhotometricInterpretation, read by
the de-identifying reader) and, for any file, by its colour measured on the pixels: a radiograph is grey even
when a PNG stores it as RGB, a fundus photograph is colour. A card without `accepts` accepts everything (and
says so). The model-side check, "unlike anything the model learned from", is `ood.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dprotonet_core.data.io import LoadedImage

# Mean over pixels of max(R, G, B) - min(R, G, B), on [0, 1] pixels. Grey films stored as RGB give 0 (JPEG
# chroma noise stays under 0.01); the PALM photographs give 0.2-0.4 (measured on the 400, bench/ood.py).
GREY_CHROMA = 0.03
_COLOUR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "PALETTE COLOR")
_ANY = "any image"


@dataclass(frozen=True)
class TaskFit:
    """The verdict for one image and one checkpoint: fits or not, and why, in one line."""

    fits: bool
    reason: str

    def to_json(self) -> dict:
        return {"fits": self.fits, "reason": self.reason}


def chroma(pixels: np.ndarray) -> float:
    """Mean per-pixel colourfulness max(R, G, B) - min(R, G, B) of [0, 1] pixels (uint8 pixels count as / 255);
    0 for a grey (H, W) image."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2 or pixels.shape[-1] == 1:
        return 0.0
    step = max(1, int(np.sqrt(pixels.shape[0] * pixels.shape[1] / 65536)))  # ~256 x 256 samples suffice
    sample = pixels[::step, ::step, :3].astype(np.float32)
    if pixels.dtype == np.uint8:
        sample /= 255.0
    return float((sample.max(axis=-1) - sample.min(axis=-1)).mean())


def image_colour(loaded: LoadedImage) -> str:
    """"colour" or "grey", from the DICOM photometric interpretation when it says colour, else the pixels."""
    photometric = (loaded.photometric or "").upper()
    if photometric.startswith("MONOCHROME"):
        return "grey"
    return "colour" if chroma(loaded.pixels) > GREY_CHROMA else "grey"


def describe(loaded: LoadedImage) -> str:
    """What the file says it is, in words: "DICOM CR CHEST, grey" or "JPEG image, colour"."""
    colour = image_colour(loaded)
    if loaded.kind == "dicom":
        parts = [loaded.metadata.get("Modality", ""), loaded.metadata.get("Body part", "")]
        head = " ".join(p for p in parts if p) or "without modality"
        return f"DICOM {head}, {colour}"
    return f"{loaded.kind.upper()} image, {colour}"


def _listed(value: str, allowed: Sequence[str]) -> bool:
    return value.strip().upper() in {a.strip().upper() for a in allowed}


def task_fit(loaded: LoadedImage, accepts: dict | None) -> TaskFit:
    """Does `loaded` fit a card's `accepts`? DICOM Modality and BodyPartExamined when the file has them,
    then colour; a card without `accepts` takes any image."""
    if not accepts:
        return TaskFit(True, "the checkpoint's card does not say what it accepts; not checked")
    what = accepts.get("what", "the images it was trained on")
    if loaded.kind == "dicom":
        modality = loaded.metadata.get("Modality", "")
        if modality and accepts.get("modalities") and not _listed(modality, accepts["modalities"]):
            return TaskFit(False, f"a DICOM of modality {modality}; this model reads {what} "
                                  f"({', '.join(accepts['modalities'])})")
        body_part = loaded.metadata.get("Body part", "")
        if body_part and accepts.get("body_parts") and not _listed(body_part, accepts["body_parts"]):
            return TaskFit(False, f"a DICOM of body part {body_part}; this model reads {what}")
    wanted = accepts.get("colour")
    colour = image_colour(loaded)
    if wanted in ("grey", "colour") and colour != wanted:
        return TaskFit(False, f"a {colour} image; this model reads {what} ({wanted})")
    return TaskFit(True, f"{describe(loaded)}: fits {what}")


def first_fitting(loaded: LoadedImage, cards: Sequence[tuple[str, dict]]) -> str | None:
    """The key of the first (key, card) whose `accepts` the image fits (cards without `accepts` never win)."""
    for key, card in cards:
        if card.get("accepts") and task_fit(loaded, card["accepts"]).fits:
            return key
    return None
