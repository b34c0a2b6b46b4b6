"""Does eta collapse or saturate the MDM masks? The paper's distance against the deletion form.

On a checkpoint (--checkpoint DIR with --dataset/--data for its images; the RSNA loader gives the
boxes) or, without one, a small DProtoNet trained here on the synthetic blob images (class 1 = a
bright disc, whose position is the ground truth). For each image of the positive class: the scale of
the two terms (||target||^2, s(black image) = the deletion distance), then the query-side MDM (eq. 13)
under each distance form, and what the masks became: mean d, share of d < .05 (collapsed) and > .95
(saturated), share of pixels with S >= 3, whether the gamma = 3 CAM is empty, and against the ground
truth the IoU of the top-20% of S and the DICE of the top-50% binary mask (the paper's RSNA
threshold). Prints figures; asserts nothing. Usage:

    python -m bench.mdm_eta --checkpoint assets/checkpoints/rsna-pneumonia \
        --dataset rsna --data ../shared/data/rsna-real ../shared/data/rsna-real-256 [--images 6] [--iterations 800]
    python -m bench.mdm_eta --checkpoint assets/checkpoints/ichallenge-pm \
        --dataset ichallenge-pm --data ../shared/data/palm-training400-224

With a checkpoint it also prints the deletion distance s(black) = ||z_j(0) - z_j(x)||^2 at the detection node
(eq. 12) over every image of the split, both classes: the scale eta's deletion form divides by (config.py).
    python -m bench.mdm_eta [--size 96] [--epochs 6] [--images 4]   # blob stand-in
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import machine_info
from dprotonet_core.config import MDMConfig, ModelConfig
from dprotonet_core.data.synthetic import make_blob_images
from dprotonet_core.explain.mdm import explain_query
from dprotonet_core.explain.overlay import cam
from dprotonet_core.model.dprotonet import DProtoNet


def fit_and_project(model: DProtoNet, epochs: int, n: int = 240, seed: int = 0) -> float:
    """CE + 0.8 Clst + 0.08 Sep (eq. 4-6) with Adam on blob images, then a one-view projection
    (eq. 9-11 with R = 1). Returns the training accuracy after projection."""
    torch.manual_seed(seed)
    device = model.prototypes.device
    size = model.config.input_size
    images, labels, _ = make_blob_images(n, size=size, seed=seed)
    images, labels = images.to(device), labels.to(device)
    model.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    identity = model.prototype_class_identity  # (K, C)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, device=device)
        total = 0.0
        for lo in range(0, n, 24):
            idx = order[lo : lo + 24]
            out = model(images[idx])
            s_min = out.distances.min(dim=1).values  # (B, K)
            own = identity[:, labels[idx]].t().bool()  # (B, K)
            clst = s_min.masked_fill(~own, float("inf")).min(dim=1).values.mean()
            sep = -s_min.masked_fill(own, float("inf")).min(dim=1).values.mean()
            loss = F.cross_entropy(out.logits, labels[idx]) + 0.8 * clst + 0.08 * sep
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        print(f"epoch {epoch + 1}: loss {total / n:.3f}", flush=True)
    model.eval().requires_grad_(False)
    with torch.no_grad():
        z = torch.cat([model(images[lo : lo + 48]).z for lo in range(0, n, 48)])  # (N, n, D)
        classes = model.prototype_classes()
        for k in range(model.prototypes.shape[0]):
            pool = z[labels == classes[k]].reshape(-1, z.shape[-1])
            model.prototypes[k] = pool[((pool - model.prototypes[k]) ** 2).sum(-1).argmin()]
        logits = torch.cat([model(images[lo : lo + 48]).logits for lo in range(0, n, 48)])
    acc = float((logits.argmax(1) == labels).float().mean())
    print(f"train accuracy after projection: {acc:.3f}", flush=True)
    return acc


def describe(name: str, model: DProtoNet, x: torch.Tensor, truth: np.ndarray, cfg: MDMConfig) -> dict:
    t0 = time.perf_counter()
    exp = explain_query(model, x, cfg=cfg)
    j = exp.node.mask_index
    truth = truth.astype(bool)
    with torch.no_grad():
        target = model.feature_vectors(x[None], j)[0]
        s0 = float(((model.feature_vectors(torch.zeros_like(x)[None], j)[0] - target) ** 2).sum())
    v = torch.cat([d.flatten() for d in exp.result.vectors])
    s = exp.result.stack.sum(0)
    top = s >= np.quantile(s, 0.8)
    iou = float((top & truth).sum() / max(1, (top | truth).sum())) if truth.any() else float("nan")
    half = s >= np.quantile(s, 0.5)
    dsc = float(2 * (half & truth).sum() / max(1, half.sum() + truth.sum())) if truth.any() else float("nan")
    inside = float(s[truth].mean()) if truth.any() else float("nan")
    outside = float(s[~truth].mean())
    return {
        "form": name,
        "||t||^2": float((target**2).sum()),
        "s(black)": s0,
        "mean d": float(v.mean()),
        "d<.05": float((v < 0.05).float().mean()),
        "d>.95": float((v > 0.95).float().mean()),
        "S>=3": float((s >= 3).mean()),
        "S in/out": f"{inside:.2f}/{outside:.2f}",
        "IoU20": iou,
        "DICE50": dsc,
        "empty": cam(s, 3.0).empty,
        "s": round(time.perf_counter() - t0, 1),
    }


def checkpoint_images(args, positives_only: bool = True) -> tuple[DProtoNet, torch.Tensor, list[np.ndarray], str]:
    """Test images of the checkpoint's dataset (class 1 only, with ground truth where the dataset has it,
    unless positives_only=False), evenly spaced, with their ground truth masks (zeros if none)."""
    from dprotonet_core.checkpoint import load_checkpoint
    from dprotonet_core.data.registry import load_dataset

    ck = load_checkpoint(args.checkpoint)
    model = ck.model.float().eval()
    size = model.config.input_size
    split = {"seed": 0, "val_fraction": 0.2, "test_fraction": 0.2}
    root = args.data[0] if len(args.data) == 1 else list(args.data)
    ds = load_dataset(args.dataset, root, "test", size, transform=None, **split)
    chosen = [i for i in range(len(ds)) if ds.items[i].label == 1 or not positives_only]
    if positives_only and any(ds.has_ground_truth(i) for i in chosen):
        chosen = [i for i in chosen if ds.has_ground_truth(i)]
    step = max(1, len(chosen) // args.images)
    chosen = chosen[::step][: args.images]
    images = torch.stack([ds[i][0].float() for i in chosen])
    truths = [ds.mask(i) if ds.mask(i) is not None else np.zeros((size, size), bool) for i in chosen]
    return model, images, truths, f"checkpoint {args.checkpoint}, {args.dataset} test split, images {chosen}"


def deletion_scale(args, model: DProtoNet) -> str:
    """s(black) at the detection node of every image of the checkpoint's test split (forward passes only)."""
    from dprotonet_core.data.registry import load_dataset
    from dprotonet_core.explain.mdm import detection_node

    split = {"seed": 0, "val_fraction": 0.2, "test_fraction": 0.2}
    root = args.data[0] if len(args.data) == 1 else list(args.data)
    ds = load_dataset(args.dataset, root, "test", model.config.input_size, transform=None, **split)
    device = next(model.parameters()).device
    values, norms = [], []
    with torch.no_grad():
        black = torch.zeros(1, 3, model.config.input_size, model.config.input_size, device=device)
        for i in range(len(ds)):
            x = ds[i][0].float().to(device)
            j = detection_node(model, x).mask_index
            target = model.feature_vectors(x[None], j)[0]
            values.append(float(((model.feature_vectors(black, j)[0] - target) ** 2).sum()))
            norms.append(float((target ** 2).sum()))
    q = np.percentile(values, [10, 50, 90])
    return (f"s(black) over all {len(values)} images of the split: median {q[1]:.2f} (10th-90th percentile "
            f"{q[0]:.2f}-{q[2]:.2f}); ||z_j(x)||^2 median {np.median(norms):.2f}; eta 10 / median s(black) = "
            f"{10 / q[1]:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--dataset", default="rsna")
    ap.add_argument("--data", type=Path, nargs="+", default=None,
                    help="dataset folder(s); RSNA takes both of the shipped checkpoint's (rsna-real rsna-real-256)")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=800)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.checkpoint is not None and not args.data:
        ap.error("--checkpoint needs --data, the folder(s) of its dataset")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(machine_info(device))
    t0 = time.perf_counter()
    if args.checkpoint is not None:
        model, test, truths, what = checkpoint_images(args)
        labels = [1] * len(test)
        model = model.to(device)
    else:
        torch.manual_seed(0)
        model = DProtoNet(ModelConfig(backbone="small_resnet", input_size=args.size, num_classes=2)).to(device)
        fit_and_project(model, args.epochs)
        test, labels, masks = make_blob_images(2 * args.images, size=args.size, seed=123)
        truths = [m.numpy() for m in masks]
        what = f"blob stand-in trained {args.epochs} epochs in {time.perf_counter() - t0:.0f} s"
    print(what)
    if args.checkpoint is not None:
        print(deletion_scale(args, model), flush=True)
    forms = {
        "paper eta=10": MDMConfig(iterations=args.iterations, distance="paper"),
        "deletion eta=0.4": MDMConfig(iterations=args.iterations),
    }
    test = test.to(device)
    rows = []
    for i in range(len(test)):
        if labels[i] != 1:
            continue
        for name, cfg in forms.items():
            row = describe(name, model, test[i], truths[i], cfg)
            row["image"] = i
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    print("\nmedian per form:")
    for name in forms:
        sel = [r for r in rows if r["form"] == name]
        keys = ["||t||^2", "s(black)", "mean d", "d<.05", "d>.95", "S>=3", "IoU20", "DICE50"]
        empty = sum(bool(r["empty"]) for r in sel)
        print(name, {k: round(float(np.nanmedian([r[k] for r in sel])), 3) for k in keys},
              f"empty CAM {empty}/{len(sel)}")
    print(dataclasses.asdict(MDMConfig()))


if __name__ == "__main__":
    main()
