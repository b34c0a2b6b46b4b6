"""Prediction with its reasoning ("this looks like that"), for the CLI, the app and evaluation.

    x01 = preprocess(image, size)            # (1, 3, S, S) float in [0, 1]
    result = predict(model, x01, classes)    # Prediction

`Prediction.reasoning` is the table the review page shows: for the predicted class c and
each prototype j, the activation g_pj (eq. 2), the last-layer weight w_j^c, the
contribution w_j^c g_pj and its share of the logit p(y^c|x) = sum_j w_j^c g_pj (eq. 3).

Thread safety: `predict` runs under `torch.inference_mode`, reads the model and never
changes it (no mode switch, no hooks, no cached state), and this module holds no mutable
globals, so concurrent calls on one eval-mode model are safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from dprotonet_core.model.dprotonet import DProtoNet
from dprotonet_core.ood import needs_stages, record_score


@dataclass(frozen=True)
class PrototypeContribution:
    """One row of the reasoning table."""

    prototype: int  # j
    class_index: int  # the class the prototype belongs to
    class_name: str
    similarity: float  # g_pj(x), eq. 2
    weight: float  # w_j^c of the predicted class c
    contribution: float  # w_j^c * g_pj(x)
    share: float  # contribution / logit of c (NaN when that logit is 0)
    mask_index: int  # j_x = argmin_i s(z_i(x), P_j): the feature mask that matched (MDM's detection node)


@dataclass(frozen=True)
class Prediction:
    """The model's decision on one image, with every number the reasoning table needs."""

    class_index: int
    class_name: str
    probabilities: list[float]  # what a person reads: calibrated when `calibrated`, else the softmax of eq. 3
    logits: list[float]
    reasoning: list[PrototypeContribution]  # all prototypes, largest contribution first
    ood_score: float = float("nan")  # the out-of-distribution score the card names (ood.py)
    calibrated: bool = False  # probabilities are the card's calibrator's (calibration.py), not the softmax
    model_probabilities: list[float] | None = None  # the softmax of eq. 3's logits, whatever `probabilities` is

    def top_prototypes(self, k: int = 5) -> list[PrototypeContribution]:
        return self.reasoning[:k]

    def to_json(self, top_k: int = 5) -> dict:
        """The CLI's JSON fields: prediction, class_index, probabilities, top_prototypes."""
        return {
            "prediction": self.class_name,
            "class_index": self.class_index,
            "probabilities": [round(p, 6) for p in self.probabilities],
            "probabilities_are": "calibrated (the card's calibrator)" if self.calibrated
            else "the model's softmax of eq. 3 (not calibrated)",
            "model_softmax": [round(p, 6) for p in (self.model_probabilities or self.probabilities)],
            "top_prototypes": [
                {
                    "prototype": row.prototype,
                    "class": row.class_name,
                    "similarity": round(row.similarity, 6),
                    "weight": round(row.weight, 6),
                    "contribution": round(row.contribution, 6),
                }
                for row in self.top_prototypes(top_k)
            ],
        }

    def as_dict(self) -> dict:
        return asdict(self)


