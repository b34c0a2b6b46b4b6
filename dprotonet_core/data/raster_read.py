"""Reading a PNG, JPEG or TIFF upload with Pillow: bounded, whole, and with the pixel values the file means.

Before decoding: the declared size (header), a JPEG's number of scans and whether its image data is whole
(codestreams.py), a TIFF's page count (counted up to MAX_COUNTED_PAGES, not walked to the end). Large images are
decoded reduced (JPEG in the DCT domain) to at most WORKING_MAX_PIXELS. Pixel meaning:
- a 16-bit TIFF stored MinIsWhite (PhotometricInterpretation 0) is inverted, as Pillow does for 8 bits only;
- a 16-bit grey PNG whose sBIT chunk records k < 16 significant bits: the PNG specification (11.3.2.4, 12.4)
  requires samples scaled to the full 16 bits, sBIT only recording the source depth, so such data is read over
  65535. A file whose values all fit in k bits and do not have the scaled data's zero low bits was written
  unscaled (common in medical exports: 12-bit data in a 16-bit PNG), and read at full range it is nearly black;
  it is read over 2^k - 1, with a notice saying so.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, ImageOps

from dprotonet_core.data import codestreams
from dprotonet_core.data.image import (
    ImageKind,
    ImageReadError,
    LoadedImage,
    check_size,
    reduce_array,
    reduced_notice,
    working_factor,
)

MAX_COUNTED_PAGES = 64  # a TIFF's pages are counted up to here; walking 100,000 IFDs takes over a minute

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}
KIND_NAMES = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}


def _open_pillow(data: bytes, kind: str) -> Image.Image:
    """Open (header only) with the one Pillow plugin matching the sniffed kind."""
    try:
        return Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[kind]])
    except Image.DecompressionBombError:
        raise ImageReadError("The image is too large: it declares more pixels than is safe to decode.") from None
    except Exception:
        raise ImageReadError(f"The {KIND_NAMES[kind]} file is damaged and cannot be read.") from None


def _page_count(img: Image.Image, kind: str) -> str:
    """'1', 'n' or 'more than 64': the number of frames, without walking every TIFF page."""
    if kind != "tiff":
        return str(int(getattr(img, "n_frames", 1) or 1))
    pages = 1
    try:
        while pages <= MAX_COUNTED_PAGES:
            img.seek(pages)
            pages += 1
    except (EOFError, ValueError, OSError):
        pass
    finally:
        img.seek(0)
    return f"more than {MAX_COUNTED_PAGES}" if pages > MAX_COUNTED_PAGES else str(pages)


def png_significant_bits(data: bytes) -> tuple[int, ...] | None:
    """The sBIT chunk's significant bits per channel, when it appears before the image data."""
    pos = 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = data[pos + 4 : pos + 8]
        if kind == b"sBIT":
            return tuple(data[pos + 8 : pos + 8 + min(length, 4)])
        if kind in (b"IDAT", b"IEND"):
            return None
        pos += 12 + length
    return None


def grey16_over_significant_bits(values: np.ndarray, bits: int) -> bool:
    """True when 16-bit grey samples hold unscaled `bits`-bit data (all below 2^bits, low bits not all zero)."""
    if not 1 <= bits < 16 or values.size == 0 or int(values.max()) >= 2**bits:
        return False
    low_mask = (1 << (16 - bits)) - 1
    return bool(np.any(values.astype(np.uint32) & low_mask))


def _wide_grey(img: Image.Image, kind: str, data: bytes, notices: list[str]) -> np.ndarray | None:
    """16-bit grey PNG/TIFF as float [0, 1] with sBIT and MinIsWhite honoured; None for other modes."""
    if not (img.mode.startswith("I;16") or (img.mode == "I" and kind == "png")):
        return None
    values = np.asarray(img)
    scale = 65535.0
    if kind == "png":
        significant = png_significant_bits(data)
        if significant and grey16_over_significant_bits(values, significant[0]):
            scale = float(2 ** significant[0] - 1)
            notices.append(f"{significant[0]}-bit data stored unscaled in a 16-bit PNG (sBIT): read over "
                           f"{significant[0]} bits")
    return values.astype(np.float32) / np.float32(scale)


def _min_is_white(img: Image.Image) -> bool:
    """True for a TIFF whose PhotometricInterpretation is 0 (WhiteIsZero)."""
    try:
        return int(img.tag_v2.get(262, 1)) == 0
    except Exception:
        return False


def _reduce_image(img: Image.Image, factor: int) -> Image.Image:
    """Area-reduce a loaded Pillow image by an integer factor (modes Pillow cannot reduce go through numpy)."""
    if factor <= 1:
        return img
    if img.mode in ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK"):
        return img.reduce(factor)
    if img.mode.startswith("I;16"):
        return Image.fromarray(reduce_array(np.asarray(img), factor))
    converted = img.convert("RGBA" if "transparency" in img.info or img.mode in ("PA", "La", "RGBa") else "RGB")
    return converted.reduce(factor)


def read_raster(data: bytes, kind: ImageKind, max_pixels: int) -> LoadedImage:
    """Decode a PNG/JPEG/TIFF: size, scan and damage checks, first frame, EXIF orientation, float [0, 1]."""
    notices: list[str] = []
    if kind == "jpeg":
        codestreams.check_jpeg_scans(data)
    with _open_pillow(data, kind) as img:
        width, height = img.size
        check_size(width, height, max_pixels)
        if kind == "jpeg":
            codestreams.check_jpeg_whole(data)
        frames = _page_count(img, kind)
        if frames != "1":
            notices.append(f"multi-frame: showing frame 1 of {frames}")
        factor = working_factor(width, height)
        if factor > 1:
            notices.append(reduced_notice(width, height, factor))
            if kind == "jpeg":
                img.draft(img.mode, (width // factor, height // factor))
        try:
            img.load()
        except Exception:
            raise ImageReadError(f"The {KIND_NAMES[kind]} file is damaged or incomplete and cannot be read.") from None
        metadata = {"Format": KIND_NAMES[kind], "Rows": str(height), "Columns": str(width), "Mode": img.mode}
        img = _reduce_image(img, working_factor(*img.size))
        white_is_zero = kind == "tiff" and _min_is_white(img)
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:
            notices.append("orientation tag unreadable: shown as stored")
        pixels = _wide_grey(img, kind, data, notices)
        if pixels is None:
            pixels = pil_to_float(img, notices)
        if white_is_zero and (img.mode.startswith("I;16") or img.mode in ("I", "F")):  # Pillow inverts 1 / 8 bits
            pixels = 1.0 - pixels
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
    rgb = np.array(img, dtype=np.float32)
    rgb /= 255.0
    return rgb


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


__all__ = ["MAX_COUNTED_PAGES", "grey16_over_significant_bits", "pil_to_float", "png_significant_bits", "read_raster"]
