"""The Review page's DICOM download: what the page showed, as SEG + SR + SC (export/dicom_objects.py), in memory.

A DICOM upload's objects carry its patient and study identifiers (a PACS files by them): the download says so,
and nothing of it is logged or cached. A JPEG / PNG upload gets an SR and an SC in a new study, no identifiers.
"""

from __future__ import annotations

from dprotonet_core.explain.overlay import cam
from dprotonet_core.export.dicom_objects import ExportRequest, export_objects, export_zip
from dprotonet_core.review.case import decision_text, source_id
from dprotonet_core.review.report import ReportInputs, report_png

WITH_IDENTIFIERS = ("DICOM objects for a PACS (SEG + SR + Secondary Capture, ZIP). They contain the patient's "
                    "identifiers from the uploaded file, because a PACS files by them.")
NEW_STUDY = ("DICOM objects for a PACS (SR + Secondary Capture, ZIP) in a new study: a JPEG or PNG has no study to "
             "join, no patient identifiers to carry and no DICOM image a Segmentation could reference.")


def export_request(report: ReportInputs) -> ExportRequest:
    """The numbers and images the page showed, for the DICOM objects."""
    ck, pred, ex = report.checkpoint, report.prediction, report.explanation
    positive = len(ck.classes) - 1
    rows = [{"prototype": r.prototype, "class": r.class_name, "similarity": r.similarity, "weight": r.weight,
             "share": r.share, "source_id": source_id(ck, r.prototype)} for r in pred.top_prototypes(report.top_k)]
    return ExportRequest(
        checkpoint_name=str(ck.card.get("name", ck.path.name)),
        model_sha256=str((ck.card.get("sha256") or {}).get("model.safetensors", "")),
        classes=list(ck.classes), class_name=pred.class_name, probability=float(pred.probabilities[positive]),
        probability_kind="calibrated (the card's calibrator)" if pred.calibrated
        else "the model's softmax of eq. 3 (not calibrated)",
        threshold=ck.decision_threshold, decision=decision_text(ck),
        task_fit=("fits: " if report.fit.fits else "does NOT fit: ") + report.fit.reason,
        ood=report.ood.to_json(), prototypes=rows, mask=cam(ex.query_stack, report.settings.gamma).region,
        gamma=float(report.settings.gamma), method=ex.query_method, report_png=report_png(report))


def dicom_export_zip(report: ReportInputs, source: bytes | None) -> bytes:
    """The ZIP of DICOM objects; `source`: the uploaded DICOM's bytes (None for a JPEG / PNG upload)."""
    return export_zip(export_objects(export_request(report), source))


def dicom_export_label(report: ReportInputs) -> str:
    """What the download holds, said before it is taken."""
    return WITH_IDENTIFIERS if report.image_kind == "dicom" else NEW_STUDY
