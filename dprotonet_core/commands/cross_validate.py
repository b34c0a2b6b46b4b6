"""`cross-validate`: K-fold cross-validation of a demo plan's recipe, DProtoNet and its backbone on the same folds.

    python -m dprotonet_core cross-validate --plan ichallenge-pm --data ../shared/data/palm-training400-224 \\
        --folds 5 --out runs/cv-palm [--only 0 1] [--epochs 40] [--threads 2]

The folds cover every image of the data folder (for PALM: the 400 training photographs; nothing here is a test
split), stratified by class and, for PALM, by the file's letter (P pathologic myopia, N normal, H high myopia).
Each fold trains the plan's recipe (make-demo's DemoPlan, the same configs and augmentation) on the other folds
and is measured on its own: train/cross_validation.py says what the figures mean. Folds already stored under
--out are kept, so a 5-fold run can be split over sessions with --only; the summary covers the folds stored. A fold
cut short (the process stopped) resumes where its DProtoNet run's last finished step left off (train/resume.py);
the backbone-only baseline, trained after it, starts again.

With --backbone-pretraining same-images (the stacked recipe) each fold first trains f_b as a plain classifier on
its training images (kept on disk, reused by a resumed fold); that classifier after its last epoch is the fold's
baseline, and DProtoNet starts from its f_b. The comparison is then of the two final states on the fold.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from dprotonet_core.commands.make_demo import SHARED, palm_plan, plan_configs, same_images_pretraining


def register(subparsers) -> None:
    p = subparsers.add_parser("cross-validate", help="K-fold cross-validation of a demo plan's recipe")
    p.add_argument("--plan", default="ichallenge-pm", choices=("ichallenge-pm",),
                   help="the demo plan whose recipe is validated")
    p.add_argument("--data", type=Path, default=SHARED / "palm-training400-224")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", type=int, nargs="+", help="train only these folds now (0-based)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, help="override the plan's epochs")
    p.add_argument("--views", type=int, help="override R")
    p.add_argument("--backbone", help="override the backbone (smoke runs)")
    p.add_argument("--input-size", type=int, help="override the input size (smoke runs)")
    p.add_argument("--backbone-pretraining", choices=("same-images", "none"),
                   help="override the plan's: same-images trains f_b as a plain classifier on the fold's training "
                   "images first (that classifier is then the fold's baseline) and starts DProtoNet from it; none "
                   "starts DProtoNet from the plan's backbone weights (random ones for PALM) and trains the "
                   "backbone-only baseline alongside for the same epochs")
    p.add_argument("--pretrain-epochs", type=int, help="override the plan's epochs of that first stage")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-baseline", action="store_true", help="DProtoNet only")
    p.set_defaults(func=run)


def palm_stratum(item_id: str) -> str:
    """PALM's file names start with the group: P (pathologic myopia), N (normal), H (high myopia)."""
    return item_id[:1].upper()


