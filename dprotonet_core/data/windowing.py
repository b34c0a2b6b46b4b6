"""Grey-level windowing: the DICOM VOI functions, re-windowing without re-decoding, and the offered presets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dprotonet_core.data.image import ImageReadError, LoadedImage, Window


def full_range_window(values: np.ndarray) -> Window:
    """A window spanning the image's own value range."""
    low, high = float(np.min(values)), float(np.max(values))
    return Window((low + high) / 2, max(high - low, 1.0), "full range", "LINEAR_EXACT")


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Window modality values to float32 [0, 1] with the DICOM VOI function (PS3.3 C.11.2.1.2/3).

    Computed in float32 (exact for every 16-bit stored value) so a large image needs no float64 copy."""
    values = np.asarray(values, dtype=np.float32)
    function = (window.function or "LINEAR").upper()
    center, width = float(window.center), float(window.width)
    if function == "SIGMOID":
        out = (values - np.float32(center)) * np.float32(-4.0 / max(width, 1e-6))
        np.clip(out, -80.0, 80.0, out=out)
        np.exp(out, out=out)
        out += 1.0
        np.reciprocal(out, out=out)
    else:
        if function == "LINEAR":
            center, width = center - 0.5, max(width, 1.0) - 1.0
        if width <= 0:
            out = (values > center).astype(np.float32)
        else:
            out = values - np.float32(center - width / 2)  # (v - c) / w + 1/2, as one division:
            out /= np.float32(width)  # a file windowed c = 127.5, w = 255 reads exactly as v / 255
    return np.clip(out, 0.0, 1.0, out=out)


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
    presets["full range"] = full_range_window(values)
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


__all__ = ["apply_window", "full_range_window", "rewindow", "window_presets"]
