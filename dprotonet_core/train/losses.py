"""The training objective of DProtoNet (paper section 3.1, eq. 4-7), one function per term.

All terms take the quantities a forward pass already returns (`DProtoNetOutput`): the
distances s (B, n, K) between every feature vector z_i and every prototype P_j, so no
term recomputes the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dprotonet_core.config import LossConfig


def cross_entropy_term(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
                       class_weights: tuple[float, ...] | None = None) -> torch.Tensor:
    """Eq. 4, first term: (1/n) sum_i CrsEnt(f_h o g_p o F(x_i), y_i). logits (B, C), labels (B,).

    `class_weights` (LossConfig's DEVIATION for imbalanced data) weighs each image's term by its class,
    normalised by the batch's total weight (torch's weighted mean); None is the paper's plain mean."""
    weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32,
                                                             device=logits.device)
    return F.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=label_smoothing)


def _nearest_distance(distances: torch.Tensor) -> torch.Tensor:
    """min_k ||z_k(x_i) - p_j||^2 over the feature masks: (B, n, K) -> (B, K)."""
    return distances.min(dim=1).values


def cluster_cost(distances: torch.Tensor, labels: torch.Tensor, prototype_identity: torch.Tensor) -> torch.Tensor:
    """Eq. 5: Clst = (1/n) sum_i min_{j: p_j in Q_{y_i}} min_k ||z_k(x_i) - p_j||^2.

    distances: s (B, n, K); labels (B,); prototype_identity (K, C) one-hot of each prototype's class.
    """
    nearest = _nearest_distance(distances)
    own = prototype_identity.t()[labels].bool()  # (B, K): p_j in Q_{y_i}
    inf = torch.finfo(nearest.dtype).max
    return nearest.masked_fill(~own, inf).min(dim=1).values.mean()


def separation_cost(distances: torch.Tensor, labels: torch.Tensor, prototype_identity: torch.Tensor) -> torch.Tensor:
    """Eq. 6, as printed: Sep = -(1/n) sum_i min_{j: p_j not in Q_{y_i}} min_k ||z_k(x_i) - p_j||^2.

    The minus sign is kept, so Sep falls as the nearest other-class prototype moves away;
    with LossConfig.lambda_sep = +0.08 (see the sign note in config.py) the total loss
    falls with it, which is ProtoPNet's intended behaviour.
    """
    nearest = _nearest_distance(distances)
    other = ~prototype_identity.t()[labels].bool()  # (B, K): p_j not in Q_{y_i}
    inf = torch.finfo(nearest.dtype).max
    return -nearest.masked_fill(~other, inf).min(dim=1).values.mean()


def last_layer_l1(last_layer_weight: torch.Tensor, prototype_identity: torch.Tensor) -> torch.Tensor:
    """Eq. 7: l_wh = sum_u sum_{v: p_v not in Q_u} |w_h^(u,v)|, the off-class weights only.

    last_layer_weight (C, K); prototype_identity (K, C).
    """
    off_class = 1.0 - prototype_identity.t()
    return (last_layer_weight * off_class).abs().sum()


@dataclass
class LossParts:
    """Eq. 4's total and each of its terms (the terms detached, for logging)."""

    total: torch.Tensor
    cross_entropy: torch.Tensor
    cluster: torch.Tensor
    separation: torch.Tensor
    l1: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {
            "loss": float(self.total.detach()),
            "cross_entropy": float(self.cross_entropy),
            "cluster": float(self.cluster),
            "separation": float(self.separation),
            "l1": float(self.l1),
        }


def total_loss(
    logits: torch.Tensor,
    distances: torch.Tensor,
    labels: torch.Tensor,
    prototype_identity: torch.Tensor,
    last_layer_weight: torch.Tensor,
    config: LossConfig,
    label_smoothing: float = 0.0,
) -> LossParts:
    """Eq. 4: L = CrsEnt + lambda1 Clst + lambda2 Sep + lambda3 l_wh, with its parts."""
    ce = cross_entropy_term(logits, labels, label_smoothing, config.class_weights)
    clst = cluster_cost(distances, labels, prototype_identity)
    sep = separation_cost(distances, labels, prototype_identity)
    l1 = last_layer_l1(last_layer_weight, prototype_identity)
    total = ce + config.lambda_clst * clst + config.lambda_sep * sep + config.lambda_l1 * l1
    return LossParts(total, ce.detach(), clst.detach(), sep.detach(), l1.detach())
