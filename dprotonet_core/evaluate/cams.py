"""Every CAM method of the evaluation behind one call: `compute_cam(method, model, x, target)`.

Methods: "mdm-paper" and "mdm-fast" (DProtoNet's own decoder, explain/mdm.py, under its two
profiles, turned into a CAM by eq. 15/16 at the overlay's gamma) and the Grad-CAM family
(explain/baselines.py). Every result is (H, W) float32 in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from dprotonet_core.config import EvalConfig, OverlayConfig
from dprotonet_core.explain import baselines
from dprotonet_core.model.dprotonet import DProtoNet

MDM_METHODS = {"mdm-standard": "standard", "mdm-thorough": "thorough", "mdm-paper": "paper", "mdm-fast": "fast",
               "mdm-printed": "printed"}
ALL_METHODS: tuple[str, ...] = (*MDM_METHODS, *baselines.METHODS)
# what `evaluate` runs unless told otherwise (eq. 13 as printed is one --methods away)
DEFAULT_METHODS: tuple[str, ...] = ("mdm-standard", "mdm-paper", *baselines.METHODS)
_EVAL = EvalConfig()
_OVERLAY = OverlayConfig()
def _mdm_name(profile: str) -> str:
    """A Table 5 row name that says which profile, steps and loss produced the row."""
    from dprotonet_core.explain import mdm

    return f"DProtoNet MDM, {mdm.method_label(mdm.runnable(mdm.profile(profile)), profile)}"


DISPLAY_NAMES = {
    **{method: _mdm_name(profile) for method, profile in MDM_METHODS.items()},
    **baselines.DISPLAY_NAMES,
}


def check_methods(methods: list[str]) -> list[str]:
    """The methods, validated, in the order given (duplicates dropped)."""
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(ALL_METHODS)}")
    return list(dict.fromkeys(methods))


def top_prototype(model: DProtoNet, x: torch.Tensor, target_class: int) -> int:
    """p_t for class `target_class` on x (mdm.top_prototype, the one place it is chosen)."""
    from dprotonet_core.explain.mdm import top_prototype as choose

    with torch.no_grad():
        activations = model(x.unsqueeze(0)).activations[0]
    return choose(activations, model.prototype_classes(), target_class)


def mdm_cam(model: DProtoNet, x: torch.Tensor, target_class: int, profile: str, gamma: float) -> np.ndarray:
    """MDM's CAM for x: the query-side mask stack (eq. 13) of the top prototype of the target
    class, thresholded and normalised by eq. 15/16 (all zero when no pixel reaches gamma)."""
    from dprotonet_core.explain import mdm, overlay

    prototype = top_prototype(model, x, target_class)
    explanation = mdm.explain_query(model, x, prototype=prototype, cfg=mdm.profile(profile))
    return overlay.cam(explanation.result.stack, gamma).map.astype(np.float32)


def compute_cam(
    method: str, model: DProtoNet, x: torch.Tensor, target_class: int,
    cfg: EvalConfig = _EVAL, overlay_cfg: OverlayConfig = _OVERLAY,
) -> np.ndarray:
    """CAM of `method` for class `target_class` on one image x (3, H, W) in [0, 1]."""
    if method in MDM_METHODS:
        return mdm_cam(model, x, target_class, MDM_METHODS[method], overlay_cfg.gamma)
    batch = cfg.scorecam_batch_size if method == "scorecam" else cfg.ablationcam_batch_size
    return baselines.saliency(method, model, x, target_class, batch_size=batch)
