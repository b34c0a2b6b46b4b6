"""The reader's silent-pixel cases and its memory / time bounds, each checked against a twin file that must read
the same, or for one clear refusal (files built here; the bench `python -m bench.reader` times them in predict)."""

from __future__ import annotations

import io
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import JPEGBaseline8Bit

from dprotonet_core.data import codestreams, image
from dprotonet_core.data.io import ImageReadError, read_image, to_model_input
from dprotonet_core.data.raster_read import MAX_COUNTED_PAGES
from tests.conftest import REPO
from tests.hostile import heavy
from tests.hostile.make_corpus import dicom_bytes


def _refused(data: bytes, *words: str) -> str:
    with pytest.raises(ImageReadError) as info:
        read_image(data)
    message = str(info.value)
    assert all(w.lower() in message.lower() for w in words), message
    return message


# ------------------------------------------------------------------------------------- VOI LUT US / SS


def _ct_with_voi_lut(descriptor_vr: str) -> bytes:
    """A signed CT-like image (-1000 .. 1000) with a VOI LUT starting at -1000, descriptor written as `vr`."""
    stored = np.tile(np.linspace(0, 2000, 64).astype(np.uint16), (64, 1))
    item = Dataset()
    first = -1000 if descriptor_vr == "SS" else 2**16 - 1000
    item.add_new(0x00283002, descriptor_vr, [2001, first, 16])  # LUT Descriptor
    item.add_new(0x00283006, "US", [int(v) for v in np.linspace(0, 65535, 2001)])  # LUT Data
    extra = {"RescaleIntercept": -1000, "RescaleSlope": 1, "VOILUTSequence": Sequence([item]), "Modality": "CT"}
    return dicom_bytes(stored, extra=extra)


def test_voi_lut_descriptor_written_as_us_reads_as_its_signed_twin() -> None:
    signed = read_image(_ct_with_voi_lut("SS"))
    unsigned = read_image(_ct_with_voi_lut("US"))
    assert signed.voi_lut_used and unsigned.voi_lut_used
    assert np.allclose(signed.pixels, unsigned.pixels)
    row = unsigned.pixels[0]
    assert row[0] < 0.01 and row[-1] > 0.99 and np.all(np.diff(row) >= 0)  # a ramp, not all white


def test_first_mapped_value_keeps_unsigned_when_the_image_reaches_it() -> None:
    from dprotonet_core.data.dicom_read import first_mapped_value

    assert first_mapped_value(40000, np.array([0.0, 50000.0])) == 40000
    assert first_mapped_value(2**16 - 1000, np.array([-1000.0, 1000.0])) == -1000


# -------------------------------------------------------------------------------- 16-bit TIFF MinIsWhite


def _tiff16(values: np.ndarray, photometric: int) -> bytes:
    """An uncompressed one-strip 16-bit grey little-endian TIFF with the given PhotometricInterpretation."""
    height, width = values.shape
    data = values.astype("<u2").tobytes()
    entries = [(256, 3, width), (257, 3, height), (258, 3, 16), (259, 3, 1), (262, 3, photometric),
               (273, 4, 8), (277, 3, 1), (278, 3, height), (279, 4, len(data))]
    ifd_offset = 8 + len(data)
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", t, k, 1) + (struct.pack("<HH", v, 0) if k == 3 else struct.pack("<I", v))
        for t, k, v in entries) + b"\x00\x00\x00\x00"
    return b"II*\x00" + struct.pack("<I", ifd_offset) + data + ifd


def test_16bit_tiff_min_is_white_reads_as_its_inverted_min_is_black_twin() -> None:
    values = np.tile(np.linspace(0, 65535, 48).astype(np.uint16), (32, 1))
    white_is_zero = read_image(_tiff16(values, 0))
    twin = read_image(_tiff16(65535 - values, 1))
    assert np.allclose(white_is_zero.pixels, twin.pixels, atol=1e-6)
    assert white_is_zero.pixels[0, 0] > 0.99  # stored 0 is white


# -------------------------------------------------------------------------------------- sBIT in a PNG


def _png16(values: np.ndarray, significant_bits: int | None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buffer, format="PNG")
    data = buffer.getvalue()
    if significant_bits is None:
        return data
    ihdr_end = 8 + 12 + 13
    chunk = struct.pack(">I", 1) + b"sBIT" + bytes([significant_bits])
    chunk += struct.pack(">I", __import__("zlib").crc32(b"sBIT" + bytes([significant_bits])))
    return data[:ihdr_end] + chunk + data[ihdr_end:]


