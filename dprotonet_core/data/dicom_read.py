"""Reading a DICOM upload: header checks, the first frame, and the display pipeline.

Display pipeline (PS3.3 C.11): stored values -> modality LUT (rescale) -> VOI LUT or window centre/width (the
file's or the user's) -> inverted once when the file shows high values dark -> float [0, 1]. Enhanced
multi-frame objects keep rescale and window in their functional groups; frame 1's are used.

Before any pixel is decoded: the SOP class must be an image of a patient, the declared size within bounds, the
native pixel data exactly as long as the header says, a compressed frame's own stream the size the header says
(JPEG SOF, JPEG 2000 SIZ), RLE segments no longer than the frame, JPEG frames undamaged and with a sane number
of scans, a deflated data set inflated with a bound.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pydicom.uid
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
from pydicom.uid import UID

from dprotonet_core.data import codestreams
from dprotonet_core.data.deid import BURNED_IN_NOTICE, deidentified_metadata, has_burned_in_annotation
from dprotonet_core.data.image import (
    ImageReadError,
    LoadedImage,
    Window,
    check_size,
    reduce_array,
    reduced_notice,
    working_factor,
)
from dprotonet_core.data.windowing import apply_window, full_range_window

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def parse_dicom(data: bytes) -> Dataset:
    """Parse the DICOM data set (pixel data stays encoded); damaged headers become ImageReadError."""
    if data[:4] == b"DICM":  # "DICM" prefix without the 128-byte preamble
        data = bytes(128) + data
    elif data[:2] == b"\x02\x00" and data[128:132] != b"DICM":  # meta group without preamble and prefix
        data = bytes(128) + b"DICM" + data
    data = codestreams.inflate_deflated_dicom(data)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        ds.file_meta  # noqa: B018 - make sure the meta group was parsed
    except Exception:
        raise ImageReadError("The DICOM file is damaged or truncated: its header cannot be read.") from None
    return ds


def _header_int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    """An integer header value; missing or malformed values raise ImageReadError naming the field."""
    try:
        value = ds.get(keyword, default)
        if value is None or value == "":
            raise ValueError
        return int(value)
    except Exception:
        if default is not None:
            return default
        raise ImageReadError(f"The DICOM file has no valid {keyword} field, so its image cannot be read.") from None


# SOP classes whose objects are not pictures of a patient, though some carry pixel data: classifying them as
# if they were radiographs would answer about an image nobody took. Prefixes cover the families (PS3.4 B.5).
_NOT_PATIENT_IMAGES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.66.4": "a Segmentation (a label map drawn on another image)",
    "1.2.840.10008.5.1.4.1.1.66": "a Raw Data, Spatial Registration or Fiducials object",
    "1.2.840.10008.5.1.4.1.1.88": "a Structured Report",
    "1.2.840.10008.5.1.4.1.1.11": "a Presentation State (display settings for another image)",
    "1.2.840.10008.5.1.4.1.1.104": "an encapsulated document (PDF / CDA)",
    "1.2.840.10008.5.1.4.1.1.481": "a Radiotherapy object (plan, structure set, dose)",
    "1.2.840.10008.5.1.4.1.1.9": "a Waveform (ECG, audio, ...)",
    "1.2.840.10008.5.1.4.1.1.67": "a Real World Value Mapping",
    "1.2.840.10008.5.1.4.1.1.91": "a Content Assessment Results object",
    "1.2.840.10008.5.1.4.1.1.90": "a Tractography Results object",
}

_RT_IMAGE = "1.2.840.10008.5.1.4.1.1.481.1"


def not_a_patient_image(ds: Dataset) -> str | None:
    """What the object is when its SOP class says it is not an image of a patient, else None."""
    uid = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", "") or "").strip()
    if uid == _RT_IMAGE:  # a portal image of the patient, though of the radiotherapy family
        return None
    for prefix, what in _NOT_PATIENT_IMAGES.items():
        if uid == prefix or uid.startswith(prefix + "."):
            return what
    return None


def _check_header(ds: Dataset, max_pixels: int) -> tuple[int, int, int, int]:
    """Check the object is an image of a patient, pixel data is present and the declared size is within limits;
    return (rows, cols, frames, samples)."""
    what = not_a_patient_image(ds)
    if what is not None:
        raise ImageReadError(f"The DICOM file is {what}, not an image of a patient: there is nothing to classify.")
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise ImageReadError("The DICOM file contains no image (no pixel data): it may be a report.")
    rows, cols = _header_int(ds, "Rows"), _header_int(ds, "Columns")
    frames = max(_header_int(ds, "NumberOfFrames", 1), 1)
    samples = _header_int(ds, "SamplesPerPixel", 1)
    if samples not in (1, 3):
        raise ImageReadError(f"The DICOM image has {samples} samples per pixel; only grey or colour are supported.")
    check_size(cols, rows, max_pixels, frames)
    return rows, cols, frames, samples


def transfer_syntax(ds: Dataset) -> UID:
    """The data set's transfer syntax, inferred from how it was encoded when the meta header lacks it."""
    uid = ds.file_meta.get("TransferSyntaxUID")
    if uid:
        return UID(str(uid))
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if not little:
        uid = pydicom.uid.ExplicitVRBigEndian
    else:
        uid = pydicom.uid.ImplicitVRLittleEndian if implicit else pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.TransferSyntaxUID = uid
    return UID(uid)


