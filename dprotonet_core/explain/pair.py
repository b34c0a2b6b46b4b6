"""One explanation: a query image against one prototype (eq. 12-14), the prototype side stored or computed.

The app, the `explain` command, make-demo and the evaluation all explain through here, so the detection node,
the prototype side and the words that say how each side was made are the same everywhere:

- query side: the detection node (eq. 12) and the D mask vectors of eq. 13 for the query, computed now;
- prototype side: the D mask vectors of eq. 14 for the prototype's source image x^pt. They are stored in the
  checkpoint when it is built (the card's `prototype_mdm` record says with which profile); computed now only
  when the checkpoint stores none and the caller allows it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from dprotonet_core.config import PAPER_MDM, MDMConfig
from dprotonet_core.explain import mdm


@dataclass(frozen=True)
class PrototypeSide:
    """The prototype's source image x^pt with its eq. 14 mask stack, and how that stack was made."""

    image: torch.Tensor  # (3, S, S) in [0, 1]
    mask_index: int  # j_pt
    stack: np.ndarray  # (D, S, S) g(d_i^{x^pt})
    method: str  # e.g. "fast profile: Adam 100 steps, deletion-scaled distance ...; stored when the model was built"
    stored: bool


@dataclass(frozen=True)
class PairExplanation:
    node: mdm.DetectionNode  # eq. 12
    query: mdm.MDMResult  # eq. 13
    query_method: str
    prototype: PrototypeSide
    note: str | None = None


def source_image(checkpoint, prototype: int) -> torch.Tensor:
    """x^pt, the stored source image of a prototype, as (3, S, S) float in [0, 1]."""
    pixels = np.asarray(checkpoint.prototype_image(prototype), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def stored_method(card: dict) -> str:
    """How the checkpoint's stored prototype-side masks were made, from its card's `prototype_mdm` record."""
    record = card.get("prototype_mdm") or {}
    known = {f.name for f in dataclasses.fields(MDMConfig)}
    try:
        settings = {k: v for k, v in (record.get("mdm_config") or {}).items() if k in known}
        if "betas" in settings:
            settings["betas"] = tuple(settings["betas"])
        if not settings:
            return "stored when the model was built (its settings are not recorded)"
        label = mdm.method_label(MDMConfig(**settings), record.get("profile"))
    except (TypeError, ValueError, AttributeError, KeyError):  # a card's record of an unexpected shape
        return "stored when the model was built (its recorded settings cannot be read)"
    return f"{label}; stored when the model was built"


def prototype_sides(checkpoint, cfg: MDMConfig, prototypes: list[int] | None = None,
                    progress=None, cancel=None) -> tuple[mdm.MDMResult, float]:
    """Eq. 14 for the listed prototypes (all by default), from their stored source images and mask indices, in
    one batched optimisation. Returns the result (vectors (K, a_i, a_i)) and the seconds it took."""
    ids = list(range(len(checkpoint.prototypes))) if prototypes is None else list(prototypes)
    images = torch.stack([source_image(checkpoint, t) for t in ids])
    start = time.perf_counter()
    result = mdm.explain_prototypes(checkpoint.model, images, [checkpoint.prototypes[t].mask_index for t in ids],
                                    cfg, progress, cancel, prototypes=ids)
    return result, time.perf_counter() - start


def prototype_side(checkpoint, prototype: int, cfg: MDMConfig = PAPER_MDM, compute_missing: bool = True,
                   progress=None, cancel=None) -> PrototypeSide:
    """The prototype side of an explanation: stored in the checkpoint, else (if allowed) computed now with `cfg`.

    Raises ValueError when the checkpoint stores no prototype source images, or no masks and computing them is
    not allowed (the app: computing every prototype side would take minutes)."""
    if not checkpoint.prototypes:
        raise ValueError("the checkpoint stores no prototype source images")
    size = int(checkpoint.model.config.input_size)
    image = source_image(checkpoint, prototype)
    mask_index = int(checkpoint.prototypes[prototype].mask_index)
    if checkpoint.prototype_mask_vectors:
        stack = mdm.mask_stack([v[prototype] for v in checkpoint.prototype_mask_vectors], size)
        return PrototypeSide(image, mask_index, stack, stored_method(checkpoint.card), True)
    if not compute_missing:
        raise ValueError("the checkpoint stores no prototype-side masks (re-run projection)")
    result, _ = prototype_sides(checkpoint, cfg, [prototype], progress, cancel)
    return PrototypeSide(image, mask_index, np.asarray(result.stack[0], dtype=np.float32),
                         f"{mdm.method_label(cfg)}; computed now", False)


def explain_pair(checkpoint, x: torch.Tensor, prototype: int | None = None, cfg: MDMConfig = PAPER_MDM,
                 profile_name: str | None = None, progress=None, cancel=None,
                 compute_missing: bool = True, on_step=None, side: PrototypeSide | None = None) -> PairExplanation:
    """Explain query x (3, S, S) in [0, 1] against prototype `prototype` (default: p_t of eq. 12): the query side
    computed now with `cfg` (`on_step` sees its vectors after every step), the prototype side stored or computed
    (`prototype_side`), or `side` when the caller has read it already for that prototype."""
    cfg = mdm.runnable(cfg, x.device)  # the arithmetic that will run is the one the labels name
    explained = mdm.explain_query(checkpoint.model, x, prototype, cfg, progress, cancel, on_step)
    node, method = explained.node, mdm.method_label(cfg, profile_name)
    if not checkpoint.prototypes and compute_missing:  # a bare model: the query image stands in for x^pt
        result = mdm.explain_prototypes(checkpoint.model, x[None], [node.mask_index], cfg, progress, cancel,
                                        prototypes=[node.prototype])
        side = PrototypeSide(x, node.mask_index, np.asarray(result.stack[0], dtype=np.float32),
                             f"{mdm.method_label(cfg)}; computed now", False)
        note = "the checkpoint has no prototype source images: the query image stands in for x^pt"
        return PairExplanation(node, explained.result, method, side, note)
    if side is None:
        side = prototype_side(checkpoint, node.prototype, cfg, compute_missing, progress, cancel)
    note = None if side.stored else "the checkpoint stores no prototype-side masks: computed now (eq. 14)"
    return PairExplanation(node, explained.result, method, side, note)


__all__ = ["PairExplanation", "PrototypeSide", "explain_pair", "prototype_side", "prototype_sides", "source_image",
           "stored_method"]