def preprocess(image: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """An image as the model's input (1, 3, S, S) float in [0, 1].

    Accepts uint8 (H, W[, 3]), float [0, 1] (H, W[, 3]), or a (3, H, W) / (1, 3, H, W) tensor in [0, 1].
    Resized with the data package's function, so uploads and training images match.
    """
    from dprotonet_core.data.io import pixels_to_tensor, resize_square

    if isinstance(image, torch.Tensor):
        x = image.float()
        x = x[0] if x.dim() == 4 else x
    else:
        pixels = np.asarray(image)
        if pixels.dtype == np.uint8:
            pixels = pixels.astype(np.float32) / 255.0
        x = pixels_to_tensor(pixels.astype(np.float32), 3)
    return resize_square(x, size)[None]


def decide(probabilities: torch.Tensor | np.ndarray, threshold: float | None = None, positive: int = 1):
    """The predicted class of each row of (B, C) probabilities: argmax (eq. 3, the paper's rule), or, for a
    checkpoint whose card stores a decision threshold, `positive` exactly when p(positive) >= threshold
    (a two-class task only). Returns the same kind as given (tensor or array) of class indices (B,)."""
    if threshold is None:
        return probabilities.argmax(1)
    if probabilities.shape[1] != 2:
        raise ValueError("a decision threshold needs a two-class task")
    chosen = probabilities[:, positive] >= threshold
    other = 1 - positive
    if isinstance(probabilities, torch.Tensor):
        return torch.where(chosen, positive, other)
    return np.where(chosen, positive, other)


def decision_rule(classes: Sequence[str], threshold: float | None, positive: int = 1,
                  calibrated: bool = False, rule: str | None = None) -> str:
    """How `decide` answers, in one line, for the CLI's JSON and the evaluation report. `rule`: the card's
    decision_threshold rule ("argmax": a threshold that reproduces eq. 3's argmax on the calibrated scale)."""
    if threshold is None:
        return "argmax of eq. 3" + (" (of the calibrated probabilities)" if calibrated else "")
    name = classes[positive]
    kind = "the calibrated " if calibrated else ""
    if rule == "argmax":
        return (f"argmax of eq. 3 (the paper's rule), which is {name} when {kind}p({name}) >= {threshold:.4g} "
                "(sigmoid of the calibrator's intercept)")
    return f"{name} when {kind}p({name}) >= {threshold:.4g} (the card's threshold, chosen on validation)"


def default_classes(model: DProtoNet) -> list[str]:
    return [f"class {i}" for i in range(model.config.num_classes)]


def calibrate(logits: torch.Tensor, softmax: torch.Tensor, calibration: dict | None) -> torch.Tensor:
    """(B, C) probabilities a person reads: the card's calibrator on eq. 3's logit difference (calibration.py) for
    a two-class model that has one; the softmax otherwise."""
    if calibration is None:
        return softmax
    from dprotonet_core.calibration import calibrated_probability, logit_difference

    p1 = torch.as_tensor(calibrated_probability(logit_difference(logits), calibration), dtype=torch.float32)
    return torch.stack([1 - p1, p1], dim=1)


def predict(model: DProtoNet, x01: torch.Tensor, classes: Sequence[str] | None = None,
            threshold: float | None = None, ood_record: dict | None = None,
            calibration: dict | None = None, ood_detector=None) -> Prediction:
    """Classify one image (1, 3, S, S) or (3, S, S) in [0, 1] and explain the decision by prototypes.

    `threshold`: the checkpoint's decision threshold on p(class 1) (`Checkpoint.decision_threshold`); None
    is the paper's argmax of eq. 3. `ood_record`: the card's `ood` field, naming the out-of-distribution score.
    `calibration`: the card's calibrator (`Checkpoint.calibration`): the probabilities, and the threshold's
    comparison, are then calibrated ones. `ood_detector`: the checkpoint's (`Checkpoint.ood_detector`), needed when
    the record's score is "detector".

    The model must be in eval mode (`load_checkpoint` returns it so); it is not switched here,
    so one model can serve several threads.
    """
    if model.training:
        raise ValueError("predict needs the model in eval mode (call model.eval() once, before sharing it)")
    return predict_batch(model, x01 if x01.dim() == 4 else x01[None], classes, threshold, ood_record,
                         calibration, ood_detector)[0]


def predict_batch(model: DProtoNet, x01: torch.Tensor, classes: Sequence[str] | None = None,
                  threshold: float | None = None, ood_record: dict | None = None,
                  calibration: dict | None = None, ood_detector=None) -> list[Prediction]:
    """`predict` for a batch (B, 3, S, S): one Prediction per image."""
    if model.training:
        raise ValueError("predict needs the model in eval mode (call model.eval() once, before sharing it)")
    names = list(classes) if classes is not None else default_classes(model)
    device = next(model.parameters()).device
    with torch.inference_mode():
        x = x01.to(device=device, dtype=torch.float32)
        out = model(x, stages=needs_stages(ood_record))
        logits = out.logits.float().cpu()
        g = out.activations.float().cpu()
        mask_index = out.distances.argmin(dim=1).cpu()  # (B, K)
        ood = record_score(out, ood_record, ood_detector, x).cpu()
        weight = model.last_layer.weight.detach().float().cpu().clone()  # (C, K), a plain tensor
        proto_class = model.prototype_classes().cpu().tolist()
    softmax = torch.softmax(logits, dim=1)
    probabilities = calibrate(logits, softmax, calibration)
    if not (torch.isfinite(logits).all() and torch.isfinite(probabilities).all()):
        raise ValueError("the model gave non-finite scores for this image: its weights or the image are broken")
    decided = decide(probabilities, threshold)
    results = []
    for b in range(logits.shape[0]):
        c = int(decided[b])
        contributions = weight[c] * g[b]
        logit = float(logits[b, c])
        order = torch.argsort(contributions, descending=True).tolist()
        rows = [
            PrototypeContribution(
                prototype=j,
                class_index=proto_class[j],
                class_name=names[proto_class[j]],
                similarity=float(g[b, j]),
                weight=float(weight[c, j]),
                contribution=float(contributions[j]),
                share=float(contributions[j]) / logit if logit != 0 else float("nan"),
                mask_index=int(mask_index[b, j]),
            )
            for j in order
        ]
        results.append(
            Prediction(
                class_index=c,
                class_name=names[c],
                probabilities=probabilities[b].tolist(),
                logits=logits[b].tolist(),
                reasoning=rows,
                ood_score=float(ood[b]),
                calibrated=calibration is not None,
                model_probabilities=softmax[b].tolist(),
            )
        )
    return results
