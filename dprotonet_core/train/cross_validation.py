"""K-fold cross-validation of a training recipe: DProtoNet and its plain backbone (Table 3) on the same folds.

A small training set (400 PALM photographs) gives a validation figure too coarse to choose a recipe by (80 images:
one error is 1.25 points). Cross-validation trains K models, each validated on a fold none of them trained on,
and reports the mean and spread of the K validation figures. Every model is selected inside its own fold's
training run the way the shipped build selects (on its validation part), so the figure reported for the selected
states is optimistic by that selection; the figure at a fixed epoch (the same for every fold, chosen by the mean
over folds) is the recipe's. Test splits play no part: the folds cover the training images only.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def stratified_folds(keys: Sequence, k: int, seed: int = 0) -> list[list[int]]:
    """K disjoint folds covering every index: each key's indices, shuffled (numpy default_rng(seed)), are dealt
    round-robin, continuing where the previous key stopped, so every fold gets each key's share to within one."""
    if k < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    if len(keys) < k:
        raise ValueError(f"{len(keys)} items cannot fill {k} folds")
    rng = np.random.default_rng(seed)
    keys_arr = np.asarray([str(key) for key in keys])
    folds: list[list[int]] = [[] for _ in range(k)]
    position = 0
    for key in sorted(set(keys_arr.tolist())):
        idx = np.flatnonzero(keys_arr == key)
        rng.shuffle(idx)
        for i in idx.tolist():
            folds[position % k].append(i)
            position += 1
    return [sorted(f) for f in folds]


@dataclass(frozen=True)
class FoldFigures:
    """What one fold's run measured on that fold."""

    fold: int
    train_images: int
    val_images: int
    dprotonet: dict  # figures of the selected state on the fold (accuracy, sensitivity, ...), selected_epoch
    baseline: dict | None  # the same for the backbone-only classifier (None when not trained)
    dprotonet_by_epoch: dict[int, float]  # fold accuracy of every projected state, by epoch (the last per epoch)
    baseline_by_epoch: dict[int, float]
    seconds: float  # of the run that finished the fold (a resumed fold: from its resumption)
    resumed_at_step: int | None = None  # the DProtoNet schedule step a cut fold resumed at (None: not cut)
    # figures on the fold of DProtoNet's state after its run's last step (the last epoch's, no selection): what a
    # model trained with the recipe for its full epochs scores; sensitivity too, which the per-epoch curve lacks
    dprotonet_last: dict | None = None
    # per prototype update (by epoch): fold accuracy just before the prototypes move, right after projection, and
    # after the last-layer-only epochs that follow (push_effects): where projection costs accuracy, what f_h recovers
    push_effects: dict[int, dict] | None = None
    # True for a recipe whose DProtoNet starts from the baseline's f_b (DemoPlan.backbone_pretraining): the baseline
    # is then that classifier after its last epoch (no selection), trained before DProtoNet, so the two curves'
    # epochs are not the same training time and are not paired; the final states are (summarise)
    baseline_initialises_dprotonet: bool = False


def by_epoch(history: Sequence[dict], phase: str | None = None) -> dict[int, float]:
    """Validation accuracy per epoch from a training log: DProtoNet's projected states (phase None), or the
    baseline's epochs (phase "baseline"); a later entry of the same epoch wins."""
    out: dict[int, float] = {}
    for entry in history:
        if entry.get("val_accuracy") is None:
            continue
        if phase == "baseline" and entry.get("phase") == "baseline":
            out[int(entry["epoch"])] = float(entry["val_accuracy"])
        elif phase is None and entry.get("phase") != "baseline" and entry.get("projected"):
            out[int(entry["epoch"])] = float(entry["val_accuracy"])
    return out


