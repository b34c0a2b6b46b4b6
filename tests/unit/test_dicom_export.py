"""DICOM objects a PACS files (export/dicom_objects.py, review/dicom_export.py): SEG + SR + SC that David Clunie's
dciodvfy accepts, that read back to what the page showed, in the source's study; a JPEG gets SR + SC in a new
study with no identifiers invented."""

from __future__ import annotations

import io
import shutil
import subprocess
import zipfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image

from dprotonet_core import review
from dprotonet_core.explain.overlay import cam
from dprotonet_core.export.dicom_objects import export_objects, source_mask
from tests.app_support import make_tiny_checkpoint
from tests.conftest import PALM_DIR, REAL_DICOM

DCIODVFY = shutil.which("dciodvfy")
pytestmark = pytest.mark.skipif(not REAL_DICOM.is_file(), reason="shared DICOM absent")


def _with_patient(data: bytes) -> bytes:
    """The real CR DICOM with a patient name and MRN, as a hospital's file carries them."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientName, ds.PatientID = "Doe^Jane", "MRN-0042-XYZ"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    """(report inputs, upload bytes) of the real chest DICOM and of a PALM photograph, as the Review page holds
    them after an explanation (tiny model, fast profile)."""
    checkpoint = review.load_model(make_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny"))
    out = {}
    uploads = {"dicom": _with_patient(REAL_DICOM.read_bytes())}
    if PALM_DIR.is_dir():
        uploads["jpeg"] = sorted(PALM_DIR.glob("P*.jpg"))[0].read_bytes()
    for kind, data in uploads.items():
        loaded = review.read_upload(data)
        case = review.cached_case({}, review.file_hash(data), None, checkpoint, loaded)
        explanation = review.explain(checkpoint, case.x, review.default_prototype(case.prediction), "fast")
        settings = review.DisplaySettings(gamma=2.0)
        rendered = review.render_case(case, checkpoint, explanation, settings)
        out[kind] = (review.report_inputs(case, checkpoint, explanation, settings, rendered), data)
    return out


def _objects(zip_bytes: bytes) -> dict[str, pydicom.Dataset]:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        return {Path(n).stem: pydicom.dcmread(io.BytesIO(archive.read(n))) for n in archive.namelist()}


def _errors(ds: pydicom.Dataset, tmp_path: Path) -> list[str]:
    path = tmp_path / f"{ds.Modality}.dcm"
    ds.save_as(path, enforce_file_format=True)
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian's dicom3tools) not installed")
def test_a_chest_dicom_gives_seg_sr_and_sc_that_dciodvfy_accepts(reviewed, tmp_path):
    report, data = reviewed["dicom"]
    objects = _objects(review.dicom_export_zip(report, data))
    assert set(objects) == {"SEG", "SR", "SC"}
    for name, ds in objects.items():
        assert _errors(ds, tmp_path) == [], name


@pytest.mark.skipif(DCIODVFY is None or not PALM_DIR.is_dir(), reason="dciodvfy or PALM absent")
def test_a_fundus_jpeg_gives_sr_and_sc_in_a_new_study_without_identifiers(reviewed, tmp_path):
    report, data = reviewed["jpeg"]
    assert "new study" in review.dicom_export_label(report)
    objects = _objects(review.dicom_export_zip(report, None))
    assert set(objects) == {"SR", "SC"}
    for name, ds in objects.items():
        assert _errors(ds, tmp_path) == [], name
        assert not str(ds.get("PatientID", "")) and not str(ds.get("PatientName", ""))  # none invented
    assert objects["SR"].StudyInstanceUID == objects["SC"].StudyInstanceUID


def test_the_objects_say_what_the_page_said(reviewed):
    report, data = reviewed["dicom"]
    source = pydicom.dcmread(io.BytesIO(data))
    objects = _objects(review.dicom_export_zip(report, data))
    seg, sr, sc = objects["SEG"], objects["SR"], objects["SC"]
    # one study, the source's; three new series and instances; the right SOP classes
    assert {o.StudyInstanceUID for o in objects.values()} == {source.StudyInstanceUID}
    assert len({o.SeriesInstanceUID for o in objects.values()} | {source.SeriesInstanceUID}) == 4
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert all(o.PatientID == "MRN-0042-XYZ" and str(o.PatientName) == "Doe^Jane" for o in objects.values())
    # the SEG's pixels are the mask the page showed at its gamma, at the source's size, referencing the source
    shown = cam(report.explanation.query_stack, report.settings.gamma).region
    expected = source_mask(shown, source.Rows, source.Columns)
    assert np.array_equal(np.asarray(seg.pixel_array).astype(bool), expected)  # pydicom
    segmentation = hd.seg.Segmentation.from_dataset(seg)  # highdicom
    assert segmentation.number_of_segments == 1
    assert np.array_equal(segmentation.get_pixels_by_source_instance(
        [source.SOPInstanceUID], segment_numbers=[1])[0, :, :, 0].astype(bool), expected)
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert referenced == source.SOPInstanceUID
    assert "DProtoNet" in seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName
    # the SR's values are the prediction's; it references the SEG, the SC and the source
    values = {}
    for item in sr.ContentSequence:
        meaning = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "TEXT":
            values.setdefault(meaning, item.TextValue)
        elif item.ValueType == "NUM":
            values.setdefault(meaning, float(item.MeasuredValueSequence[0].NumericValue))
        elif item.ValueType in ("COMPOSITE", "IMAGE"):
            values[meaning] = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    prediction = report.prediction
    assert values["Predicted class"] == prediction.class_name
    assert values["Probability of the positive class"] == pytest.approx(prediction.probabilities[-1], rel=1e-4)
    assert values["MDM decision region segmentation"] == seg.SOPInstanceUID
    assert values["Report image"] == sc.SOPInstanceUID and values["Source image"] == source.SOPInstanceUID
    assert values["Intended use"].startswith("Research software, not a medical device")
    prototypes = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Matched prototype"]
    assert len(prototypes) == min(5, len(prediction.reasoning))
    first = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in prototypes[0].ContentSequence}
    assert int(float(first["Prototype index"].MeasuredValueSequence[0].NumericValue)) == \
        prediction.reasoning[0].prototype
    # the SC is the report image the PNG download gives
    with Image.open(io.BytesIO(review.report_png(report))) as im:
        assert (sc.Rows, sc.Columns) == (im.height, im.width)


def test_identifiers_are_only_inside_the_dicom_download(reviewed):
    report, data = reviewed["dicom"]
    with zipfile.ZipFile(io.BytesIO(review.dicom_export_zip(report, data))) as archive:
        assert all(b"MRN-0042-XYZ" in archive.read(name) for name in archive.namelist())  # a PACS files by it
    assert "identifiers" in review.dicom_export_label(report)
    assert "MRN-0042-XYZ" not in review.report_json(report) and "Doe" not in review.report_json(report)
    assert b"MRN-0042-XYZ" not in review.report_png(report)


def test_source_mask_maps_the_model_square_onto_the_source_frame():
    mask = np.zeros((4, 4), bool)
    mask[0, 3] = True  # top-right model pixel
    big = source_mask(mask, 8, 12)
    assert big.shape == (8, 12) and big[:2, 9:].all() and big.sum() == 2 * 3


def test_a_patient_age_written_as_a_bare_number_is_made_valid(reviewed):
    report, data = reviewed["dicom"]
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientAge = "62"
    raw = io.BytesIO()
    ds.save_as(raw, enforce_file_format=True)
    objects = export_objects(review.export_request(report), raw.getvalue())
    assert objects["SEG"].PatientAge == "062Y"


def test_the_secondary_capture_opens_again_as_the_report_image(reviewed):
    report, data = reviewed["dicom"]
    sc = _objects(review.dicom_export_zip(report, data))["SC"]
    raw = io.BytesIO()
    sc.save_as(raw, enforce_file_format=True)
    loaded = review.read_upload(raw.getvalue())  # what the app does with an uploaded SC
    with Image.open(io.BytesIO(review.report_png(report))) as im:
        expected = np.asarray(im.convert("RGB"), np.float32) / 255.0
    assert loaded.kind == "dicom" and loaded.pixels.shape == expected.shape
    assert np.abs(loaded.pixels - expected).max() < 1e-6


def test_the_export_logs_nothing_of_the_patient(reviewed, caplog):
    import logging

    report, data = reviewed["dicom"]
    with caplog.at_level(logging.DEBUG):
        review.dicom_export_zip(report, data)
    assert "MRN-0042-XYZ" not in caplog.text and "Doe" not in caplog.text
