"""One epoch of DProtoNet training and the evaluations the trainer runs between epochs.

forward -> eq. 4 (losses.py) per batch under the phase's trainable parts (phases.py); batch-norm statistics
recalibrated after a prototype update; validation accuracy and ROC AUC for model selection.
"""

from __future__ import annotations

import sys

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dprotonet_core.config import LossConfig
from dprotonet_core.model.dprotonet import (
    DProtoNet,
    class_logits,
    feature_vectors,
    prototype_activation,
    similarity_score,
)
from dprotonet_core.train.losses import total_loss
from dprotonet_core.train.phases import Phase


def forward(model: DProtoNet, x: torch.Tensor, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, distances s) with f_b and f_a under fp16 autocast when `amp`, and eq. 8, 1, 2, 3 in
    float32 (eq. 1's expansion and eq. 2's epsilon are not safe in half precision)."""
    with torch.autocast(x.device.type, dtype=torch.float16, enabled=amp):
        fmap = model.feature_map(x)
    z = feature_vectors(fmap.float(), model.feature_masks)
    s = similarity_score(z, model.prototypes)
    g = prototype_activation(s, model.config.epsilon)
    return class_logits(g, model.last_layer.weight), s


def _set_modes(model: DProtoNet, phase: Phase) -> None:
    """Train mode for the parts the phase trains; eval (frozen batch-norm statistics) for the rest,
    so a last-layer epoch leaves the projected prototypes' features exactly as they were."""
    model.train()
    if not phase.trains("backbone"):
        model.backbone.eval()
    if not phase.trains("shaping"):
        model.shaping.eval()


def run_epoch(
    model: DProtoNet,
    loader: DataLoader,
    phase: Phase,
    optimizer: torch.optim.Optimizer,
    loss_config: LossConfig,
    device: torch.device,
    scaler: torch.amp.GradScaler | None,
    label_smoothing: float = 0.0,
    desc: str = "",
    progress: bool = True,
) -> dict[str, float]:
    """One epoch of `phase`; returns the mean loss parts and the training accuracy."""
    phase.apply(model)
    _set_modes(model, phase)
    amp = scaler is not None
    sums: dict[str, float] = {}
    correct = seen = 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, file=sys.stderr)
    for x, y in bar:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits, s = forward(model, x, amp)
        parts = total_loss(
            logits, s, y, model.prototype_class_identity, model.last_layer.weight, loss_config, label_smoothing
        )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(parts.total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            parts.total.backward()
            optimizer.step()
        n = y.shape[0]
        for key, value in parts.as_floats().items():
            sums[key] = sums.get(key, 0.0) + value * n
        correct += int((logits.argmax(1) == y).sum())
        seen += n
        bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}", acc=f"{correct / seen:.3f}")
    out = {k: v / max(seen, 1) for k, v in sums.items()}
    out["train_accuracy"] = correct / max(seen, 1)
    return out


@torch.no_grad()
def recalibrate_batch_norm(model: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device) -> int:
    """Re-estimate every batch-norm layer's running mean/var as the plain average over `dataset`
    (un-augmented), weights untouched. Returns the number of layers reset (0: nothing to do).

    A backbone trained from random weights for a few epochs moves faster than the running
    statistics (momentum 0.1) follow, and in eval mode it then sees the wrong statistics.
    """
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers or len(dataset) == 0:
        return 0
    was_training = model.training
    saved = [(m, m.momentum, m.training) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
        m.train()
    for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        model(x.to(device))
    for m, momentum, training in saved:
        m.momentum = momentum
        m.train(training)
    model.train(was_training)
    return len(layers)


@torch.inference_mode()
def accuracy(model: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device) -> float | None:
    """Accuracy on an un-augmented dataset, model in eval mode (restored after); None if empty."""
    if len(dataset) == 0:
        return None
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        out = model(x.to(device))
        logits = out if torch.is_tensor(out) else out.logits
        correct += int((logits.argmax(1).cpu() == y).sum())
    model.train(was_training)
    return correct / len(dataset)


SELECTION_KEYS = {"accuracy": "val_accuracy", "auc": "val_auc", "min_view_auc": "val_min_view_auc"}
SELECTION_LABELS = {"accuracy": "validation accuracy", "auc": "validation ROC AUC",
                    "min_view_auc": "the lower of the validation ROC AUCs within AP and within PA films"}


def validation_figures(model: torch.nn.Module, dataset: Dataset, batch_size: int,
                       views: list[str | None] | None = None) -> dict:
    """ROC AUC of p(class 1) on an un-augmented two-class dataset, overall and within each view when `views`
    names them: {"val_auc", "val_auc_by_view", "val_min_view_auc"} (the last two only with views; an AUC is None
    where a subset lacks a class)."""
    from dprotonet_core.evaluate.metrics import roc_auc
    from dprotonet_core.train.pretrain import predict_scores

    if len(dataset) == 0:
        return {"val_auc": None}
    scores, labels = predict_scores(model, dataset, batch_size)
    out: dict = {"val_auc": roc_auc(labels, scores) if len(set(labels.tolist())) == 2 else None}
    if views and any(views):
        by_view = {}
        for view in sorted({v for v in views if v}):
            keep = [v == view for v in views]
            y, p = labels[keep], scores[keep]
            by_view[view] = roc_auc(y, p) if len(set(y.tolist())) == 2 else None
        out["val_auc_by_view"] = by_view
        known = [a for a in by_view.values() if a is not None]
        out["val_min_view_auc"] = min(known) if known else None
    return out
