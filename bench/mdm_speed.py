"""MDM decoder benchmark (naive vs batched vs the fast profile): prints figures, asserts nothing.

  naive paper protocol   each of the 2 x D vectors alone (query and prototype side), 800 its
  batched paper (query)  the D query vectors in one batch, 800 its
  fast profile           config.MDM_PROFILES["fast"], query side
  fidelity               fast vs batched paper over N images: Pearson r of S, top-20% IoU
  baselines              Grad-CAM and Score-CAM (pytorch_grad_cam) on the same model

Model: --checkpoint DIR (images: its dataset's test split, --dataset / --data), else a stand-in of
the shipped size (small_resnet, 224 px, random weights; --train-epochs N trains it on the
synthetic blob images first, which gives masks with structure).
--naive-iterations / --paper-iterations time fewer steps and scale to 800 (per-step cost is constant: same
shapes every step); the scale factor is printed. The fidelity reference always runs the whole paper protocol
(--reference-iterations changes it for smoke runs only). --quick: a smoke run.

    python -m bench.mdm_speed [--checkpoint DIR] [--images 20] [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import machine_info
from dprotonet_core.config import MDM_PROFILES, MDMConfig, ModelConfig, time_compressed
from dprotonet_core.data.synthetic import make_blob_images
from dprotonet_core.evaluate.metrics import mask_agreement
from dprotonet_core.explain.mdm import detection_node, explain_query, optimise_mask_vectors
from dprotonet_core.model.dprotonet import DProtoNet

REPO = Path(__file__).resolve().parents[1]


class PeakMemory:
    """Peak resident memory above the starting point (CPU: /proc/self/statm sampled every
    2 ms; CUDA: torch.cuda.max_memory_allocated)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(0.002)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()

    @property
    def mib(self) -> float:
        return self.peak / 2**20


def load_model(args) -> tuple[DProtoNet, str, list[torch.Tensor] | None, list]:
    folder = args.checkpoint
    if folder is not None:
        from dprotonet_core.checkpoint import load_checkpoint

        ck = load_checkpoint(folder)
        return ck.model, f"checkpoint {folder}", ck.prototype_mask_vectors, ck.prototypes
    torch.manual_seed(0)
    model = DProtoNet(ModelConfig(backbone="small_resnet", input_size=224)).eval()
    what = "stand-in small_resnet 224 px, random weights (no checkpoint under assets/checkpoints/)"
    if args.train_epochs:
        from bench.mdm_eta import fit_and_project

        fit_and_project(model, args.train_epochs)
        what = f"stand-in small_resnet 224 px trained {args.train_epochs} epochs on synthetic blobs"
    return model.requires_grad_(False), what, None, []


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, fn):
    with PeakMemory(device) as mem:
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        seconds = time.perf_counter() - t0
    return out, seconds, mem.mib


def naive_protocol(model, x, x_pt, j_x, j_pt, target_q, target_p, cfg: MDMConfig, iterations: int) -> None:
    """The paper read literally: every vector d_i optimised alone, query side and prototype side."""
    for i in range(1, cfg.num_vectors + 1):
        one = dataclasses.replace(cfg, num_vectors=1, base_size=cfg.base_size + i - 1, iterations=iterations)
        optimise_mask_vectors(model, x, j_x, target_q, one)
        optimise_mask_vectors(model, x_pt, j_pt, target_p, one)


