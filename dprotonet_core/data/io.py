"""Reading an uploaded image: DICOM, PNG, JPEG or TIFF bytes -> float pixels in [0, 1].

The format is decided by magic bytes, never by the file name. Sizes are checked from the header before any
pixel is decoded. Everything a user can get wrong ends in one exception type, `ImageReadError`, whose message
is one line a clinician understands; no other exception escapes `read_image` for any input bytes.

DICOM display pipeline (PS3.3 C.11): stored values -> modality LUT (rescale) -> VOI LUT or window
centre/width (the file's or the user's) -> MONOCHROME1 inverted after VOI -> float [0, 1].

Reading writes nothing to disk and logs nothing about the upload: pydicom's log records and warnings raised
while a file is being read are suppressed (pydicom may quote header values in them).
"""

from __future__ import annotations

import contextvars
import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pydicom
import pydicom.uid
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import UID

from dprotonet_core.data.deid import BURNED_IN_NOTICE, deidentified_metadata, has_burned_in_annotation

DEFAULT_MAX_PIXELS = 40_000_000
MAX_FRAMES_FACTOR = 16  # a multi-frame file may hold at most this many max-size frames in total

ImageKind = Literal["dicom", "png", "jpeg", "tiff"]


class ImageReadError(Exception):
    """The uploaded file cannot be shown; the message is one line meant for the user."""


@dataclass(frozen=True)
class Window:
    """A VOI window: `center` and `width` in modality units (e.g. HU for CT), DICOM LINEAR function."""

    center: float
    width: float
    label: str = ""
    function: str = "LINEAR"


@dataclass
class LoadedImage:
    """A decoded image ready for display and for the model.

    pixels: float32 in [0, 1], (H, W) grey or (H, W, 3) RGB.
    metadata: de-identified allow-list only (see deid.py).
    window: the window used for a grey DICOM (None when the file's VOI LUT table or no window was used).
    file_windows: the window(s) the DICOM file itself proposes.
    voi_lut_used: True when the file's VOI LUT table (not centre/width) produced `pixels`.
    modality_values: grey DICOM only, the first frame after the modality LUT, for fast re-windowing.
    photometric: the DICOM photometric interpretation ('' for other formats).
    """

    pixels: np.ndarray
    kind: ImageKind
    metadata: dict[str, str] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    window: Window | None = None
    file_windows: list[Window] = field(default_factory=list)
    voi_lut_used: bool = False
    modality_values: np.ndarray | None = field(default=None, repr=False)
    photometric: str = ""
    inverted: bool = False  # grey DICOM shown inverted (MONOCHROME1 or Presentation LUT Shape INVERSE), once

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return int(self.pixels.shape[1])

    @property
    def is_grey(self) -> bool:
        """True for a single-channel image."""
        return self.pixels.ndim == 2


# --------------------------------------------------------------------------------------------- sniffing

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_OTHER_FORMATS = (
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
)


def _looks_like_bare_dicom(data: bytes) -> bool:
    """True for a DICOM data set without preamble: it starts with a group 0x0002 or 0x0008 tag."""
    if len(data) < 8:
        return False
    group_le = int.from_bytes(data[0:2], "little")
    group_be = int.from_bytes(data[0:2], "big")
    if group_le not in (0x0002, 0x0008) and group_be != 0x0008:
        return False
    vr = data[4:6]
    explicit = vr.isalpha() and vr.isupper()
    implicit_length = int.from_bytes(data[4:8], "little")
    return explicit or implicit_length < 0x10000


def sniff_kind(data: bytes) -> ImageKind:
    """Decide the file format from its first bytes; raise ImageReadError for anything unsupported."""
    if not data:
        raise ImageReadError("The file is empty.")
    if data[128:132] == b"DICM" or data[:4] == b"DICM" or _looks_like_bare_dicom(data):
        return "dicom"
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if data[:4] in _TIFF_MAGICS:
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        raise ImageReadError("Unsupported file: this is a WebP image; please upload DICOM, PNG, JPEG or TIFF.")
    for magic, name in _OTHER_FORMATS:
        if data.startswith(magic):
            raise ImageReadError(f"Unsupported file: this is {name}; please upload DICOM, PNG, JPEG or TIFF.")
    raise ImageReadError("Unsupported file: not a DICOM, PNG, JPEG or TIFF image.")


