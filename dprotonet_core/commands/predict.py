"""`predict --checkpoint DIR FILE...`: one JSON object per line and file.

{"file", "prediction", "class_index", "probabilities", "top_prototypes"} for a readable image;
{"file", "error"} with a one-line message otherwise (the other files still run). Exit code 2
when any file failed, 1 when the checkpoint cannot be loaded, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "predict", help="classify image files with a checkpoint; JSON lines out",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR")
    p.add_argument("files", nargs="+", metavar="FILE", help="DICOM, PNG, JPEG or TIFF")
    p.add_argument("--top-k", type=int, default=5, help="prototypes listed per image")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=run)


def _read(path: str, size: int):
    """(model input, None) or (None, one-line error)."""
    from dprotonet_core.data.io import ImageReadError, read_image, to_model_input

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return None, f"cannot open the file ({exc.strerror or exc})."
    try:
        return to_model_input(read_image(data), size), None
    except ImageReadError as exc:
        return None, str(exc)


def run(args: argparse.Namespace) -> int:
    import torch

    from dprotonet_core.checkpoint import CheckpointError, load_checkpoint
    from dprotonet_core.inference import predict

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ckpt = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        print(f"error: checkpoint {args.checkpoint}: {exc}", file=sys.stderr)
        return 1
    failed = False
    for path in args.files:
        x, error = _read(path, ckpt.model.config.input_size)
        if error is not None:
            failed = True
            print(json.dumps({"file": path, "error": error}), flush=True)
            continue
        result = predict(ckpt.model, x, ckpt.classes, ckpt.decision_threshold)
        print(json.dumps({"file": path, **result.to_json(args.top_k)}), flush=True)
    return 2 if failed else 0
