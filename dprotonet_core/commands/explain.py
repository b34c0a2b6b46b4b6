"""`explain`: the MDM explanation of one image (eq. 12-18) written as files.

    python -m dprotonet_core explain --checkpoint DIR FILE --out DIR
        [--prototype K] [--gamma G] [--profile NAME]   (default: the profile the checkpoint's card names)

writes query_heatmap.png, prototype_heatmap.png, query_masks.npy (D x H x W, float32) and
explanation.json (prediction, prototype, j_x, iterations, seconds, box).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dprotonet_core.config import DEFAULT_MDM_PROFILE, MDM_PROFILES, OverlayConfig


def register(subparsers) -> None:
    p = subparsers.add_parser("explain", help="MDM explanation of one image (heatmaps, masks, JSON)")
    p.add_argument("file", type=Path, help="DICOM / PNG / JPG image")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--prototype", type=int, default=None, help="detection node (default: eq. 12's p_t)")
    p.add_argument("--gamma", type=float, default=OverlayConfig().gamma, help="CAM threshold, 0..D (eq. 15)")
    p.add_argument("--profile", choices=sorted(MDM_PROFILES), default=None,
                   help="MDM profile (default: the checkpoint card's default profile, else "
                   f"{DEFAULT_MDM_PROFILE})")
    p.add_argument("--iterations", type=int, default=None, help="override the profile's iterations")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--dicom-out", type=Path, default=None, metavar="DIR",
                   help="also write the DICOM objects a PACS files: SEG + SR + SC in the source's study for a DICOM "
                   "file (they carry its patient identifiers), SR + SC in a new study for a JPEG / PNG")
    p.set_defaults(func=run)


def _read_input(path: Path, size: int) -> tuple[torch.Tensor, bytes, str]:
    """((3, size, size) in [0, 1], the file's bytes, its kind). Raises FileRefused or ImageReadError with a one-line
    message (a regular file up to the upload limit only, checked before it is read)."""
    from dprotonet_core.commands._files import read_image_file
    from dprotonet_core.data.io import read_image, to_model_input

    data = read_image_file(path)
    loaded = read_image(data)
    return to_model_input(loaded, size)[0], data, loaded.kind


def _report_image(panes: list[np.ndarray], lines: list[str]) -> bytes:
    """The two heatmap panes side by side under a few lines of text, as PNG bytes (the SC's picture)."""
    import io

    from PIL import ImageDraw

    gap, band = 8, 16 * len(lines) + 12
    h, w = panes[0].shape[:2]
    canvas = Image.new("RGB", (2 * w + 3 * gap, h + band + gap), "white")
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((gap, 6 + 16 * k), line[:180], fill="black")
    for k, pane in enumerate(panes):
        canvas.paste(Image.fromarray(pane), (gap + k * (w + gap), band))
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def _prediction(ck, x: torch.Tensor):
    """The answer the app and `predict` give (inference.Prediction): the card's decision rule (its threshold on the
    calibrated probability, when it has one) and its probabilities."""
    from dprotonet_core.inference import predict

    return predict(ck.model, x[None], ck.classes, ck.decision_threshold, ck.card.get("ood"), ck.calibration,
                   ck.ood_detector)


def _prediction_record(pred) -> dict:
    return {"class_index": pred.class_index, "class_name": pred.class_name, "probabilities": pred.probabilities,
            "probabilities_are": "calibrated" if pred.calibrated else "the model's softmax of eq. 3"}


def _write_dicom(args, ck, decided, region: np.ndarray, method: str, panes: list[np.ndarray], data: bytes,
                 kind: str) -> None:
    """The DICOM objects of this explanation into args.dicom_out (export/dicom_objects.py): SEG + SR + SC in the
    source's study for a DICOM file, SR + SC in a new study otherwise."""
    from dprotonet_core import ood
    from dprotonet_core.data.io import read_image
    from dprotonet_core.export.dicom_objects import ExportRequest, export_objects
    from dprotonet_core.review.case import decision_text
    from dprotonet_core.task_fit import task_fit

    positive = len(ck.classes) - 1
    fit = task_fit(read_image(data), ck.card.get("accepts"))
    lines = [f"DProtoNet Review ({ck.card.get('name', ck.path.name)}): {decided.class_name}, "
             f"p({ck.classes[positive]}) = {decided.probabilities[positive]:.3f}"
             f"{' (calibrated)' if decided.calibrated else ' (uncalibrated model score)'}",
             f"Your image | prototype {args.prototype}. MDM: {method}; gamma {args.gamma:g}",
             "Research software, not a medical device."]
    rows = [{"prototype": r.prototype, "class": r.class_name, "similarity": r.similarity, "weight": r.weight,
             "share": r.share} for r in decided.top_prototypes(5)]
    request = ExportRequest(
        checkpoint_name=str(ck.card.get("name", ck.path.name)),
        model_sha256=str((ck.card.get("sha256") or {}).get("model.safetensors", "")), classes=list(ck.classes),
        class_name=decided.class_name, probability=float(decided.probabilities[positive]),
        probability_kind="calibrated (the card's calibrator)" if decided.calibrated
        else "the model's softmax of eq. 3 (not calibrated)",
        threshold=ck.decision_threshold, decision=decision_text(ck),
        task_fit=("fits: " if fit.fits else "does NOT fit: ") + fit.reason,
        ood=ood.check(decided.ood_score, ck.card.get("ood")).to_json(), prototypes=rows, mask=region,
        gamma=float(args.gamma), method=method, report_png=_report_image(panes, lines))
    args.dicom_out.mkdir(parents=True, exist_ok=True)
    for name, ds in export_objects(request, data if kind == "dicom" else None).items():
        ds.save_as(args.dicom_out / f"{name}.dcm", enforce_file_format=True)
    print(f"wrote {args.dicom_out}/ ({', '.join(sorted(p.stem for p in args.dicom_out.glob('*.dcm')))})")


def _to_hwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().permute(1, 2, 0).numpy()


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dprotonet_core.checkpoint import CheckpointError, load_checkpoint
    from dprotonet_core.explain import overlay
    from dprotonet_core.explain.mdm import runnable
    from dprotonet_core.explain.pair import explain_pair

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ck = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        print(f"error: checkpoint {args.checkpoint}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a checkpoint folder is untrusted input: one line, never a traceback
        print(f"error: checkpoint {args.checkpoint}: could not be loaded ({type(exc).__name__})", file=sys.stderr)
        return 2
    model = ck.model
    size = model.config.input_size
    from dprotonet_core.commands._files import FileRefused
    from dprotonet_core.data.io import ImageReadError

    try:
        x, data, kind = _read_input(args.file, size)
    except (FileRefused, ImageReadError) as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - unforeseen: one line, never a traceback
        print(f"error: {args.file}: could not be read ({type(exc).__name__})", file=sys.stderr)
        return 2
    if args.profile is None:
        from dprotonet_core.explain.mdm import card_default_profile

        args.profile = card_default_profile(ck.card)
    cfg = MDM_PROFILES[args.profile]
    if args.iterations is not None:
        cfg = dataclasses.replace(cfg, iterations=args.iterations)
    if not 0 <= args.gamma <= cfg.num_vectors:
        print(f"error: --gamma must lie in [0, {cfg.num_vectors}]", file=sys.stderr)
        return 2
    try:
        decided = _prediction(ck, x)
    except ValueError as exc:  # the model's scores are not finite
        print(f"error: {args.file}: no prediction: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    prediction = _prediction_record(decided)
    if args.prototype is None:  # p_t of the class the card's rule decided (the app's default), not eq. 3's argmax
        from dprotonet_core.review.case import default_prototype

        args.prototype = default_prototype(decided)

    with tqdm(total=cfg.iterations, desc="MDM", unit="it") as bar:
        pair = explain_pair(ck, x, args.prototype, cfg, args.profile, progress=lambda *_: bar.update(1))
    if pair.note:
        print(f"note: {pair.note}", file=sys.stderr)
    exp_node, result = pair.node, pair.query
    query_stack, proto_stack, proto_img = result.stack, pair.prototype.stack, pair.prototype.image
    t = exp_node.prototype
    note = pair.note

    settings = overlay.DisplaySettings(gamma=args.gamma)  # the paper's alpha, beta and colormap otherwise
    q_cam = overlay.cam(query_stack, args.gamma)
    args.out.mkdir(parents=True, exist_ok=True)
    panes = []
    for name, image, stack in (("query", x, query_stack), ("prototype", proto_img, proto_stack)):
        pane = overlay.render_pane(_to_hwc(image), stack, settings, size)  # the app's pane, at the model's size
        Image.fromarray(pane.image).save(args.out / f"{name}_heatmap.png")
        panes.append(pane.image)
    np.save(args.out / "query_masks.npy", query_stack.astype(np.float32))
    boxes = overlay.decision_boxes(q_cam)
    record = {
        "prediction": prediction,
        "prototype": {
            "index": t,
            "class_index": exp_node.prototype_class,
            "class_name": ck.classes[exp_node.prototype_class],
            "activation": exp_node.activation,
            "mask_index": ck.prototypes[t].mask_index if ck.prototypes else None,
        },
        "j_x": exp_node.mask_index,
        "profile": args.profile,
        "query_method": pair.query_method,
        "prototype_method": pair.prototype.method,
        "mdm_config": dataclasses.asdict(runnable(cfg, x.device)),  # what ran (float32 where bf16 is not native)
        "mdm_config_requested": dataclasses.asdict(cfg),
        "iterations": result.iterations,
        "seconds": round(result.seconds, 3),
        "final_objective": [round(v, 6) for v in result.final_objective],
        "converged": result.converged,
        "gamma": args.gamma,
        "cam_empty": q_cam.empty,
        "box": boxes[0].as_dict() if boxes else None,
        "boxes": [b.as_dict() for b in boxes],
        "synthetic_checkpoint": ck.synthetic,
        "note": note,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (args.out / "explanation.json").write_text(json.dumps(record, indent=2))
    if args.dicom_out is not None:
        _write_dicom(args, ck, decided, q_cam.region, pair.query_method, panes, data, kind)
    print(f"wrote {args.out}/ (prototype {t}, j_x {exp_node.mask_index}, {result.seconds:.1f} s)")
    return 0