# ---------------------------------------------------------------------------------- quiet reading

_READING_UPLOAD: contextvars.ContextVar[bool] = contextvars.ContextVar("reading_upload", default=False)


class _DropWhileReading(logging.Filter):
    """Drops pydicom log records emitted while an upload is being read (they may quote header values)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _READING_UPLOAD.get()


_LOG_FILTER = _DropWhileReading()


@contextmanager
def _quiet() -> Iterator[None]:
    """Suppress pydicom/Pillow log records and warnings for the duration of one read."""
    for name in ("pydicom", "PIL"):
        logger = logging.getLogger(name)
        if _LOG_FILTER not in logger.filters:
            logger.addFilter(_LOG_FILTER)
    token = _READING_UPLOAD.set(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _READING_UPLOAD.reset(token)


# ------------------------------------------------------------------------------------ size checks


def _megapixels(n: float) -> str:
    """Format a pixel count in megapixels for a message."""
    return f"{n / 1e6:.0f}" if n >= 1e6 else f"{n / 1e6:.2f}"


def check_size(width: int, height: int, max_pixels: int, frames: int = 1) -> None:
    """Raise ImageReadError when the declared size is empty or above the pixel cap (before decoding)."""
    if width <= 0 or height <= 0:
        raise ImageReadError("The file declares an empty image (0 rows or columns).")
    pixels = width * height
    if pixels > max_pixels:
        raise ImageReadError(
            f"The image is too large: {width} x {height} pixels ({_megapixels(pixels)} megapixels); "
            f"the limit is {_megapixels(max_pixels)} megapixels."
        )
    if frames > 1 and pixels * frames > max_pixels * MAX_FRAMES_FACTOR:
        raise ImageReadError(
            f"The file holds too much image data: {frames} frames of {width} x {height} pixels; "
            f"the limit is {_megapixels(max_pixels * MAX_FRAMES_FACTOR)} megapixels in total."
        )


# ----------------------------------------------------------------------------------- public entry


def read_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, window: Window | None = None) -> LoadedImage:
    """Read uploaded bytes (DICOM, PNG, JPEG or TIFF) into a LoadedImage.

    `window` overrides the DICOM file's own VOI for grey images (ignored for other formats).
    Raises ImageReadError, and nothing else, for any input.
    """
    try:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ImageReadError("No file content was received.")
        data = bytes(data)
        kind = sniff_kind(data)
        with _quiet():
            if kind == "dicom":
                loaded = _read_dicom(data, max_pixels=max_pixels, window=window)
            else:
                loaded = _read_pillow(data, kind, max_pixels)
        return _finalise(loaded)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError("The image needs more memory than is available to open it.") from None
    except Exception:
        raise ImageReadError("The file is damaged or not a readable image.") from None


def _finalise(loaded: LoadedImage) -> LoadedImage:
    """Check the decoded pixels are sane: finite, float32, [0, 1], (H, W) or (H, W, 3)."""
    pixels = np.asarray(loaded.pixels)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3) or pixels.size == 0:
        raise ImageReadError("The file's pixel data has an unexpected shape.")
    pixels = np.nan_to_num(pixels.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    loaded.pixels = np.ascontiguousarray(np.clip(pixels, 0.0, 1.0))
    return loaded


# ------------------------------------------------------------------------------------------ DICOM

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _parse_dicom(data: bytes) -> Dataset:
    """Parse the DICOM data set (pixel data stays encoded); damaged headers become ImageReadError."""
    if data[:4] == b"DICM":  # "DICM" prefix without the 128-byte preamble
        data = bytes(128) + data
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        ds.file_meta  # noqa: B018 - make sure the meta group was parsed
    except Exception:
        raise ImageReadError("The DICOM file is damaged or truncated: its header cannot be read.") from None
    return ds


def _header_int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    """An integer header value; missing or malformed values raise ImageReadError naming the field."""
    try:
        value = ds.get(keyword, default)
        if value is None or value == "":
            raise ValueError
        return int(value)
    except Exception:
        if default is not None:
            return default
        raise ImageReadError(f"The DICOM file has no valid {keyword} field, so its image cannot be read.") from None


# SOP classes whose objects are not pictures of a patient, though some carry pixel data: classifying them as
# if they were radiographs would answer about an image nobody took. Prefixes cover the families (PS3.4 B.5).
_NOT_PATIENT_IMAGES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.66.4": "a Segmentation (a label map drawn on another image)",
    "1.2.840.10008.5.1.4.1.1.66": "a Raw Data, Spatial Registration or Fiducials object",
    "1.2.840.10008.5.1.4.1.1.88": "a Structured Report",
    "1.2.840.10008.5.1.4.1.1.11": "a Presentation State (display settings for another image)",
    "1.2.840.10008.5.1.4.1.1.104": "an encapsulated document (PDF / CDA)",
    "1.2.840.10008.5.1.4.1.1.481": "a Radiotherapy object (plan, structure set, dose)",
    "1.2.840.10008.5.1.4.1.1.9": "a Waveform (ECG, audio, ...)",
    "1.2.840.10008.5.1.4.1.1.67": "a Real World Value Mapping",
    "1.2.840.10008.5.1.4.1.1.91": "a Content Assessment Results object",
    "1.2.840.10008.5.1.4.1.1.90": "a Tractography Results object",
}


_RT_IMAGE = "1.2.840.10008.5.1.4.1.1.481.1"


def not_a_patient_image(ds: Dataset) -> str | None:
    """What the object is when its SOP class says it is not an image of a patient, else None."""
    uid = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", "") or "").strip()
    if uid == _RT_IMAGE:  # a portal image of the patient, though of the radiotherapy family
        return None
    for prefix, what in _NOT_PATIENT_IMAGES.items():
        if uid == prefix or uid.startswith(prefix + "."):
            return what
    return None


def _check_dicom_header(ds: Dataset, max_pixels: int) -> tuple[int, int, int]:
    """Check the object is an image of a patient, pixel data is present and the declared size is within limits;
    return (rows, cols, frames)."""
    what = not_a_patient_image(ds)
    if what is not None:
        raise ImageReadError(f"The DICOM file is {what}, not an image of a patient: there is nothing to classify.")
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise ImageReadError("The DICOM file contains no image (no pixel data): it may be a report.")
    rows, cols = _header_int(ds, "Rows"), _header_int(ds, "Columns")
    frames = _header_int(ds, "NumberOfFrames", 1)
    samples = _header_int(ds, "SamplesPerPixel", 1)
    if frames < 1:
        frames = 1
    if samples not in (1, 3):
        raise ImageReadError(f"The DICOM image has {samples} samples per pixel; only grey or colour are supported.")
    check_size(cols, rows, max_pixels, frames)
    return rows, cols, frames


def _transfer_syntax(ds: Dataset) -> UID:
    """The data set's transfer syntax, inferred from how it was encoded when the meta header lacks it."""
    uid = ds.file_meta.get("TransferSyntaxUID")
    if uid:
        return UID(str(uid))
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if not little:
        uid = pydicom.uid.ExplicitVRBigEndian
    else:
        uid = pydicom.uid.ImplicitVRLittleEndian if implicit else pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.TransferSyntaxUID = uid
    return UID(uid)