def _check_decoder(uid: UID) -> None:
    """Raise ImageReadError naming the compression when no installed decoder can read `uid`."""
    if not uid.is_transfer_syntax:
        raise ImageReadError("The DICOM file declares an unknown encoding (transfer syntax) and cannot be read.")
    try:
        decoder = get_decoder(uid)
        available = decoder.is_available
    except Exception:
        available = False
    if not available:
        raise ImageReadError(f"The DICOM file uses {uid.name} compression, which this software cannot decode.")


def _check_native_length(ds: Dataset, rows: int, cols: int, frames: int, samples: int) -> None:
    """Native pixel data must be as long as Rows x Columns x frames x samples says (one pad byte allowed):
    longer data laid out by the header would wrap rows, so it is refused rather than guessed at."""
    bits = _header_int(ds, "BitsAllocated", 8)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "YBR_FULL_422":
        samples = 2  # chroma shared by two pixels: two values per pixel
    expected_bits = rows * cols * frames * samples * bits
    expected = (expected_bits + 7) // 8
    actual = len(ds.PixelData)
    if actual > expected + 1:
        raise ImageReadError(
            f"The DICOM file holds more pixel data ({actual} bytes) than its {cols} x {rows} x {frames}-frame header "
            f"describes ({expected} bytes): its rows cannot be laid out reliably.")


def _check_compressed_frame(ds: Dataset, uid: UID, rows: int, cols: int, samples: int) -> bytes:
    """Frame 1's own stream must declare the header's size; JPEG frames must be whole; RLE must not overflow.
    Returns frame 1's bytes."""
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=_header_int(ds, "NumberOfFrames", 1)))
    except Exception:
        raise ImageReadError(f"The DICOM file's {uid.name} pixel data is damaged or incomplete.") from None
    if uid == pydicom.uid.RLELossless:
        bytes_per_sample = (_header_int(ds, "BitsAllocated", 8) + 7) // 8
        codestreams.check_rle_frame(frame, rows, cols, samples * bytes_per_sample)
        return frame
    size = codestreams.decoded_frame_size(frame, uid.name)
    if size is not None and size != (rows, cols):
        raise ImageReadError(
            f"The DICOM file's compressed frame is {size[1]} x {size[0]} pixels but its header says {cols} x {rows}: "
            "it is not decoded.")
    if "JPEG" in uid.name and "2000" not in uid.name and "LS" not in uid.name:
        codestreams.check_jpeg_scans(frame, "DICOM file's JPEG frame")
        codestreams.check_jpeg_whole(frame, "DICOM file's JPEG frame")
    return frame


_PILLOW_JPEG_SYNTAXES = (pydicom.uid.JPEGBaseline8Bit, pydicom.uid.JPEGExtended12Bit)


