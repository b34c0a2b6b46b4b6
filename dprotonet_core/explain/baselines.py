"""The Grad-CAM family as baselines (paper section 4.1), from the `grad-cam` package.

One calling convention for all four: `saliency(method, model, x, target_class)` -> (H, W)
float32 in [0, 1]. The package's model contract is "one tensor out", so a DProtoNet is
wrapped in `LogitsOnly`; the target layer is the backbone f_b, whose output is the output of
its last block (the paper's usual choice: the last convolutional features). Every CAM object
is used as a context manager, so its hooks are released even when a call fails.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import numpy as np
import torch
from pytorch_grad_cam import AblationCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.ablation_layer import AblationLayer
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from dprotonet_core.model.dprotonet import DProtoNet, LogitsOnly

METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
}
DISPLAY_NAMES = {
    "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM", "ablationcam": "Ablation-CAM",
}
_GRADIENT_METHODS = {"gradcam", "gradcam++"}


def logits_model(model: nn.Module) -> nn.Module:
    """A module returning one logits tensor: DProtoNet wrapped in LogitsOnly, others as they are."""
    return LogitsOnly(model) if isinstance(model, DProtoNet) else model


def target_layer(model: nn.Module) -> nn.Module:
    """The layer the CAMs are taken at: the backbone (its output = its last block's output)."""
    inner = model.model if isinstance(model, LogitsOnly) else model
    backbone = getattr(inner, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise ValueError(f"{type(inner).__name__} has no .backbone module to take CAMs at")
    return backbone


def _build(method: str, wrapped: nn.Module, layer: nn.Module, batch_size: int) -> BaseCAM:
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(METHODS)}")
    if method == "ablationcam":
        # A fresh AblationLayer per call: the package's default argument is one shared instance.
        return AblationCAM(wrapped, [layer], ablation_layer=AblationLayer(), batch_size=batch_size)
    cam = METHODS[method](wrapped, [layer])
    if method == "scorecam":
        cam.batch_size = batch_size  # ScoreCAM reads this attribute when present
    return cam


@contextlib.contextmanager
def _quiet_package_progress() -> Iterator[None]:
    """Score-CAM and Ablation-CAM draw their own tqdm bars on stderr; keep them off the console."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"saliency takes one image (3, H, W) or (1, 3, H, W), got {tuple(x.shape)}")
    return x


def _check_class(model: nn.Module, target_class: int) -> None:
    config = getattr(model, "config", None)
    num_classes = getattr(config, "num_classes", None)
    if num_classes is not None and not 0 <= int(target_class) < num_classes:
        raise ValueError(f"target class {target_class} out of range 0..{num_classes - 1}")


def saliency(method: str, model: nn.Module, x: torch.Tensor, target_class: int, batch_size: int = 32) -> np.ndarray:
    """CAM of `method` for class `target_class` on one image x in [0, 1]: (H, W) float32 in [0, 1].

    `batch_size` is the number of masked (Score-CAM) or ablated (Ablation-CAM) copies per
    forward pass; the gradient methods ignore it. The model is left as it was: eval mode,
    no hooks, its requires_grad flags untouched.
    """
    wrapped = logits_model(model)
    layer = target_layer(wrapped)
    x = _as_batch(x).detach().to(next(wrapped.parameters()).device)
    if method in _GRADIENT_METHODS:
        # A frozen model (load_checkpoint) has no parameter requiring grad, so the target
        # layer's output would carry no gradient unless the input does.
        x = x.clone().requires_grad_(True)
    _check_class(model, target_class)
    result = None
    with _quiet_package_progress(), _build(method, wrapped, layer, batch_size) as cam:
        result = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(target_class))])
    if result is None:  # BaseCAM.__exit__ swallows an IndexError raised inside the call
        raise RuntimeError(f"{method} failed inside pytorch_grad_cam (an IndexError it suppressed)")
    return np.clip(np.nan_to_num(result[0].astype(np.float32)), 0.0, 1.0)