def _check_decoder(uid: UID) -> None:
    """Raise ImageReadError naming the compression when no installed decoder can read `uid`."""
    if not uid.is_transfer_syntax:
        raise ImageReadError("The DICOM file declares an unknown encoding (transfer syntax) and cannot be read.")
    try:
        decoder = get_decoder(uid)
        available = decoder.is_available
    except Exception:
        available = False
    if not available:
        raise ImageReadError(f"The DICOM file uses {uid.name} compression, which this software cannot decode.")


def _decode_first_frame(ds: Dataset, uid: UID) -> np.ndarray:
    """Decode frame 1 only (YBR is converted to RGB by pydicom)."""
    try:
        ds.pixel_array_options(index=0)
        return np.asarray(ds.pixel_array)
    except MemoryError:
        raise
    except Exception:
        what = f"{uid.name} " if uid.is_compressed else ""
        raise ImageReadError(f"The DICOM file's {what}pixel data is damaged or incomplete.") from None


def _file_windows(ds: Dataset) -> list[Window]:
    """The window centre/width pairs the file proposes (multi-valued fields give several)."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return []
    centers, widths = ds.WindowCenter, ds.WindowWidth
    centers = list(centers) if isinstance(centers, MultiValue) else [centers]
    widths = list(widths) if isinstance(widths, MultiValue) else [widths]
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    windows = []
    for i, (c, w) in enumerate(zip(centers, widths)):
        try:
            center, width = float(c), float(w)
        except (TypeError, ValueError):
            continue
        if np.isfinite(center) and np.isfinite(width) and width > 0:
            windows.append(Window(center, width, f"file window {i + 1}", function))
    return windows


def _apply_voi_lut_table(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the file's VOI LUT Sequence (pydicom) and scale the table's output range to [0, 1]."""
    out = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float64)
    item = ds.VOILUTSequence[0]
    bits = int(item.LUTDescriptor[2]) or 16
    top = max(float(2**bits - 1), float(out.max()), 1.0)
    return (out / top).astype(np.float32)


