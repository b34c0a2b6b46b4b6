"""The reader's vocabulary: its one error type, a VOI window, the loaded image, and the size bounds.

Bounds (stated once, used by every format):
- DEFAULT_MAX_PIXELS: the largest image a file may declare (40 MP); checked from the header before decoding.
- WORKING_MAX_PIXELS: the largest image kept after decoding (16 MP). A larger one is reduced by the smallest
  integer factor that fits (JPEG in the DCT domain while decoding, others by area averaging in their stored
  integer type, before any float copy), with a notice. The model sees 224-320 px and the page a few hundred,
  so nothing that is shown or classified changes; what changes is the memory of one upload (float32 RGB at
  16 MP is 192 MB, at 40 MP it was 480 MB, and 2.4-3.3 GB at peak with its copies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 40_000_000
WORKING_MAX_PIXELS = 16_000_000
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


def megapixels(n: float) -> str:
    """Format a pixel count in megapixels for a message."""
    return f"{n / 1e6:.0f}" if n >= 1e6 else f"{n / 1e6:.2f}"


def check_size(width: int, height: int, max_pixels: int, frames: int = 1) -> None:
    """Raise ImageReadError when the declared size is empty or above the pixel cap (before decoding)."""
    if width <= 0 or height <= 0:
        raise ImageReadError("The file declares an empty image (0 rows or columns).")
    pixels = width * height
    if pixels > max_pixels:
        raise ImageReadError(
            f"The image is too large: {width} x {height} pixels ({megapixels(pixels)} megapixels); "
            f"the limit is {megapixels(max_pixels)} megapixels."
        )
    if frames > 1 and pixels * frames > max_pixels * MAX_FRAMES_FACTOR:
        raise ImageReadError(
            f"The file holds too much image data: {frames} frames of {width} x {height} pixels; "
            f"the limit is {megapixels(max_pixels * MAX_FRAMES_FACTOR)} megapixels in total."
        )


def working_factor(width: int, height: int, limit: int | None = None) -> int:
    """The smallest integer k with (width / k) * (height / k) <= limit (WORKING_MAX_PIXELS by default; 1 when
    the image fits)."""
    limit = WORKING_MAX_PIXELS if limit is None else limit
    if width * height <= limit:
        return 1
    k = max(2, math.ceil(math.sqrt(width * height / limit)))
    while (width // k) * (height // k) > limit:
        k += 1
    return k


def reduce_array(arr: np.ndarray, factor: int) -> np.ndarray:
    """Area-average an (H, W) or (H, W, C) array by an integer factor, in its own dtype where OpenCV can."""
    if factor <= 1:
        return arr
    height, width = arr.shape[:2]
    size = (max(1, width // factor), max(1, height // factor))
    if arr.dtype not in (np.uint8, np.uint16, np.int16, np.float32):
        arr = arr.astype(np.float32)
    if arr.ndim == 3 and arr.shape[2] > 4:
        return np.stack([reduce_array(arr[..., c], factor) for c in range(arr.shape[2])], axis=-1)
    return cv2.resize(arr, size, interpolation=cv2.INTER_AREA)


def reduced_notice(width: int, height: int, factor: int) -> str:
    """The notice shown when an image was reduced by `factor` for memory."""
    return (f"large image ({width} x {height}): read at 1/{factor} scale ({width // factor} x {height // factor}) "
            f"to bound memory; the model sees far fewer pixels either way")


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_FRAMES_FACTOR",
    "WORKING_MAX_PIXELS",
    "ImageKind",
    "ImageReadError",
    "LoadedImage",
    "Window",
    "check_size",
    "megapixels",
    "reduce_array",
    "reduced_notice",
    "working_factor",
]
