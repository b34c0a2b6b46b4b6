"""The last-layer phase solved until its loss has settled (ProtoPNet's last-layer-only optimisation, done to the end).

After a prototype update f_b, f_a and the prototypes P are fixed, so the activations g_pj(x) (eq. 2) of every
training image are constants and eq. 4 restricted to f_h is

    L(W) = CrsEnt(g W^T, y) + lambda_3 l_wh(W)            (eq. 3, 4 and 7; Clst and Sep do not depend on W)

a convex problem in the last layer's weights W (C x K). It is solved here on the activations of the
un-augmented training images, computed once, full-batch, until the loss changes by less than a relative `tol`
over `window` steps; the loss curve goes into the training log.

Why (DEVIATION, config.TrainConfig.last_layer_fit): the shipped RSNA model's last layer after five last-layer
epochs at the paper's lr 1e-4 was still its initialisation (weights 0.99 / -0.51 against 1 / -0.5; off-class L1
10.0 -> 9.95): 5 epochs x 23 batches x 1e-4 cannot move Adam's weights by more than ~0.01. Its softmax was
saturated and only its ranking meant anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from dprotonet_core.config import LossConfig, TrainConfig
from dprotonet_core.model.dprotonet import DProtoNet, class_logits
from dprotonet_core.train.losses import last_layer_l1


@torch.no_grad()
def prototype_activations(model: DProtoNet, dataset: Dataset, batch_size: int,
                          device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(g (N, K) of eq. 2, labels (N,)) over an un-augmented dataset, the network in eval mode (restored)."""
    was = model.training
    model.eval()
    acts, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        acts.append(model(x.to(device)).activations.float().cpu())
        labels.append(torch.as_tensor(y))
    model.train(was)
    return torch.cat(acts), torch.cat(labels).long()


def last_layer_objective(activations: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                         prototype_identity: torch.Tensor, loss_config: LossConfig,
                         sample_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(L(W), its cross-entropy part): eq. 4 over f_h with fixed activations; the cross-entropy is the mean over
    images weighted by `sample_weights` (the sampler's draw probabilities, so the fit sees the data as the epochs
    did) and by the loss config's class weights."""
    logits = class_logits(activations, weight)
    per_image = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    w = torch.ones_like(per_image) if sample_weights is None else sample_weights.float()
    if loss_config.class_weights is not None:
        w = w * torch.as_tensor(loss_config.class_weights, dtype=torch.float32)[labels]
    ce = (per_image * w).sum() / w.sum()
    return ce + loss_config.lambda_l1 * last_layer_l1(weight, prototype_identity), ce


def fit_last_layer(model: DProtoNet, activations: torch.Tensor, labels: torch.Tensor, loss_config: LossConfig,
                   cfg: TrainConfig, sample_weights: Sequence[float] | None = None) -> dict:
    """Minimise last_layer_objective over W with Adam (lr cfg.lr_last_layer_fit), full batch, until the loss
    changed by less than cfg.last_layer_tol (relative) over cfg.last_layer_window steps or
    cfg.last_layer_max_steps ran. Writes W into the model; returns the record the training log keeps (steps, the
    loss curve every `last_layer_window` steps, converged or not)."""
    identity = model.prototype_class_identity.detach().float().cpu()
    weights = None if sample_weights is None else torch.as_tensor(list(sample_weights), dtype=torch.float32)
    w = model.last_layer.weight.detach().float().cpu().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([w], lr=cfg.lr_last_layer_fit)
    history: list[float] = []
    curve: list[list[float]] = []
    converged = False
    for step in range(cfg.last_layer_max_steps):
        loss, ce = last_layer_objective(activations, labels, w, identity, loss_config, weights)
        loss_value, ce_value = float(loss.detach()), float(ce.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(loss_value)
        if step % cfg.last_layer_window == 0:
            curve.append([step, round(loss_value, 6), round(ce_value, 6)])
        if len(history) > cfg.last_layer_window:
            before = history[-1 - cfg.last_layer_window]
            if abs(before - history[-1]) <= cfg.last_layer_tol * max(abs(before), 1e-12):
                converged = True
                break
    final, final_ce = last_layer_objective(activations, labels, w.detach(), identity, loss_config, weights)
    curve.append([len(history), round(float(final), 6), round(float(final_ce), 6)])
    with torch.no_grad():
        model.last_layer.weight.copy_(w.detach().to(model.last_layer.weight))
    return {"loss": float(final), "cross_entropy": float(final_ce), "l1": float(last_layer_l1(w.detach(), identity)),
            "fit_steps": len(history), "converged": converged, "loss_curve": curve,
            "train_accuracy": float((class_logits(activations, w.detach()).argmax(1) == labels).float().mean())}
