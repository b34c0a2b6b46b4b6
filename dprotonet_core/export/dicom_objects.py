"""Results a PACS can file: the MDM map as a Segmentation, the answer as a Comprehensive SR, the report image as a
Secondary Capture, written with highdicom (the field's library for DICOM objects).

    objects = export_objects(request, source_bytes)   # {"SEG": ..., "SR": ..., "SC": ...} (pydicom Datasets)
    data = export_zip(objects)                          # one ZIP in memory, nothing on disk

For a DICOM upload all three go into the source's Study (its Study Instance UID, the patient and study modules
copied from the file, because a PACS files by them), each in a new Series with new SOP Instance UIDs; the SEG
references the source image, so a viewer overlays it on the original. For a JPEG / PNG upload there is no study to
join and no patient to name: the SC and the SR start a new Study, with no identifiers invented, and no SEG (it must
reference a DICOM source image). These objects carry the source's identifiers by design: they are built in memory,
handed to the person who asked for them, and never logged or cached.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import CodedConcept
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

MANUFACTURER = "DProtoNet Review"
MODEL_NAME = "DProtoNet"
INTENDED_USE = "Research software, not a medical device: not for diagnosis or treatment decisions."
SERIES_NUMBERS = {"SEG": 9801, "SR": 9802, "SC": 9803}
# Concepts of this report that no standard code names exactly: a private coding scheme (the "99" prefix of PS3.16).
SCHEME = "99DPROTONET"


def _concept(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning)


REPORT_TITLE = CodedConcept(value="18748-4", scheme_designator="LN", meaning="Diagnostic imaging report")
CONCEPTS = {
    "class": _concept("DPN001", "Predicted class"),
    "probability": _concept("DPN002", "Probability of the positive class"),
    "probability_kind": _concept("DPN003", "What the probability is"),
    "threshold": _concept("DPN004", "Decision threshold"),
    "rule": _concept("DPN005", "Decision rule"),
    "task_fit": _concept("DPN006", "Task-fit check"),
    "ood": _concept("DPN007", "Out-of-distribution check"),
    "ood_score": _concept("DPN008", "Out-of-distribution score"),
    "ood_threshold": _concept("DPN009", "Out-of-distribution threshold"),
    "prototype": _concept("DPN010", "Matched prototype"),
    "prototype_id": _concept("DPN011", "Prototype index"),
    "similarity": _concept("DPN012", "Similarity g (eq. 2)"),
    "weight": _concept("DPN013", "Last-layer weight w"),
    "share": _concept("DPN014", "Share of the class score"),
    "algorithm": _concept("DPN015", "Algorithm"),
    "segmentation": _concept("DPN016", "MDM decision region segmentation"),
    "intended_use": _concept("DPN017", "Intended use"),
    "capture": _concept("DPN018", "Report image"),
    "source": _concept("DPN019", "Source image"),
}
NO_UNITS = CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")


@dataclass(frozen=True)
class ExportRequest:
    """What the page showed, in the numbers the objects carry."""

    checkpoint_name: str
    model_sha256: str
    classes: list[str]
    class_name: str
    probability: float  # p(positive class), as shown
    probability_kind: str  # "calibrated (...)" or "the model's softmax of eq. 3 (not calibrated)"
    threshold: float | None
    decision: str  # the decision rule in words
    task_fit: str
    ood: dict  # {"score", "threshold", "flagged"}
    prototypes: list[dict]  # {"prototype", "class", "similarity", "weight", "share"}, largest contribution first
    mask: np.ndarray  # (S, S) bool at the model's input size: the binary map at gamma the page showed
    gamma: float
    method: str  # the query side's profile, steps and loss (mdm.method_label)
    report_png: bytes  # the report image (query | prototype with their heatmaps and captions)
    software_version: str = "1"
    extra_text: list[str] = field(default_factory=list)


def read_source(data: bytes) -> Dataset:
    """The uploaded DICOM as a pydicom Dataset (the upload was already checked by data/io before it got here)."""
    return pydicom.dcmread(io.BytesIO(data), force=False)


def source_mask(mask: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """The model-size mask (S, S) at the source image's size (rows, columns), nearest neighbour: the model saw the
    whole frame resized to a square (data/io.resize_square), so pixel (r, c) of the source is pixel
    (floor(r S / rows), floor(c S / columns)) of the mask."""
    m = np.asarray(mask, bool)
    r = np.minimum((np.arange(rows) * m.shape[0]) // rows, m.shape[0] - 1)
    c = np.minimum((np.arange(columns) * m.shape[1]) // columns, m.shape[1] - 1)
    return m[np.ix_(r, c)]


def _patient_age(value) -> str | None:
    """An Age String (nnnD/W/M/Y); a bare number of years (as some exports write it) padded, else None."""
    text = str(value or "").strip()
    if len(text) == 4 and text[:3].isdigit() and text[3] in "DWMY":
        return text
    return f"{int(text):03d}Y" if text.isdigit() and int(text) < 1000 else None


def _clean_source(source: Dataset) -> Dataset:
    """A copy of the source whose patient module values are valid for their VR (highdicom copies them): a bare
    number as Patient's Age becomes nnnY; an unreadable one is dropped rather than copied invalid."""
    ds = pydicom.Dataset(source)
    if "PatientAge" in ds:
        age = _patient_age(ds.PatientAge)
        if age is None:
            del ds.PatientAge
        else:
            ds.PatientAge = age
    return ds


