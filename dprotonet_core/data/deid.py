"""De-identified metadata: what of a DICOM header a user is ever shown.

Nothing here copies free text out of a file. Every field shown comes from an allow-list of technical
attributes, and every value is either a number parsed and re-formatted by us or a code checked against a
closed vocabulary. A value outside the vocabulary is shown as "other". Names, IDs, dates, institutions,
comments, private tags, patient age and patient sex are never returned.
"""

from __future__ import annotations

import math
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID

MODALITIES = frozenset("CR DX MG CT MR US XA RF NM PT OT SC IO PX ES XC GM SM OP OPT RG DG MS".split())
BODY_PARTS = frozenset(
    "CHEST THORAX LUNG ABDOMEN PELVIS HEAD BRAIN NECK SKULL SPINE CSPINE TSPINE LSPINE HAND WRIST ARM "
    "ELBOW SHOULDER KNEE LEG FOOT ANKLE HIP BREAST HEART EYE RETINA FUNDUS EXTREMITY WHOLEBODY "
    "CHESTABDOMEN ABDOMENPELVIS".split()
)
VIEW_POSITIONS = frozenset("AP PA LL RL LLD RLD LPO RPO LAO RAO LATERAL LAT OBL CC MLO ML LM".split())
PHOTOMETRIC = frozenset(
    "MONOCHROME1 MONOCHROME2 RGB PALETTE_COLOR YBR_FULL YBR_FULL_422 YBR_ICT YBR_RCT YBR_PARTIAL_420".split()
)

# (label shown to the user, DICOM keyword, kind of value)
ALLOWED_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("Modality", "Modality", "modality"),
    ("Body part", "BodyPartExamined", "body_part"),
    ("View", "ViewPosition", "view"),
    ("Rows", "Rows", "int"),
    ("Columns", "Columns", "int"),
    ("Frames", "NumberOfFrames", "int"),
    ("Pixel spacing (mm)", "PixelSpacing", "spacing"),
    ("Imager pixel spacing (mm)", "ImagerPixelSpacing", "spacing"),
    ("Bits stored", "BitsStored", "int"),
    ("Photometric interpretation", "PhotometricInterpretation", "photometric"),
)

_VOCABULARIES = {
    "modality": MODALITIES,
    "body_part": BODY_PARTS,
    "view": VIEW_POSITIONS,
    "photometric": PHOTOMETRIC,
}


def _format_code(value: Any, vocabulary: frozenset[str]) -> str | None:
    """Return `value` if it is a code from `vocabulary`, "other" if it is any other value, None if empty."""
    text = str(value).strip().upper().replace(" ", "_") if value is not None else ""
    if not text:
        return None
    if text == "PALETTE_COLOR" or text in vocabulary:
        return text.replace("_", " ") if text == "PALETTE_COLOR" else text
    return "other"


def _format_int(value: Any) -> str | None:
    """Format a small non-negative integer, or None when `value` is not one."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return str(number) if 0 <= number < 10**7 else None


def _format_spacing(value: Any) -> str | None:
    """Format a pixel spacing (one or two positive numbers, mm) as 'row x column'."""
    items = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") else [value]
    if isinstance(value, (str, bytes)):
        items = [value]
    numbers: list[float] = []
    for item in items[:2]:
        try:
            number = float(item)
        except (TypeError, ValueError, OverflowError):
            return None
        if not math.isfinite(number) or not 0 < number < 1000:
            return None
        numbers.append(number)
    if not numbers:
        return None
    return " x ".join(f"{n:.4g}" for n in numbers)


def _format_value(value: Any, kind: str) -> str | None:
    """Format one allow-listed value according to its kind; never returns free text from the file."""
    if kind in _VOCABULARIES:
        return _format_code(value, _VOCABULARIES[kind])
    if kind == "int":
        return _format_int(value)
    if kind == "spacing":
        return _format_spacing(value)
    return None


def transfer_syntax_name(ds: Dataset) -> str | None:
    """Return the registered name of the file's transfer syntax, or None when it is not a known UID."""
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if not uid:
        return None
    uid = UID(str(uid))
    return uid.name if uid.is_transfer_syntax else "unknown"


def deidentified_metadata(ds: Dataset) -> dict[str, str]:
    """Return the allow-listed, de-identified header fields of `ds` as display label -> value."""
    out: dict[str, str] = {}
    for label, keyword, kind in ALLOWED_FIELDS:
        try:
            raw = ds.get(keyword)
            value = _format_value(raw, kind) if raw is not None else None
        except Exception:  # a malformed element is simply not shown
            value = None
        if value is not None:
            out[label] = value
    try:
        name = transfer_syntax_name(ds)
    except Exception:
        name = None
    if name:
        out["Encoding"] = name
    return out


def has_burned_in_annotation(ds: Dataset) -> bool:
    """True when the header declares BurnedInAnnotation = YES (text burned into the pixels)."""
    try:
        return str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"
    except Exception:
        return False


BURNED_IN_NOTICE = "burned-in annotation flagged: text burned into the image may identify the patient"
