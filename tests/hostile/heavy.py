"""Files that cost memory or time before they can be refused, and files whose pixels are easy to get wrong.

Built at run time (no binaries in git), shared by the reader's tests and `python -m bench.reader`, which runs
each through a whole `predict` process and prints its time and peak memory. Every builder returns bytes; the
`expected` map says what the reader must do with each ("error" = one clear refusal, "image" = sane pixels).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from tests.hostile.make_corpus import dicom_bytes

BIG_SIZE = (7280, 5450)  # 39.7 megapixels, inside the reader's 40 MP cap


def natural_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth colour picture with mild noise (compresses like a photograph, not like noise)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 6, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 8, width, dtype=np.float32)[None, :]
    base = 120 + 60 * np.sin(x) * np.cos(y)
    out = np.empty((height, width, 3), np.uint8)
    for c, shift in enumerate((0.0, 20.0, -25.0)):
        noise = rng.integers(-6, 7, size=(height, width), dtype=np.int16)
        out[..., c] = np.clip(base + shift + noise, 0, 255).astype(np.uint8)
    return out


def _jpeg(arr: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="JPEG", quality=kwargs.pop("quality", 90), **kwargs)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- valid but large


def big_colour_jpeg() -> bytes:
    """A valid 39.7 MP colour JPEG."""
    return _jpeg(natural_rgb(*BIG_SIZE))


def big_colour_png() -> bytes:
    """A valid 39.7 MP colour PNG."""
    buffer = io.BytesIO()
    Image.fromarray(natural_rgb(*BIG_SIZE)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def big_colour_dicom() -> bytes:
    """A valid 39.7 MP colour DICOM (JPEG Baseline, YBR_FULL_422, as cameras store it)."""
    width, height = BIG_SIZE
    extra = {
        "PixelData": encapsulate([big_colour_jpeg()]),
        "SamplesPerPixel": 3,
        "PhotometricInterpretation": "YBR_FULL_422",
        "PlanarConfiguration": 0,
        "Rows": height,
        "Columns": width,
    }
    return dicom_bytes(np.zeros((8, 8), np.uint8), transfer_syntax=JPEGBaseline8Bit, extra=extra)


# ------------------------------------------------------------------------------------- bombs


def _dicom_parts(ds: Dataset) -> bytes:
    """Explicit VR little endian encoding of a data set (no meta)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _file_meta(transfer_syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = generate_uid()
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return bytes(128) + b"DICM" + buffer.getvalue()


GRADIENT = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))


def _grey_image_elements(pixels: np.ndarray) -> tuple[Dataset, Dataset]:
    head, tail = Dataset(), Dataset()
    head.SOPClassUID, head.SOPInstanceUID, head.Modality = SecondaryCaptureImageStorage, generate_uid(), "OT"
    tail.SamplesPerPixel, tail.PhotometricInterpretation = 1, "MONOCHROME2"
    tail.Rows, tail.Columns = pixels.shape
    tail.BitsAllocated, tail.BitsStored, tail.HighBit, tail.PixelRepresentation = 8, 8, 7, 0
    tail.PixelData = pixels.astype(np.uint8).tobytes()
    return head, tail


def deflate_bomb(inflated_mib: int = 1024) -> bytes:
    """A Deflated Explicit VR DICOM of ~1 MB whose data set inflates to `inflated_mib` MiB (a private OB of
    zeros before a valid 64 x 64 image)."""
    head, tail = _grey_image_elements(GRADIENT)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [compressor.compress(_dicom_parts(head))]
    creator = b"\x11\x00\x10\x00LO\x04\x00BOMB"
    size = inflated_mib * 2**20
    out.append(compressor.compress(creator + b"\x11\x00\x10\x10OB\x00\x00" + struct.pack("<I", size)))
    chunk = bytes(2**20)
    for _ in range(inflated_mib):
        out.append(compressor.compress(chunk))
    out.append(compressor.compress(_dicom_parts(tail)))
    out.append(compressor.flush())
    return _file_meta(DeflatedExplicitVRLittleEndian) + b"".join(out)


def deflated_ok() -> bytes:
    """A small valid Deflated Explicit VR DICOM: the same image as `deflate_bomb` without the bomb."""
    head, tail = _grey_image_elements(GRADIENT)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(_dicom_parts(head) + _dicom_parts(tail)) + compressor.flush()
    return _file_meta(DeflatedExplicitVRLittleEndian) + body


def rle_bomb(decoded_mib: int = 1024) -> bytes:
    """An RLE Lossless 64 x 64 DICOM whose one segment decodes to `decoded_mib` MiB (replicate runs)."""
    runs = decoded_mib * 2**20 // 128
    segment = b"\x81\x2a" * runs  # control -127: repeat the next byte 128 times
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    return dicom_bytes(
        np.zeros((64, 64), np.uint8), transfer_syntax=RLELossless, extra={"PixelData": encapsulate([header + segment])}
    )


def rle_ok() -> bytes:
    """A valid RLE Lossless 64 x 64 grey DICOM (one literal run per row)."""
    pixels = np.tile(np.arange(64, dtype=np.uint8) * 3, (64, 1))
    segment = b"".join(b"\x3f" + row.tobytes() for row in pixels)
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    return dicom_bytes(pixels, transfer_syntax=RLELossless, extra={"PixelData": encapsulate([header + segment])})


