"""Images in: reading uploads (io), de-identification (deid), transforms, and the paper's dataset loaders."""

from dprotonet_core.data.io import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    LoadedImage,
    Window,
    read_image,
    rewindow,
    to_model_input,
    window_presets,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageReadError",
    "LoadedImage",
    "Window",
    "read_image",
    "rewindow",
    "to_model_input",
    "window_presets",
]