def gradcam_times(model: DProtoNet, x: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Seconds per image of Grad-CAM and Score-CAM (the project's baselines wrapper) on the same model."""
    from dprotonet_core.explain.baselines import saliency

    with torch.no_grad():
        target = int(model(x[None]).logits.argmax())
    times = {}
    for name, method in (("Grad-CAM", "gradcam"), ("Score-CAM", "scorecam")):
        saliency(method, model, x, target)  # warm-up
        _, seconds, _ = timed(device, lambda m=method: saliency(m, model, x, target))
        times[name] = seconds
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--dataset", default="ichallenge-pm", help="the checkpoint's dataset (images for fidelity)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "palm-training400-224")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 images, short timings")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--naive-iterations", type=int, default=800)
    ap.add_argument("--paper-iterations", type=int, default=800, help="iterations timed (scaled to 800)")
    ap.add_argument("--reference-iterations", type=int, help="the fidelity reference's iterations (default 800)")
    ap.add_argument("--train-epochs", type=int, default=0)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--save-checkpoint", type=Path, help="save the (trained) stand-in as a checkpoint folder")
    ap.add_argument("--sweep", action="store_true", help="also score candidate fast settings")
    args = ap.parse_args()
    if args.quick:
        args.images, args.naive_iterations, args.paper_iterations, args.reference_iterations = 3, 20, 40, 40
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(machine_info(device))
    model, what, _, _ = load_model(args)
    model = model.to(device)
    print(f"model: {what}")
    if args.save_checkpoint is not None:
        from dprotonet_core.checkpoint import save_checkpoint

        save_checkpoint(model.cpu(), args.save_checkpoint, {"classes": ["no blob", "blob"], "synthetic": True,
                                                            "note": "bench.mdm_speed stand-in"})
        model = model.to(device)
    size = model.config.input_size
    if args.checkpoint is not None:
        from bench.mdm_eta import checkpoint_images

        _, images, _, what_images = checkpoint_images(
            argparse.Namespace(checkpoint=args.checkpoint, dataset=args.dataset, data=args.data,
                               images=max(args.images, 2)), positives_only=False)
        print(f"images: {what_images}")
    else:
        images, _, _ = make_blob_images(max(args.images, 2), size=size, seed=321)
    images = images.to(device)
    paper, fast = MDM_PROFILES["paper"], MDM_PROFILES["fast"]
    print(f"paper profile: {paper}")
    print(f"fast profile:  {fast}")

    # --- timings on one image -------------------------------------------------------------
    x = images[0]
    node = detection_node(model, x)
    with torch.no_grad():
        target_q = model.feature_vectors(x[None], node.mask_index)[0]
    x_pt, j_pt, target_p = images[1], node.mask_index, model.prototypes[node.prototype].detach()
    explain_query(model, x, cfg=dataclasses.replace(fast, iterations=3, tol=0.0))  # warm-up
    rows = []
    if not args.skip_naive:
        _, t, mem = timed(
            device,
            lambda: naive_protocol(model, x, x_pt, node.mask_index, j_pt, target_q, target_p, paper,
                                   args.naive_iterations),
        )
        scale = paper.iterations / args.naive_iterations
        rows.append(("naive paper (2 x D alone)", t * scale, mem, f"{args.naive_iterations} its x{scale:g}"))
    pcfg = dataclasses.replace(paper, iterations=args.paper_iterations)
    _, t, mem = timed(device, lambda: explain_query(model, x, cfg=pcfg))
    scale = paper.iterations / args.paper_iterations
    rows.append(("batched paper, query only", t * scale, mem, f"{args.paper_iterations} its x{scale:g}"))
    res, t, mem = timed(device, lambda: explain_query(model, x, cfg=fast))
    rows.append(("fast profile, query only", t, mem, f"{res.result.iterations} its"))
    print("\nprotocol                        s/explanation   peak MiB   measured")
    for name, sec, mib, note in rows:
        print(f"{name:30s} {sec:12.2f} {mib:10.1f}   {note}")
    by = {r[0]: r[1] for r in rows}
    if not args.skip_naive:
        naive = by["naive paper (2 x D alone)"]
        print(f"ratio naive/batched: {naive / by['batched paper, query only']:.1f}x; "
              f"naive/fast: {naive / by['fast profile, query only']:.1f}x")

    # --- fidelity: fast vs batched paper --------------------------------------------------
    candidates = {"fast": fast}
    if args.sweep:  # other compressions of the paper's path, and 8x fewer steps with torch's betas
        for k in (10, 16):
            candidates[f"compressed {k}x"] = time_compressed(paper, k)
        candidates["8x, torch betas"] = dataclasses.replace(time_compressed(paper, 8), betas=paper.betas)
        candidates["old fast (cosine)"] = MDMConfig(iterations=80, lr=0.1, lr_schedule="cosine", lr_min=0.005,
                                                    tol=1e-3, patience=10)
    if args.images == 0:
        print("\nfidelity skipped (--images 0)")
        candidates = {}
    scores: dict[str, list[tuple[float, float, int, float]]] = {k: [] for k in candidates}
    # the reference is the whole paper protocol, whatever --paper-iterations timed above
    rcfg = dataclasses.replace(paper, iterations=args.reference_iterations or paper.iterations)
    t_paper = []
    for i in range(args.images):
        ref, t, _ = timed(device, lambda i=i: explain_query(model, images[i], cfg=rcfg))
        t_paper.append(t)
        for name, cfg in candidates.items():
            out, t, _ = timed(device, lambda i=i, cfg=cfg: explain_query(model, images[i], cfg=cfg))
            r, iou = mask_agreement(ref.result.stack, out.result.stack)
            scores[name].append((r, iou, out.result.iterations, t))
    if candidates:
        print(f"\nfidelity vs batched paper ({rcfg.iterations} its) over {args.images} images "
              f"(paper run {np.median(t_paper):.2f} s median)")
        print("profile                    r median  r worst  IoU20 median  IoU20 worst  its median  s median")
    for name, sc in scores.items():
        a = np.array(sc)
        print(f"{name:26s} {np.median(a[:, 0]):8.4f} {a[:, 0].min():8.4f} {np.median(a[:, 1]):13.4f} "
              f"{a[:, 1].min():12.4f} {np.median(a[:, 2]):11.0f} {np.median(a[:, 3]):9.2f}")

    # --- Grad-CAM family ------------------------------------------------------------------
    try:
        for name, seconds in gradcam_times(model, x, device).items():
            print(f"{name}: {seconds:.3f} s per image")
    except ImportError as exc:
        print(f"Grad-CAM / Score-CAM skipped: {exc}")


if __name__ == "__main__":
    main()
