"""The paper's nine metrics (section 4.2), one function each, plus what they need.

Classification: accuracy, sensitivity, specificity, roc_auc, confusion_matrix.
Recognition (CAM quality by the model's own answer): average_drop, average_increase
(Grad-CAM++), deletion and insertion (RISE).
Localisation (CAM against ground truth): dice, iou, ppv, localisation_sensitivity of the CAM
binarised at its top-k% (`binarize_top_percent`).

Arrays are numpy; model calls go through a `ProbabilityFn`: (B, 3, H, W) pixels in [0, 1]
-> (B, C) class probabilities, so the metrics do not depend on any one model class.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torchvision.transforms.functional import gaussian_blur

# Boxes become a ground-truth mask by the loaders' function (re-exported here for metric code): one rule for
# which pixels a box covers. It lives in data because data never imports evaluate.
from dprotonet_core.data.datasets import boxes_to_mask as boxes_to_mask

ProbabilityFn = Callable[[torch.Tensor], torch.Tensor]


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is 0 (the metric is undefined)."""
    return float(numerator) / float(denominator) if denominator else math.nan


# --- classification ---------------------------------------------------------------------------


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """C[i, j] = number of cases of true class i predicted as class j; shape (C, C)."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def _binary_counts(y_true: np.ndarray, y_pred: np.ndarray, positive: int) -> tuple[int, int, int, int]:
    """(TP, TN, FP, FN) with `positive` as the positive class, every other class negative."""
    t = np.asarray(y_true) == positive
    p = np.asarray(y_pred) == positive
    return int((t & p).sum()), int((~t & ~p).sum()), int((~t & p).sum()), int((t & ~p).sum())


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Accuracy = number of correct predictions / total number of cases (= (TP+TN)/(TP+TN+FP+FN))."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return _ratio((y_true == y_pred).sum(), y_true.size)


def sensitivity(y_true: np.ndarray, y_pred: np.ndarray, positive: int = 1) -> float:
    """Sensitivity = TP / (TP + FN): the share of positive cases predicted positive."""
    tp, _, _, fn = _binary_counts(y_true, y_pred, positive)
    return _ratio(tp, tp + fn)


def specificity(y_true: np.ndarray, y_pred: np.ndarray, positive: int = 1) -> float:
    """Specificity = TN / (TN + FP): the share of negative cases predicted negative."""
    _, tn, fp, _ = _binary_counts(y_true, y_pred, positive)
    return _ratio(tn, tn + fp)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% (by default) Wilson score interval of a proportion such as an accuracy measured on n images: the
    range a small test set cannot tell apart (80 images at 93.75% -> about 86.2% to 97.3%). Not an equation
    of the paper; reported next to its accuracies so that the size of the test set is visible."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def roc_curve(y_true: np.ndarray, scores: np.ndarray, positive: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct score threshold, from (0, 0) to (1, 1).

    Tied scores move both rates in one step, so the curve (and its area) treats ties fairly.
    """
    scores = np.asarray(scores, float)
    is_pos = np.asarray(y_true) == positive
    order = np.argsort(-scores, kind="stable")
    scores, is_pos = scores[order], is_pos[order]
    last_of_value = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    tp = np.cumsum(is_pos)[last_of_value]
    fp = np.cumsum(~is_pos)[last_of_value]
    n_pos, n_neg = max(int(is_pos.sum()), 1), max(int((~is_pos).sum()), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def roc_auc(y_true: np.ndarray, scores: np.ndarray, positive: int = 1) -> float:
    """ROC AUC = integral of TPR d(FPR) (trapezoid over `roc_curve`)
    = P(score of a random positive > score of a random negative) + 0.5 P(tie).
    NaN unless both classes occur."""
    is_pos = np.asarray(y_true) == positive
    if is_pos.all() or not is_pos.any():
        return math.nan
    fpr, tpr = roc_curve(y_true, scores, positive)
    return float(np.trapezoid(tpr, fpr))


THRESHOLD_RULES = ("youden", "accuracy", "accuracy_at_sensitivity")


def choose_threshold(y_true: np.ndarray, scores: np.ndarray, rule: str = "youden", positive: int = 1,
                     min_sensitivity: float = 0.5) -> float:
    """A decision threshold on p(positive) from labelled (validation) scores; the answer is positive when
    score >= threshold.

    "youden": maximise Youden's J = sensitivity + specificity - 1 (equal weight to a missed positive and a
    false alarm in proportion to each class's size); "accuracy": maximise accuracy; "accuracy_at_sensitivity":
    maximise accuracy among thresholds whose sensitivity is at least `min_sensitivity` (the paper's RSNA row:
    accuracy 0.822 at sensitivity 0.498). Ties go to the higher threshold; the threshold is placed midway between
    the chosen score and the next lower one.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}: use {', '.join(THRESHOLD_RULES)}")
    y = np.asarray(y_true) == positive
    scores = np.asarray(scores, float)
    if y.all() or not y.any():
        raise ValueError("choosing a threshold needs both classes")
    values = np.unique(scores)[::-1]  # candidate thresholds, highest first
    best, best_value = -math.inf, float(values[0])
    for value in values:
        pred = scores >= value
        sens, spec = (pred & y).sum() / y.sum(), (~pred & ~y).sum() / (~y).sum()
        if rule == "youden":
            score = sens + spec - 1
        elif rule == "accuracy_at_sensitivity" and sens < min_sensitivity:
            continue
        else:
            score = (pred == y).mean()
        if score > best + 1e-12:
            best, best_value = score, float(value)
    lower = scores[scores < best_value]
    return (best_value + float(lower.max())) / 2 if lower.size else best_value


def auc_interval(auc: float, positives: int, negatives: int, z: float = 1.959964) -> tuple[float, float]:
    """95% interval of a ROC AUC measured on `positives` and `negatives` images, by Hanley & McNeil's
    standard error (Radiology 1982): SE^2 = (A(1-A) + (n1-1)(Q1-A^2) + (n0-1)(Q2-A^2)) / (n1 n0),
    Q1 = A / (2 - A), Q2 = 2A^2 / (1 + A); clipped to [0, 1]."""
    if positives < 1 or negatives < 1 or not 0.0 <= auc <= 1.0:
        raise ValueError("an AUC interval needs both classes and an AUC in [0, 1]")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (
        positives * negatives)
    half = z * math.sqrt(max(variance, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


# --- localisation -----------------------------------------------------------------------------


def binarize_top_percent(cam: np.ndarray, percent: float) -> np.ndarray:
    """The CAM's top-k% as a boolean mask: cam > the (100 - k)th percentile of its values.

    Strictly greater, so a flat run of equal values at the threshold (e.g. Grad-CAM's zeros
    after its ReLU) is never selected by position: a constant CAM selects nothing.
    """
    cam = np.asarray(cam, float)
    return cam > np.percentile(cam, 100.0 - percent)


def _pixel_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """(TP, FP, FN) pixel counts of a binary prediction against a binary ground truth."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    return int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """DICE = 2TP / (FP + 2TP + FN) over pixels."""
    tp, fp, fn = _pixel_counts(pred, truth)
    return _ratio(2 * tp, fp + 2 * tp + fn)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IOU = TP / (FP + TP + FN) over pixels."""
    tp, fp, fn = _pixel_counts(pred, truth)
    return _ratio(tp, fp + tp + fn)


def ppv(pred: np.ndarray, truth: np.ndarray) -> float:
    """PPV = TP / (TP + FP) over pixels: the share of the CAM's region that is ground truth."""
    tp, fp, _ = _pixel_counts(pred, truth)
    return _ratio(tp, tp + fp)


def localisation_sensitivity(pred: np.ndarray, truth: np.ndarray) -> float:
    """Sensitivity = TP / (TP + FN) over pixels: the share of the ground truth the CAM covers."""
    tp, _, fn = _pixel_counts(pred, truth)
    return _ratio(tp, tp + fn)


def localisation_scores(cam: np.ndarray, truth: np.ndarray, top_percent: float) -> dict[str, float]:
    """DICE, IoU, PPV and Sensitivity of the CAM binarised at its top `top_percent`%.

    An empty binarised CAM (a flat or all-zero map) against a non-empty ground truth localises
    nothing, so its PPV (0/0) is scored 0 rather than left out of the mean.
    """
    pred = binarize_top_percent(cam, top_percent)
    scores = {
        "DICE": dice(pred, truth),
        "IoU": iou(pred, truth),
        "PPV": ppv(pred, truth),
        "Sensitivity": localisation_sensitivity(pred, truth),
    }
    if not pred.any() and np.asarray(truth, bool).any():
        scores["PPV"] = 0.0
    return scores


# --- recognition: Average Drop / Increase ------------------------------------------------------


def explained_map(image: torch.Tensor, cam: np.ndarray, keep_percent: float, mode: str = "percentile") -> torch.Tensor:
    """The "explained map" O of an image (3, H, W) in [0, 1].

    percentile (the paper): remove (set to 0) the pixels below the CAM's (100 - keep)th
    percentile, i.e. keep the top keep% of the CAM. multiply (Grad-CAM++): image * CAM.
    """
    cam_t = torch.as_tensor(np.asarray(cam, np.float32), device=image.device)
    if mode == "multiply":
        return image * cam_t
    if mode == "percentile":
        return image * torch.as_tensor(binarize_top_percent(cam, keep_percent), device=image.device)
    raise ValueError(f"explained map mode {mode!r}: use 'percentile' or 'multiply'")


def average_drop(original: np.ndarray, explained: np.ndarray) -> float:
    """AD = (100 / N) sum_i max(0, Y_i^c - O_i^c) / Y_i^c (Grad-CAM++; lower is better).

    Y, O: the class-c probability on the original image and on its explained map. The paper
    prints the sum without 1/N; Grad-CAM++ and the paper's own table values are the mean.
    """
    y, o = np.asarray(original, float), np.asarray(explained, float)
    return float(100.0 * np.mean(np.maximum(0.0, y - o) / np.maximum(y, 1e-12)))


def average_increase(original: np.ndarray, explained: np.ndarray) -> float:
    """AI = (100 / N) sum_i 1[Y_i^c < O_i^c] (Grad-CAM++; higher is better), as a percentage."""
    y, o = np.asarray(original, float), np.asarray(explained, float)
    return float(100.0 * np.mean(y < o))


# --- recognition: Deletion / Insertion ---------------------------------------------------------


TIE_SEED = 0  # the fixed seed of the random order among pixels of equal CAM value


def pixel_order(cam: np.ndarray, seed: int = TIE_SEED) -> np.ndarray:
    """Flat pixel indices in descending CAM order; pixels of equal value in a random order drawn from `seed`, not
    in raster order. A thresholded map (eq. 15, Grad-CAM after its ReLU) has large tied blocks, often all its zeros:
    raster order would delete or insert them from the top-left corner, a position bias the method did not ask for."""
    values = np.asarray(cam, float).ravel()
    shuffle = np.random.default_rng(seed).permutation(values.size)
    return shuffle[np.argsort(-values[shuffle], kind="stable")]


def step_size(num_pixels: int, step_fraction: float) -> int:
    """Pixels changed per step: round(step_fraction * number of pixels), at least 1."""
    return max(1, int(round(step_fraction * num_pixels)))


def class_probabilities(prob_fn: ProbabilityFn, images: torch.Tensor, target: int, batch_size: int) -> np.ndarray:
    """P(target | image) for a stack of images, in batches of `batch_size`, without gradients."""
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            out.append(prob_fn(images[start : start + batch_size])[:, target].float().cpu())
    return torch.cat(out).numpy()


def _pixel_rank(cam: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W) rank of every pixel in descending CAM order (0 = the most salient)."""
    order = torch.as_tensor(pixel_order(cam), device=device)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=device)
    return rank.view(np.shape(cam))


def _blend(start: torch.Tensor, finish: torch.Tensor, rank: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """One image per count k: `start` with its k top-ranked pixels taken from `finish`."""
    swapped = (rank.unsqueeze(0) < counts.view(-1, 1, 1)).unsqueeze(1)  # (B, 1, H, W)
    return torch.where(swapped, finish.unsqueeze(0), start.unsqueeze(0))


def _curve(
    prob_fn: ProbabilityFn, start: torch.Tensor, finish: torch.Tensor, cam: np.ndarray, target: int,
    step_fraction: float, batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(fraction of pixels changed, class probability) along a RISE causal curve; the step
    images are built batch by batch, so memory stays at one batch whatever the step."""
    num_pixels = start.shape[-1] * start.shape[-2]
    step = step_size(num_pixels, step_fraction)
    counts = torch.clamp(torch.arange(math.ceil(num_pixels / step) + 1) * step, max=num_pixels).to(start.device)
    rank = _pixel_rank(cam, start.device)
    probabilities = []
    with torch.no_grad():
        for chunk in counts.split(batch_size):
            probabilities.append(prob_fn(_blend(start, finish, rank, chunk))[:, target].float().cpu())
    return (counts.cpu().numpy() / num_pixels), torch.cat(probabilities).numpy()


def curve_auc(fractions: np.ndarray, probabilities: np.ndarray) -> float:
    """Trapezoid area under a probability curve over the fraction of pixels, in [0, 1]."""
    return float(np.trapezoid(probabilities, fractions))


def deletion_curve(
    prob_fn: ProbabilityFn, image: torch.Tensor, cam: np.ndarray, target: int,
    step_fraction: float = 1 / 56, baseline: float = 0.0, batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """RISE deletion: from the image, set pixels to `baseline` in descending CAM order,
    `step_fraction` of the image per step; returns (fractions deleted, P(target))."""
    return _curve(prob_fn, image, torch.full_like(image, baseline), cam, target, step_fraction, batch_size)


def blurred(image: torch.Tensor, sigma: float = 5.0, kernel: int = 11) -> torch.Tensor:
    """RISE's insertion start: the image under a Gaussian blur (kernel `kernel`, std `sigma`)."""
    return gaussian_blur(image.unsqueeze(0), [kernel, kernel], [sigma, sigma])[0]


def insertion_curve(
    prob_fn: ProbabilityFn, image: torch.Tensor, cam: np.ndarray, target: int,
    step_fraction: float = 1 / 56, sigma: float = 5.0, kernel: int = 11, batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """RISE insertion: from the blurred image, restore original pixels in descending CAM order;
    returns (fractions inserted, P(target))."""
    start = blurred(image, sigma, kernel)
    return _curve(prob_fn, start, image, cam, target, step_fraction, batch_size)


def deletion(
    prob_fn: ProbabilityFn, image: torch.Tensor, cam: np.ndarray, target: int,
    step_fraction: float = 1 / 56, baseline: float = 0.0, batch_size: int = 32,
) -> float:
    """D = AUC of the deletion curve (trapezoid; lower is better: the CAM's top pixels matter)."""
    return curve_auc(*deletion_curve(prob_fn, image, cam, target, step_fraction, baseline, batch_size))


def insertion(
    prob_fn: ProbabilityFn, image: torch.Tensor, cam: np.ndarray, target: int,
    step_fraction: float = 1 / 56, sigma: float = 5.0, kernel: int = 11, batch_size: int = 32,
) -> float:
    """I = AUC of the insertion curve (trapezoid; higher is better)."""
    return curve_auc(*insertion_curve(prob_fn, image, cam, target, step_fraction, sigma, kernel, batch_size))


def mask_agreement(stack_a: np.ndarray, stack_b: np.ndarray, top_percent: float = 20.0) -> tuple[float, float]:
    """How alike two MDM results are (a faster profile against the paper protocol): Pearson r of
    S = sum_i g(d_i), and the IoU of the top `top_percent` % pixels of each S. Two constant maps count as
    r = 1 when equal, else 0."""
    a = np.asarray(stack_a, np.float64).sum(0).ravel()
    b = np.asarray(stack_b, np.float64).sum(0).ravel()
    if a.std() > 0 and b.std() > 0:
        r = float(np.corrcoef(a, b)[0, 1])
    else:
        r = float(a.std() == b.std() and np.allclose(a, b))
    return r, iou(binarize_top_percent(a, top_percent), binarize_top_percent(b, top_percent))