def test_unscaled_12bit_png_with_sbit_reads_as_its_scaled_twin() -> None:
    raw = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (16, 1)) | 1  # 12-bit data, odd values
    scaled = (raw << 4) | (raw >> 8)  # what the PNG specification asks a writer to store (bit replication)
    unscaled = read_image(_png16(raw, 12))
    spec = read_image(_png16(scaled, 12))
    assert np.allclose(unscaled.pixels, spec.pixels, atol=1e-3)
    assert unscaled.pixels.max() > 0.99 and any("sBIT" in n for n in unscaled.notices)
    assert not any("sBIT" in n for n in spec.notices)
    # without sBIT nothing says the data are 12-bit: read as the specification says (over 65535)
    assert read_image(_png16(raw, None)).pixels.max() < 0.07


# ------------------------------------------------------------------------------------- damaged JPEG


def test_jpeg_cut_short_and_re_terminated_is_refused() -> None:
    _refused(heavy.jpeg_half_then_eoi(), "damaged")


def test_jpeg_with_zeroed_bytes_mid_stream_is_refused_when_libjpeg_notices() -> None:
    whole = heavy._jpeg(heavy.natural_rgb(256, 256)[..., 0])  # grey baseline
    sos = whole.find(b"\xff\xda")
    mid = sos + (len(whole) - sos) // 2
    damaged = whole[:mid] + bytes(8) + whole[mid + 8 :]
    assert codestreams.jpeg_damage(whole) is None
    _refused(damaged, "damaged")


def test_dicom_with_damaged_jpeg_frame_is_refused() -> None:
    frame = heavy.jpeg_half_then_eoi()
    data = dicom_bytes(np.zeros((256, 256), np.uint8), transfer_syntax=JPEGBaseline8Bit,
                       extra={"PixelData": encapsulate([frame]), "SamplesPerPixel": 3,
                              "PhotometricInterpretation": "YBR_FULL_422", "PlanarConfiguration": 0})
    _refused(data, "damaged")


def test_the_shipped_sample_jpegs_are_whole() -> None:
    for path in sorted((REPO / "assets" / "samples").glob("*.jpg")):
        assert codestreams.jpeg_damage(path.read_bytes()) is None, path.name


# ------------------------------------------------------------------------------ sizes that lie


def test_native_pixel_data_longer_than_the_header_is_refused() -> None:
    _refused(heavy.dicom_pixel_data_too_long(), "more pixel data")


def test_compressed_frame_larger_than_its_header_is_refused_before_decoding() -> None:
    _refused(heavy.dicom_jpeg_frame_lie(), "30000 x 30000", "64 x 64")
    _refused(heavy.dicom_j2k_frame_lie(), "30000 x 30000", "64 x 64")


def test_frame_size_readers() -> None:
    assert codestreams.jpeg_frame_size(heavy._jpeg(np.zeros((20, 30), np.uint8)))[:2] == (20, 30)
    assert codestreams.j2k_frame_size(heavy.j2k_codestream(300, 200)) == (200, 300, 1)


# ------------------------------------------------------------------------------------------ bombs


def test_deflate_bomb_is_refused_and_a_small_deflated_file_reads_as_its_explicit_twin() -> None:
    _refused(heavy.deflate_bomb(300), "inflates to more than")
    deflated = read_image(heavy.deflated_ok())
    explicit = read_image(dicom_bytes(heavy.GRADIENT))
    assert np.array_equal(deflated.pixels, explicit.pixels)


def test_deflated_file_without_preamble_is_bounded_too() -> None:
    _refused(heavy.deflate_bomb(300)[132:], "inflates to more than")


def test_rle_bomb_is_refused_and_valid_rle_reads() -> None:
    _refused(heavy.rle_bomb(64), "decodes to more than")
    pixels = read_image(heavy.rle_ok()).pixels
    assert pixels.shape == (64, 64) and pixels[0, 0] == 0.0 and pixels[0, -1] == 1.0


def test_rle_segment_length_stops_at_its_limit() -> None:
    assert codestreams.rle_segment_length(b"\x02abc\xfdz", 100) == 3 + 4
    assert codestreams.rle_segment_length(b"\x81a" * 10_000, 1000) <= 1000 + 128


