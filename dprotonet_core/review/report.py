"""The downloadable report of a case: JSON and a one-page PNG, both without any DICOM header field."""

from __future__ import annotations

import dataclasses
import json
import textwrap
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dprotonet_core import ood
from dprotonet_core.checkpoint import Checkpoint
from dprotonet_core.data.io import Window
from dprotonet_core.inference import Prediction
from dprotonet_core.ood import OODCheck
from dprotonet_core.review.case import Case, decision_text, prediction_headline, probability, source_id
from dprotonet_core.review.explanation import Explanation
from dprotonet_core.review.render import DisplaySettings, RenderedCase, png_bytes
from dprotonet_core.review.settings import DEFAULT_TOP_K, DISCLAIMER, SYNTHETIC_WARNING
from dprotonet_core.task_fit import TaskFit


@dataclass
class ReportInputs:
    """Everything a report holds. No DICOM header field and no file name: nothing that identifies a patient."""

    checkpoint: Checkpoint
    prediction: Prediction
    explanation: Explanation
    settings: DisplaySettings
    query_pane: np.ndarray  # uint8 (N, N, 3) as rendered
    prototype_pane: np.ndarray
    image_sha256: str
    image_kind: str
    window: Window | None = None
    top_k: int = DEFAULT_TOP_K
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    fit: TaskFit = TaskFit(True, "not checked")
    ood: OODCheck = OODCheck(float("nan"), None, False)


def report_inputs(
    case: Case, checkpoint: Checkpoint, explanation: Explanation, settings: DisplaySettings,
    rendered: RenderedCase, window: Window | None = None,
) -> ReportInputs:
    return ReportInputs(
        checkpoint=checkpoint, prediction=case.prediction, explanation=explanation, settings=settings,
        query_pane=rendered.query.image, prototype_pane=rendered.prototype.image,
        image_sha256=case.image_sha256, image_kind=case.kind, window=window, fit=case.fit, ood=case.ood,
    )


def report_dict(inputs: ReportInputs) -> dict[str, Any]:
    """The JSON report: checkpoint, prediction, reasoning, explanation and display settings."""
    ck, pred, ex = inputs.checkpoint, inputs.prediction, inputs.explanation
    record = ck.prototypes[ex.prototype] if ck.prototypes else None
    reasoning = []
    for r in pred.top_prototypes(inputs.top_k):
        reasoning.append({
            "prototype": r.prototype, "class": r.class_name, "similarity": r.similarity, "weight": r.weight,
            "contribution": r.contribution, "share": None if r.share != r.share else r.share,
            "source_id": source_id(ck, r.prototype),
        })
    return {
        "report": "DProtoNet Review",
        "disclaimer": DISCLAIMER,
        "created": inputs.created,
        "checkpoint": {
            "name": ck.card.get("name", ck.path.name),
            "model_sha256": ck.card.get("sha256", {}).get("model.safetensors"),
            "synthetic": ck.synthetic,
            "classes": ck.classes,
        },
        "image": {
            "sha256": inputs.image_sha256,
            "kind": inputs.image_kind,
            "window": None if inputs.window is None else {"center": inputs.window.center, "width": inputs.window.width},
        },
        "prediction": {
            "class": pred.class_name,
            "probability": probability(pred),
            "probabilities": dict(zip(ck.classes, pred.probabilities)),
            "probabilities_are": "calibrated (the card's calibrator)" if pred.calibrated
            else "the model's softmax of eq. 3 (not calibrated)",
            "calibration": ck.calibration,
            "decision_threshold": ck.card.get("decision_threshold"),
            "model_softmax": dict(zip(ck.classes, pred.model_probabilities or pred.probabilities)),
            "logits": pred.logits,
            "decision": decision_text(ck),
            "valid_for_this_image": inputs.fit.fits,
        },
        "task_fit": inputs.fit.to_json(),
        "ood": {**inputs.ood.to_json(), "warning": ood.warning(ck.card.get("ood")) if inputs.ood.flagged else None,
                "score_is": (ck.card.get("ood") or {}).get("detector") or (ck.card.get("ood") or {}).get("score")},
        "reasoning": reasoning,
        "explanation": {
            "prototype": ex.prototype,
            "prototype_class": record.class_name if record else None,
            "prototype_source_id": record.source_id if record else None,
            "query_mask_index": ex.mask_index,
            "prototype_mask_index": ex.prototype_mask_index,
            "mdm_profile": ex.profile,
            "query_method": ex.query_method,
            "prototype_method": ex.prototype_method,
            "final_objective": [round(v, 6) for v in ex.final_objective],
            "iterations": ex.iterations,
            "seconds": round(ex.seconds, 3),
            "stopped_by_time_limit": ex.stopped_by_time,
            "computed_when_the_demo_was_built": ex.precomputed,
            "mask_vectors": ex.depth,
        },
        "display": dataclasses.asdict(inputs.settings),
    }


