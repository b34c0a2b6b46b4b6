"""Is the paper's MDM protocol (Adam lr 1e-2, 800 iterations) converged, and is its answer the minimum?

For each image: the query-side loss (eq. 13, summed over the D vectors) after each iteration count in
--its (e.g. 100 200 400 800 1600; the runs share a trajectory: constant lr, same seed), the agreement of
each run's S = sum_i g(d_i) with the longest run (Pearson r, IoU of the top 20%), and, for scale, the
loss of the two trivial masks: all zeros (delete everything) and all ones (keep everything). A fast
profile can only be "faithful to the paper protocol" where that protocol has itself settled.
Prints figures; asserts nothing.

    python -m bench.mdm_convergence --checkpoint assets/checkpoints/ichallenge-pm \\
        --dataset ichallenge-pm --data ../shared/data/palm-training400-224 --images 3 --its 200 800 1600
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import machine_info
from bench.mdm_eta import checkpoint_images
from dprotonet_core.config import MDM_PROFILES
from dprotonet_core.evaluate.metrics import mask_agreement
from dprotonet_core.explain import mdm


def summed_loss(model, x, j, target, cfg, vectors) -> float:
    """Eq. 13 summed over the D vectors, for given vectors (no optimisation)."""
    d = cfg.num_vectors
    size = x.shape[-2:]
    with torch.no_grad():
        g = mdm.upsample_mask_vectors(vectors, size).reshape(d, 1, *size)
        z = model.feature_vectors(mdm.masked_image(x[None].expand(d, -1, -1, -1), g), torch.full((d,), j))
        scale = None
        if cfg.distance == "deletion":
            blank = mdm.baseline_image(x[None], cfg.baseline, cfg.blur_sigma)
            scale = mdm.deletion_distance(model.feature_vectors(blank, j), target[None])
        dist = mdm.feature_distance(z, target[None].expand(d, -1), cfg.distance, scale)
        l1 = torch.stack([mdm.mask_l1(v) for v in vectors])
    return float((dist + cfg.effective_eta * l1).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--dataset", default="ichallenge-pm")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/palm-training400-224"))
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--its", type=int, nargs="+", default=[200, 800, 1600])
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_info())
    model, images, _, what = checkpoint_images(args, positives_only=False)
    cfg = MDM_PROFILES[args.profile]
    print(f"{what}\nprofile {args.profile}: {cfg}")
    for n, x in enumerate(images):
        node = mdm.detection_node(model, x)
        with torch.no_grad():
            target = model.feature_vectors(x[None], node.mask_index)[0]
        zeros = [torch.zeros(a, b) for a, b in mdm.mask_vector_sizes(cfg)]
        ones = [torch.ones(a, b) for a, b in mdm.mask_vector_sizes(cfg)]
        print(f"image {n}: loss of all-zero masks {summed_loss(model, x, node.mask_index, target, cfg, zeros):.3f}, "
              f"all-one masks {summed_loss(model, x, node.mask_index, target, cfg, ones):.3f}", flush=True)
        runs = {}
        for its in sorted(args.its):
            t0 = time.perf_counter()
            res = mdm.optimise_mask_vectors(model, x, node.mask_index, target, dataclasses.replace(cfg, iterations=its))
            runs[its] = (res, time.perf_counter() - t0)
        longest = runs[max(runs)][0].stack
        for its, (res, seconds) in runs.items():
            r, iou = mask_agreement(longest, res.stack)
            loss = summed_loss(model, x, node.mask_index, target, cfg, res.vectors)
            print(f"  {its:5d} its: loss {loss:9.3f}  r vs {max(runs)} its {r:6.3f}  IoU20 {iou:5.3f}  "
                  f"mean d {np.mean([float(v.mean()) for v in res.vectors]):.3f}  ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
