"""MDM quality bar (issue 19): faster variants against a 1,600-step reference; prints figures, asserts nothing.

For each held-out image (the checkpoint's dataset's test split, evenly spaced, both classes) the query side
(eq. 12-13) is solved by:

  reference        the paper protocol's Adam (lr 1e-2, constant, torch's betas) run on to 1,600 steps, float32
  paper protocol   the same run's vectors at step 800 (the protocol as shipped: float32, 800 steps)
  variants         config.time_compressed paths of the 1,600-step run (k x fewer, k x longer steps), in bf16
                   autocast or float32

and each answer is scored by its eq. 13 objective (summed over the D vectors, always evaluated in float32, the
loss the profiles minimise), and by its agreement with the reference: Pearson r of S = sum_i g(d_i) and the IoU
of the top 20 % of S (evaluate.metrics.mask_agreement). The quality bar: median objective <= the paper
protocol's on the same images, median r >= 0.95, median IoU >= 0.80 (what the paper protocol itself reaches).
Seconds are those of one query-side optimisation at --threads. Grad-CAM and Score-CAM seconds for scale.
Every image's line is appended to --jsonl as it completes, so a cut run keeps its figures;
--summarise FILE... prints the table from such files alone.

    python -m bench.mdm_quality --checkpoint assets/checkpoints/ichallenge-pm --dataset ichallenge-pm \\
        --data ../shared/data/palm-training400-224 --images 12 --threads 1 --jsonl runs/mdm-quality-palm.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bench.common import machine_info
from bench.mdm_convergence import summed_loss
from bench.mdm_eta import checkpoint_images
from dprotonet_core.config import PAPER_MDM, REFERENCE_MDM, MDMConfig, long_path
from dprotonet_core.evaluate.metrics import mask_agreement
from dprotonet_core.explain import mdm

REFERENCE_STEPS = REFERENCE_MDM.iterations
BAR = {"r": 0.95, "iou": 0.80}


def _tail(k: int) -> MDMConfig:
    return dataclasses.replace(long_path(k, "bf16"), lr_schedule="tail")


VARIANTS: dict[str, MDMConfig] = {
    "1600-path 2x, bf16 (800 steps)": long_path(2, "bf16"),
    "1600-path 4x, bf16 (400 steps)": long_path(4, "bf16"),
    "1600-path 4x + lr tail, bf16 (400 steps)": _tail(4),
    "1600-path 8x, bf16 (200 steps)": long_path(8, "bf16"),
    "1600-path 8x + lr tail, bf16 (200 steps)": _tail(8),
    "1600-path 12x + lr tail, bf16 (133 steps)": _tail(12),
    "1600-path 16x + lr tail, bf16 (100 steps)": _tail(16),
    "1600-path 4x, fp32 (400 steps)": long_path(4, "fp32"),
    "1600-path 8x + lr tail, fp32 (200 steps)": dataclasses.replace(long_path(8, "fp32"), lr_schedule="tail"),
    "1600-path 8x + lr tail, bf16, last 25% fp32 (200 steps)": dataclasses.replace(_tail(8), fp32_tail=0.25),
    "1600-path 8x + lr tail, bf16, last 50% fp32 (200 steps)": dataclasses.replace(_tail(8), fp32_tail=0.5),
    "1600-path 4x + lr tail, bf16, last 25% fp32 (400 steps)": dataclasses.replace(_tail(4), fp32_tail=0.25),
}
DEFAULT_VARIANTS = ("1600-path 4x, bf16 (400 steps)", "1600-path 4x + lr tail, bf16 (400 steps)",
                    "1600-path 8x + lr tail, bf16 (200 steps)", "1600-path 16x + lr tail, bf16 (100 steps)",
                    "1600-path 4x, fp32 (400 steps)")
FP32_CHECK_IMAGES = 3  # fp32 twins run on the first images only (they isolate bf16's effect)


def reference(model, x: torch.Tensor, node, target: torch.Tensor, path: Path | None):
    """The 1,600-step reference and its step-800 snapshot (the paper protocol): (vectors, seconds) of each, read
    from `path` when an earlier run stored them for the same detection node, else computed (and stored)."""
    names = [f"d{i}" for i in range(REFERENCE_MDM.num_vectors)]
    if path is not None and path.is_file():
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            if meta.get("mask_index") == str(node.mask_index) and meta.get("prototype") == str(node.prototype):
                ref = [f.get_tensor("ref_" + n) for n in names]
                paper = [f.get_tensor("paper_" + n) for n in names]
                return (ref, float(meta["ref_seconds"])), (paper, float(meta["paper_seconds"]))
    snapshot: dict = {}
    t0 = time.perf_counter()

    def keep_800(step: int, _total: int, vectors) -> None:
        if step == PAPER_MDM.iterations:
            snapshot["vectors"] = [v.detach()[0].clone() for v in vectors]  # (1, a, a): one image
            snapshot["seconds"] = time.perf_counter() - t0

    res = mdm.optimise_mask_vectors(model, x, node.mask_index, target, REFERENCE_MDM, on_step=keep_800)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {**{"ref_" + n: v.contiguous() for n, v in zip(names, res.vectors)},
                   **{"paper_" + n: v.contiguous() for n, v in zip(names, snapshot["vectors"])}}
        save_file(tensors, str(path), metadata={"mask_index": str(node.mask_index), "prototype": str(node.prototype),
                                                "ref_seconds": f"{res.seconds:.2f}",
                                                "paper_seconds": f"{snapshot['seconds']:.2f}"})
    return (res.vectors, res.seconds), (snapshot["vectors"], snapshot["seconds"])


def run_image(model, x: torch.Tensor, index: int, variants: list[str], store: Path | None) -> dict:
    node = mdm.detection_node(model, x)
    with torch.no_grad():
        target = model.feature_vectors(x[None], node.mask_index)[0]
    size = tuple(x.shape[-2:])
    (ref_vectors, ref_seconds), (paper_vectors, paper_seconds) = reference(
        model, x, node, target, None if store is None else store / f"reference-{index}.safetensors")
    ref_stack = mdm.mask_stack(ref_vectors, size)
    rows = {f"reference ({REFERENCE_STEPS} steps, fp32)": (ref_vectors, ref_stack, ref_seconds),
            "paper protocol (800 steps, fp32)": (paper_vectors, mdm.mask_stack(paper_vectors, size), paper_seconds)}
    for name in variants:
        if "fp32" in name and index >= FP32_CHECK_IMAGES:
            continue
        res = mdm.optimise_mask_vectors(model, x, node.mask_index, target, VARIANTS[name])
        rows[name] = (res.vectors, res.stack, res.seconds)
    out = {"image": index, "prototype": node.prototype, "mask_index": node.mask_index, "variants": {}}
    for name, (vectors, stack, seconds) in rows.items():
        r, iou = mask_agreement(ref_stack, stack)
        out["variants"][name] = {"seconds": round(seconds, 2), "r": round(r, 4), "iou": round(iou, 4),
                                 "objective": round(summed_loss(model, x, node.mask_index, target, PAPER_MDM,
                                                                vectors), 4)}
    return out


def baseline_seconds(model, images: torch.Tensor) -> dict[str, float]:
    from dprotonet_core.evaluate.cams import compute_cam

    seconds: dict[str, float] = {}
    for method in ("gradcam", "scorecam"):
        times = []
        for x in images:
            t0 = time.perf_counter()
            compute_cam(method, model, x, 1)
            times.append(time.perf_counter() - t0)
        seconds[method] = statistics.median(times)
    return seconds


def summarise(records: list[dict]) -> None:
    """The table: per variant, medians and worst over the images, and whether the quality bar is met."""
    paper = "paper protocol (800 steps, fp32)"
    names = list(records[0]["variants"])
    print(f"{len(records)} images; bar: median objective <= the paper protocol's, median r >= {BAR['r']}, "
          f"median IoU >= {BAR['iou']} (against the {REFERENCE_STEPS}-step reference)")
    print("| variant | images | s median | s worst | objective median | obj - paper's: median, worst | "
          "r median | r worst | IoU median | IoU worst | bar |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        rows = [(rec["variants"][name], rec["variants"][paper]) for rec in records if name in rec["variants"]]
        sec = [v["seconds"] for v, _ in rows]
        obj = [v["objective"] for v, _ in rows]
        gap = [v["objective"] - p["objective"] for v, p in rows]
        r = [v["r"] for v, _ in rows]
        iou = [v["iou"] for v, _ in rows]
        met = (statistics.median(gap) <= 0 and statistics.median(r) >= BAR["r"]
               and statistics.median(iou) >= BAR["iou"])
        bar = "reference" if name.startswith("reference") else "yardstick" if name == paper else \
            ("met" if met else "not met")
        print(f"| {name} | {len(rows)} | {statistics.median(sec):.1f} | {max(sec):.1f} | "
              f"{statistics.median(obj):.3f} | {statistics.median(gap):+.3f}, {max(gap):+.3f} | "
              f"{statistics.median(r):.3f} | {min(r):.3f} | {statistics.median(iou):.3f} | {min(iou):.3f} | {bar} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--dataset", default="ichallenge-pm")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/palm-training400-224"))
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jsonl", type=Path, default=None)
    ap.add_argument("--store", type=Path, default=None,
                    help="folder for the references' vectors: a later run with other --variants reuses them")
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--summarise", type=Path, nargs="+", default=None, help="print the table from JSONL files")
    args = ap.parse_args()
    if args.summarise:
        for path in args.summarise:
            lines = path.read_text().splitlines()
            print(f"## {path}\n{lines[0]}")
            summarise([json.loads(line) for line in lines[1:] if line.startswith("{")])
        return
    torch.set_num_threads(args.threads)
    header = f"{machine_info()}; threads {args.threads}; checkpoint {args.checkpoint}"
    print(header, flush=True)
    model, images, _, what = checkpoint_images(args, positives_only=False)
    print(what, flush=True)
    if args.jsonl is not None:
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
        args.jsonl.write_text(f"# {header}; {what}\n")
    records = []
    for n, x in enumerate(images):
        rec = run_image(model, x, n, args.variants, args.store)
        records.append(rec)
        print(json.dumps(rec), flush=True)
        if args.jsonl is not None:
            with args.jsonl.open("a") as f:
                f.write(json.dumps(rec) + "\n")
    summarise(records)
    print("baselines, seconds per image (median of 3):", baseline_seconds(model, images[:3]), flush=True)


if __name__ == "__main__":
    main()
