"""`train`: train a DProtoNet (and optionally the backbone-only baseline) and write a checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys

from dprotonet_core.commands._data import add_data_arguments, augmentation, data_root, load_splits
from dprotonet_core.config import LossConfig, ModelConfig, TrainConfig
from dprotonet_core.data.registry import dataset_spec
from dprotonet_core.model.backbones import BACKBONES


def register(subparsers) -> None:
    defaults, model_defaults = TrainConfig(), ModelConfig()
    p: argparse.ArgumentParser = subparsers.add_parser(
        "train", help="train a DProtoNet and write a checkpoint folder",
        description="Train DProtoNet (paper section 3.1, 3.3, 4.3); model selection on a validation split of "
        "the training data. Defaults are the paper's (config.py).",
    )
    add_data_arguments(p)
    p.add_argument("--backbone", default=model_defaults.backbone, choices=sorted(BACKBONES))
    p.add_argument("--backbone-weights", metavar="PATH", help="local file of pretrained weights (never downloaded)")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="warm + joint epochs")
    p.add_argument("--input-size", type=int, default=model_defaults.input_size)
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint folder to write")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--projection-views", type=int, default=defaults.projection_views, metavar="R",
                   help="views per prototype in multi-image prototype learning (eq. 11)")
    p.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    p.add_argument("--warm-epochs", type=int, default=defaults.warm_epochs)
    p.add_argument("--push-every", type=int, default=defaults.push_every)
    p.add_argument("--last-layer-epochs", type=int, default=defaults.last_layer_epochs)
    p.add_argument("--prototypes-per-class", type=int, default=model_defaults.prototypes_per_class)
    p.add_argument("--select-on", choices=("accuracy", "auc", "min_view_auc"), default=defaults.select_on,
                   help="validation figure that selects the saved state (min_view_auc: the lower of the ROC AUCs "
                   "within AP and within PA films, which recognising the view cannot win)")
    p.add_argument("--balanced-sampling", choices=("view_label",), default=defaults.balanced_sampling,
                   help="view_label: draw every (view, label) cell equally often (the view shortcut does not pay)")
    p.add_argument("--last-layer-fit", choices=("epochs", "converged"), default=defaults.last_layer_fit,
                   help="converged: fit the last layer after each prototype update until its loss settles")
    p.add_argument("--backbone-lr", type=float, help="override the backbone learning rate")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="of the saved tensors")
    p.add_argument("--baseline", action="store_true", help="also train the backbone-only classifier (Table 3)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--stop-after", type=int, metavar="STEPS",
                   help="run at most STEPS schedule steps (epochs or pushes) now; continue later with --resume")
    p.add_argument("--synthetic", action="store_true", help="mark the checkpoint as trained on synthetic data")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dprotonet_core.train.loop import TrainOptions, train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, projection_views=args.projection_views,
        val_fraction=args.val_fraction, warm_epochs=args.warm_epochs, push_every=args.push_every,
        last_layer_epochs=args.last_layer_epochs, select_on=args.select_on, balanced_sampling=args.balanced_sampling,
        last_layer_fit=args.last_layer_fit,
    )
    if args.backbone_lr is not None:
        cfg = dataclasses.replace(cfg, lr_backbone=args.backbone_lr, lr_backbone_scratch=args.backbone_lr)
    train_ds, val_ds = load_splits(args.dataset, data_root(args.data), args.input_size, args.val_fraction, args.seed)
    model_cfg = ModelConfig(backbone=args.backbone, input_size=args.input_size, num_classes=len(train_ds.classes),
                            prototypes_per_class=args.prototypes_per_class)
    card = {
        "task": dataset_spec(args.dataset).task,
        "synthetic": bool(args.synthetic),
        "training_data": {"dataset": args.dataset, "root": data_root(args.data)},
    }
    options = TrainOptions(
        classes=train_ds.classes, augment=augmentation(args.dataset, args.input_size, args.seed),
        backbone_weights=args.backbone_weights, device=args.device, threads=args.threads, dtype=args.dtype,
        baseline=args.baseline, resume=args.resume, progress=not args.quiet, card=card,
        command_line="python -m dprotonet_core " + shlex.join(sys.argv[1:]), stop_after=args.stop_after,
    )
    result = train(train_ds, args.out, model_cfg, cfg, LossConfig(), options, val_dataset=val_ds)
    if result.checkpoint is None:
        print(json.dumps({"stopped_after_step": len(result.history), "resume_with": "--resume"}))
        return 0
    seconds = result.card["epoch_seconds"]
    summary = {
        "checkpoint": str(result.checkpoint),
        "val_accuracy": result.val_accuracy,
        "selected": {k: result.selected.get(k) for k in ("step", "epoch", "phase")},
        "seconds_per_epoch": round(sum(seconds) / max(len(seconds), 1), 2),
    }
    if result.baseline_val_accuracy is not None:
        summary["baseline_val_accuracy"] = result.baseline_val_accuracy
    print(json.dumps(summary))
    return 0