def _full_range_window(values: np.ndarray) -> Window:
    """A window spanning the image's own value range."""
    low, high = float(np.min(values)), float(np.max(values))
    return Window((low + high) / 2, max(high - low, 1.0), "full range", "LINEAR_EXACT")


def _grey_pipeline(
    arr: np.ndarray, ds: Dataset, window: Window | None, notices: list[str]
) -> tuple[np.ndarray, np.ndarray, Window | None, bool]:
    """Modality LUT -> VOI (user window, file VOI LUT, file window or full range) -> MONOCHROME1 invert."""
    values = apply_modality_lut(arr, ds) if arr.dtype.kind in "iu" else arr.astype(np.float64)
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    file_windows = _file_windows(ds)
    voi_lut_used = False
    if window is not None:
        used: Window | None = window
        pixels = apply_window(values, window)
    elif "VOILUTSequence" in ds and _has_lut_items(ds):
        used, voi_lut_used = None, True
        pixels = _apply_voi_lut_table(values, ds)
    elif file_windows:
        used = file_windows[0]
        pixels = apply_window(values, used)
    else:
        used = _full_range_window(values)
        pixels = apply_window(values, used) if np.ptp(values) > 0 else np.zeros_like(values)
    if displays_inverted(ds):
        pixels = 1.0 - pixels
        if str(ds.get("PhotometricInterpretation", "")).strip().upper() != "MONOCHROME1":
            notices.append("presentation LUT: inverted as the file requests")
    return pixels, values, used, voi_lut_used


