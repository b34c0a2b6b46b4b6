"""Reading an uploaded image: DICOM, PNG, JPEG or TIFF bytes -> float pixels in [0, 1].

The format is decided by magic bytes, never by the file name. Sizes are checked from the header, and what a
compressed stream says about itself (codestreams.py), before any pixel is decoded; large images are decoded
reduced to a bounded working size (image.py). Everything a user can get wrong ends in one exception type,
`ImageReadError`, whose message is one line a clinician understands; no other exception escapes `read_image`
for any input bytes. DICOM: dicom_read.py; PNG / JPEG / TIFF: raster_read.py; windowing: windowing.py.

Reading writes nothing to disk and logs nothing about the upload: pydicom's log records and warnings raised
while a file is being read are suppressed (pydicom may quote header values in them).
"""

from __future__ import annotations

import contextvars
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from dprotonet_core.data.dicom_read import read_dicom
from dprotonet_core.data.image import (
    DEFAULT_MAX_PIXELS,
    WORKING_MAX_PIXELS,
    ImageKind,
    ImageReadError,
    LoadedImage,
    Window,
    check_size,
)
from dprotonet_core.data.raster_read import pil_to_float, read_raster
from dprotonet_core.data.windowing import apply_window, rewindow, window_presets

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
                loaded = read_dicom(data, max_pixels=max_pixels, window=window)
            else:
                loaded = read_raster(data, kind, max_pixels)
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
    pixels = np.nan_to_num(pixels.astype(np.float32, copy=False), copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    loaded.pixels = np.ascontiguousarray(np.clip(pixels, 0.0, 1.0, out=pixels))
    return loaded


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
    """(H, W) or (H, W, 3) float [0, 1] (or uint8, read as / 255) -> (channels, H, W) float32; grey replicated,
    RGB -> luma for 1."""
    if pixels.dtype == np.uint8:  # a session's compact copy (review.case.compact): the same values k / 255
        tensor = torch.from_numpy(np.ascontiguousarray(pixels)).to(torch.float32).div_(255.0)
    else:
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


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "WORKING_MAX_PIXELS",
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
