"""DProtoNet's encoder and inference module (paper section 3.1-3.2, eq. 1-3 and 8).

x (pixels in [0, 1]) -> normalise -> f_b -> f_a -> F(x) (B, D, H1, W1)
  -> z_i(x) = GAP(M_i * F(x)) for the n = 240 feature masks        (eq. 8)
  -> s(z_i, P_j) = ||z_i - P_j||^2                                    (eq. 1)
  -> g_pj = max_i log((s + 1) / (s + eps))                            (eq. 2)
  -> logits = W g                                                     (eq. 3)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dprotonet_core.config import ModelConfig
from dprotonet_core.model.backbones import backbone_parts, build_backbone, stage_ends


def feature_vectors(feature_map: torch.Tensor, feature_masks: torch.Tensor) -> torch.Tensor:
    """Eq. 8: z_i(x) = GAP(M_i F(x)) for every mask i in one tensor operation.

    feature_map: (B, D, H1, W1); feature_masks: (n, D, H1, W1) in [0, 1].
    Returns z: (B, n, D).
    """
    h1w1 = feature_map.shape[-1] * feature_map.shape[-2]
    return torch.einsum("bdhw,idhw->bid", feature_map, feature_masks.to(feature_map.dtype)) / h1w1


def similarity_score(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Eq. 1: s(z_i(x), P_j) = ||z_i(x) - P_j||_2^2 for every (image, mask, prototype).

    z: (B, n, D); prototypes: (K, D). Returns s: (B, n, K), clamped at 0 because the
    expansion ||z||^2 - 2 z.P + ||P||^2 can round slightly below zero.
    """
    z2 = (z * z).sum(-1, keepdim=True)
    p2 = (prototypes * prototypes).sum(-1)
    cross = torch.einsum("bnd,kd->bnk", z, prototypes)
    return (z2 - 2 * cross + p2).clamp_min(0)


def prototype_activation(s: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Eq. 2: g_pj(x) = max_i log((s(z_i(x), P_j) + 1) / (s(z_i(x), P_j) + eps)).

    s: (B, n, K). Returns g: (B, K). Evaluated as log1p(s) - log(s + eps), which equals the
    printed ratio but never forms (s + 1) / eps, so it is finite in float32 for s >= 0.
    Because the expression falls monotonically in s, the max over i is taken at min_i s.
    """
    s_min = s.min(dim=1).values
    return torch.log1p(s_min) - torch.log(s_min + epsilon)


def class_logits(activations: torch.Tensor, last_layer_weight: torch.Tensor) -> torch.Tensor:
    """Eq. 3: p(y^c | x) = sum_j w_j^c g(F(x), P_j). activations (B, K), weight (C, K)."""
    return activations @ last_layer_weight.t()


def draw_feature_masks(n: int, channels: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Section 3.2: n random feature masks M_i in [0, 1]^(D x H1 x W1).

    Drawn uniformly from the 256 levels {0, 1/255, ..., 1} by a seeded generator, so a
    mask is exactly representable as uint8 and the checkpoint stores it losslessly in a
    quarter of float32's space. Returned as float32.
    """
    generator = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, 256, (n, channels, height, width), generator=generator, dtype=torch.int32)
    return levels.to(torch.float32) / 255.0