def push_effects(history: Sequence[dict]) -> dict[int, dict]:
    """From a DProtoNet training log: for each prototype update (push) at epoch e, the validation accuracy before
    it ("before": the push's own `val_accuracy_before_projection`, measured after the batch-norm re-estimate and
    before the prototypes move; in logs without it, epoch e's training epoch, whose batch-norm statistics lag and
    so mix two effects: "before_from": "epoch"), of the push itself ("projected"), and after the last-layer-only
    epochs that follow ("last_layer"; the push's figure when there are none)."""
    out: dict[int, dict] = {}
    before: dict[int, float] = {}
    for entry in history:
        acc, epoch, phase = entry.get("val_accuracy"), int(entry.get("epoch", 0)), entry.get("phase")
        if acc is None or phase == "baseline":
            continue
        if phase in ("warm", "joint"):
            before[epoch] = float(acc)
        elif phase == "push" and entry.get("val_accuracy_before_projection") is not None:
            out[epoch] = {"before": float(entry["val_accuracy_before_projection"]), "before_from": "push",
                          "projected": float(acc), "last_layer": float(acc)}
        elif phase == "push" and epoch in before:
            out[epoch] = {"before": before[epoch], "before_from": "epoch", "projected": float(acc),
                          "last_layer": float(acc)}
        elif phase == "last_layer" and epoch in out:
            out[epoch]["last_layer"] = float(acc)
    return out


def push_effect_summary(folds: Sequence[FoldFigures]) -> dict[int, dict]:
    """Over folds, at every push epoch all folds have: the accuracy change from projecting the prototypes
    (projected - before), from the last-layer epochs (last_layer - projected), both together, and the unprojected
    network against the backbone-only classifier at the same epoch (before - baseline), each as mean_sd."""
    effects = [f.push_effects for f in folds]
    if not effects or not all(effects):
        return {}
    common = set.intersection(*(set(e) for e in effects))
    summary: dict[int, dict] = {}
    for epoch in sorted(common):
        rows = [e[epoch] for e in effects]
        sources = sorted({r.get("before_from", "epoch") for r in rows})
        summary[epoch] = {
            "before_from": sources[0] if len(sources) == 1 else "mixed",
            "projection": mean_sd([r["projected"] - r["before"] for r in rows]),
            "last_layer_epochs": mean_sd([r["last_layer"] - r["projected"] for r in rows]),
            "both": mean_sd([r["last_layer"] - r["before"] for r in rows]),
        }
        if all(epoch in f.baseline_by_epoch and not f.baseline_initialises_dprotonet for f in folds):
            summary[epoch]["unprojected_minus_baseline"] = mean_sd(
                [e[epoch]["before"] - f.baseline_by_epoch[epoch] for e, f in zip(effects, folds)])
    return summary


def mean_sd(values: Sequence[float]) -> dict:
    """{"mean", "sd" (sample, n - 1), "min", "max", "n"} of a list of figures."""
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def summarise(folds: Sequence[FoldFigures]) -> dict:
    """Mean and spread over folds: of the selected states' figures, and of the accuracy at each epoch reached
    by every fold (the best such epoch is the recipe's epoch count, by the mean over folds)."""
    summary: dict = {"folds": len(folds)}
    for model in ("dprotonet", "baseline"):
        runs = [getattr(f, model) for f in folds if getattr(f, model)]
        if not runs:
            continue
        selected = {name: mean_sd([r[name] for r in runs]) for name in ("accuracy", "sensitivity", "specificity")
                    if all(r.get(name) is not None for r in runs)}
        curves = [getattr(f, f"{model}_by_epoch") for f in folds]
        common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        per_epoch = {epoch: mean_sd([c[epoch] for c in curves]) for epoch in common}
        best = max(per_epoch, key=lambda e: (per_epoch[e]["mean"], e)) if per_epoch else None
        summary[model] = {"selected_in_fold": selected, "accuracy_by_epoch": per_epoch, "best_fixed_epoch": best,
                          "at_best_fixed_epoch": per_epoch.get(best)}
    last = [f.dprotonet_last for f in folds]
    if "dprotonet" in summary and last and all(last):
        summary["dprotonet"]["at_last_epoch"] = {
            name: mean_sd([r[name] for r in last]) for name in ("accuracy", "sensitivity", "specificity")
            if all(r.get(name) is not None for r in last)}
    if "dprotonet" in summary and "baseline" in summary:
        d = summary["dprotonet"]["selected_in_fold"].get("accuracy", {}).get("mean")
        b = summary["baseline"]["selected_in_fold"].get("accuracy", {}).get("mean")
        if d is not None and b is not None:
            summary["dprotonet_minus_baseline_accuracy"] = d - b
        paired = paired_difference(folds)
        if paired:
            summary["dprotonet_minus_baseline_by_epoch"] = paired
            summary["dprotonet_minus_baseline_at_last_epoch"] = paired[max(paired)]
    if folds and all(f.baseline_initialises_dprotonet and f.dprotonet_last and f.baseline for f in folds):
        summary["dprotonet_last_minus_baseline"] = {
            name: mean_sd([f.dprotonet_last[name] - f.baseline[name] for f in folds])
            for name in ("accuracy", "sensitivity", "specificity")
            if all(f.dprotonet_last.get(name) is not None and f.baseline.get(name) is not None for f in folds)}
    effects = push_effect_summary(folds)
    if effects:
        summary["push_effects"] = effects
    return summary