def test_tiff_pages_are_counted_up_to_a_bound() -> None:
    loaded = read_image(heavy.tiff_many_pages(5000))
    assert f"of more than {MAX_COUNTED_PAGES}" in " ".join(loaded.notices)
    assert "of 3" in " ".join(read_image(heavy.tiff_many_pages(3)).notices)


def test_jpeg_scan_count_is_bounded() -> None:
    progressive = heavy._jpeg(heavy.natural_rgb(64, 64), progressive=True)
    assert 1 < codestreams.jpeg_scan_count(progressive) <= codestreams.MAX_JPEG_SCANS
    assert read_image(progressive).pixels.shape == (64, 64, 3)
    _refused(heavy.jpeg_with_scans(codestreams.MAX_JPEG_SCANS + 1), f"{codestreams.MAX_JPEG_SCANS + 1} scans")
    _refused(heavy.jpeg_with_scans(20), "damaged")  # a repeated scan breaks the progression: libjpeg says so


# --------------------------------------------------------------------------- enhanced multi-frame


def test_enhanced_object_rescale_and_window_come_from_its_functional_groups() -> None:
    stored = np.tile(np.arange(64, dtype=np.uint16) * 50, (64, 1))
    frame = Dataset()
    transform, voi = Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 2, -1000, "HU"
    voi.WindowCenter, voi.WindowWidth = 1000, 3000
    frame.PixelValueTransformationSequence = Sequence([transform])
    frame.FrameVOILUTSequence = Sequence([voi])
    enhanced = read_image(dicom_bytes(stored, extra={"PerFrameFunctionalGroupsSequence": Sequence([frame])}))
    flat = read_image(dicom_bytes(stored, extra={"RescaleSlope": 2, "RescaleIntercept": -1000,
                                                 "WindowCenter": 1000, "WindowWidth": 3000}))
    assert enhanced.window is not None and enhanced.window.center == 1000
    assert np.array_equal(enhanced.pixels, flat.pixels)
    assert float(enhanced.modality_values.min()) == -1000.0


# ------------------------------------------------------------------------------- large valid images


def test_large_images_are_read_reduced_with_a_notice(monkeypatch) -> None:
    monkeypatch.setattr(image, "WORKING_MAX_PIXELS", 10_000)
    rgb = heavy.natural_rgb(400, 300)
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    full = {"png": png.getvalue(), "jpeg": heavy._jpeg(rgb, quality=98),
            "dicom": dicom_bytes(rgb[..., 0]), "tiff16": _tiff16(rgb[..., 0].astype(np.uint16) * 257, 1),
            "dicom-jpeg": dicom_bytes(rgb[..., 0], transfer_syntax=JPEGBaseline8Bit, extra={
                "PixelData": encapsulate([heavy._jpeg(rgb, quality=98)]), "SamplesPerPixel": 3,
                "PhotometricInterpretation": "YBR_FULL_422", "PlanarConfiguration": 0})}
    for kind, data in full.items():
        loaded = read_image(data)
        assert loaded.height * loaded.width <= 10_000, kind
        assert any("1/4 scale" in n for n in loaded.notices), (kind, loaded.notices)
        monkeypatch.setattr(image, "WORKING_MAX_PIXELS", 10**9)
        reference = read_image(data)
        monkeypatch.setattr(image, "WORKING_MAX_PIXELS", 10_000)
        difference = (to_model_input(loaded, 64) - to_model_input(reference, 64)).abs()
        assert float(difference.mean()) < 0.01 and float(difference.max()) < 0.15, kind


_PEAK_SCRIPT = """
import resource, sys
from pathlib import Path
from dprotonet_core.data.io import read_image
data = Path(sys.argv[1]).read_bytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loaded = read_image(data)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) // 1024, loaded.width, loaded.height)
"""
READ_PEAK_BOUND_MB = 700  # peak growth of one read of a valid 39.7 MP colour file (was 1.2-2.1 GB)


@pytest.mark.parametrize("builder", ["big_colour_jpeg", "big_colour_png", "big_colour_dicom"])
def test_a_40_megapixel_colour_file_reads_within_the_memory_bound(builder: str, tmp_path) -> None:
    path = tmp_path / builder
    path.write_bytes(getattr(heavy, builder)())
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path)], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=300)
    grown, width, height = (int(v) for v in out.stdout.split())
    assert width * height <= image.WORKING_MAX_PIXELS
    assert grown <= READ_PEAK_BOUND_MB, f"{builder}: peak grew by {grown} MB"
