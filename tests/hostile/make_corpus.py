"""A corpus of hostile and odd uploads, generated at test time (no binaries in git).

`make_corpus(out_dir)` writes the files and returns [(file name, expectation)], expectation being
"error" (the reader must raise ImageReadError with a message) or "image" (it must give a sane image).
PHI_STRINGS lists every identifying value planted in the PHI-laden DICOM, for leak tests.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    SecondaryCaptureImageStorage,
    generate_uid,
)

PHI_STRINGS = (
    "DOE^JANE^MARIE",
    "JANE",
    "MRN-99887766",
    "ACC-55443322",
    "19631127",
    "20230405",
    "St. Elsewhere General Hospital",
    "12 Harbour Road, Springfield",
    "DR^HOUSE^GREGORY",
    "Patient reports pain after fall at home",
    "555-0199",
    "PRIVATE-SECRET-TAG",
)

Case = tuple[str, str]


def dicom_bytes(
    pixels: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    frames: int = 1,
    rows: int | None = None,
    cols: int | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    extra: dict | None = None,
    preamble: bool = True,
) -> bytes:
    """A minimal valid DICOM (uint8/uint16 grey) as bytes; header fields can be overridden."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    if pixels is not None:
        ds.Rows = rows if rows is not None else pixels.shape[-2]
        ds.Columns = cols if cols is not None else pixels.shape[-1]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        bits = 16 if pixels.dtype == np.uint16 else 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = pixels.tobytes()
    extra = dict(extra or {})
    if UID(transfer_syntax).is_compressed and "PixelData" in ds and "PixelData" not in extra:
        extra["PixelData"] = encapsulate([ds.PixelData])
    for key, value in extra.items():
        setattr(ds, key, value)
    if UID(transfer_syntax).is_compressed and "PixelData" in ds:
        ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    data = buffer.getvalue()
    return data if preamble else data[132:]  # no preamble, no "DICM": starts at the (0002) group


