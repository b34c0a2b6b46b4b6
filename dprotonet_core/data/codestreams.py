"""What a compressed stream says about itself, read before it is decoded, so that a lie costs nothing.

A file's header (DICOM Rows / Columns, a PNG's IHDR) can say one size while its compressed data says another;
decoders trust the data. Each function here reads the stream's own claim (a JPEG's SOF and scans, a JPEG 2000
SIZ marker, the runs of an RLE segment, a deflated data set's inflated length) with a bound, and raises
ImageReadError with one line for the user when the claim is not what the file's header promised or would cost
more than the bounds allow.
"""

from __future__ import annotations

import struct
import zlib

from dprotonet_core.data.image import ImageReadError

MAX_JPEG_SCANS = 100  # encoders write 1 (baseline) to ~12 (progressive); thousands are a time bomb
DEFLATE_MAX_BYTES = 256 * 2**20  # a 40 MP frame of 16-bit colour is 240 MB; more is not an image we read

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # TEM, RSTn, SOI: no length field


# ---------------------------------------------------------------------------------------------- JPEG


def jpeg_frame_size(data: bytes) -> tuple[int, int, int, int] | None:
    """(height, width, precision, components) from the first SOF marker (JPEG or JPEG-LS), None if absent."""
    pos = 2 if data[:2] == b"\xff\xd8" else data.find(b"\xff\xd8") + 2
    if pos < 2:
        return None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker in _SOF_MARKERS and pos + 10 <= len(data):
            precision = data[pos + 4]
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return height, width, precision, data[pos + 9]
        if marker in (0xDA, 0xD9) or length < 2:
            return None
        pos += 2 + length
    return None


def jpeg_scan_count(data: bytes) -> int:
    """The number of SOS markers. Entropy-coded data never holds FF DA (every FF there is followed by 00 or a
    restart marker), so this counts scans exactly, plus those of an embedded thumbnail."""
    return data.count(b"\xff\xda")


def check_jpeg_scans(data: bytes, what: str = "JPEG file") -> None:
    """Refuse a JPEG with more scans than MAX_JPEG_SCANS (decoders walk every one; thousands take minutes)."""
    scans = jpeg_scan_count(data)
    if scans > MAX_JPEG_SCANS:
        raise ImageReadError(
            f"The {what} has {scans} scans (at most {MAX_JPEG_SCANS} are read): it would take minutes to decode.")


def jpeg_damage(data: bytes) -> str | None:
    """libjpeg-turbo's own complaint about damaged image data, or None when the stream is whole.

    Pillow decodes a JPEG cut short and re-terminated, or one with corrupt entropy-coded bytes, without a word and
    fills what is lost with grey. libjpeg reports these as 'warnings' (premature end of data, bad Huffman code,
    extraneous bytes before a marker); simplejpeg's strict mode turns them into errors. A stream that only the
    lenient mode decodes is damaged; one that neither mode decodes (12-bit, arithmetic coding, lossless) is not
    judged here (its own decoder decides). Decoded at 1/8 scale: the entropy data is read whole, the output is tiny.
    """
    import simplejpeg

    try:
        header = simplejpeg.decode_jpeg_header(data)
        colorspace = "GRAY" if header[2] == "Gray" else ("CMYK" if header[2] in ("CMYK", "YCCK") else "RGB")
    except Exception:
        return None
    try:
        simplejpeg.decode_jpeg(data, colorspace=colorspace, min_factor=8, strict=True)
        return None
    except Exception as exc:
        message = str(exc)
    try:
        simplejpeg.decode_jpeg(data, colorspace=colorspace, min_factor=8, strict=False)
    except Exception:
        return None
    return message


def check_jpeg_whole(data: bytes, what: str = "JPEG file") -> None:
    """Refuse a JPEG whose image data is damaged (cut short, corrupt): part of its picture would be invented."""
    damage = jpeg_damage(data)
    if damage is not None:
        raise ImageReadError(
            f"The {what} is damaged ({damage.rstrip('.').lower()}): part of the picture would be made up, so it is "
            "not shown. Please upload the original file.")


# ------------------------------------------------------------------------------------------ JPEG 2000