def tiff_many_pages(pages: int = 100_000) -> bytes:
    """A little-endian TIFF with `pages` 1 x 1 grey pages sharing one strip."""
    entries = [  # tag, type, count, value
        (256, 3, 1, 1),  # width
        (257, 3, 1, 1),  # height
        (258, 3, 1, 8),  # bits per sample
        (259, 3, 1, 1),  # no compression
        (262, 3, 1, 1),  # MinIsBlack
        (273, 4, 1, 8),  # strip offset: the pixel byte right after the header
        (278, 3, 1, 1),  # rows per strip
        (279, 4, 1, 1),  # strip byte count
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    first = 10
    out = [b"II*\x00" + struct.pack("<I", first) + b"\x80\x00"]
    for page in range(pages):
        next_offset = first + (page + 1) * ifd_size if page + 1 < pages else 0
        body = struct.pack("<H", len(entries))
        for tag, kind, count, value in entries:
            body += struct.pack("<HHI", tag, kind, count) + (
                struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
            )
        out.append(body + struct.pack("<I", next_offset))
    return b"".join(out)


def _split_scans(jpeg: bytes) -> tuple[bytes, list[bytes]]:
    """(everything before the first SOS, [each SOS segment with its entropy data]); EOI dropped."""
    first = jpeg.find(b"\xff\xda")
    positions = []
    pos = first
    while pos != -1:
        positions.append(pos)
        pos = jpeg.find(b"\xff\xda", pos + 2)
    ends = positions[1:] + [len(jpeg) - 2]
    return jpeg[:first], [jpeg[a:b] for a, b in zip(positions, ends)]


def jpeg_repeated_scans(repeats: int = 3000) -> bytes:
    """A progressive 2000 x 2000 colour JPEG whose smallest scan is repeated `repeats` times."""
    head, scans = _split_scans(_jpeg(natural_rgb(2000, 2000), progressive=True))
    return head + b"".join(scans) + min(scans, key=len) * repeats + b"\xff\xd9"


def jpeg_with_scans(count: int) -> bytes:
    """A small progressive JPEG carrying `count` scans in all (its own, then copies of its last one)."""
    head, scans = _split_scans(_jpeg(natural_rgb(64, 64), progressive=True))
    return head + b"".join(scans) + scans[-1] * max(0, count - len(scans)) + b"\xff\xd9"


def _patch_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """Rewrite the SOF0 frame size of a baseline JPEG."""
    sof = jpeg.find(b"\xff\xc0")
    return jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9 :]


def dicom_jpeg_frame_lie(width: int = 30000, height: int = 30000) -> bytes:
    """A 64 x 64 grey DICOM whose JPEG frame says it is `width` x `height`."""
    frame = _patch_jpeg_size(_jpeg(np.full((64, 64), 100, np.uint8)), width, height)
    return dicom_bytes(
        np.zeros((64, 64), np.uint8), transfer_syntax=JPEGBaseline8Bit, extra={"PixelData": encapsulate([frame])}
    )


def j2k_codestream(width: int, height: int) -> bytes:
    """A JPEG 2000 codestream of a flat 64 x 64 grey image, its SIZ marker rewritten to `width` x `height`."""
    from openjpeg import encode

    code = bytes(encode(np.full((64, 64), 100, np.uint8), codec_format=0))
    siz = code.find(b"\xff\x51")
    return code[: siz + 6] + struct.pack(">II", width, height) + code[siz + 14 :]


def dicom_j2k_frame_lie(width: int = 30000, height: int = 30000) -> bytes:
    """A 64 x 64 grey DICOM whose JPEG 2000 frame says it is `width` x `height`."""
    return dicom_bytes(
        np.zeros((64, 64), np.uint8),
        transfer_syntax=JPEG2000Lossless,
        extra={"PixelData": encapsulate([j2k_codestream(width, height)])},
    )


def dicom_pixel_data_too_long() -> bytes:
    """A 64 x 64 native DICOM carrying 64 x 128 pixels of data."""
    pixels = np.tile(np.arange(128, dtype=np.uint8), (64, 1))
    return dicom_bytes(pixels, rows=64, cols=64)


def jpeg_half_then_eoi() -> bytes:
    """A JPEG cut half-way through its image data and re-terminated with EOI."""
    data = _jpeg(natural_rgb(256, 256))
    sos = data.find(b"\xff\xda")
    return data[: sos + (len(data) - sos) // 2] + b"\xff\xd9"


BOMBS = {  # name -> (builder, expectation)
    "jpeg-39.7MP-colour": (big_colour_jpeg, "image"),
    "png-39.7MP-colour": (big_colour_png, "image"),
    "dicom-39.7MP-colour-jpeg": (big_colour_dicom, "image"),
    "dicom-jpeg-frame-30000x30000-in-64x64": (dicom_jpeg_frame_lie, "error"),
    "dicom-j2k-frame-30000x30000-in-64x64": (dicom_j2k_frame_lie, "error"),
    "dicom-deflate-1MB-to-1GiB": (deflate_bomb, "error"),
    "dicom-rle-segment-1GiB": (rle_bomb, "error"),
    "tiff-100000-pages": (tiff_many_pages, "image"),
    "jpeg-progressive-3000-repeated-scans": (jpeg_repeated_scans, "error"),
}