def _png(img: Image.Image, **kwargs) -> bytes:
    """Encode a Pillow image as PNG bytes."""
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def _jpeg(img: Image.Image, **kwargs) -> bytes:
    """Encode a Pillow image as JPEG bytes."""
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(side: int = 30000) -> bytes:
    """A small PNG that declares side x side grey pixels (all zero, highly compressible)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    body = b"".join(compressor.compress(row) for _ in range(64)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def jpeg_bomb(side: int = 60000) -> bytes:
    """A JPEG whose frame header claims side x side pixels (the rest is a tiny real JPEG)."""
    data = bytearray(_jpeg(Image.new("L", (8, 8))))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def phi_dicom(pixels: np.ndarray | None = None) -> bytes:
    """A valid image DICOM whose identifying fields are full of PHI_STRINGS (and a private tag); 64 x 64 pixels
    unless `pixels` (uint8) are given."""
    pixels = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8) if pixels is None else pixels
    extra = {
        "PatientName": PHI_STRINGS[0],
        "PatientID": PHI_STRINGS[2],
        "AccessionNumber": PHI_STRINGS[3],
        "PatientBirthDate": PHI_STRINGS[4],
        "StudyDate": PHI_STRINGS[5],
        "InstitutionName": PHI_STRINGS[6],
        "InstitutionAddress": PHI_STRINGS[7],
        "ReferringPhysicianName": PHI_STRINGS[8],
        "ImageComments": PHI_STRINGS[9],
        "PatientTelephoneNumbers": PHI_STRINGS[10],
        "PatientSex": "F",
        "PatientAge": "059Y",
        "BodyPartExamined": "JANE",
        "BurnedInAnnotation": "YES",
        "Modality": "CR",
    }
    data = dicom_bytes(pixels, extra=extra)
    ds = pydicom.dcmread(io.BytesIO(data))
    block = ds.private_block(0x0011, "ACME PACS", create=True)
    block.add_new(0x01, "LO", PHI_STRINGS[11])
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _text_image() -> Image.Image:
    """An image of text (a photographed report, say)."""
    img = Image.new("L", (320, 120), 255)
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(("Radiology report", "No acute findings.", "Signed: someone")):
        draw.text((10, 10 + 30 * i), line, fill=0)
    return img


def _exif_rotated_jpeg() -> bytes:
    """A 40 x 20 JPEG whose EXIF orientation (6) says: rotate 90 degrees to display."""
    img = Image.new("RGB", (40, 20), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(img, exif=exif.tobytes())


def _images() -> dict[str, tuple[bytes, str]]:
    """Pillow-format cases (PNG, JPEG, TIFF)."""
    rng = np.random.default_rng(0)
    grey = Image.fromarray((rng.random((48, 64)) * 255).astype(np.uint8))
    rgba = Image.fromarray((rng.random((32, 32, 4)) * 255).astype(np.uint8), "RGBA")
    tiff_buf = io.BytesIO()
    grey.save(tiff_buf, format="TIFF")
    tiff16 = io.BytesIO()
    Image.fromarray((rng.random((32, 32)) * 65535).astype(np.uint16)).save(tiff16, format="TIFF")
    tiff_multi = io.BytesIO()
    grey.save(tiff_multi, format="TIFF", save_all=True, append_images=[grey, grey])
    good_png = _png(grey)
    return {
        "png_grey8.png": (good_png, "image"),
        "png_grey16.png": (_png(Image.fromarray((rng.random((40, 40)) * 65535).astype(np.uint16))), "image"),
        "png_rgb.png": (_png(grey.convert("RGB")), "image"),
        "png_rgba.png": (_png(rgba), "image"),
        "png_palette.png": (_png(grey.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)), "image"),
        "png_palette_transparent.png": (_png(grey.convert("P"), transparency=0), "image"),
        "png_bilevel.png": (_png(grey.convert("1")), "image"),
        "png_1x1.png": (_png(Image.new("L", (1, 1), 128)), "image"),
        "png_all_black.png": (_png(Image.new("L", (64, 64), 0)), "image"),
        "png_text.png": (_png(_text_image()), "image"),
        "png_truncated.png": (good_png[: len(good_png) // 2], "error"),
        "png_bad_crc_header.png": (good_png[:16] + b"\xff\xff\xff\xff" + good_png[20:], "error"),
        "png_bomb.png": (png_bomb(), "error"),
        "jpeg_grey.jpg": (_jpeg(grey), "image"),
        "jpeg_rgb.jpg": (_jpeg(grey.convert("RGB")), "image"),
        "jpeg_cmyk.jpg": (_jpeg(grey.convert("RGB").convert("CMYK")), "image"),
        "jpeg_exif_rotated.jpg": (_exif_rotated_jpeg(), "image"),
        "jpeg_progressive.jpg": (_jpeg(grey, progressive=True), "image"),
        "jpeg_truncated.jpg": (_jpeg(grey)[:200], "error"),
        "jpeg_bomb.jpg": (jpeg_bomb(), "error"),
        "tiff_grey.tif": (tiff_buf.getvalue(), "image"),
        "tiff_16bit.tif": (tiff16.getvalue(), "image"),
        "tiff_multipage.tif": (tiff_multi.getvalue(), "image"),
        "tiff_truncated.tif": (tiff_buf.getvalue()[:60], "error"),
    }


def _dicoms() -> dict[str, tuple[bytes, str]]:
    """DICOM cases."""
    rng = np.random.default_rng(1)
    img8 = (rng.random((64, 64)) * 255).astype(np.uint8)
    good = dicom_bytes(img8)
    mono1 = dicom_bytes((rng.random((32, 32)) * 4095).astype(np.uint16), photometric="MONOCHROME1")
    cases: dict[str, tuple[bytes, str]] = {
        "dicom_ok.dcm": (good, "image"),
        "dicom_no_preamble.dcm": (dicom_bytes(img8, preamble=False), "image"),
        "dicom_dicm_without_preamble.dcm": (dicom_bytes(img8)[128:], "image"),
        "dicom_monochrome1_16bit.dcm": (mono1, "image"),
        "dicom_all_black.dcm": (dicom_bytes(np.zeros((32, 32), np.uint8)), "image"),
        "dicom_1x1.dcm": (dicom_bytes(np.full((1, 1), 7, np.uint8)), "image"),
        "dicom_multiframe.dcm": (dicom_bytes(np.stack([img8, 255 - img8, img8]), frames=3), "image"),
        "dicom_windowed.dcm": (
            dicom_bytes(img8, extra={"WindowCenter": 100, "WindowWidth": 50}),
            "image",
        ),
        "dicom_zero_width_window.dcm": (
            dicom_bytes(img8, extra={"WindowCenter": 100, "WindowWidth": 0}),
            "image",
        ),
        "dicom_jpeg_baseline.dcm": (_dicom_jpeg(img8), "image"),
        "dicom_without_pixels.dcm": (dicom_bytes(None), "error"),
        "dicom_claims_60000.dcm": (dicom_bytes(img8, rows=60000, cols=60000), "error"),
        "dicom_pixel_length_mismatch.dcm": (dicom_bytes(img8, rows=100, cols=100), "error"),
        "dicom_zero_rows.dcm": (dicom_bytes(img8, rows=0, cols=64), "error"),
        "dicom_unsupported_syntax.dcm": (
            dicom_bytes(img8, transfer_syntax="1.2.840.10008.1.2.4.100"),  # MPEG2
            "error",
        ),
        "dicom_jpeg_lossless_garbage.dcm": (
            dicom_bytes(img8, transfer_syntax=JPEGLosslessSV1, extra={"PixelData": encapsulate([b"\xff\xd8junk"])}),
            "error",
        ),
        "dicom_phi.dcm": (phi_dicom(), "image"),
        "dicom_preamble_only.dcm": (b"\x00" * 128 + b"DICM", "error"),
    }
    for fraction in (0.1, 0.3, 0.5, 0.8, 0.97):
        cut = int(len(good) * fraction)
        cases[f"dicom_truncated_{int(fraction * 100):02d}pct.dcm"] = (good[:cut], "error")
    return cases


def _dicom_jpeg(pixels: np.ndarray) -> bytes:
    """A grey JPEG Baseline DICOM, as the RSNA files are."""
    jpeg = _jpeg(Image.fromarray(pixels), quality=95)
    extra = {"PixelData": encapsulate([jpeg])}
    return dicom_bytes(pixels, transfer_syntax=JPEGBaseline8Bit, extra=extra)


def _junk() -> dict[str, tuple[bytes, str]]:
    """Not images at all."""
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return {
        "empty.dcm": (b"", "error"),
        "empty.png": (b"", "error"),
        "random.dcm": (noise, "error"),
        "random.png": (noise[::-1], "error"),
        "random.jpg": (noise[1:], "error"),
        "png_magic_then_noise.png": (b"\x89PNG\r\n\x1a\n" + noise, "error"),
        "jpeg_magic_then_noise.jpg": (b"\xff\xd8\xff" + noise, "error"),
        "tiff_magic_then_noise.tif": (b"II*\x00" + noise, "error"),
        "text_file.dcm": (b"Patient: DOE^JANE^MARIE\nthis is not an image\n", "error"),
        "pdf_named.png": (b"%PDF-1.4\n%%EOF\n", "error"),
        "gif_named.jpg": (b"GIF89a" + noise[:100], "error"),
        "zip_named.dcm": (b"PK\x03\x04" + noise[:100], "error"),
    }


def _bounds() -> dict[str, tuple[bytes, str]]:
    """Sizes that lie, bombs with a small file, and damaged data that decoders fill in silently (heavy.py)."""
    from dprotonet_core.data.codestreams import MAX_JPEG_SCANS
    from tests.hostile import heavy

    return {
        "dicom_pixel_data_longer_than_header.dcm": (heavy.dicom_pixel_data_too_long(), "error"),
        "dicom_jpeg_frame_says_30000.dcm": (heavy.dicom_jpeg_frame_lie(), "error"),
        "dicom_j2k_frame_says_30000.dcm": (heavy.dicom_j2k_frame_lie(), "error"),
        "dicom_rle_segment_64mib.dcm": (heavy.rle_bomb(64), "error"),
        "dicom_rle_ok.dcm": (heavy.rle_ok(), "image"),
        "dicom_deflate_to_300mib.dcm": (heavy.deflate_bomb(300), "error"),
        "dicom_deflated_ok.dcm": (heavy.deflated_ok(), "image"),
        "tiff_5000_pages.tif": (heavy.tiff_many_pages(5000), "image"),
        "jpeg_too_many_scans.jpg": (heavy.jpeg_with_scans(MAX_JPEG_SCANS + 1), "error"),
        "jpeg_half_then_eoi.jpg": (heavy.jpeg_half_then_eoi(), "error"),
    }


def make_corpus(out_dir: Path | str) -> list[Case]:
    """Write the corpus into out_dir; return [(file name, 'error' | 'image')] (>= 40 cases)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    for name, (data, expectation) in {**_junk(), **_images(), **_dicoms(), **_bounds()}.items():
        (out / name).write_bytes(data)
        cases.append((name, expectation))
    return cases


if __name__ == "__main__":
    import sys

    for case in make_corpus(sys.argv[1] if len(sys.argv) > 1 else "hostile_corpus"):
        print(*case)
