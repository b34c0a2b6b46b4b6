"""Write a radiograph as the DICOM file a PACS would send (the bundled samples): CR, CHEST, MONOCHROME2.

The technical header fields of the patient come from the RSNA headers CSV (view, sex, age, pixel spacing,
conversion type); everything that identifies a person or a moment is absent or new: no names, no dates, new
UIDs, a sample number as Patient ID. ImageType says DERIVED (the pixels were downscaled from the original).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def rsna_sample_dicom(image_bytes: bytes, header: dict, out: Path, number: int, original_side: int = 1024) -> Path:
    """Write `image_bytes` (a JPEG / PNG radiograph) as an uncompressed 8-bit CR DICOM at `out`."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    with Image.open(io.BytesIO(image_bytes)) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.uint8)
    rows, cols = pixels.shape
    cr_image_storage = "1.2.840.10008.5.1.4.1.1.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = cr_image_storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(out), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = cr_image_storage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.Modality = "CR"
    ds.BodyPartExamined = (header.get("BodyPartExamined") or "CHEST").strip()
    ds.ViewPosition = (header.get("ViewPosition") or "").strip()
    ds.ConversionType = (header.get("ConversionType") or "WSD").strip()
    ds.PatientID = f"SAMPLE-{number:03d}"
    ds.PatientName = ""
    ds.PatientSex = (header.get("PatientSex") or "").strip()
    age = str(header.get("PatientAge") or "").strip()
    ds.PatientAge = f"{int(float(age)):03d}Y" if age.replace(".", "", 1).isdigit() else ""
    ds.PatientOrientation = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    spacing = str(header.get("PixelSpacing") or "").strip()
    if spacing:
        value = float(spacing.strip("[]").split(",")[0]) * original_side / rows  # downscaled: larger pixels
        ds.PixelSpacing = [f"{value:.4f}", f"{value:.4f}"]
    ds.DerivationDescription = f"downscaled from {original_side} x {original_side} (Lanczos); de-identified sample"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    # The stored 0..255 values as they are (the window the model was trained with: the JPEG's own values);
    # without a window the reader would stretch each film to its own range.
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = "127.5", "255", "LINEAR_EXACT"
    ds.PixelData = pixels.tobytes()
    ds.save_as(str(out), enforce_file_format=True)
    return out
