"""`python -m dprotonet_core evaluate`: the paper's metrics and Table 5 for a checkpoint on a dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dprotonet_core.checkpoint import CheckpointError
from dprotonet_core.commands._data import data_root
from dprotonet_core.config import EvalConfig
from dprotonet_core.data.registry import DATASETS
from dprotonet_core.evaluate.cams import ALL_METHODS, DEFAULT_METHODS
from dprotonet_core.evaluate.runner import EvalRequest, run_evaluation


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="classification metrics and Table 5 (AD, AI, D, I, DICE, IoU, PPV, Sensitivity) per CAM method",
        description=__doc__,
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder (card.json, model.safetensors)")
    parser.add_argument("--data", required=True, action="extend", nargs="+",
                        help="dataset root in its publisher's layout; RSNA takes several (--data A --data B)")
    parser.add_argument("--out", required=True, help="folder for metrics.json, table5.md/.csv, curves, figures")
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="folder")
    parser.add_argument("--methods", nargs="+", choices=ALL_METHODS, default=list(DEFAULT_METHODS), metavar="METHOD",
                        help=f"CAM methods: {' '.join(ALL_METHODS)} (default: all but mdm-printed)")
    parser.add_argument("--limit", type=int, default=EvalConfig.cam_limit,
                        help="images that get CAMs (0: classification only)")
    parser.add_argument("--split", choices=("val", "test", "all"), default="val",
                        help="val = the checkpoint's held-out images (ids in its card)")
    parser.add_argument("--attach", action="store_true", help="also copy the reports into <checkpoint>/evaluation/")
    parser.add_argument("--top-percent", type=float, default=None,
                        help="localisation threshold k (default: the dataset's, "
                        + ", ".join(f"{spec.top_percent:g} for {name}" for name, spec in DATASETS.items()) + ")")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    request = EvalRequest(
        checkpoint=args.checkpoint, data=data_root(args.data), out=args.out, dataset=args.dataset, methods=args.methods,
        limit=args.limit, split=args.split, attach=args.attach, device=_device(args.device),
        top_percent=args.top_percent,
    )
    try:
        metrics = run_evaluation(request, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, CheckpointError) as exc:  # layout errors, unknown classes, empty split
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    cls = metrics["classification"]
    summary = ", ".join(f"{k} {_number(cls[k])}" for k in ("accuracy", "sensitivity", "specificity", "roc_auc"))
    print(f"{cls['n']} images ({cls['averaging']}): {summary}")
    print((Path(args.out) / "table5.md").read_text())
    problem = metrics.get("figures", {}).get("png_problem")
    if problem:
        print(f"note: {problem}", file=sys.stderr)
    return 0
