"""`predict --checkpoint DIR|auto FILE...`: one JSON object per line and file.

{"file", "checkpoint", "prediction", "class_index", "probabilities", "decision", "task_fit", "ood",
"top_prototypes"} for a readable image; {"file", "error"} with a one-line message otherwise, and the other files
still run: a FIFO, a device, a folder or a file larger than the upload limit is refused before it is read, and a
model whose scores are not finite gives no answer. `task_fit` says whether the file is what the checkpoint's card
accepts (DICOM modality / body part, colour); `ood` whether the model finds the image unlike its own validation
images. With `--checkpoint auto` each file goes to the first bundled checkpoint it fits ({"file", "error"} when
none does). Exit code 2 when any file failed, 1 when a checkpoint cannot be loaded, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys

AUTO = "auto"


def register(subparsers) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "predict", help="classify image files with a checkpoint; JSON lines out",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR|auto",
                   help="checkpoint folder, or 'auto': the bundled checkpoint each file fits")
    p.add_argument("files", nargs="+", metavar="FILE", help="DICOM, PNG, JPEG or TIFF")
    p.add_argument("--top-k", type=int, default=5, help="prototypes listed per image")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=run)


def _read(path: str):
    """(LoadedImage, None) or (None, one-line error). Only a regular file up to the upload limit is read
    (`_files.read_image_file`: checked before a byte is read)."""
    from dprotonet_core.commands._files import FileRefused, read_image_file
    from dprotonet_core.data.io import ImageReadError, read_image

    try:
        return read_image(read_image_file(path)), None
    except (FileRefused, ImageReadError) as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - an unforeseen failure is one error line too; the batch goes on
        return None, f"could not be read ({type(exc).__name__})"


def _refusal(exc: Exception, expected: type) -> str:
    """One line for a checkpoint that cannot be loaded: the check's own message, else the error's type."""
    return " ".join(str(exc).split()) if isinstance(exc, expected) else f"could not be loaded ({type(exc).__name__})"


def _bundled() -> list:
    """(folder, card) of the bundled checkpoints that exist, in the app's order."""
    from dprotonet_core.checkpoint import read_card
    from dprotonet_core.review import BUNDLED_CHECKPOINTS, DEFAULT_MODELS_DIR

    out = []
    for name in BUNDLED_CHECKPOINTS:
        folder = DEFAULT_MODELS_DIR / name
        if (folder / "card.json").is_file():
            out.append((str(folder), read_card(folder)))
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from dprotonet_core import ood
    from dprotonet_core.checkpoint import CheckpointError, load_checkpoint
    from dprotonet_core.data.io import to_model_input
    from dprotonet_core.inference import decision_rule, predict
    from dprotonet_core.task_fit import first_fitting, task_fit

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded_checkpoints: dict[str, object] = {}

    def checkpoint(folder: str):
        if folder not in loaded_checkpoints:
            loaded_checkpoints[folder] = load_checkpoint(folder)
        return loaded_checkpoints[folder]

    candidates = _bundled() if args.checkpoint == AUTO else []
    if args.checkpoint != AUTO:
        try:
            checkpoint(args.checkpoint)
        except Exception as exc:  # a checkpoint folder is untrusted input: one line, never a traceback
            print(f"error: checkpoint {args.checkpoint}: {_refusal(exc, CheckpointError)}", file=sys.stderr)
            return 1
    failed = False
    for path in args.files:
        image, error = _read(path)  # one file at a time: a bad one is one JSON error line and the batch goes on
        folder = args.checkpoint
        if error is None and args.checkpoint == AUTO:
            folder = first_fitting(image, candidates)
            if folder is None:
                error = "no bundled checkpoint is made for this image (" + "; ".join(
                    task_fit(image, card.get("accepts")).reason for _, card in candidates) + ")"
        if error is not None:
            failed = True
            print(json.dumps({"file": path, "error": error}), flush=True)
            continue
        try:
            ckpt = checkpoint(folder)
        except Exception as exc:
            print(f"error: checkpoint {folder}: {_refusal(exc, CheckpointError)}", file=sys.stderr)
            return 1
        try:
            result = predict(ckpt.model, to_model_input(image, ckpt.model.config.input_size), ckpt.classes,
                             ckpt.decision_threshold, ckpt.card.get("ood"), ckpt.calibration, ckpt.ood_detector)
        except ValueError as exc:  # the model's scores are not finite: no answer, not "normal, nan%"
            failed = True
            print(json.dumps({"file": path, "error": f"no prediction: {' '.join(str(exc).split())}"}), flush=True)
            continue
        except Exception as exc:  # noqa: BLE001 - unforeseen: one error line, the batch goes on
            failed = True
            print(json.dumps({"file": path, "error": f"no prediction ({type(exc).__name__})"}), flush=True)
            continue
        fit = task_fit(image, ckpt.card.get("accepts"))
        check = ood.check(result.ood_score, ckpt.card.get("ood"))
        fields = result.to_json(args.top_k)
        top = fields.pop("top_prototypes")
        decision = decision_rule(ckpt.classes, ckpt.decision_threshold, calibrated=ckpt.calibration is not None,
                                 rule=(ckpt.card.get("decision_threshold") or {}).get("rule"))
        try:  # valid JSON or an error line: never NaN or Infinity in the output
            line = json.dumps({"file": path, "checkpoint": str(folder), **fields, "decision": decision,
                               "task_fit": fit.to_json(), "ood": {**check.to_json(),
                                                                 "warning": ood.warning(ckpt.card.get("ood"))
                                                                 if check.flagged else None},
                               "top_prototypes": top},
                              allow_nan=False)
        except ValueError:
            failed = True
            line = json.dumps({"file": path, "error": "no prediction: the model gave a value that is not finite"})
        print(line, flush=True)
    return 2 if failed else 0