def report_json(inputs: ReportInputs) -> str:
    return json.dumps(report_dict(inputs), indent=2)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _report_warnings(inputs: ReportInputs) -> list[str]:
    """The task-fit and out-of-distribution warnings of a report, wrapped to the PNG's width."""
    lines = []
    if not inputs.fit.fits:
        lines += textwrap.wrap(f"This image is not what the model was made for: {inputs.fit.reason}.", 110)
    if inputs.ood.flagged:
        lines += textwrap.wrap(ood.warning(inputs.checkpoint.card.get("ood")), 110)
    return lines


def report_png(inputs: ReportInputs) -> bytes:
    """The report as one PNG: header, prediction, both panes, reasoning table, settings. No metadata."""
    data = report_dict(inputs)
    pane = inputs.query_pane.shape[0]
    margin, gap = 24, 16
    width = 2 * margin + 2 * inputs.query_pane.shape[1] + gap + 48
    h1, h2, small = _font(26), _font(18), _font(15)
    rows = data["reasoning"]
    height = (margin + 40 + 30 + 30 + 30 + pane + 40 + 30 + 24 * (len(rows) + 1) + 30 + 60 + margin
              + 20 * len(_report_warnings(inputs)) + 20 * len(_method_lines(data["explanation"])))
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = margin
    draw.text((margin, y), "DProtoNet Review: report", fill="black", font=h1)
    y += 40
    draw.text((margin, y), DISCLAIMER, fill=(150, 0, 0), font=small)
    y += 24
    if data["checkpoint"]["synthetic"]:
        for line in textwrap.wrap(SYNTHETIC_WARNING, 110):
            draw.text((margin, y), line, fill=(160, 80, 0), font=small)
            y += 20
    y += 10
    invalid = "" if inputs.fit.fits else "NOT VALID FOR THIS IMAGE: "
    for line in _report_warnings(inputs):  # the warnings first, then the answer (grey when the image is unlike
        draw.text((margin, y), line, fill=(170, 0, 0), font=small)  # the model's training images)
        y += 20
    colour = (170, 0, 0) if not inputs.fit.fits else (140, 140, 140) if inputs.ood.flagged else "black"
    draw.text((margin, y), invalid + prediction_headline(inputs.prediction, inputs.checkpoint), fill=colour, font=h2)
    y += 34
    ex = data["explanation"]
    draw.text((margin, y), "Your image", fill="black", font=small)
    draw.text(
        (margin + pane + gap, y),
        f"Prototype #{ex['prototype']} ({ex['prototype_class']}, from {ex['prototype_source_id']})",
        fill="black", font=small,
    )
    y += 22
    canvas.paste(Image.fromarray(inputs.query_pane), (margin, y))
    canvas.paste(Image.fromarray(inputs.prototype_pane), (margin + pane + gap, y))
    if inputs.settings.view == "heatmap":  # the legend: colormap(A), A = 1 at the top
        from dprotonet_core.explain import overlay

        x_bar = margin + 2 * pane + gap + 10
        canvas.paste(Image.fromarray(overlay.colorbar_image(inputs.settings.colormap, pane - 40, 14)), (x_bar, y + 20))
        draw.text((x_bar - 6, y), "high", fill="black", font=small)
        draw.text((x_bar - 4, y + pane - 18), "low", fill="black", font=small)
    y += pane + 16
    draw.text((margin, y), "Why: this looks like that (top prototypes)", fill="black", font=h2)
    y += 30
    columns = ("prototype", "class", "similarity g", "weight w", "contribution w*g", "share of logit")
    xs = [margin + i * ((width - 2 * margin) // len(columns)) for i in range(len(columns))]
    for x_pos, name in zip(xs, columns):
        draw.text((x_pos, y), name, fill=(60, 60, 60), font=small)
    y += 24
    for r in rows:
        share = "-" if r["share"] is None else f"{r['share'] * 100:.1f}%"
        cells = (f"#{r['prototype']}", r["class"], f"{r['similarity']:.3f}", f"{r['weight']:.3f}",
                 f"{r['contribution']:.3f}", share)
        for x_pos, text in zip(xs, cells):
            draw.text((x_pos, y), text, fill="black", font=small)
        y += 24
    y += 8
    draw.text((margin, y), f"Display: {inputs.settings.describe()}", fill="black", font=small)
    y += 22
    draw.text(
        (margin, y),
        f"Model: {data['checkpoint']['name']} (sha256 {str(data['checkpoint']['model_sha256'])[:12]}...); "
        f"{data['created']}",
        fill=(60, 60, 60), font=small,
    )
    for line in _method_lines(ex):
        y += 20
        draw.text((margin, y), line, fill=(60, 60, 60), font=small)
    return png_bytes(np.asarray(canvas))


def _method_lines(ex: dict) -> list[str]:
    """How each heatmap was made (method, steps, loss), wrapped for the PNG."""
    query = ex.get("query_method") or f"MDM {ex.get('mdm_profile')}, {ex.get('iterations')} iterations"
    proto = ex.get("prototype_method") or "stored in the checkpoint"
    return textwrap.wrap(f"Your image's heatmap: {query}.", 110) + textwrap.wrap(f"Prototype's heatmap: {proto}.", 110)
