"""`project`: re-run multi-image prototype learning (eq. 9-11) on a checkpoint, write a new one."""

from __future__ import annotations

import argparse
import json
import shlex
import sys


def register(subparsers) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "project", help="re-run the prototype update (eq. 9-11) on a checkpoint",
        description="Project every prototype onto its nearest training image of its class, averaged over R "
        "augmented views (eq. 11), and write a new checkpoint. The last layer is kept as it is.",
    )
    from dprotonet_core.commands._data import add_data_arguments

    p.add_argument("--checkpoint", required=True, metavar="DIR")
    add_data_arguments(p)
    p.add_argument("--views", type=int, default=None, metavar="R", help="default: the TrainConfig value")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from dprotonet_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from dprotonet_core.commands._data import augmentation, data_root, load_splits
    from dprotonet_core.config import TrainConfig
    from dprotonet_core.train.epochs import accuracy
    from dprotonet_core.train.projection import project_prototypes, prototype_records

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ckpt = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        print(f"error: checkpoint {args.checkpoint}: {exc}", file=sys.stderr)
        return 1
    card, model = ckpt.card, ckpt.model
    split = card.get("training_data", {}).get("split", {})
    seed = int(split.get("seed", card.get("seed", 0)))
    val_fraction = float(split.get("val_fraction", TrainConfig().val_fraction))
    size = model.config.input_size
    train_ds, val_ds = load_splits(args.dataset, data_root(args.data), size, val_fraction, seed)
    if list(train_ds.classes) != ckpt.classes:
        print(f"error: the data's classes {train_ds.classes} differ from the checkpoint's {ckpt.classes}",
              file=sys.stderr)
        return 1
    views = args.views or TrainConfig().projection_views
    result = project_prototypes(model, train_ds, views=views, augment=augmentation(args.dataset, size, seed),
                                batch_size=args.batch_size, generator_seed=seed)
    records = prototype_records(result, ckpt.classes, model.prototype_classes().tolist())
    metrics = dict(card.get("metrics", {}))
    if val_ds is not None:
        metrics["val_accuracy_before_projection"] = metrics.get("val_accuracy")
        metrics["val_accuracy"] = accuracy(model, val_ds, args.batch_size, torch.device("cpu"))
    projection = {"views": views, "augmented": True, "reprojected_from": args.checkpoint}
    card = dict(card, metrics=metrics, projection=projection,
                command_line="python -m dprotonet_core " + shlex.join(sys.argv[1:]))
    save_checkpoint(model, args.out, card, records, result.images, dtype=card.get("dtype", "float32"))
    print(json.dumps({"checkpoint": args.out, "views": views, "val_accuracy": metrics.get("val_accuracy"),
                      "distance_before": [round(d, 4) for d in result.distances]}))
    return 0
