"""Every hostile or odd upload gives ImageReadError with a message, or a sane image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dprotonet_core.data.io import ImageReadError, read_image
from tests.hostile.make_corpus import make_corpus


def test_hostile_corpus(tmp_path: Path) -> None:
    cases = make_corpus(tmp_path)
    assert len(cases) >= 40
    outcomes = {}
    for name, expectation in cases:
        try:
            loaded = read_image((tmp_path / name).read_bytes())
            px = loaded.pixels
            assert px.dtype == np.float32 and np.isfinite(px).all() and 0 <= px.min() <= px.max() <= 1
            outcomes[name] = "image"
        except ImageReadError as err:
            message = str(err)
            assert message and "\n" not in message and len(message) < 200, name
            outcomes[name] = "error"
        assert outcomes[name] == expectation, f"{name}: expected {expectation}"


def test_specific_messages(tmp_path: Path) -> None:
    make_corpus(tmp_path)

    def message(name: str) -> str:
        try:
            read_image((tmp_path / name).read_bytes())
        except ImageReadError as err:
            return str(err)
        raise AssertionError(f"{name} was accepted")

    assert "empty" in message("empty.dcm")
    assert "60000 x 60000" in message("dicom_claims_60000.dcm") and "limit" in message("dicom_claims_60000.dcm")
    assert "no pixel data" in message("dicom_without_pixels.dcm")
    assert "MPEG2" in message("dicom_unsupported_syntax.dcm")
    assert "too large" in message("png_bomb.png") and "too large" in message("jpeg_bomb.jpg")


def test_notices(tmp_path: Path) -> None:
    make_corpus(tmp_path)
    multi = read_image((tmp_path / "dicom_multiframe.dcm").read_bytes())
    assert "multi-frame: showing frame 1 of 3" in multi.notices
    rotated = read_image((tmp_path / "jpeg_exif_rotated.jpg").read_bytes())
    assert rotated.pixels.shape[:2] == (40, 20)
    mono1 = read_image((tmp_path / "dicom_monochrome1_16bit.dcm").read_bytes())
    assert mono1.photometric == "MONOCHROME1"
