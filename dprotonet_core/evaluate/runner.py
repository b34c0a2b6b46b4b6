"""Evaluate a checkpoint on a dataset: section 4.2's nine metrics for every CAM method.

1. Classification over the whole split: accuracy, sensitivity, specificity, ROC AUC, confusion
   matrix (binary: the positive class is EvalConfig.positive_class; more classes: macro means).
2. On up to `limit` images of the split: every method's CAM for the target class (the
   prediction, EvalConfig.cam_target), then AD, AI (on the explained map), Deletion and
   Insertion (RISE curves), DICE/IoU/PPV/Sensitivity of the top-k% CAM against the ground truth
   (images that have one), and seconds per image: Table 5 per method.
3. report.write_reports puts it on disk (metrics.json, table5.md/.csv, curves.json, figures).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dprotonet_core.calibration import describe as describe_calibration
from dprotonet_core.checkpoint import load_checkpoint
from dprotonet_core.config import EvalConfig, OverlayConfig, to_dict
from dprotonet_core.data.registry import spec_or_fallback
from dprotonet_core.evaluate import metrics as M
from dprotonet_core.evaluate.cams import DEFAULT_METHODS, check_methods, compute_cam
from dprotonet_core.evaluate.data import EvalData, load_eval_data
from dprotonet_core.evaluate.held_out import figures_by_view, subset_figures
from dprotonet_core.evaluate.report import write_reports
from dprotonet_core.evaluate.results import (
    EVALUATION_DIR,
    HIGHER_IS_BETTER,
    TABLE5_COLUMNS,
    CamEvaluation,
    MethodScores,
    Predictions,
    table5_row,
)
from dprotonet_core.inference import decide, decision_rule
from dprotonet_core.model.dprotonet import DProtoNet

_EVAL = EvalConfig()
_OVERLAY = OverlayConfig()


def probability_fn(model: DProtoNet, calibration: dict | None = None) -> M.ProbabilityFn:
    """Images in [0, 1] -> class probabilities, on the model's device: the card's calibrated ones when it has a
    calibrator (what the app shows; the recognition metrics use them too), else the softmax of eq. 3."""
    from dprotonet_core.inference import calibrate

    device = next(model.parameters()).device

    def probabilities(images: torch.Tensor) -> torch.Tensor:
        logits = model(images.to(device)).logits.float().cpu()
        return calibrate(logits, torch.softmax(logits, dim=1), calibration)

    return probabilities


# --- 1. classification ----------------------------------------------------------------------


def predict_split(model: DProtoNet, data: EvalData, batch_size: int, progress: bool = True,
                  threshold: float | None = None, calibration: dict | None = None) -> Predictions:
    """Class probabilities (calibrated by `calibration` when given) of every image of the split, in batches."""
    prob = probability_fn(model, calibration)
    chunks, start = [], time.perf_counter()
    for lo in tqdm(range(0, len(data), batch_size), desc="classify", unit="batch", disable=not progress):
        images = torch.stack([data.image(k) for k in range(lo, min(lo + batch_size, len(data)))])
        with torch.no_grad():
            chunks.append(prob(images).float().cpu().numpy())
    ids = [data.item_id(k) for k in range(len(data))]
    return Predictions(ids, data.labels(), np.concatenate(chunks), time.perf_counter() - start, threshold,
                       calibration is not None)


def _macro(fn: Callable[..., float], labels: np.ndarray, values: np.ndarray, num_classes: int) -> float:
    """Mean of a one-vs-rest metric over the classes that occur (NaN classes skipped)."""
    scores = [fn(labels, values if values.ndim == 1 else values[:, c], positive=c) for c in range(num_classes)]
    finite = [s for s in scores if not math.isnan(s)]
    return float(np.mean(finite)) if finite else math.nan


def classification_metrics(pred: Predictions, classes: list[str], positive: int) -> dict:
    """Accuracy, sensitivity, specificity, ROC AUC and the confusion matrix of the split."""
    num_classes = len(classes)
    y, p, probs = pred.labels, pred.predicted, pred.probabilities
    result = {
        "n": int(y.size),
        "accuracy": M.accuracy(y, p),
        "confusion_matrix": M.confusion_matrix(y, p, num_classes).tolist(),
        "seconds_per_image": pred.seconds / max(y.size, 1),
        "decision": decision_rule(classes, pred.threshold, positive, pred.calibrated),
    }
    if num_classes == 2:
        fpr, tpr = M.roc_curve(y, probs[:, positive], positive)
        result.update(
            averaging="binary", positive_class=classes[positive],
            sensitivity=M.sensitivity(y, p, positive), specificity=M.specificity(y, p, positive),
            roc_auc=M.roc_auc(y, probs[:, positive], positive),
            roc={"fpr": fpr.tolist(), "tpr": tpr.tolist()},
        )
    else:
        result.update(
            averaging="macro (one-vs-rest, mean over classes)", positive_class=None,
            sensitivity=_macro(M.sensitivity, y, p, num_classes),
            specificity=_macro(M.specificity, y, p, num_classes),
            roc_auc=_macro(M.roc_auc, y, probs, num_classes), roc=None,
        )
    return result


def per_view_metrics(pred: Predictions, data: EvalData, positive: int) -> dict:
    """Accuracy, sensitivity, specificity and ROC AUC within each view (e.g. AP / PA radiographs) of a binary
    task whose items carry a "view" attribute; {} otherwise (held_out.figures_by_view)."""
    if pred.probabilities.shape[1] != 2:
        return {}
    views = [data.attribute(k, "view") for k in range(len(data))]
    return figures_by_view(pred.labels, pred.predicted, pred.probabilities[:, positive], views, positive)


def subgroup_figures(pred: Predictions, data: EvalData, positive: int, calibrated: bool) -> dict:
    """For a binary task: the view shortcut's own AUC on the split, the figures within each data folder (when
    the items come from more than one), and, for calibrated probabilities, ECE and the reliability bins overall
    and per view and folder (held_out.subset_figures)."""
    if pred.probabilities.shape[1] != 2:
        return {}
    scores = pred.probabilities[:, positive]
    views = [data.attribute(k, "view") for k in range(len(data))]
    folders = [data.attribute(k, "folder") for k in range(len(data))]
    whole = subset_figures(pred.labels, pred.predicted, scores, views, calibrated)
    out: dict = {"view_shortcut_auc": whole["view_shortcut_auc"]}
    if calibrated:
        out["calibration"] = whole["calibration"]
    for key, values in (("by_folder", folders), ("subgroups_by_view", views)):
        names = sorted({v for v in values if v})
        if not names or (key == "by_folder" and len(names) < 2):
            continue
        out[key] = {}
        for name in names:
            keep = np.asarray([v == name for v in values])
            out[key][name] = subset_figures(pred.labels[keep], pred.predicted[keep], scores[keep],
                                            [v for v, k in zip(views, keep) if k], calibrated)
    return out


# --- 2. CAMs: recognition and localisation --------------------------------------------------


def select_cam_images(data: EvalData, limit: int, subset: str) -> list[int]:
    """Up to `limit` split positions, evenly spaced; with subset "annotated", among the images
    that have ground truth when any do (localisation needs it)."""
    if limit <= 0:
        return []
    candidates = list(range(len(data)))
    if subset == "annotated":
        annotated = [k for k in candidates if data.has_ground_truth(k)]
        candidates = annotated or candidates
    if len(candidates) <= limit:
        return candidates
    picks = np.unique(np.linspace(0, len(candidates) - 1, limit).round().astype(int))
    return [candidates[i] for i in picks]


def _score_image(
    scores: MethodScores, prob: M.ProbabilityFn, x: torch.Tensor, target: int, cam: np.ndarray,
    truth: np.ndarray | None, cfg: EvalConfig, top_percent: float,
) -> np.ndarray:
    """Add one image's AD/AI inputs, curves and localisation to `scores`; returns the fractions."""
    explained = M.explained_map(x, cam, cfg.explained_map_keep_percent, cfg.explained_map_mode)
    with torch.no_grad():
        scores.explained.append(float(prob(explained.unsqueeze(0))[0, target]))
    fractions, deletion = M.deletion_curve(
        prob, x, cam, target, cfg.deletion_step_fraction, cfg.deletion_baseline, cfg.batch_size
    )
    _, insertion = M.insertion_curve(
        prob, x, cam, target, cfg.deletion_step_fraction, cfg.insertion_blur_sigma, cfg.insertion_blur_kernel,
        cfg.batch_size,
    )
    scores.deletion.append(deletion)
    scores.insertion.append(insertion)
    has_truth = truth is not None and truth.any()
    scores.localisation.append(M.localisation_scores(cam, truth, top_percent) if has_truth else None)
    return fractions


