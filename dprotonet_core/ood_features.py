"""What the out-of-distribution detector (ood_detector.py) measures of an image: pooled features of each stage of
f_b (one forward pass, `DProtoNet.forward(x, stages=True)`) and input-level statistics that describe the domain
without the model (a fundus photograph's circular field of view on a dark border and its red hue; a chest
film's intensity histogram, its symmetries and its sharpness).

Every function takes model inputs (B, 3, S, S) in [0, 1] and returns float64 numpy arrays, one row per image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

HISTOGRAM_BINS = 16
RINGS = 4  # radial profile: mean luminance in RINGS rings of equal width inside the inscribed circle
DARK = 0.06  # luminance under which a pixel counts as the black border of a fundus photograph

INPUT_STATISTICS = (
    [f"histogram_{k}" for k in range(HISTOGRAM_BINS)]
    + ["mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "saturation_mean", "saturation_std",
       "red_share", "blue_share", "outside_circle", "inside_circle", "dark_fraction", "dark_outside_circle",
       "mirror_symmetry", "flip_symmetry", "left_minus_right", "top_minus_bottom", "sharpness", "coarse_sharpness",
       "luminance_std"]
    + [f"ring_{k}" for k in range(RINGS)]
)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.flatten(1) - a.flatten(1).mean(dim=1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-8)


def input_statistics(x01: torch.Tensor) -> np.ndarray:
    """(B, len(INPUT_STATISTICS)) statistics of model inputs in [0, 1], computed at 112 px (cheap, and the same
    at any input size)."""
    x = F.interpolate(x01.float().clamp(0, 1), size=(112, 112), mode="area")
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    lum = 0.299 * r + 0.587 * g + 0.114 * b  # (B, H, W)
    batch, size = x.shape[0], x.shape[-1]
    hist = torch.stack([torch.histc(lum[i], bins=HISTOGRAM_BINS, min=0.0, max=1.0) for i in range(batch)])
    hist = hist / float(size * size)
    top, bottom = x.max(dim=1).values, x.min(dim=1).values
    saturation = (top - bottom) / top.clamp_min(1e-3)
    total = lum.mean(dim=(1, 2)).clamp_min(1e-3)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    radius = torch.sqrt(coords[None, :] ** 2 + coords[:, None] ** 2) * 2  # 1 on the inscribed circle
    outside, inside = radius > 1.0, radius <= 1.0
    dark = (lum < DARK).float()
    lap = lum[:, None]
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
    sharp = F.conv2d(lap, kernel).abs().mean(dim=(1, 2, 3))
    coarse = F.conv2d(F.avg_pool2d(lap, 4), kernel).abs().mean(dim=(1, 2, 3))
    half = size // 2
    third = size // 3
    rings = [lum[:, (radius > k / RINGS) & (radius <= (k + 1) / RINGS)].mean(dim=1) for k in range(RINGS)]
    columns = [
        hist,
        x.mean(dim=(2, 3)),
        x.std(dim=(2, 3)),
        saturation.mean(dim=(1, 2))[:, None],
        saturation.std(dim=(1, 2))[:, None],
        (r.mean(dim=(1, 2)) / (3 * total))[:, None],
        (b.mean(dim=(1, 2)) / (3 * total))[:, None],
        lum[:, outside].mean(dim=1)[:, None],
        lum[:, inside].mean(dim=1)[:, None],
        dark.mean(dim=(1, 2))[:, None],
        dark[:, outside].mean(dim=1)[:, None],
        _correlation(lum, torch.flip(lum, dims=[2]))[:, None],
        _correlation(lum, torch.flip(lum, dims=[1]))[:, None],
        (lum[:, :, :half].mean(dim=(1, 2)) - lum[:, :, half:].mean(dim=(1, 2)))[:, None],
        (lum[:, :third].mean(dim=(1, 2)) - lum[:, -third:].mean(dim=(1, 2)))[:, None],
        sharp[:, None],
        coarse[:, None],
        lum.std(dim=(1, 2))[:, None],
        torch.stack(rings, dim=1),
    ]
    return torch.cat(columns, dim=1).double().numpy()


@torch.inference_mode()
def model_features(model, x01: torch.Tensor, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Everything the detector reads, for a stack of inputs: "stage_k" (B, C_k) for each stage of f_b, "input"
    (B, len(INPUT_STATISTICS)); with the predicted class "predicted" (B,) (not used by the scores: their class-
    conditional terms take the nearest class mean)."""
    device = next(model.parameters()).device
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, x01.shape[0], batch_size):
        chunk = x01[start:start + batch_size]
        out = model(chunk.to(device=device, dtype=torch.float32), stages=True)
        for k, pooled in enumerate(out.stages):
            parts.setdefault(f"stage_{k + 1}", []).append(pooled.double().cpu().numpy())
        parts.setdefault("input", []).append(input_statistics(chunk.cpu()))
    return {name: np.concatenate(rows) for name, rows in parts.items()}


def features_of_output(out, x01: torch.Tensor) -> dict[str, np.ndarray]:
    """The same features from a forward pass already made with stages=True (inference.predict_batch)."""
    features = {f"stage_{k + 1}": pooled.double().cpu().numpy() for k, pooled in enumerate(out.stages)}
    features["input"] = input_statistics(x01.cpu())
    return features


def dataset_features(model, dataset, batch_size: int = 32) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """model_features of every image of a dataset (items (image, label, ...)), and the labels."""
    parts: dict[str, list[np.ndarray]] = {}
    labels: list[int] = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        for name, rows in model_features(model, torch.stack([it[0] for it in items]), batch_size).items():
            parts.setdefault(name, []).append(rows)
        labels += [int(it[1]) for it in items]
    return {name: np.concatenate(rows) for name, rows in parts.items()}, np.asarray(labels, int)