def displays_inverted(ds: Dataset) -> bool:
    """True when the grey values are shown inverted (high = dark): MONOCHROME1, or Presentation LUT Shape
    INVERSE. The standard requires INVERSE on every MONOCHROME1 image, and there both name the same single
    inversion (PS3.3 C.11.6): inverting once for each would show the film as MONOCHROME2."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    return photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).strip().upper() == "INVERSE"


def _has_lut_items(ds: Dataset) -> bool:
    """True when the VOI LUT Sequence has a usable first item."""
    try:
        item = ds.VOILUTSequence[0]
        return "LUTDescriptor" in item and "LUTData" in item
    except Exception:
        return False


def _colour_pixels(arr: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """Colour frame (RGB, YBR already converted, or PALETTE COLOR) -> float [0, 1] RGB."""
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds).astype(np.float64)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2]) or 16
        return (rgb / max(float(2**bits - 1), float(rgb.max()), 1.0)).astype(np.float32)
    bits = _header_int(ds, "BitsStored", 8)
    rgb = arr.astype(np.float64)
    if rgb.min() < 0:
        rgb = rgb - rgb.min()
    return (rgb / max(float(2 ** min(max(bits, 1), 32) - 1), 1.0)).astype(np.float32)


def _read_dicom(data: bytes, *, max_pixels: int, window: Window | None) -> LoadedImage:
    """Read a DICOM upload: header checks, first frame, display pipeline, de-identified metadata."""
    ds = _parse_dicom(data)
    rows, cols, frames = _check_dicom_header(ds, max_pixels)
    uid = _transfer_syntax(ds)
    if "PixelData" in ds:
        _check_decoder(uid)
    notices: list[str] = []
    if frames > 1:
        notices.append(f"multi-frame: showing frame 1 of {frames}")
    if has_burned_in_annotation(ds):
        notices.append(BURNED_IN_NOTICE)
    arr = _decode_first_frame(ds, uid)
    if frames > 1 and arr.ndim >= 3 and arr.shape[0] == frames and arr.shape[1:3] == (rows, cols):
        arr = arr[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    metadata = deidentified_metadata(ds)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        pixels = _colour_pixels(arr, ds, photometric)
        return LoadedImage(pixels, "dicom", metadata, notices, photometric=photometric)
    if photometric == "PALETTE COLOR":
        pixels = _colour_pixels(arr, ds, photometric)
        return LoadedImage(pixels, "dicom", metadata, notices, photometric=photometric)
    if arr.ndim != 2:
        raise ImageReadError("The DICOM file's pixel data has an unexpected shape.")
    pixels, values, used, voi_lut_used = _grey_pipeline(arr, ds, window, notices)
    return LoadedImage(
        pixels,
        "dicom",
        metadata,
        notices,
        window=used,
        file_windows=_file_windows(ds),
        voi_lut_used=voi_lut_used,
        modality_values=values,
        photometric=photometric,
        inverted=displays_inverted(ds),
    )


# ------------------------------------------------------------------------------ PNG / JPEG / TIFF

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}
_KIND_NAMES = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}


def _open_pillow(data: bytes, kind: str) -> Image.Image:
    """Open (header only) with the one Pillow plugin matching the sniffed kind."""
    try:
        return Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[kind]])
    except Image.DecompressionBombError:
        raise ImageReadError("The image is too large: it declares more pixels than is safe to decode.") from None
    except Exception:
        raise ImageReadError(f"The {_KIND_NAMES[kind]} file is damaged and cannot be read.") from None


def _read_pillow(data: bytes, kind: ImageKind, max_pixels: int) -> LoadedImage:
    """Decode a PNG/JPEG/TIFF: size check on the header, first frame, EXIF orientation, float [0, 1]."""
    notices: list[str] = []
    with _open_pillow(data, kind) as img:
        width, height = img.size
        check_size(width, height, max_pixels)
        frames = int(getattr(img, "n_frames", 1) or 1)
        if frames > 1:
            notices.append(f"multi-frame: showing frame 1 of {frames}")
            img.seek(0)
        try:
            img.load()
        except Exception:
            raise ImageReadError(f"The {_KIND_NAMES[kind]} file is damaged or incomplete and cannot be read.") from None
        metadata = {"Format": _KIND_NAMES[kind], "Rows": str(height), "Columns": str(width), "Mode": img.mode}
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:
            notices.append("orientation tag unreadable: shown as stored")
        pixels = pil_to_float(img, notices)
    return LoadedImage(pixels=pixels, kind=kind, metadata=metadata, notices=notices)


def _composite_over_black(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Premultiply colour by alpha (transparent areas become black)."""
    return rgb * (alpha[..., None] if rgb.ndim == 3 else alpha)


def pil_to_float(img: Image.Image, notices: list[str] | None = None) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to float32 [0, 1], (H, W) or (H, W, 3)."""
    notices = notices if notices is not None else []
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.float32)
    if mode == "L":
        return np.asarray(img, dtype=np.float32) / 255.0
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.float32) / 65535.0
    if mode in ("I", "F"):
        return _stretch_wide(np.asarray(img).astype(np.float64), mode, notices)
    if mode in ("LA", "La", "PA", "P", "RGBA", "RGBa") and (mode != "P" or "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        if rgba[..., 3].min() < 1.0:
            notices.append("transparency removed: transparent areas shown black")
        return _composite_over_black(rgba[..., :3], rgba[..., 3])
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def _stretch_wide(values: np.ndarray, mode: str, notices: list[str]) -> np.ndarray:
    """Map 32-bit integer or float grey values to [0, 1]: 16-bit range when they fit, else min-max."""
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if mode == "I" and low >= 0 and high <= 65535:
        return (values / 65535.0).astype(np.float32)
    notices.append("intensity range stretched to fit the display")
    if high <= low:
        return np.zeros(values.shape, np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


# ------------------------------------------------------------------------------- model input


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a (C, H, W) float tensor to (C, size, size), bilinear with antialiasing, clamped to [0, 1].

    The same function resizes training images (datasets.py) and uploads, so the model sees both alike.
    """
    if image.shape[-2:] == (size, size):
        return image.clamp(0.0, 1.0)
    out = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].clamp(0.0, 1.0)