def run(args: argparse.Namespace) -> int:
    from dprotonet_core.checkpoint import load_checkpoint
    from dprotonet_core.data.registry import load_dataset
    from dprotonet_core.evaluate.held_out import held_out_metrics
    from dprotonet_core.train.cross_validation import FoldFigures, by_epoch, fill_missing, push_effects, run_folds
    from dprotonet_core.train.data import SubsetView
    from dprotonet_core.train.loop import TrainOptions, train
    from dprotonet_core.train.pretrain import train_classifier
    from dprotonet_core.train.resume import read_state

    torch.set_num_threads(args.threads)
    overrides = {"epochs": args.epochs, "views": args.views, "backbone": args.backbone, "input_size": args.input_size,
                 "backbone_pretraining": args.backbone_pretraining, "pretrain_epochs": args.pretrain_epochs}
    plan = dataclasses.replace(palm_plan(), **{k: v for k, v in overrides.items() if v is not None})
    if plan.backbone_pretraining == "none":
        plan = dataclasses.replace(plan, backbone_pretraining=None)
    # the stacked recipe's baseline is its first stage (trained anyway); the loop's own baseline would be another
    plan = dataclasses.replace(plan, baseline=not args.no_baseline and plan.backbone_pretraining is None)
    stacked = plan.backbone_pretraining == "same-images"
    data = load_dataset(plan.dataset, args.data, "all", plan.input_size, transform=None)
    for i in range(len(data)):  # decode once: every fold reads the same pixels
        data[i]
    keys = [f"{item.label}|{palm_stratum(item.id)}" for item in data.items]

    def last_state(folder: Path, val_idx: list[int]) -> dict | None:
        """The fold's figures of DProtoNet after its run's last step (resume/last), None when not on disk; with the
        out-of-fold logit differences of eq. 3 per image (what a calibrator of the recipe is fitted on)."""
        from dprotonet_core.calibration import dataset_margins

        last = folder / "resume" / "last"
        if not (last / "card.json").is_file():
            return None
        model = load_checkpoint(last).model
        view = SubsetView(data, val_idx, labels=data.labels, ids=data.ids)
        figures = held_out_metrics(model, view)
        margins, labels = dataset_margins(model, view)
        figures["out_of_fold"] = {"ids": list(view.ids), "labels": labels.tolist(),
                                  "margins": [round(float(m), 6) for m in margins]}
        return figures

    def train_fold(fold: int, train_idx: list[int], val_idx: list[int], folder: Path) -> FoldFigures:
        t0 = time.perf_counter()
        train_view = SubsetView(data, train_idx, labels=data.labels, ids=data.ids)
        val_view = SubsetView(data, val_idx, labels=data.labels, ids=data.ids)
        model_cfg, train_cfg, loss_cfg, augment = plan_configs(plan, data.classes, train_view.labels)
        first = first_stage(folder, train_view, val_view, augment) if stacked else None
        saved = read_state(folder)
        if saved is not None:
            print(json.dumps({"fold": fold, "resumed_at_step": saved[0]["next_step"]}), flush=True)
        options = TrainOptions(classes=data.classes, augment=augment, threads=args.threads, baseline=plan.baseline,
                               progress=False, command_line=f"cross-validate fold {fold} of {args.folds}",
                               resume=saved is not None, backbone_weights=None if first is None else str(first[0]))
        result = train(train_view, folder, model_cfg, train_cfg, loss_cfg, options, val_dataset=val_view)
        selected = held_out_metrics(load_checkpoint(folder).model, val_view)
        selected["selected_epoch"] = result.selected.get("epoch")
        baseline = baseline_by_epoch = None
        if first is not None:
            baseline, baseline_by_epoch = first[1], first[2]
        elif result.baseline_model is not None:
            baseline = held_out_metrics(result.baseline_model.cpu(), val_view)
        log = _read_log(folder / "train_log.jsonl")
        figures = FoldFigures(fold=fold, train_images=len(train_idx), val_images=len(val_idx), dprotonet=selected,
                              baseline=baseline, dprotonet_by_epoch=by_epoch(log),
                              baseline_by_epoch=baseline_by_epoch or by_epoch(log, "baseline"),
                              seconds=round(time.perf_counter() - t0, 1),
                              resumed_at_step=None if saved is None else saved[0]["next_step"],
                              dprotonet_last=last_state(folder, val_idx), push_effects=push_effects(log),
                              baseline_initialises_dprotonet=stacked)
        print(json.dumps({"fold": fold, "dprotonet_accuracy": selected.get("accuracy"),
                          "baseline_accuracy": None if baseline is None else baseline.get("accuracy"),
                          "seconds": figures.seconds}), flush=True)
        return figures

    def first_stage(folder: Path, train_view, val_view, augment) -> tuple[Path, dict, dict[int, float]]:
        """The stacked recipe's first stage on this fold: f_b + GAP + linear trained on the fold's training images
        (make_demo.same_images_pretraining), its last epoch kept and measured on the fold (the baseline); its f_b
        written to folder/backbone.safetensors for DProtoNet to start from. Kept on disk: a resumed fold reuses it."""
        weights = folder / "backbone.safetensors"
        record_file = Path(str(weights) + ".json")
        if weights.is_file() and record_file.is_file():
            report = json.loads(record_file.read_text())
            if report.get("fold_figures"):
                return weights, report["fold_figures"], {h["epoch"]: h["val_accuracy"] for h in report["history"]}
        net, report = train_classifier(train_view, val_view, same_images_pretraining(plan), augment, weights,
                                       record={"first_stage_of": "cross-validate, backbone_pretraining same-images"},
                                       progress=False)
        figures = held_out_metrics(net, val_view)
        figures["selected_epoch"] = plan.pretrain_epochs  # the last: no selection
        record_file.write_text(json.dumps({**report, "fold_figures": figures}, indent=2) + "\n")
        print(json.dumps({"first_stage_accuracy": figures.get("accuracy"), "seconds": report["seconds"]}), flush=True)
        return weights, figures, {h["epoch"]: h["val_accuracy"] for h in report["history"]}

    def logged_push_effects(folder: Path, _val_idx: list[int]) -> dict | None:
        log = folder / "train_log.jsonl"
        if not log.is_file():
            return None
        return push_effects(_read_log(log)) or None

    for field, measure in (("dprotonet_last", last_state), ("push_effects", logged_push_effects)):
        filled = fill_missing(args.out, args.folds, field, measure)  # folds stored before the field was recorded
        if filled:
            print(json.dumps({"filled": field, "folds": filled}), flush=True)
    summary = run_folds(len(data), keys, args.folds, args.seed, args.out, train_fold, args.only)
    summary["plan"] = dataclasses.asdict(plan)
    summary["stratified_by"] = "class and the file's letter (P pathologic myopia, N normal, H high myopia)"
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("folds_done", "k") if k in summary}), flush=True)
    for model in ("dprotonet", "baseline"):
        if model in summary:
            acc = summary[model]["selected_in_fold"].get("accuracy")
            if acc and model == "baseline" and stacked:
                print(f"baseline (the classifier DProtoNet starts from, after its last epoch): accuracy "
                      f"{acc['mean']:.4f} +- {acc['sd']:.4f} over {acc['n']} folds", flush=True)
            elif acc:
                print(f"{model}: accuracy {acc['mean']:.4f} +- {acc['sd']:.4f} over {acc['n']} folds "
                      f"(selected in each fold's run); best fixed epoch {summary[model]['best_fixed_epoch']}",
                      flush=True)
    for name, fig in summary.get("dprotonet_last_minus_baseline", {}).items():
        print(f"DProtoNet after its last epoch minus the classifier it started from: {name} {fig['mean']:+.4f} "
              f"+- {fig['sd']:.4f} (min {fig['min']:+.4f})", flush=True)
    for name, fig in summary.get("dprotonet", {}).get("at_last_epoch", {}).items():
        print(f"dprotonet after the last epoch: {name} {fig['mean']:.4f} +- {fig['sd']:.4f} over {fig['n']} folds",
              flush=True)
    for epoch, effect in summary.get("push_effects", {}).items():
        parts = [f"{name.replace('_', ' ')} {fig['mean']:+.4f} +- {fig['sd']:.4f}" for name, fig in effect.items()
                 if isinstance(fig, dict)]
        print(f"prototype update at epoch {epoch} (before: from the {effect['before_from']}): " + "; ".join(parts),
              flush=True)
    paired = summary.get("dprotonet_minus_baseline_by_epoch", {})
    for epoch, diff in paired.items():
        print(f"DProtoNet minus backbone at epoch {epoch} of the same fold: {diff['mean']:+.4f} +- {diff['sd']:.4f} "
              f"(min {diff['min']:+.4f}, max {diff['max']:+.4f})", flush=True)
    return 0


def _read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]
