"""What a backbone costs on this machine (what the choice of backbone costs): prints figures, asserts nothing.

For each backbone, a DProtoNet at the given input size with random weights (the cost of a step does not
depend on the weights):
  parameters / fp16 MiB   size of the weights as a checkpoint ships them
  predict                 one image, forward only (the app's prediction)
  MDM step                one Adam step of the query-side optimisation (the D = 10 vectors in one batch),
                          timed over --mdm-steps and scaled to the fast profile (100 steps) and the paper
                          protocol (800): the per-step cost is constant, every step has the same shapes
  train step              forward + backward + Adam on a batch of 32, scaled to one epoch of 256 images
Ratios are against the first backbone, measured in the same run.

    python -m bench.backbones [--backbones small_resnet resnet18] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from bench.common import machine_info
from dprotonet_core.config import MDM_PROFILES, ModelConfig
from dprotonet_core.explain.mdm import explain_query
from dprotonet_core.model.dprotonet import DProtoNet


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(backbone: str, size: int, mdm_steps: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = DProtoNet(ModelConfig(backbone=backbone, input_size=size)).eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.rand(3, size, size)
    with torch.inference_mode():
        predict = median_seconds(lambda: model(x.unsqueeze(0)), repeats)
    frozen = model.requires_grad_(False)
    cfg = dataclasses.replace(MDM_PROFILES["fast"], iterations=mdm_steps, tol=0.0)
    mdm_step = median_seconds(lambda: explain_query(frozen, x, cfg=cfg), repeats) / mdm_steps

    net = DProtoNet(ModelConfig(backbone=backbone, input_size=size)).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    batch = torch.rand(32, 3, size, size)
    target = torch.randint(0, 2, (32,))

    def train_step() -> None:
        loss = torch.nn.functional.cross_entropy(net(batch).logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train = median_seconds(train_step, max(1, repeats // 2))
    return {"backbone": backbone, "params": params, "fp16_mib": params * 2 / 2**20, "predict": predict,
            "mdm_step": mdm_step, "train_step": train}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["small_resnet", "resnet18"])
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--mdm-steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_info(torch.device("cpu")))
    print(f"input {args.input_size} px; MDM: D = 10 vectors in one batch, timed over {args.mdm_steps} steps")
    rows = [measure(b, args.input_size, args.mdm_steps, args.repeats) for b in args.backbones]
    print(f"{'backbone':<14}{'params':>10}{'fp16 MiB':>10}{'predict s':>11}{'MDM step s':>12}"
          f"{'fast (100) s':>14}{'paper (800) s':>15}{'train epoch s':>15}")
    for r in rows:
        print(f"{r['backbone']:<14}{r['params'] / 1e6:>9.2f}M{r['fp16_mib']:>10.1f}{r['predict']:>11.3f}"
              f"{r['mdm_step']:>12.3f}{100 * r['mdm_step']:>14.1f}{800 * r['mdm_step']:>15.1f}"
              f"{r['train_step'] * 256 / 32:>15.1f}")
    first = rows[0]
    for r in rows[1:]:
        ratios = {k: r[k] / first[k] for k in ("predict", "mdm_step", "train_step")}
        print(f"{r['backbone']} / {first['backbone']}: predict {ratios['predict']:.1f}x, "
              f"MDM step {ratios['mdm_step']:.1f}x, train step {ratios['train_step']:.1f}x")


if __name__ == "__main__":
    main()