def evaluate_cams(
    model: DProtoNet, data: EvalData, positions: list[int], methods: list[str], cfg: EvalConfig,
    top_percent: float, overlay_cfg: OverlayConfig = _OVERLAY, progress: bool = True,
    threshold: float | None = None, calibration: dict | None = None,
) -> CamEvaluation:
    """Every method's CAM and scores on the images at `positions` of the split (probabilities calibrated by
    `calibration` when given, as the app shows them)."""
    prob = probability_fn(model, calibration)
    device = next(model.parameters()).device
    results = {m: MethodScores() for m in methods}
    fractions, ids, targets = np.zeros(0), [], []
    bar = tqdm(total=len(positions) * len(methods), desc="CAMs", unit="cam", disable=not progress)
    for k in positions:
        x = data.image(k).to(device)
        with torch.no_grad():
            original = prob(x.unsqueeze(0))[0]
        predicted = int(decide(original[None].cpu(), threshold)[0])
        target = predicted if cfg.cam_target == "predicted" else data.label(k)
        truth = data.mask(k)
        ids.append(data.item_id(k))
        targets.append(target)
        for method in methods:
            bar.set_postfix_str(f"{method} {ids[-1]}")
            start = time.perf_counter()
            cam = compute_cam(method, model, x, target, cfg, overlay_cfg)
            scores = results[method]
            scores.seconds.append(time.perf_counter() - start)
            scores.ids.append(ids[-1])
            scores.original.append(float(original[target]))
            fractions = _score_image(scores, prob, x, target, cam, truth, cfg, top_percent)
            bar.update(1)
    bar.close()
    return CamEvaluation(results, fractions, ids, targets)