def j2k_frame_size(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from a JPEG 2000 codestream's SIZ marker (raw or inside a JP2 file)."""
    pos = data.find(b"\xff\x4f\xff\x51")
    if pos < 0 or pos + 42 > len(data):
        return None
    x_size, y_size, x_offset, y_offset = struct.unpack(">IIII", data[pos + 8 : pos + 24])
    components = struct.unpack(">H", data[pos + 40 : pos + 42])[0]
    return y_size - y_offset, x_size - x_offset, components


# ------------------------------------------------------------------------------------------------ RLE


def rle_segment_length(segment: bytes, limit: int) -> int:
    """Decoded length of one DICOM RLE (PackBits) segment, stopping as soon as it passes `limit`."""
    total, pos, end = 0, 0, len(segment)
    while pos < end and total <= limit:
        n = segment[pos]
        if n < 128:
            total += n + 1
            pos += n + 2
        elif n > 128:
            total += 257 - n
            pos += 2
        else:  # 128: no operation
            pos += 1
    return total


def check_rle_frame(frame: bytes, rows: int, cols: int, segments: int) -> None:
    """Refuse an RLE frame whose header or segments do not decode to exactly rows x cols bytes each."""
    if len(frame) < 64:
        raise ImageReadError("The DICOM file's RLE pixel data is damaged (its header is cut short).")
    header = struct.unpack("<16I", frame[:64])
    count, offsets = header[0], [o for o in header[1:] if o]
    if count != segments or len(offsets) < count:
        raise ImageReadError(
            f"The DICOM file's RLE pixel data has {count} segments where its header fields need {segments}.")
    expected = rows * cols
    bounds = list(offsets[:count]) + [len(frame)]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if not 64 <= start < stop <= len(frame):
            raise ImageReadError("The DICOM file's RLE pixel data is damaged (segment offsets out of order).")
        if rle_segment_length(frame[start:stop], expected) > expected:
            raise ImageReadError(
                f"The DICOM file's RLE pixel data decodes to more than its {cols} x {rows} pixels: it is not read.")


# --------------------------------------------------------------------------------------- deflated DICOM

DEFLATED_TS = b"1.2.840.10008.1.2.1.99"
_EXPLICIT_LE_TS = b"1.2.840.10008.1.2.1\x00"
_LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"}


def _meta_elements(data: bytes, start: int) -> tuple[int, dict[int, tuple[int, int, int]]]:
    """Walk the explicit VR little-endian group 0002 from `start`: (end offset, {element: (header offset,
    value offset, value length)})."""
    elements: dict[int, tuple[int, int, int]] = {}
    pos = start
    while pos + 8 <= len(data):
        group, element = struct.unpack("<HH", data[pos : pos + 4])
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            length, value = struct.unpack("<I", data[pos + 8 : pos + 12])[0], pos + 12
        else:
            length, value = struct.unpack("<H", data[pos + 6 : pos + 8])[0], pos + 8
        elements[element] = (pos, value, length)
        pos = value + length
    return pos, elements


def inflated_length(compressed: bytes, limit: int, chunk: int = 16 * 2**20) -> int:
    """Bytes that raw-deflate data inflates to, counted in chunks and discarded (stops once past `limit`)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = len(inflater.decompress(compressed, chunk))
    while inflater.unconsumed_tail and total <= limit:
        total += len(inflater.decompress(inflater.unconsumed_tail, chunk))
    if total <= limit:
        total += len(inflater.flush())
    return total


def _bounded_inflate(compressed: bytes, max_bytes: int) -> bytes:
    """Inflate raw-deflate data of at most `max_bytes`; longer or damaged data is refused (memory stays at one
    16 MB chunk until the length is known)."""
    try:
        if inflated_length(compressed, max_bytes) > max_bytes:
            raise ImageReadError(
                f"The DICOM file's compressed (deflated) data inflates to more than {max_bytes // 2**20} MB: "
                "it is not read.")
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(compressed)
    except zlib.error:
        raise ImageReadError("The DICOM file is damaged: its compressed (deflated) data cannot be inflated.") from None


def inflate_deflated_dicom(data: bytes, max_bytes: int = DEFLATE_MAX_BYTES) -> bytes:
    """A Deflated Explicit VR file as the equivalent Explicit VR Little Endian file, inflated with a bound.

    pydicom inflates the whole data set in memory (a 1 MB file can become 1 GiB); here at most `max_bytes` are
    inflated and anything longer is refused. Files of any other transfer syntax are returned unchanged.
    """
    if data[128:132] != b"DICM":
        return data
    end, elements = _meta_elements(data, 132)
    if 0x0010 not in elements:
        return data
    header, value, length = elements[0x0010]
    if data[value : value + length].rstrip(b"\x00 ") != DEFLATED_TS:
        return data
    body = _bounded_inflate(data[end:], max_bytes)
    ts_element = data[header : header + 6] + struct.pack("<H", len(_EXPLICIT_LE_TS)) + _EXPLICIT_LE_TS
    meta = data[132:header] + ts_element + data[value + length : end]
    if 0x0000 in elements:  # group length: the meta's byte count after it
        g_header, g_value, _ = elements[0x0000]
        after = len(meta) - (g_value + 4 - 132)
        meta = meta[: g_value - 132] + struct.pack("<I", after) + meta[g_value + 4 - 132 :]
    return data[:132] + meta + body


def decoded_frame_size(frame: bytes, syntax_name: str) -> tuple[int, int] | None:
    """(height, width) that a compressed frame's own stream declares, for JPEG-family and JPEG 2000 syntaxes."""
    if "2000" in syntax_name or "HTJ2K" in syntax_name:
        size = j2k_frame_size(frame)
    elif "JPEG" in syntax_name:
        size = jpeg_frame_size(frame)
    else:
        return None
    return None if size is None else (int(size[0]), int(size[1]))


__all__ = [
    "DEFLATE_MAX_BYTES",
    "MAX_JPEG_SCANS",
    "check_jpeg_scans",
    "check_jpeg_whole",
    "check_rle_frame",
    "decoded_frame_size",
    "inflate_deflated_dicom",
    "j2k_frame_size",
    "jpeg_damage",
    "jpeg_frame_size",
    "jpeg_scan_count",
    "rle_segment_length",
]
