"""Mask generation and explanation images (paper eq. 15-18), pure numpy (OpenCV for the
colormap lookup table and connected components): no model call, so the app can re-render on
every slider move from the cached mask stack g(d_i), i = 1..D. `render_pane` composes one pane
(image + CAM at the display settings); the app, the explain command and the Prototypes page share it.

    S = sum_i g(d_i)                        in [0, D]
    A = N(1{S >= gamma} * S)                eq. 15 / 16, N(X) = (X - min X) / (max X - min X)
    heatmap = alpha x + beta colormap(A)    eq. 17
    binary  = A x                           eq. 18
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np

from dprotonet_core.config import OverlayConfig

_DEFAULTS = OverlayConfig()  # the paper's alpha, beta, gamma: the one source of the display defaults
View = Literal["heatmap", "binary", "outline"]
VIEWS: dict[str, str] = {"heatmap": "Heatmap", "binary": "Binary mask", "outline": "Outline + box"}

# OpenCV's colormaps by name; their LUTs are read once, RGB order.
_COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "hot": cv2.COLORMAP_HOT,
    "bone": cv2.COLORMAP_BONE,
}
COLORMAPS = (*_COLORMAPS, "gray")


@dataclass
class CAM:
    """Eq. 15/16 for one gamma."""

    map: np.ndarray  # A: (H, W) float32 in [0, 1]; all zero when `empty`
    region: np.ndarray  # (H, W) bool: S >= gamma
    empty: bool  # no pixel reached gamma (A is all zero, by definition here, never NaN)
    gamma: float
    max_sum: float  # max S, the largest gamma that leaves a region


@dataclass(frozen=True)
class Box:
    """One connected decision region: pixels x0 <= x < x1, y0 <= y < y1; area in pixels."""

    x0: int
    y0: int
    x1: int
    y1: int
    area: int

    def as_dict(self) -> dict[str, int]:
        return {"x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1, "area": self.area}


def mask_sum(stack: np.ndarray) -> np.ndarray:
    """S = sum_i g(d_i) over the first axis of a (D, H, W) stack (float32)."""
    return np.asarray(stack, dtype=np.float32).sum(axis=0, dtype=np.float32)


def normalise(x: np.ndarray) -> np.ndarray:
    """N(X) = (X - min X) / (max X - min X); a constant X maps to ones if positive, else zeros."""
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 0:
        return np.full(x.shape, 1.0 if hi > 0 else 0.0, np.float32)
    return ((x - lo) * (1.0 / (hi - lo))).astype(np.float32, copy=False)


def cam(stack_or_sum: np.ndarray, gamma: float = _DEFAULTS.gamma) -> CAM:
    """Eq. 15/16: A = N(1{S >= gamma} S), gamma in [0, D].

    Takes the (D, H, W) mask stack or its (H, W) sum S (pass S to save the sum on each call).
    When no pixel has S >= gamma the result is an all-zero map with empty=True.
    """
    arr = np.asarray(stack_or_sum, dtype=np.float32)
    s = mask_sum(arr) if arr.ndim == 3 else arr
    if gamma < 0 or not np.isfinite(gamma):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma}")
    region = s >= gamma
    max_sum = float(s.max()) if s.size else 0.0
    if not region.any():
        return CAM(np.zeros(s.shape, np.float32), region, True, float(gamma), max_sum)
    return CAM(normalise(np.where(region, s, 0.0)), region, False, float(gamma), max_sum)


@lru_cache(maxsize=16)
def colormap_lut(name: str = "jet") -> np.ndarray:
    """(256, 3) uint8 RGB lookup table of a named colormap (see COLORMAPS)."""
    if name == "gray":
        return np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    if name not in _COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], _COLORMAPS[name])[:, 0, :]
    lut = np.ascontiguousarray(bgr[:, ::-1])
    lut.setflags(write=False)
    return lut


def apply_colormap(a: np.ndarray, name: str = "jet") -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 RGB."""
    idx = np.clip(np.rint(np.asarray(a, np.float32) * 255), 0, 255).astype(np.uint8)
    return colormap_lut(name)[idx]


def _as_float_image(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = np.moveaxis(x, 0, -1)  # (3, H, W) -> (H, W, 3)
    if x.ndim == 2:
        x = x[..., None]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if x.dtype == np.uint8:
        return x.astype(np.float32) * (1.0 / 255.0)
    return x.astype(np.float32, copy=False)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def heatmap_image(
    x: np.ndarray, a: np.ndarray, alpha: float = _DEFAULTS.alpha, beta: float = _DEFAULTS.beta,
    colormap: str = _DEFAULTS.colormap,
) -> np.ndarray:
    """Eq. 17: A_h = alpha x + beta colormap(A), clipped to [0, 1]; returns (H, W, 3) uint8.

    x: (H, W, 3) uint8 or float in [0, 1] (or (3, H, W)); a: the CAM (H, W) in [0, 1].
    """
    img = _as_float_image(x)
    colour = colormap_lut(colormap).astype(np.float32)[np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)]
    return _to_uint8(alpha * img + (beta / 255.0) * colour)


