"""`pretrain-backbone`: initialise a chest backbone on Kermany's pediatric radiographs (normal vs pneumonia).

    python -m dprotonet_core pretrain-backbone --data ../shared/data/kermany-chest-224 \\
        --out assets/backbones/chest-small_resnet-kermany.safetensors

Writes f_b's weights (safetensors) and, beside them, a JSON record of the recipe, split and figures. Train a
DProtoNet from them with `train --backbone-weights <file>` (make-demo does this for the RSNA checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DEFAULT_OUT = Path("assets/backbones/chest-small_resnet-kermany.safetensors")


def register(subparsers) -> None:
    from dprotonet_core.train.pretrain import PretrainConfig

    d = PretrainConfig()
    p = subparsers.add_parser("pretrain-backbone", help="pretrain a chest backbone on Kermany's radiographs")
    p.add_argument("--data", type=Path, default=SHARED / "kermany-chest-224", help="the kermany-chest-224 folder")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="safetensors file to write")
    p.add_argument("--backbone", default=d.backbone)
    p.add_argument("--input-size", type=int, default=d.input_size)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--limit", type=int, help="use only the first N training films (smoke runs)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dprotonet_core.data.kermany import CREDIT, load_kermany
    from dprotonet_core.data.transforms import train_transform
    from dprotonet_core.train.pretrain import PretrainConfig, pretrain_backbone

    torch.set_num_threads(args.threads)
    cfg = PretrainConfig(backbone=args.backbone, input_size=args.input_size, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    split = {"val_fraction": 0.1, "seed": args.seed, "transform": None}
    train_ds = load_kermany(args.data, "train", args.input_size, **split)
    val_ds = load_kermany(args.data, "val", args.input_size, **split)
    if args.limit:
        train_ds.items = train_ds.items[: args.limit]
        val_ds.items = val_ds.items[: max(args.limit // 4, 8)]
    for dataset in (train_ds, val_ds):  # decode each film once
        for i in range(len(dataset)):
            dataset.image(i)
    record = {"data": "kermany-chest-224", "credit": CREDIT,
              "split": "patient-grouped, stratified by label: 10% validation, seed " + str(args.seed),
              "command_line": "python -m dprotonet_core " + shlex.join(sys.argv[1:])}
    report = pretrain_backbone(train_ds, val_ds, dataclasses.replace(cfg), train_transform(args.input_size,
                               hflip=False), args.out, record, progress=not args.no_progress)
    print(f"wrote {args.out} (val AUC {report['val_auc']}, {report['seconds']} s)", flush=True)
    return 0
