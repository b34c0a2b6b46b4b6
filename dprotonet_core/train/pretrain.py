"""Supervised pretraining of a backbone f_b on another labelled corpus, to initialise DProtoNet's encoder.

No ImageNet weights exist offline here, so a chest backbone can start from a classifier trained on another
set of radiographs (Kermany's pediatric normal / pneumonia films) instead of random weights. What is kept
is f_b alone: the classifier's linear layer is dropped, and DProtoNet's shaping network, prototypes and
last layer start fresh. The weights go to a safetensors file (loaded with `--backbone-weights`) with a
JSON record beside it saying what produced them.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dprotonet_core.config import ModelConfig
from dprotonet_core.model.dprotonet import BackboneClassifier
from dprotonet_core.train.data import SubsetView, Transform


@dataclass(frozen=True)
class PretrainConfig:
    """The recipe of a supervised backbone pretraining (recorded beside the weights)."""

    backbone: str = "small_resnet"
    input_size: int = 224
    epochs: int = 5
    batch_size: int = 64
    lr: float = 2e-3  # peak of the one-cycle schedule (AdamW)
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    balanced_loss: bool = True  # class weights = inverse class frequency
    bf16: bool = True  # bfloat16 autocast on a CPU that supports it (AVX512-BF16): ~1.4x per step, measured
    seed: int = 0


def class_weights(labels: list[int], classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised so that a balanced set gets 1 for every class."""
    counts = np.bincount(np.asarray(labels), minlength=classes).astype(np.float64)
    weights = counts.sum() / (classes * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


def _bf16_ok(device: torch.device, wanted: bool) -> bool:
    """bf16 autocast only where bf16 is native (explain.mdm.fast_bf16): emulated on an AVX2 CPU it is slower."""
    from dprotonet_core.explain.mdm import fast_bf16

    return wanted and device.type == "cpu" and fast_bf16("cpu")


@torch.inference_mode()
def predict_scores(model: torch.nn.Module, dataset: Dataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(p(class 1), labels) over an un-augmented dataset; `model` returns logits or an output with .logits."""
    was = model.training
    model.eval()
    scores, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        out = model(x)
        logits = out if torch.is_tensor(out) else out.logits
        scores.append(torch.softmax(logits.float(), 1)[:, 1].numpy())
        labels.append(np.asarray(y))
    model.train(was)
    return np.concatenate(scores), np.concatenate(labels)


def pretrain_backbone(train_ds: Dataset, val_ds: Dataset | None, cfg: PretrainConfig, augment: Transform,
                      out_file: Path | None, record: dict | None = None, progress: bool = True,
                      init_weights: str | Path | None = None) -> dict:
    """Train f_b + GAP + linear on (train_ds, augmented), keep the last epoch's weights, and
    write f_b's weights to `out_file` (safetensors) and the recipe and figures to `out_file` + ".json"
    (`out_file` None: only the report is returned). `init_weights`: a local backbone file to start from."""
    _net, report = train_classifier(train_ds, val_ds, cfg, augment, out_file, record, progress, init_weights)
    return report


def train_classifier(train_ds: Dataset, val_ds: Dataset | None, cfg: PretrainConfig, augment: Transform,
                     out_file: Path | None, record: dict | None = None, progress: bool = True,
                     init_weights: str | Path | None = None) -> tuple[BackboneClassifier, dict]:
    """pretrain_backbone's training, returning the whole classifier (f_b, GAP, linear) in eval mode at its last
    epoch as well as the report: the plain-backbone figures of a recipe that initialises DProtoNet from it."""
    from safetensors.torch import save_file

    from dprotonet_core.evaluate.metrics import roc_auc

    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    device = torch.device("cpu")
    labels = list(train_ds.labels)
    net = BackboneClassifier(ModelConfig(backbone=cfg.backbone, input_size=cfg.input_size, num_classes=2),
                             None if init_weights is None else str(init_weights))
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_view = SubsetView(train_ds, range(len(train_ds)), augment)
    steps_per_epoch = math.ceil(len(train_view) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, epochs=cfg.epochs,
                                                    steps_per_epoch=steps_per_epoch, pct_start=0.2)
    weight = class_weights(labels, 2) if cfg.balanced_loss else None
    bf16 = _bf16_ok(device, cfg.bf16)
    history, best, best_state = [], None, None
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        net.train()
        loader = DataLoader(train_view, batch_size=cfg.batch_size, shuffle=True,
                            drop_last=len(train_view) > cfg.batch_size,  # a tiny set still trains
                            generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        total = seen = 0.0
        for x, y in tqdm(loader, desc=f"pretrain {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress,
                         file=sys.stderr):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = net(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y, weight=weight,
                                                     label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(y)
            seen += len(y)
        entry = {"epoch": epoch + 1, "train_loss": total / max(seen, 1), "seconds": round(time.perf_counter() - t0, 1)}
        if val_ds is not None and len(val_ds):
            scores, y_val = predict_scores(net, val_ds)
            entry["val_auc"] = roc_auc(y_val, scores)
            entry["val_accuracy"] = float(((scores >= 0.5) == y_val).mean())
        history.append(entry)
        print(json.dumps(entry), file=sys.stderr, flush=True)
        # The last epoch is kept (the one-cycle schedule has annealed there): on the pretraining corpus the
        # validation AUC saturates near 1 within an epoch, so it cannot tell which features transfer best.
        best = entry
        best_state = {k: v.detach().clone().contiguous() for k, v in net.backbone.state_dict().items()}
    report = {
        "backbone": cfg.backbone,
        "recipe": asdict(cfg),
        "augmentation": "the training augmentation of section 4.3 (rotation, perspective, shear, elastic; no flip)",
        "train_images": len(train_ds),
        "val_images": len(val_ds) if val_ds is not None else 0,
        "selected_epoch": best["epoch"] if best else None,
        "selected_on": "the last epoch (validation ROC AUC, patient-grouped split, reported per epoch)",
        "val_auc": best.get("val_auc") if best else None,
        "history": history,
        "bf16_autocast": bf16,
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - t_start, 1),
        "torch": torch.__version__,
        "initialised_from": Path(init_weights).name if init_weights else "random initialisation",
        **(record or {}),
    }
    if out_file is not None:
        out_file = Path(out_file)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        save_file(best_state, str(out_file), metadata={"backbone": cfg.backbone, "format": "dprotonet backbone f_b"})
        Path(str(out_file) + ".json").write_text(json.dumps(report, indent=2) + "\n")
    return net.eval(), report