def binary_image(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Eq. 18: A_b = A x, the image weighted by its CAM; returns (H, W, 3) uint8."""
    return _to_uint8(_as_float_image(x) * np.asarray(a, np.float32)[..., None])


def colorbar_image(colormap: str = "jet", height: int = 224, width: int = 16) -> np.ndarray:
    """A vertical legend (height, width, 3) uint8: A = 1 at the top, A = 0 at the bottom."""
    ramp = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(width, axis=1)
    return apply_colormap(ramp, colormap)


def decision_boxes(region: np.ndarray | CAM, min_area: int = 1) -> list[Box]:
    """Bounding boxes of the 8-connected components of the decision region (S >= gamma),
    largest first (the paper's Fig. 8 box is the first)."""
    mask = region.region if isinstance(region, CAM) else np.asarray(region) > 0
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    boxes = [
        Box(int(x), int(y), int(x + w), int(y + h), int(area))
        for x, y, w, h, area in stats[1:count]
        if area >= min_area
    ]
    return sorted(boxes, key=lambda b: (-b.area, b.y0, b.x0))


def region_outline(region: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of the region with a 4-neighbour outside it (or on the border)."""
    r = np.asarray(region, bool)
    padded = np.pad(r, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return r & ~interior


def outline_image(
    x: np.ndarray,
    region: np.ndarray | CAM,
    boxes: list[Box] | None = None,
    outline_color: tuple[int, int, int] = (0, 255, 255),
    box_color: tuple[int, int, int] = (255, 215, 0),
    thickness: int = 2,
) -> np.ndarray:
    """The image with the decision region's outline and its bounding boxes drawn; (H, W, 3) uint8."""
    mask = region.region if isinstance(region, CAM) else np.asarray(region) > 0
    out = _to_uint8(_as_float_image(x)).copy()
    out[region_outline(mask)] = outline_color
    h, w = mask.shape
    for b in decision_boxes(mask) if boxes is None else boxes:
        x0, y0, x1, y1 = b.x0, b.y0, min(b.x1, w), min(b.y1, h)
        t = thickness
        out[y0 : min(y0 + t, y1), x0:x1] = box_color
        out[max(y1 - t, y0) : y1, x0:x1] = box_color
        out[y0:y1, x0 : min(x0 + t, x1)] = box_color
        out[y0:y1, max(x1 - t, x0) : x1] = box_color
    return out


# --- one pane: an image with its CAM at the display settings ------------------------------


@dataclass(frozen=True)
class DisplaySettings:
    """The controls of the image fragment (eq. 15-18): nothing here needs a model call."""

    gamma: float = _DEFAULTS.gamma
    alpha: float = _DEFAULTS.alpha
    beta: float = _DEFAULTS.beta
    view: View = "heatmap"
    colormap: str = _DEFAULTS.colormap

    def describe(self) -> str:
        return (
            f"gamma {self.gamma:g}, alpha {self.alpha:g}, beta {self.beta:g}, "
            f"view: {VIEWS.get(self.view, self.view).lower()}, colormap {self.colormap}"
        )


def settings_from(values, defaults: DisplaySettings | None = None) -> DisplaySettings:
    """Display settings read from a mapping with the controls' keys (gamma, alpha, beta, view, colormap), the
    defaults where a key is absent (e.g. the review page's session state before its sliders are drawn)."""
    d = defaults or DisplaySettings()
    return DisplaySettings(gamma=float(values.get("gamma", d.gamma)), alpha=float(values.get("alpha", d.alpha)),
                           beta=float(values.get("beta", d.beta)), view=values.get("view", d.view),
                           colormap=values.get("colormap", d.colormap))


def default_settings() -> DisplaySettings:
    """The paper's defaults (config.OverlayConfig: gamma 3, alpha 0.5, beta 0.3)."""
    return DisplaySettings()


@dataclass(frozen=True)
class Pane:
    """One rendered pane and what the page says under it."""

    image: np.ndarray  # uint8 (size, size, 3)
    empty: bool  # no pixel reached gamma
    max_sum: float  # the largest gamma that still leaves a region
    boxes: int  # connected decision regions


def render_pane(image: np.ndarray, stack: np.ndarray, settings: DisplaySettings, size: int = 448) -> Pane:
    """One pane: the image (H, W[, 3], [0, 1] or uint8) overlaid with its CAM at `settings`.

    S = sum_i g(d_i) is summed at the stack's resolution and upsampled to the display once; then
    eq. 15/16 (CAM at gamma) and eq. 17 (heatmap), eq. 18 (binary mask image) or the decision region's
    outline with its bounding box. Pure numpy: no model call."""
    rgb = as_rgb01(image)
    if rgb.shape[:2] != (size, size):
        rgb = resize_rgb(rgb, size)
    total = resize_map(mask_sum(stack), size)
    a = cam(total, settings.gamma)
    if settings.view == "binary":
        out = binary_image(rgb, a.map)
    elif settings.view == "outline":
        out = outline_image(rgb, a)
    else:
        out = heatmap_image(rgb, a.map, settings.alpha, settings.beta, settings.colormap)
    boxes = 0 if a.empty else len(decision_boxes(a, min_area=max(1, size * size // 2000)))
    return Pane(image=np.asarray(out, dtype=np.uint8), empty=a.empty, max_sum=a.max_sum, boxes=boxes)


def resize_map(values: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a 2-D map to (size, size), float32."""
    if values.shape == (size, size):
        return values.astype(np.float32)
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) float [0, 1] -> (size, size, 3), the same resize the model's input gets."""
    import torch

    from dprotonet_core.data.io import resize_square

    tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    return resize_square(tensor, size).permute(1, 2, 0).numpy()


def as_rgb01(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3), uint8 or float [0, 1] -> float32 (H, W, 3) in [0, 1]."""
    array = np.asarray(image)
    rgb = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return np.clip(rgb, 0, 1)