def pixels_to_tensor(pixels: np.ndarray, channels: int = 3) -> torch.Tensor:
    """(H, W) or (H, W, 3) float [0, 1] -> (channels, H, W) float32; grey replicated, RGB -> luma for 1."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    if channels == 1 and tensor.shape[0] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (tensor * weights).sum(0, keepdim=True)
    if channels == 3 and tensor.shape[0] == 1:
        return tensor.expand(3, -1, -1).contiguous()
    if tensor.shape[0] != channels:
        raise ValueError(f"cannot make {channels} channels from {tensor.shape[0]}")
    return tensor


def to_model_input(loaded: LoadedImage, size: int, channels: int = 3) -> torch.Tensor:
    """A LoadedImage as the model's input: (1, channels, size, size) float32 in [0, 1] (no mean/std)."""
    return resize_square(pixels_to_tensor(loaded.pixels, channels), size)[None]


# ---------------------------------------------------------------------------------- windowing


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Window modality values to float32 [0, 1] with the DICOM VOI function (PS3.3 C.11.2.1.2/3)."""
    values = np.asarray(values, dtype=np.float64)
    function = (window.function or "LINEAR").upper()
    center, width = float(window.center), float(window.width)
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / max(width, 1e-6), -500, 500)))
    else:
        if function == "LINEAR":
            center, width = center - 0.5, max(width, 1.0) - 1.0
        if width <= 0:
            out = (values > center).astype(np.float64)
        else:
            out = (values - center) / width + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def rewindow(loaded: LoadedImage, window: Window) -> LoadedImage:
    """Return a copy of a grey DICOM LoadedImage shown through another window, without re-decoding."""
    if loaded.modality_values is None:
        raise ImageReadError("Windowing applies only to grey DICOM images.")
    pixels = apply_window(loaded.modality_values, window)
    if loaded.inverted:
        pixels = 1.0 - pixels
    return replace(loaded, pixels=pixels, window=window, voi_lut_used=False)


def window_presets(loaded: LoadedImage) -> dict[str, Window]:
    """Windows the app can offer: the file's, full range, and lung/bone.

    Lung and bone are the standard HU windows for CT; for radiographs (no HU) they are estimated from the
    image's histogram and labelled so.
    """
    presets: dict[str, Window] = {}
    for i, win in enumerate(loaded.file_windows):
        presets["file" if i == 0 else f"file {i + 1}"] = win
    values = loaded.modality_values
    if values is None:
        return presets
    low, high = float(np.min(values)), float(np.max(values))
    presets["full range"] = Window((low + high) / 2, max(high - low, 1.0), "full range", "LINEAR_EXACT")
    if loaded.metadata.get("Modality") == "CT":
        presets["lung"] = Window(-600.0, 1500.0, "lung (HU)")
        presets["bone"] = Window(400.0, 1800.0, "bone (HU)")
        return presets
    p = np.percentile(values[:: max(1, values.shape[0] // 256), :: max(1, values.shape[1] // 256)], [2, 30, 60, 98])
    span = max(float(p[3] - p[0]), 1.0)
    dark_is_high = loaded.inverted
    lung_center = float(p[2] if dark_is_high else p[1])
    bone_center = float(p[0] + 0.1 * span if dark_is_high else p[3] - 0.1 * span)
    presets["lung"] = Window(lung_center, 0.6 * span, "lung (estimated)", "LINEAR_EXACT")
    presets["bone"] = Window(bone_center, 0.4 * span, "bone (estimated)", "LINEAR_EXACT")
    return presets


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageReadError",
    "LoadedImage",
    "Window",
    "apply_window",
    "check_size",
    "pil_to_float",
    "pixels_to_tensor",
    "read_image",
    "resize_square",
    "rewindow",
    "sniff_kind",
    "to_model_input",
    "window_presets",
]