def _algorithm(request: ExportRequest) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name="DProtoNet MDM decoder", family=codes.cid7162.ArtificialIntelligence,
        version=request.software_version, source=MANUFACTURER,
        parameters={"checkpoint": request.checkpoint_name[:64], "weights sha256": request.model_sha256[:64],
                    "method": request.method[:64], "gamma": f"{request.gamma:g}"})


def _pixel_measures(source: Dataset) -> hd.PixelMeasuresSequence | None:
    """The source's pixel spacing (PixelSpacing, else ImagerPixelSpacing) for the SEG's shared functional groups, so
    the SEG reads back with highdicom; slice thickness 1 mm stands for a projection's (none exists)."""
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing")
    if not spacing or len(spacing) != 2:
        return None
    return hd.PixelMeasuresSequence(pixel_spacing=[float(v) for v in spacing], slice_thickness=1.0)


def segmentation(source: Dataset, request: ExportRequest) -> hd.seg.Segmentation:
    """The MDM map at the page's gamma as a BINARY Segmentation of the source image, one segment."""
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="MDM decision region",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=_algorithm(request))
    pixels = source_mask(request.mask, int(source.Rows), int(source.Columns))
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=pixels.astype(np.uint8)[None],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
        series_instance_uid=hd.UID(), series_number=SERIES_NUMBERS["SEG"], sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME,
        software_versions=request.software_version, device_serial_number="none",
        content_description=f"DProtoNet MDM map at gamma {request.gamma:g} ({request.method})"[:64],
        content_label="MDM", omit_empty_frames=False, series_description="DProtoNet MDM decision region",
        pixel_measures=_pixel_measures(source))
    # General Image, Type 2C for an image without a frame of reference (a projection radiograph): the source's
    # orientation, or present and empty where the source gives none
    seg.PatientOrientation = source.get("PatientOrientation", "")
    return seg


def report_capture(request: ExportRequest, source: Dataset | None, study_uid: str) -> hd.sc.SCImage:
    """The report image as a Secondary Capture in `study_uid`; patient and study identity from the source (none for
    an upload that had none)."""
    with Image.open(io.BytesIO(request.report_png)) as im:
        pixels = np.asarray(im.convert("RGB"))

    def attribute(name: str):
        return getattr(source, name, None) if source is not None else None

    sc = hd.sc.SCImage(
        pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        study_instance_uid=study_uid, series_instance_uid=hd.UID(), series_number=SERIES_NUMBERS["SC"],
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        patient_id=attribute("PatientID"), patient_name=attribute("PatientName"),
        patient_birth_date=attribute("PatientBirthDate"), patient_sex=attribute("PatientSex") or None,
        accession_number=attribute("AccessionNumber"), study_id=attribute("StudyID"),
        study_date=attribute("StudyDate"), study_time=attribute("StudyTime"),
        referring_physician_name=attribute("ReferringPhysicianName"), patient_orientation=("L", "F"),
        series_description="DProtoNet report image")
    sc.Laterality = ""  # General Series, Type 2C: a chest or a report page has no laterality to state
    return sc


def _text(key: str, value: str, relation: str = "CONTAINS") -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=CONCEPTS[key], value=str(value)[:1024], relationship_type=relation)


def _number(key: str, value: float, relation: str = "CONTAINS") -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name=CONCEPTS[key], value=float(value), unit=NO_UNITS, relationship_type=relation)