def paired_difference(folds: Sequence[FoldFigures]) -> dict[int, dict]:
    """DProtoNet's fold accuracy minus its backbone's at the same epoch of the same fold, mean and spread over
    folds, for every epoch both curves reach in every fold. The like-for-like comparison: the selected-in-fold
    figures are not, because the baseline picks the best of every epoch and DProtoNet only of its projected states
    (one per push), so the baseline's is the more optimistic by construction."""
    if not folds or any(not f.baseline_by_epoch or not f.dprotonet_by_epoch or f.baseline_initialises_dprotonet
                        for f in folds):
        return {}
    common = set.intersection(*(set(f.dprotonet_by_epoch) & set(f.baseline_by_epoch) for f in folds))
    return {e: mean_sd([f.dprotonet_by_epoch[e] - f.baseline_by_epoch[e] for f in folds]) for e in sorted(common)}


def run_folds(
    n_items: int,
    keys: Sequence,
    k: int,
    seed: int,
    out: Path,
    train_fold: Callable[[int, list[int], list[int], Path], FoldFigures],
    only: Sequence[int] | None = None,
) -> dict:
    """Train fold after fold (`train_fold(fold, train_indices, val_indices, folder)`), each result kept as
    out/fold-<k>/figures.json so a long cross-validation can be split over several runs (`only`: these folds
    now; folds already stored are not retrained). Returns the summary over every stored fold."""
    if len(keys) != n_items:
        raise ValueError("one stratification key per item")
    folds = stratified_folds(keys, k, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "folds.json").write_text(json.dumps({"k": k, "seed": seed, "folds": folds}))
    for fold in range(k) if only is None else only:
        path = out / f"fold-{fold}" / "figures.json"
        if path.is_file():
            continue
        val = folds[fold]
        train = sorted(i for f in range(k) if f != fold for i in folds[f])
        figures = train_fold(fold, train, val, out / f"fold-{fold}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures.__dict__, indent=1))
    stored = [load_figures(p) for p in sorted(out.glob("fold-*/figures.json"))]
    summary = {**summarise(stored), "k": k, "seed": seed, "folds_done": [f.fold for f in stored],
               "fold_seconds": [f.seconds for f in stored]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def fill_missing(out: Path, k: int, field: str, measure: Callable[[Path, list[int]], object | None]) -> list[int]:
    """Fill `field` into stored folds that lack it (runs made before it was recorded), from
    `measure(fold folder, validation indices)` (None: what it needs is not on disk). Returns the folds filled."""
    folds_file = Path(out) / "folds.json"
    if not folds_file.is_file():
        return []
    folds = json.loads(folds_file.read_text())["folds"]
    filled = []
    for fold in range(min(k, len(folds))):
        path = Path(out) / f"fold-{fold}" / "figures.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        if data.get(field):
            continue
        figures = measure(path.parent, folds[fold])
        if figures is not None:
            path.write_text(json.dumps({**data, field: figures}, indent=1))
            filled.append(fold)
    return filled


def load_figures(path: Path) -> FoldFigures:
    data = json.loads(Path(path).read_text())
    for name in ("dprotonet_by_epoch", "baseline_by_epoch"):
        data[name] = {int(e): float(a) for e, a in data[name].items()}
    if data.get("push_effects"):
        data["push_effects"] = {int(e): v for e, v in data["push_effects"].items()}
    return FoldFigures(**data)


RECIPE_FIELDS = ("dataset", "backbone", "input_size", "epochs", "batch_size", "views", "seed", "backbone_weights",
                 "lr_backbone", "class_weights", "select_on", "distinct_sources", "backbone_pretraining",
                 "pretrain_epochs")


def card_record(folder: Path, plan: dict) -> dict:
    """The card's "cross_validation" entry from a stored run (out/summary.json, out/folds.json): folds, seed,
    the folds done, both models' mean and spread, the best fixed epoch. Refuses a run whose recipe is not
    `plan`'s (a DemoPlan as a dict), or one with folds missing: the figures would describe another model."""
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text())
    ran = summary.get("plan", {})
    differ = [f for f in RECIPE_FIELDS if ran.get(f) != plan.get(f)
              and not (f == "pretrain_epochs" and plan.get("backbone_pretraining") is None)]  # unused then
    if differ:
        raise ValueError(f"{folder}: the cross-validated recipe differs from the plan in {', '.join(differ)}")
    if sorted(summary.get("folds_done", [])) != list(range(summary["k"])):
        raise ValueError(f"{folder}: folds {summary.get('folds_done')} of {summary['k']} done; finish the run first")
    folds = json.loads((folder / "folds.json").read_text())["folds"]
    record = {"k": summary["k"], "seed": summary["seed"], "images": sum(len(f) for f in folds),
              "stratified_by": summary.get("stratified_by"),
              "recipe": {f: ran.get(f) for f in RECIPE_FIELDS},
              "note": "each fold's model selected on that fold (optimistic by that selection); the fixed-epoch "
                      "figure, the same epoch for every fold, is the recipe's"}
    for model in ("dprotonet", "baseline"):
        if model in summary:
            record[model] = {"selected_in_fold": summary[model]["selected_in_fold"],
                             "best_fixed_epoch": summary[model]["best_fixed_epoch"],
                             "at_best_fixed_epoch": summary[model]["at_best_fixed_epoch"]}
            if "at_last_epoch" in summary[model]:
                record[model]["at_last_epoch"] = summary[model]["at_last_epoch"]
            by_epoch_curve = summary[model].get("accuracy_by_epoch", {})
            if by_epoch_curve:
                record[model]["accuracy_at_last_epoch"] = by_epoch_curve[max(by_epoch_curve, key=int)]
    if summary.get("fold_seconds") is not None:
        record["fold_seconds"] = summary["fold_seconds"]  # each fold's run (a resumed fold: from its resumption)
    for name in ("dprotonet_minus_baseline_accuracy", "dprotonet_minus_baseline_at_last_epoch",
                 "dprotonet_last_minus_baseline", "push_effects"):
        if name in summary:
            record[name] = summary[name]
    calibration = out_of_fold_calibration(folder, summary["k"])
    record["out_of_fold_calibration"] = calibration or {
        "status": "not measured: this run stored no out-of-fold predictions (cross-validate records them since "
                  "issue 27; rerun it)"}
    return record


def out_of_fold_calibration(folder: Path, k: int) -> dict | None:
    """Calibration of the recipe from its out-of-fold predictions (each fold's last-epoch model on the fold it did
    not train on; fold-*/figures.json dprotonet_last.out_of_fold): the ECE of the softmax of eq. 3 as it is, the ECE
    after Platt scaling measured by cross-fitting (for each fold, a calibrator fitted on the other folds' images,
    applied to this fold's), and the calibrator fitted on all of them (what a model trained on every image gets).
    None when a fold lacks the predictions."""
    from dprotonet_core.calibration import calibrated_probability, calibration_figures, fit_platt

    per_fold = []
    for fold in range(k):
        path = Path(folder) / f"fold-{fold}" / "figures.json"
        oof = (json.loads(path.read_text()).get("dprotonet_last") or {}).get("out_of_fold") if path.is_file() else None
        if not oof:
            return None
        per_fold.append((np.asarray(oof["margins"], float), np.asarray(oof["labels"], int)))
    margins = np.concatenate([m for m, _ in per_fold])
    labels = np.concatenate([y for _, y in per_fold])
    crossed = []
    for held in range(k):
        rest_m = np.concatenate([m for i, (m, _) in enumerate(per_fold) if i != held])
        rest_y = np.concatenate([y for i, (_, y) in enumerate(per_fold) if i != held])
        crossed.append(calibrated_probability(per_fold[held][0], fit_platt(rest_m, rest_y)))
    where = f"{labels.size} out-of-fold predictions of the {k}-fold cross-validation of the same recipe"
    record = fit_platt(margins, labels, where)
    record["softmax_as_is"] = calibration_figures(calibrated_probability(margins, None), labels)
    record["platt_cross_fitted"] = calibration_figures(np.concatenate(crossed), labels)
    return record