def class_identity(num_classes: int, prototypes_per_class: int) -> torch.Tensor:
    """(K, C) one-hot: prototype j belongs to class j // prototypes_per_class (Q_k)."""
    k = num_classes * prototypes_per_class
    identity = torch.zeros(k, num_classes)
    identity[torch.arange(k), torch.arange(k) // prototypes_per_class] = 1.0
    return identity


@dataclass
class DProtoNetOutput:
    """What one forward pass gives, so no caller recomputes it."""

    logits: torch.Tensor  # (B, C)
    activations: torch.Tensor  # g: (B, K)
    distances: torch.Tensor  # s: (B, n, K)
    z: torch.Tensor  # (B, n, D)
    stages: list[torch.Tensor] | None = None  # forward(x, stages=True): each stage of f_b average-pooled, (B, C_s)


class ShapingNetwork(nn.Sequential):
    """f_a: two 1x1 convolutions with a ReLU between them (section 4.3); no sigmoid."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1),
        )


class DProtoNet(nn.Module):
    """Backbone f_b + shaping f_a + feature masks + prototypes + last layer f_h.

    The input is an image batch in [0, 1] (B, 3, H, W); normalisation is part of the model
    so MDM, the baselines and the app all work in pixel space.
    """

    def __init__(self, config: ModelConfig, backbone_weights: str | None = None):
        super().__init__()
        self.config = config
        self.backbone, backbone_channels = build_backbone(config.backbone, backbone_weights)
        d = config.prototype_channels
        self.shaping = ShapingNetwork(backbone_channels, config.shaping_hidden_channels, d)
        h1, w1 = self._feature_size(config.input_size)
        self.register_buffer("feature_masks", draw_feature_masks(config.num_feature_masks, d, h1, w1, config.mask_seed))
        self.prototypes = nn.Parameter(torch.rand(config.num_prototypes, d))
        self.register_buffer(
            "prototype_class_identity", class_identity(config.num_classes, config.prototypes_per_class)
        )
        self.last_layer = nn.Linear(config.num_prototypes, config.num_classes, bias=False)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1))
        self.set_last_layer_connection()

    def _feature_size(self, size: int) -> tuple[int, int]:
        """(H1, W1) of f_b's output; also finds the parts of f_b that end its stages (`forward(x, stages=True)`)."""
        self._backbone_parts = backbone_parts(self.backbone)  # a plain list: the modules are registered in backbone
        with torch.no_grad():
            was_training = self.backbone.training
            self.backbone.eval()
            h, shapes = torch.zeros(1, 3, size, size), []
            for part in self._backbone_parts:
                h = part(h)
                shapes.append(h.shape)
            self.backbone.train(was_training)
        self._stage_ends = stage_ends(shapes)
        self.stage_widths = [int(shapes[i][1]) for i in self._stage_ends]  # C_s of each pooled stage
        return h.shape[-2], h.shape[-1]

    def backbone_with_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """f_b(x) (x in [0, 1]) and the average-pooled output of each of its stages, (B, C_s) each, in one pass."""
        h, pooled = (x - self.mean) / self.std, []
        for index, part in enumerate(self._backbone_parts):
            h = part(h)
            if index in self._stage_ends:
                pooled.append(h.float().mean(dim=(-2, -1)))
        return h, pooled

    def set_last_layer_connection(self) -> None:
        """ProtoPNet's initialisation: w = 1 to the own class, -0.5 to every other."""
        positive = self.prototype_class_identity.t()
        weight = self.config.class_connection * positive + self.config.incorrect_class_connection * (1 - positive)
        with torch.no_grad():
            self.last_layer.weight.copy_(weight)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """F(x) = f_a(f_b(x)): (B, D, H1, W1). x in [0, 1]."""
        return self.shaping(self.backbone((x - self.mean) / self.std))

    def feature_vectors(self, x: torch.Tensor, mask_index: int | torch.Tensor | None = None) -> torch.Tensor:
        """z(x) for all masks (B, n, D), or z_j(x) for one mask / one mask per image (B, D)."""
        fmap = self.feature_map(x)
        if mask_index is None:
            return feature_vectors(fmap, self.feature_masks)
        masks = self.feature_masks[mask_index]
        if masks.dim() == 3:
            masks = masks.unsqueeze(0).expand(fmap.shape[0], -1, -1, -1)
        return (fmap * masks.to(fmap.dtype)).mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor, stages: bool = False) -> DProtoNetOutput:
        """One pass; `stages` also returns f_b's pooled stage outputs (the out-of-distribution detector's input)."""
        pooled = None
        if stages:
            fb, pooled = self.backbone_with_stages(x)
            fmap = self.shaping(fb)
        else:
            fmap = self.feature_map(x)
        z = feature_vectors(fmap, self.feature_masks)
        s = similarity_score(z, self.prototypes)
        g = prototype_activation(s, self.config.epsilon)
        return DProtoNetOutput(logits=class_logits(g, self.last_layer.weight), activations=g, distances=s, z=z,
                               stages=pooled)

    def prototype_classes(self) -> torch.Tensor:
        """(K,) class index of each prototype."""
        return self.prototype_class_identity.argmax(dim=1)


class LogitsOnly(nn.Module):
    """Wraps a DProtoNet so it returns one tensor (logits), as the Grad-CAM family expects."""

    def __init__(self, model: DProtoNet):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


class BackboneClassifier(nn.Module):
    """The Table 3 baseline: the same backbone, GAP, one linear layer. Input in [0, 1]."""

    def __init__(self, config: ModelConfig, backbone_weights: str | None = None):
        super().__init__()
        self.config = config
        self.backbone, channels = build_backbone(config.backbone, backbone_weights)
        self.fc = nn.Linear(channels, config.num_classes)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone((x - self.mean) / self.std)
        return self.fc(f.mean(dim=(-2, -1)))
