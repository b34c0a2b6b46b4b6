"""Training phases as objects (paper section 4.3; ProtoPNet's schedule).

- warm (the first `warm_epochs`): the shaping network f_a and the prototypes P learn; f_b and f_h are frozen.
- joint: everything learns, Adam with one parameter group per part (f_b, f_a, P, f_h).
- last layer: after each prototype update (push), only f_h learns.

A phase freezes by `requires_grad` (so frozen parts get no gradient and cost no backward
work) and builds its own Adam optimiser over exactly the parameters it trains.
`schedule` turns a TrainConfig into the ordered list of steps the loop runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dprotonet_core.config import TrainConfig
from dprotonet_core.model.dprotonet import DProtoNet


def _parts(model: DProtoNet) -> dict[str, list[nn.Parameter]]:
    return {
        "backbone": list(model.backbone.parameters()),
        "shaping": list(model.shaping.parameters()),
        "prototypes": [model.prototypes],
        "last_layer": list(model.last_layer.parameters()),
    }


@dataclass(frozen=True)
class Phase:
    """One kind of training epoch: which parts learn, and at which learning rates."""

    name: str
    learning_rates: dict[str, float]  # part name -> lr; parts absent here are frozen

    def apply(self, model: DProtoNet) -> None:
        """Set requires_grad: True for the parts this phase trains, False for all others."""
        for part, params in _parts(model).items():
            for p in params:
                p.requires_grad_(part in self.learning_rates)

    def optimizer(self, model: DProtoNet, weight_decay: float = 0.0) -> torch.optim.Adam:
        """Adam with one parameter group per trained part (named in the group's "part" key)."""
        parts = _parts(model)
        groups = []
        for part, lr in self.learning_rates.items():
            # ProtoPNet applies weight decay to the convolutional parts only, not to P or f_h.
            decay = weight_decay if part in ("backbone", "shaping") else 0.0
            groups.append({"params": parts[part], "lr": lr, "weight_decay": decay, "part": part})
        return torch.optim.Adam(groups)

    def trains(self, part: str) -> bool:
        return part in self.learning_rates


def warm_phase(cfg: TrainConfig) -> Phase:
    """The initial stage: f_a and the prototypes only."""
    return Phase("warm", {"shaping": cfg.lr_shaping, "prototypes": cfg.lr_prototypes})


def joint_phase(cfg: TrainConfig, pretrained_backbone: bool = True) -> Phase:
    """All parts: f_b 1e-4 (or lr_backbone_scratch from random weights), f_a 3e-3, P 3e-3, f_h 1e-4."""
    lr_backbone = cfg.lr_backbone if pretrained_backbone else cfg.lr_backbone_scratch
    return Phase(
        "joint",
        {
            "backbone": lr_backbone,
            "shaping": cfg.lr_shaping,
            "prototypes": cfg.lr_prototypes,
            "last_layer": cfg.lr_last_layer,
        },
    )


def last_layer_phase(cfg: TrainConfig) -> Phase:
    """After a prototype update: f_h only."""
    return Phase("last_layer", {"last_layer": cfg.lr_last_layer_only})


@dataclass(frozen=True)
class Step:
    """One entry of the schedule: an epoch of `phase`, or a prototype update ("push")."""

    kind: str  # "epoch" | "push"
    phase: str | None = None  # warm | joint | last_layer for an epoch
    epoch: int = 0  # 0-based count of warm + joint epochs done before / in this step


def schedule(cfg: TrainConfig) -> list[Step]:
    """The ordered steps of a run of `cfg.epochs` warm + joint epochs.

    A push follows every `push_every`-th epoch after the warm stage, and always the last
    epoch (a checkpoint's prototypes must be projected onto training images to be
    interpretable); each push is followed by `last_layer_epochs` last-layer-only epochs,
    which do not count toward `epochs`.
    """
    steps: list[Step] = []
    for epoch in range(cfg.epochs):
        phase = "warm" if epoch < cfg.warm_epochs else "joint"
        steps.append(Step("epoch", phase, epoch))
        is_push_epoch = epoch >= cfg.warm_epochs and cfg.push_every > 0 and (epoch + 1) % cfg.push_every == 0
        if is_push_epoch or epoch == cfg.epochs - 1:
            steps.append(Step("push", None, epoch))
            fits = 1 if cfg.last_layer_fit == "converged" else cfg.last_layer_epochs  # one fit to convergence
            steps.extend(Step("epoch", "last_layer", epoch) for _ in range(fits))
    return steps
