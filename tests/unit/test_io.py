"""The upload reader: real DICOMs, formats, windowing, and fuzzing (no exception but ImageReadError)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dprotonet_core.data.io import (
    ImageReadError,
    Window,
    read_image,
    rewindow,
    sniff_kind,
    to_model_input,
    window_presets,
)

REAL_DICOM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom" / "cr-chest-pa-jpeg-baseline.dcm"


def _sane(pixels: np.ndarray) -> bool:
    """float32, finite, in [0, 1], (H, W) or (H, W, 3)."""
    shape_ok = pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)
    return (
        shape_ok
        and pixels.dtype == np.float32
        and bool(np.isfinite(pixels).all())
        and pixels.min() >= 0
        and pixels.max() <= 1
    )


def test_every_pydicom_test_file_reads_or_is_rejected() -> None:
    from pydicom.data import get_testdata_files

    files = [f for f in get_testdata_files() if os.path.isfile(f)]
    assert len(files) > 200, "pydicom-data should be installed"
    read, rejected = 0, 0
    for path in files:
        try:
            loaded = read_image(Path(path).read_bytes())
        except ImageReadError as err:
            assert str(err) and "\n" not in str(err)
            rejected += 1
            continue
        assert _sane(loaded.pixels), path
        read += 1
    print(f"pydicom test files: {read} read, {rejected} rejected, {len(files)} total")
    assert read > 100


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_J2KR.dcm"])
def test_rg1_monochrome1_bones_bright_lungs_dark(name: str) -> None:
    from pydicom.data import get_testdata_file

    loaded = read_image(Path(get_testdata_file(name)).read_bytes())
    px = loaded.pixels
    h, w = px.shape
    assert loaded.photometric == "MONOCHROME1" and (h, w) == (1955, 1841)
    lung = np.concatenate(
        [
            px[int(0.3 * h) : int(0.5 * h), int(0.15 * w) : int(0.3 * w)].ravel(),
            px[int(0.3 * h) : int(0.5 * h), int(0.65 * w) : int(0.8 * w)].ravel(),
        ]
    )
    spine = px[int(0.3 * h) : int(0.6 * h), int(0.47 * w) : int(0.53 * w)]
    abdomen = px[int(0.85 * h) :, int(0.3 * w) : int(0.7 * w)]
    assert lung.mean() < spine.mean() - 0.05
    assert lung.mean() < abdomen.mean() - 0.05


def test_real_rsna_style_dicom_reads_at_1024() -> None:
    if not REAL_DICOM.exists():
        pytest.skip("shared data not present")
    loaded = read_image(REAL_DICOM.read_bytes())
    assert loaded.kind == "dicom" and loaded.pixels.shape == (1024, 1024) and _sane(loaded.pixels)
    assert loaded.metadata["Modality"] == "CR" and loaded.metadata["View"] == "PA"
    assert "JPEG Baseline" in loaded.metadata["Encoding"]
    presets = window_presets(loaded)
    assert {"full range", "lung", "bone"} <= set(presets)
    darker = rewindow(loaded, Window(200, 50))
    assert darker.pixels.mean() < loaded.pixels.mean()
    again = read_image(REAL_DICOM.read_bytes(), window=Window(200, 50))
    np.testing.assert_allclose(again.pixels, darker.pixels, atol=1e-6)
    tensor = to_model_input(loaded, 64)
    assert tensor.shape == (1, 3, 64, 64) and 0 <= float(tensor.min()) and float(tensor.max()) <= 1


def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_magic_bytes_not_extension() -> None:
    data = _png_bytes(np.zeros((4, 4), np.uint8))
    assert sniff_kind(data) == "png"
    with pytest.raises(ImageReadError, match="PDF"):
        read_image(b"%PDF-1.7 ...")


def test_sixteen_bit_png_keeps_range() -> None:
    array = np.array([[0, 65535], [32768, 1000]], np.uint16)
    px = read_image(_png_bytes(array)).pixels
    assert px.shape == (2, 2) and px[0, 1] == pytest.approx(1.0) and px[1, 0] == pytest.approx(0.5, abs=1e-3)


def test_pixel_cap_message_names_limit() -> None:
    data = _png_bytes(np.zeros((100, 100), np.uint8))
    with pytest.raises(ImageReadError, match="limit is 0.01 megapixels"):
        read_image(data, max_pixels=5000)


def test_grey_replicated_to_three_channels() -> None:
    loaded = read_image(_png_bytes((np.arange(64).reshape(8, 8) * 4).astype(np.uint8)))
    tensor = to_model_input(loaded, 16)
    assert tensor.shape == (1, 3, 16, 16)
    assert np.allclose(tensor[0, 0].numpy(), tensor[0, 2].numpy())


def _seeds() -> list[bytes]:
    from tests.hostile.make_corpus import dicom_bytes

    rng = np.random.default_rng(0)
    img = (rng.random((16, 16)) * 255).astype(np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(img).save(jpeg, format="JPEG")
    return [dicom_bytes(img), dicom_bytes(img, preamble=False), _png_bytes(img), jpeg.getvalue()]


SEEDS = _seeds()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        assert _sane(read_image(data).pixels)
    except ImageReadError as err:
        assert str(err)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(SEEDS))),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    st.integers(0, 10**6),
)
def test_fuzz_mutated_valid_files(which: int, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(SEEDS[which])
    for pos, value in flips:
        data[pos % len(data)] = value
    data = bytes(data[: max(1, len(data) - cut % 64)])
    try:
        assert _sane(read_image(data).pixels)
    except ImageReadError as err:
        assert str(err) and "\n" not in str(err)


def test_monochrome1_with_presentation_lut_inverse_is_inverted_once():
    """MONOCHROME1 requires Presentation LUT Shape INVERSE, and both name the same single inversion: the file with
    the tag must read exactly as its twin without it (was inverted twice: shown as MONOCHROME2)."""
    from tests.hostile.make_corpus import dicom_bytes

    rng = np.random.default_rng(4)
    values = (rng.random((24, 24)) * 4095).astype(np.uint16)
    plain = read_image(dicom_bytes(values, photometric="MONOCHROME1"))
    tagged = read_image(dicom_bytes(values, photometric="MONOCHROME1", extra={"PresentationLUTShape": "INVERSE"}))
    assert np.array_equal(plain.pixels, tagged.pixels) and tagged.inverted
    mono2 = read_image(dicom_bytes(values))
    assert np.allclose(plain.pixels, 1.0 - mono2.pixels, atol=1e-6)  # MONOCHROME1: high values dark
    # MONOCHROME2 + INVERSE is a real request to invert, and re-windowing keeps it
    inverse2 = read_image(dicom_bytes(values, extra={"PresentationLUTShape": "INVERSE"}))
    assert np.allclose(inverse2.pixels, plain.pixels, atol=1e-6) and inverse2.notices
    window = Window(2000.0, 1000.0, "test")
    assert np.allclose(rewindow(inverse2, window).pixels, rewindow(plain, window).pixels, atol=1e-6)


@pytest.mark.parametrize("sop, word", [
    ("1.2.840.10008.5.1.4.1.1.66.4", "Segmentation"),
    ("1.2.840.10008.5.1.4.1.1.88.22", "Structured Report"),
    ("1.2.840.10008.5.1.4.1.1.11.1", "Presentation State"),
    ("1.2.840.10008.5.1.4.1.1.104.1", "encapsulated document"),
])
def test_objects_that_are_not_patient_images_are_refused_by_sop_class(sop, word):
    from tests.hostile.make_corpus import dicom_bytes

    data = dicom_bytes(np.zeros((16, 16), np.uint8), extra={"SOPClassUID": sop})
    with pytest.raises(ImageReadError, match=f"{word}.*not an image of a patient"):
        read_image(data)
    # the same pixels under an image SOP class (CR) are read
    assert read_image(dicom_bytes(np.zeros((16, 16), np.uint8), extra={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1"}))
