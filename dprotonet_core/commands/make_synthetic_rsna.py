"""`make-synthetic-rsna`: a synthetic dataset in the RSNA Pneumonia Detection layout."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "make-synthetic-rsna",
        help="write synthetic chest radiographs in the RSNA layout (real ids, targets and boxes)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (RSNA layout)")
    parser.add_argument("--n", required=True, type=int, help="number of patients")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--positive-fraction", type=float, default=None, help="default: the real prevalence")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dprotonet_core.data.synthetic_rsna import generate

    ids = generate(args.out, args.n, args.seed, args.size, args.positive_fraction)
    print(f"wrote {len(ids)} synthetic RSNA-layout images to {args.out}")
    return 0