# --- 3. the whole run -----------------------------------------------------------------------


@dataclass
class EvalRequest:
    """What `python -m dprotonet_core evaluate` was asked to do."""

    checkpoint: str
    data: str
    out: str
    dataset: str = "folder"
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    limit: int = EvalConfig.cam_limit
    split: str = "val"
    attach: bool = False
    device: str = "cpu"
    top_percent: float | None = None  # None: the dataset's DatasetSpec.top_percent


def _top_percent(request: EvalRequest) -> float:
    """The localisation threshold k: the request's, else the dataset's spec (class-per-folder's if unknown)."""
    if request.top_percent is not None:
        return float(request.top_percent)
    return float(spec_or_fallback(request.dataset).top_percent)


def run_evaluation(request: EvalRequest, cfg: EvalConfig = _EVAL, progress: bool = True) -> dict:
    """Evaluate, write the reports to request.out (and the checkpoint with attach); returns metrics.json's dict."""

    methods = check_methods(request.methods)
    checkpoint = load_checkpoint(request.checkpoint, device=request.device)
    model = checkpoint.model
    data = load_eval_data(request.dataset, request.data, request.split, model.config.input_size, checkpoint.card)
    positive = cfg.positive_class if len(checkpoint.classes) == 2 else 0
    pred = predict_split(model, data, cfg.batch_size, progress, checkpoint.decision_threshold,
                         checkpoint.calibration)
    classification = classification_metrics(pred, checkpoint.classes, positive)
    classification["decision"] = decision_rule(checkpoint.classes, pred.threshold, positive, pred.calibrated,
                                               (checkpoint.card.get("decision_threshold") or {}).get("rule"))
    classification["probability"] = describe_calibration(checkpoint.calibration)
    classification["by_view"] = per_view_metrics(pred, data, positive)
    classification.update(subgroup_figures(pred, data, positive, checkpoint.calibration is not None))
    top = _top_percent(request)
    positions = select_cam_images(data, request.limit, cfg.cam_subset)
    cams = evaluate_cams(model, data, positions, methods, cfg, top, progress=progress,
                         threshold=checkpoint.decision_threshold, calibration=checkpoint.calibration)
    metrics = _metrics_document(request, cfg, checkpoint.card, data, classification, cams, top)
    document = write_reports(Path(request.out), metrics, pred, cams, checkpoint.classes)
    if request.attach:
        attach(Path(request.out), Path(request.checkpoint))
    return document


def _metrics_document(
    request: EvalRequest, cfg: EvalConfig, card: dict, data: EvalData, classification: dict,
    cams: CamEvaluation, top_percent: float,
) -> dict:
    """metrics.json (without the figure list, which report.py adds)."""
    rows = [table5_row(m, s, cams.fractions) for m, s in cams.methods.items()]
    return {
        "schema_version": 1,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "checkpoint": {
            "path": str(request.checkpoint), "name": Path(request.checkpoint).name,
            "backbone": card.get("backbone") or card["model_config"].get("backbone"),
            "classes": list(card["classes"]), "synthetic": bool(card.get("synthetic", False)),
        },
        "dataset": {
            "name": request.dataset, "root": str(request.data), "split": request.split, "n": len(data),
            "classes": data.classes, "notes": data.notes,
        },
        "request": dataclasses.asdict(request),
        "config": {**to_dict(cfg), "top_percent_used": top_percent, "gamma": OverlayConfig().gamma},
        "device": request.device,
        "threads": torch.get_num_threads(),
        "classification": classification,
        "table5": {
            "columns": list(TABLE5_COLUMNS),
            "higher_is_better": HIGHER_IS_BETTER,
            "rows": rows,
            "n_images": len(cams.image_ids),
            "image_ids": cams.image_ids,
            "targets": cams.targets,
            "target": cfg.cam_target,
        },
    }


def attach(out_dir: Path, checkpoint_dir: Path) -> Path:
    """Copy the reports into <checkpoint>/evaluation/ (not listed in card.json's sha256, so the
    checkpoint still verifies). The HTML pages and their 4.6 MB plotly.min.js stay in `out_dir`:
    the app draws the figures from their JSON, and checkpoints should stay small."""
    target = checkpoint_dir / EVALUATION_DIR
    if target.resolve() == out_dir.resolve():
        return target
    shutil.copytree(out_dir, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.html", "plotly.min.js"))
    metrics_path = target / "metrics.json"
    document = json.loads(metrics_path.read_text())
    for entry in (document.get("figures") or {}).get("files", {}).values():
        entry.pop("html", None)
    document["attached_from"] = str(out_dir)
    metrics_path.write_text(json.dumps(document, indent=2))
    return target
