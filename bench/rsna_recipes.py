"""Which start and learning rate for the RSNA chest backbone: the plain classifier (Table 3's f_b + GAP +
linear) on the real RSNA train split, scored on its validation split (ROC AUC of p(pneumonia)), per recipe.
The test split is never touched. Prints figures, asserts nothing.

    python -m bench.rsna_recipes [--data ../shared/data/rsna-real] [--epochs 10] [--size 224]
        [--weights assets/backbones/chest-small_resnet-kermany.safetensors]

Recipes: random initialisation (lr 1e-3) against the Kermany-pretrained backbone at two learning rates;
AdamW with a one-cycle schedule, inverse-frequency class weights, the section 4.3 augmentation without flips.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import machine_info
from dprotonet_core.commands.make_demo import RSNA_REAL, RSNA_SPLIT
from dprotonet_core.data.registry import load_dataset
from dprotonet_core.data.transforms import train_transform
from dprotonet_core.train.pretrain import PretrainConfig, pretrain_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=RSNA_REAL)
    parser.add_argument("--weights", type=Path, default=Path("assets/backbones/chest-small_resnet-kermany.safetensors"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipes", nargs="+",
                        default=["scratch:1e-3", "pretrained:3e-4", "pretrained:1e-3", "pretrained:3e-4@320"],
                        help="start:lr[@size]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_info())
    datasets: dict[int, tuple] = {}

    def splits(size: int):
        if size not in datasets:
            datasets[size] = tuple(load_dataset("rsna", args.data, s, size, transform=None, **RSNA_SPLIT)
                                   for s in ("train", "val"))
            for ds in datasets[size]:
                for i in range(len(ds)):
                    ds.image(i)
        return datasets[size]

    print(f"rsna train / val split of make-demo's plan; {args.epochs} epochs each; the test split is not read")
    rows = []
    for recipe in args.recipes:
        start, rest = recipe.split(":")
        lr, _, size = rest.partition("@")
        size = int(size or args.size)
        train_ds, val_ds = splits(size)
        cfg = PretrainConfig(input_size=size, epochs=args.epochs, batch_size=32, lr=float(lr),
                             label_smoothing=0.0)
        t0 = time.perf_counter()
        report = pretrain_backbone(train_ds, val_ds, cfg, train_transform(size, hflip=False), None,
                                   progress=False, init_weights=args.weights if start == "pretrained" else None)
        aucs = [h["val_auc"] for h in report["history"]]
        rows.append((recipe, max(aucs), aucs.index(max(aucs)) + 1, sum(aucs[-3:]) / 3, time.perf_counter() - t0))
        print(f"{recipe}: val AUC per epoch " + " ".join(f"{a:.3f}" for a in aucs), flush=True)
    print(f"{'recipe':<20} {'best val AUC':>12} {'epoch':>6} {'mean last 3':>12} {'seconds':>8}")
    for recipe, best, epoch, last3, seconds in rows:
        print(f"{recipe:<20} {best:>12.3f} {epoch:>6} {last3:>12.3f} {seconds:>8.0f}")


if __name__ == "__main__":
    main()