def _decode_reduced_jpeg_frame(frame: bytes, uid: UID, factor: int) -> np.ndarray | None:
    """Frame 1 (its bytes) of an 8-bit JPEG DICOM decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (Pillow's
    draft), so a large colour frame never exists at full size; None when this path does not apply (pydicom
    decodes it)."""
    if uid not in _PILLOW_JPEG_SYNTAXES:
        return None
    try:
        size = codestreams.jpeg_frame_size(frame)
        if size is None or size[2] != 8 or size[3] not in (1, 3):
            return None
        from PIL import Image

        with Image.open(io.BytesIO(frame), formats=["JPEG"]) as img:
            img.draft("L" if size[3] == 1 else "RGB", (size[1] // factor, size[0] // factor))
            img.load()
            return np.asarray(img.convert("L" if size[3] == 1 else "RGB"))
    except Exception:
        return None


def _decode_first_frame(ds: Dataset, uid: UID) -> np.ndarray:
    """Decode frame 1 only (YBR is converted to RGB by pydicom)."""
    try:
        ds.pixel_array_options(index=0)
        return np.asarray(ds.pixel_array)
    except MemoryError:
        raise
    except Exception:
        what = f"{uid.name} " if uid.is_compressed else ""
        raise ImageReadError(f"The DICOM file's {what}pixel data is damaged or incomplete.") from None


# ------------------------------------------------------------------------ enhanced multi-frame objects

_FUNCTIONAL_MACROS = {  # functional group sequence -> attributes it carries for the display pipeline
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
    "PixelPresentationSequence": ("PresentationLUTShape",),
}


def flatten_functional_groups(ds: Dataset) -> None:
    """Copy frame 1's rescale, window and presentation from the functional groups to the top level.

    Enhanced objects (Enhanced CT / MR / XA / DX, ...) keep them in the Per-frame Functional Groups Sequence (for
    frame 1, item 1) or the Shared one; the per-frame value wins (PS3.3 C.7.6.16). Top-level values are left as
    they are when already present."""
    sources = []
    for keyword in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        try:
            sources.append(ds[keyword].value[0])
        except Exception:
            continue
    for macro, attributes in _FUNCTIONAL_MACROS.items():
        for group in sources:
            try:
                item = group[macro].value[0]
            except Exception:
                continue
            for keyword in attributes:
                if keyword in item and keyword not in ds:
                    ds[keyword] = item[keyword]
            break


# ------------------------------------------------------------------------------------ VOI and colour


def file_windows(ds: Dataset) -> list[Window]:
    """The window centre/width pairs the file proposes (multi-valued fields give several)."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return []
    centers, widths = ds.WindowCenter, ds.WindowWidth
    centers = list(centers) if isinstance(centers, MultiValue) else [centers]
    widths = list(widths) if isinstance(widths, MultiValue) else [widths]
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    windows = []
    for i, (c, w) in enumerate(zip(centers, widths)):
        try:
            center, width = float(c), float(w)
        except (TypeError, ValueError):
            continue
        if np.isfinite(center) and np.isfinite(width) and width > 0:
            windows.append(Window(center, width, f"file window {i + 1}", function))
    return windows


def _lut_entries(item: Dataset, count: int, little_endian: bool) -> np.ndarray:
    """The LUT Data of a VOI LUT item as unsigned integers (OW bytes or a US list)."""
    element = item["LUTData"]
    if element.VR == "OW" or isinstance(element.value, (bytes, bytearray)):
        return np.frombuffer(bytes(element.value), dtype="<u2" if little_endian else ">u2")[:count].astype(np.float32)
    values = element.value if isinstance(element.value, (list, MultiValue)) else [element.value]
    return np.asarray(values, dtype=np.float64)[:count].astype(np.float32)


def first_mapped_value(first: int, values: np.ndarray) -> int:
    """The LUT Descriptor's first input value mapped, read right whatever VR it was written with.

    The attribute is US or SS depending on whether the LUT's input is signed (PS3.3 C.11.2.1.1), and files often
    write a negative first value as US (65536 - n). When it reads as >= 32768 and the image has values below 0,
    or no value would reach the table at all, it is the signed number."""
    if first >= 2**15 and (float(values.min()) < 0 or float(values.max()) < first):
        return first - 2**16
    return first


def apply_voi_lut_table(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the file's VOI LUT Sequence item 1 (PS3.3 C.11.2.1.1), output scaled to [0, 1]."""
    item = ds.VOILUTSequence[0]
    count, first, bits = (int(v) for v in item.LUTDescriptor)
    count = count or 2**16
    little = bool(getattr(ds, "original_encoding", (True, True))[1] is not False)
    table = _lut_entries(item, count, little)
    if table.size == 0:
        raise ImageReadError("The DICOM file's VOI LUT is empty, so its image cannot be shown.")
    first = first_mapped_value(first, values)
    index = np.clip(np.rint(values - first), 0, table.size - 1).astype(np.int64)
    out = table[index]
    top = max(float(2 ** (bits or 16) - 1), float(table.max()), 1.0)
    out /= top
    return out


def _has_lut_items(ds: Dataset) -> bool:
    """True when the VOI LUT Sequence has a usable first item."""
    try:
        item = ds.VOILUTSequence[0]
        return "LUTDescriptor" in item and "LUTData" in item
    except Exception:
        return False


def displays_inverted(ds: Dataset) -> bool:
    """True when the grey values are shown inverted (high = dark): MONOCHROME1, or Presentation LUT Shape
    INVERSE. The standard requires INVERSE on every MONOCHROME1 image, and there both name the same single
    inversion (PS3.3 C.11.6): inverting once for each would show the film as MONOCHROME2."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    return photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).strip().upper() == "INVERSE"


def grey_pipeline(
    arr: np.ndarray, ds: Dataset, window: Window | None, notices: list[str], factor: int = 1
) -> tuple[np.ndarray, np.ndarray, Window | None, bool]:
    """Modality LUT -> (reduction by `factor`) -> VOI (user window, file VOI LUT, file window or full range)
    -> inversion. Reduced after the modality LUT, so a table LUT is applied to stored values, as it must be."""
    values = apply_modality_lut(arr, ds) if arr.dtype.kind in "iu" else arr
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    del arr
    full_range = full_range_window(values)  # of the stored image, not of its reduction
    flat = not np.ptp(values) > 0
    values = reduce_array(values, factor)
    windows = file_windows(ds)
    voi_lut_used = False
    if window is not None:
        used: Window | None = window
        pixels = apply_window(values, window)
    elif "VOILUTSequence" in ds and _has_lut_items(ds):
        used, voi_lut_used = None, True
        pixels = apply_voi_lut_table(values, ds)
    elif windows:
        used = windows[0]
        pixels = apply_window(values, used)
    else:
        used = full_range
        pixels = np.zeros_like(values) if flat else apply_window(values, used)
    if displays_inverted(ds):
        pixels = 1.0 - pixels
        if str(ds.get("PhotometricInterpretation", "")).strip().upper() != "MONOCHROME1":
            notices.append("presentation LUT: inverted as the file requests")
    return pixels, values, used, voi_lut_used


def colour_pixels(arr: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """Colour frame (RGB, YBR already converted, or PALETTE COLOR) -> float32 [0, 1] RGB."""
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds).astype(np.float32)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2]) or 16
        rgb /= max(float(2**bits - 1), float(rgb.max()), 1.0)
        return rgb
    bits = _header_int(ds, "BitsStored", 8)
    rgb = arr.astype(np.float32)
    low = float(rgb.min())
    if low < 0:
        rgb -= low
    rgb /= max(float(2 ** min(max(bits, 1), 32) - 1), 1.0)
    return rgb


# ---------------------------------------------------------------------------------------------- entry


def read_dicom(data: bytes, *, max_pixels: int, window: Window | None) -> LoadedImage:
    """Read a DICOM upload: header checks, first frame, display pipeline, de-identified metadata."""
    ds = parse_dicom(data)
    rows, cols, frames, samples = _check_header(ds, max_pixels)
    uid = transfer_syntax(ds)
    frame = None  # frame 1's compressed bytes
    if "PixelData" in ds:
        _check_decoder(uid)
        if uid.is_compressed:
            frame = _check_compressed_frame(ds, uid, rows, cols, samples)
        else:
            _check_native_length(ds, rows, cols, frames, samples)
    flatten_functional_groups(ds)
    notices: list[str] = []
    if frames > 1:
        notices.append(f"multi-frame: showing frame 1 of {frames}")
    if has_burned_in_annotation(ds):
        notices.append(BURNED_IN_NOTICE)
    factor = working_factor(cols, rows)
    arr = _decode_reduced_jpeg_frame(frame, uid, factor) if factor > 1 and frame is not None else None
    if arr is None:
        arr = _decode_first_frame(ds, uid)
    if frames > 1 and arr.ndim >= 3 and arr.shape[0] == frames and arr.shape[1:3] == (rows, cols):
        arr = arr[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    metadata = deidentified_metadata(ds)
    factor = working_factor(arr.shape[1], arr.shape[0]) if arr.ndim >= 2 else 1  # what is left to reduce
    if arr.ndim >= 2 and (arr.shape[1] < cols or factor > 1):
        notices.append(reduced_notice(cols, rows, round(cols / (arr.shape[1] // factor))))
    if (arr.ndim == 3 and arr.shape[-1] == 3) or photometric == "PALETTE COLOR":
        if photometric != "PALETTE COLOR":  # indices of a palette cannot be averaged; its colours can
            arr = reduce_array(arr, factor)
        pixels = colour_pixels(arr, ds, photometric)
        if photometric == "PALETTE COLOR":
            pixels = reduce_array(pixels, factor)
        return LoadedImage(pixels, "dicom", metadata, notices, photometric=photometric)
    if arr.ndim != 2:
        raise ImageReadError("The DICOM file's pixel data has an unexpected shape.")
    pixels, values, used, voi_lut_used = grey_pipeline(arr, ds, window, notices, factor)
    return LoadedImage(
        pixels,
        "dicom",
        metadata,
        notices,
        window=used,
        file_windows=file_windows(ds),
        voi_lut_used=voi_lut_used,
        modality_values=values,
        photometric=photometric,
        inverted=displays_inverted(ds),
    )


__all__ = ["displays_inverted", "file_windows", "first_mapped_value", "not_a_patient_image", "read_dicom"]