def report_content(request: ExportRequest, references: dict[str, Dataset]) -> hd.sr.ContainerContentItem:
    """The SR's content tree: the answer, how it was decided, the checks, the top prototypes, the algorithm, the
    intended use, and references to the SEG, the SC and the source image."""
    root = hd.sr.ContainerContentItem(name=REPORT_TITLE)
    items = [_text("class", request.class_name), _number("probability", request.probability),
             _text("probability_kind", request.probability_kind)]
    if request.threshold is not None:
        items.append(_number("threshold", request.threshold))
    items += [_text("rule", request.decision), _text("task_fit", request.task_fit),
              _text("ood", "flagged: unlike the images this model learned from" if request.ood.get("flagged")
                    else "not flagged")]
    if request.ood.get("score") is not None:
        items.append(_number("ood_score", request.ood["score"]))
    if request.ood.get("threshold") is not None:
        items.append(_number("ood_threshold", request.ood["threshold"]))
    for row in request.prototypes:
        group = hd.sr.ContainerContentItem(name=CONCEPTS["prototype"], relationship_type="CONTAINS")
        group.ContentSequence = hd.sr.ContentSequence([
            _number("prototype_id", row["prototype"]), _text("class", row["class"]),
            _number("similarity", row["similarity"]), _number("weight", row["weight"]),
            _number("share", row["share"] if np.isfinite(row["share"]) else 0.0)])
        items.append(group)
    items.append(_text("algorithm", f"DProtoNet ({request.checkpoint_name}, weights sha256 {request.model_sha256}); "
                                    f"MDM: {request.method}; map at gamma {request.gamma:g}"))
    items.append(_text("intended_use", INTENDED_USE))
    items += [_text("algorithm", line) for line in request.extra_text]
    if "SEG" in references:
        seg = references["SEG"]
        items.append(hd.sr.CompositeContentItem(name=CONCEPTS["segmentation"], referenced_sop_class_uid=seg.SOPClassUID,
                                                referenced_sop_instance_uid=seg.SOPInstanceUID,
                                                relationship_type="CONTAINS"))
    if "SC" in references:
        sc = references["SC"]
        items.append(hd.sr.ImageContentItem(name=CONCEPTS["capture"], referenced_sop_class_uid=sc.SOPClassUID,
                                            referenced_sop_instance_uid=sc.SOPInstanceUID,
                                            relationship_type="CONTAINS"))
    if "source" in references:
        src = references["source"]
        items.append(hd.sr.ImageContentItem(name=CONCEPTS["source"], referenced_sop_class_uid=src.SOPClassUID,
                                            referenced_sop_instance_uid=src.SOPInstanceUID,
                                            relationship_type="CONTAINS"))
    root.ContentSequence = hd.sr.ContentSequence(items)
    return root


def structured_report(request: ExportRequest, evidence: list[Dataset],
                      references: dict[str, Dataset]) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR of the answer, in the study of its evidence (the first evidence object's); its private
    coding scheme declared in the SOP Common module."""
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence, content=report_content(request, references), series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS["SR"], sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, series_description="DProtoNet answer")
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "DProtoNet Review report concepts"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def export_objects(request: ExportRequest, source_bytes: bytes | None) -> dict[str, Dataset]:
    """SEG + SR + SC for a DICOM upload (`source_bytes`, in the source's study), SR + SC in a new study otherwise."""
    if source_bytes is None:
        sc = report_capture(request, None, hd.UID())
        sr = structured_report(request, [sc], {"SC": sc})
        return {"SR": sr, "SC": sc}
    source = _clean_source(read_source(source_bytes))
    seg = segmentation(source, request)
    sc = report_capture(request, source, str(source.StudyInstanceUID))
    sr = structured_report(request, [source, seg, sc], {"SEG": seg, "SC": sc, "source": source})
    return {"SEG": seg, "SR": sr, "SC": sc}


def export_zip(objects: dict[str, Dataset]) -> bytes:
    """The objects as one ZIP (SEG.dcm, SR.dcm, SC.dcm) built in memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, ds in objects.items():
            part = io.BytesIO()
            ds.save_as(part, enforce_file_format=True)
            archive.writestr(f"{name}.dcm", part.getvalue())
    return buffer.getvalue()


__all__ = ["ExportRequest", "export_objects", "export_zip", "read_source", "report_content", "segmentation",
           "source_mask", "structured_report"]
