"""A checkpoint folder is untrusted input: what may be in it and what its card.json may say, checked before any of
it is used (checkpoint.py calls these).

- Files: only files listed in card.json's sha256 list are read (card.json itself aside), each under a plain name
  (no `/` but the one after `prototypes`, no `\\`, no `..`, not absolute) that resolves inside the folder; a
  symbolic link anywhere in the folder, a pickle-type file, or a file in prototypes/ the list does not name is
  refused. Other unlisted files (a training log) are never opened by the loader. The one exception is the
  evaluation/ report `evaluate --attach` writes after the card: the Evaluation page reads its metrics.json and
  figure JSON as untrusted display data (evaluate/report.py load_evaluation: regular files of bounded size and
  depth, values type-checked, figures that name a URL or HTML not drawn, text shown as written).
- card.json: at most MAX_CARD_BYTES and MAX_JSON_DEPTH levels deep; the fields the app reads have the type it
  expects (class names are strings, the name is a string, ...).
- model_config: a known backbone and sizes within CONFIG_LIMITS, so that building the model cannot ask for
  gigabytes (checkpoint.py also checks the tensor header against the card before building it).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

CARD_FILE = "card.json"
MODEL_FILE = "model.safetensors"
PROTOTYPE_DIR = "prototypes"
PROTOTYPE_INDEX = "index.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib", ".npz")

MAX_CARD_BYTES = 1024 * 1024  # the bundled cards are about 70 KB
MAX_INDEX_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32  # the bundled cards nest 6 levels
MAX_FOLDER_ENTRIES = 10_000
MAX_NAME_CHARS = 255

# Inclusive bounds of model_config's sizes. The bundled checkpoints: 224 px, 2 classes, 10 prototypes per class,
# 512 channels, 240 feature masks.
CONFIG_LIMITS: dict[str, tuple[int, int]] = {
    "input_size": (16, 1024),
    "num_classes": (2, 64),
    "prototypes_per_class": (1, 256),
    "prototype_channels": (1, 4096),
    "shaping_hidden_channels": (1, 4096),
    "num_feature_masks": (1, 4096),
}
MAX_MASK_ELEMENTS = 1 << 26  # feature masks n x D x H1 x W1 as float32: 256 MB (bundled: 6.0 million)
MAX_MODEL_ELEMENTS = 1 << 28  # every tensor of the model together (bundled: 9.2 million)

# card.json fields the app reads, and the type each must have when present.
_STR_FIELDS = ("name", "short_name", "task", "trained_on", "intended_use", "dtype", "backbone", "mdm_profile",
               "command_line")
_BOOL_FIELDS = ("synthetic",)
_DICT_FIELDS = ("data", "training_data", "accepts", "decision_threshold", "calibration", "ood", "metrics",
                "mdm_default_profile", "prototype_mdm", "cross_validation", "software")
_STR_LIST_FIELDS = ("limitations", "warnings")


class CheckpointError(Exception):
    """A checkpoint folder that cannot be trusted; the message names the file and the problem (one line)."""


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            items = item.values()
        elif isinstance(item, list):
            items = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in items)
    return deepest


def read_json(path: Path, what: str, max_bytes: int) -> Any:
    """A small JSON file of the folder: a regular file, at most `max_bytes`, at most MAX_JSON_DEPTH deep."""
    try:
        info = path.lstat()
    except OSError:
        raise CheckpointError(f"{what} is missing") from None
    if not path.is_file() or path.is_symlink():
        raise CheckpointError(f"{what}: not a regular file; refused")
    if info.st_size > max_bytes:
        raise CheckpointError(f"{what} is larger than {max_bytes // 1024} KB; refused")
    try:
        with open(path, "rb") as f:
            text = f.read(max_bytes + 1).decode("utf-8")
        value = json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels; refused") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{what} is not valid JSON ({_one_line(exc)})") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels; refused")
    return value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def plain_name(name: Any, what: str) -> str:
    """A file name inside the folder: a string with no `/`, `\\`, `..`, NUL or leading `~`; refused otherwise."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise CheckpointError(f"{what}: {name!r} is not a file name; refused")
    if "/" in name or "\\" in name or ".." in name or "\x00" in name or name in (".", "~") or name.startswith("~"):
        raise CheckpointError(f"{what}: {name!r} is not a plain file name inside the checkpoint folder; refused")
    return name


def listed_parts(rel: Any) -> tuple[str, ...]:
    """A name of card.json's sha256 list as its parts: 'model.safetensors' or 'prototypes/<name>'."""
    if not isinstance(rel, str):
        raise CheckpointError(f"{CARD_FILE}: the sha256 list names {rel!r}, not a file name; refused")
    parts = tuple(rel.split("/"))
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != PROTOTYPE_DIR):
        raise CheckpointError(f"{CARD_FILE}: the sha256 list names {rel!r}, not a file of a checkpoint; refused")
    for part in parts:
        plain_name(part, f"{CARD_FILE}'s sha256 list")
    return parts


def inside(folder: Path, rel: str) -> Path:
    """The listed file `rel` of `folder`: a regular file, no symbolic link on the way, resolving inside it."""
    parts = listed_parts(rel)
    path = folder.joinpath(*parts)
    step = folder
    for part in parts:
        step = step / part
        if step.is_symlink():
            raise CheckpointError(f"{rel}: a symbolic link; refused")
    root = folder.resolve()
    resolved = path.resolve()
    if resolved == root or root not in resolved.parents:
        raise CheckpointError(f"{rel}: resolves outside the checkpoint folder; refused")
    if not path.is_file():
        raise CheckpointError(f"{rel}: listed in {CARD_FILE} but missing")
    return path


def scan_folder(folder: Path) -> list[str]:
    """Every entry of the folder (relative names, '/'-separated), refusing symbolic links and pickle-type files
    by name alone (nothing is opened)."""
    names: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        for name in [*dirnames, *filenames]:
            rel = (here / name).relative_to(folder).as_posix()
            names.append(rel)
            if len(names) > MAX_FOLDER_ENTRIES:
                raise CheckpointError(f"the folder holds more than {MAX_FOLDER_ENTRIES} files; refused")
            if (here / name).is_symlink():
                raise CheckpointError(f"{rel}: a symbolic link; refused (checkpoint files are copied, not linked)")
            if name in filenames and Path(name).suffix.lower() in PICKLE_SUFFIXES:
                raise CheckpointError(f"{rel}: pickle-type files are not accepted in a checkpoint folder")
    return names


def refuse_unlisted(names: list[str], listed: dict) -> None:
    """A file in prototypes/ that the sha256 list does not name is refused (the loader owns that folder)."""
    for rel in names:
        parts = rel.split("/")
        if len(parts) == 2 and parts[0] == PROTOTYPE_DIR and rel not in listed:
            raise CheckpointError(f"{rel}: not listed in {CARD_FILE}'s sha256 list; refused")
        if len(parts) > 2 and parts[0] == PROTOTYPE_DIR:
            raise CheckpointError(f"{rel}: sub-folders of {PROTOTYPE_DIR}/ are not part of a checkpoint; refused")


def refuse_pickle_header(rel: str, head: bytes) -> None:
    """A listed file whose first bytes are a pickle or a zip archive (torch.save's format)."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise CheckpointError(f"{rel}: looks like a Python pickle; refused")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        raise CheckpointError(f"{rel}: a zip archive (torch.save's format, which holds a pickle); refused")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def check_card_fields(card: Any) -> dict:
    """The types of the card's fields the app reads; the first wrong one is refused."""
    if not isinstance(card, dict):
        raise CheckpointError(f"{CARD_FILE} is not a JSON object")
    for key in ("classes", "model_config", "sha256", "tensors"):
        if key not in card:
            raise CheckpointError(f"{CARD_FILE} has no {key!r} field")
    classes = card["classes"]
    if (not isinstance(classes, list) or not classes
            or not all(isinstance(c, str) and c.strip() and len(c) <= 200 for c in classes)):
        raise CheckpointError(f"{CARD_FILE}: 'classes' must be a list of class names (strings)")
    if len(set(classes)) != len(classes):
        raise CheckpointError(f"{CARD_FILE}: 'classes' names a class twice")
    for key, kind in (("model_config", dict), ("sha256", dict), ("tensors", dict)):
        if not isinstance(card[key], kind):
            raise CheckpointError(f"{CARD_FILE}: {key!r} must be a JSON object")
    for rel, digest in card["sha256"].items():
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise CheckpointError(f"{CARD_FILE}: the sha256 of {rel!r} is not 64 hex digits")
    for name, spec in card["tensors"].items():
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape):
            raise CheckpointError(f"{CARD_FILE}: tensor {name!r} has no valid shape")
    for key in _STR_FIELDS:
        if card.get(key) is not None and not isinstance(card[key], str):
            raise CheckpointError(f"{CARD_FILE}: {key!r} must be a string")
    for key in _BOOL_FIELDS:
        if key in card and not isinstance(card[key], bool):
            raise CheckpointError(f"{CARD_FILE}: {key!r} must be true or false")
    for key in _DICT_FIELDS:
        if card.get(key) is not None and not isinstance(card[key], dict):
            raise CheckpointError(f"{CARD_FILE}: {key!r} must be a JSON object")
    for key in _STR_LIST_FIELDS:
        value = card.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise CheckpointError(f"{CARD_FILE}: {key!r} must be a list of strings")
    threshold = (card.get("decision_threshold") or {}).get("value")
    if threshold is not None and not (_is_number(threshold) and 0.0 <= threshold <= 1.0):
        raise CheckpointError(f"{CARD_FILE}: decision_threshold.value must be a number in [0, 1]")
    calibration = card.get("calibration") or {}
    for key in ("slope", "intercept"):
        if key in calibration and not _is_number(calibration[key]):
            raise CheckpointError(f"{CARD_FILE}: calibration.{key} must be a finite number")
    ood = card.get("ood") or {}
    if ood.get("threshold") is not None and not _is_number(ood["threshold"]):
        raise CheckpointError(f"{CARD_FILE}: ood.threshold must be a finite number")
    if ood.get("score") is not None and not isinstance(ood["score"], str):
        raise CheckpointError(f"{CARD_FILE}: ood.score must be a string")
    if ood.get("score") == "detector":  # the out-of-distribution detector of ood_detector.py
        if "ood.safetensors" not in (card.get("sha256") or {}):
            raise CheckpointError(f"{CARD_FILE}: ood names the detector but ood.safetensors is not listed with "
                                  "its hash")
        components, normalisers = ood.get("components"), ood.get("normalisers")
        if not (isinstance(components, list) and components and all(isinstance(c, str) for c in components)
                and isinstance(normalisers, dict) and all(_is_number(normalisers.get(c)) for c in components)):
            raise CheckpointError(f"{CARD_FILE}: ood.components must be names, each with a number in "
                                  "ood.normalisers")
    for key in ("prototype_mdm", "mdm_default_profile"):  # read by the pages' captions and by explain
        record = card.get(key) or {}
        if record.get("profile") is not None and not isinstance(record["profile"], str):
            raise CheckpointError(f"{CARD_FILE}: {key}.profile must be a string")
        settings = record.get("mdm_config")
        if settings is not None and not (isinstance(settings, dict) and all(
                isinstance(v, (str, bool)) or _is_number(v) or v is None
                or (isinstance(v, list) and len(v) <= 8 and all(_is_number(x) for x in v))
                for v in settings.values())):
            raise CheckpointError(f"{CARD_FILE}: {key}.mdm_config must map names to numbers, strings or "
                                  "short lists of numbers")
    accepts = card.get("accepts") or {}
    for key, value in accepts.items():
        if not (isinstance(value, (str, bool)) or value is None
                or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise CheckpointError(f"{CARD_FILE}: accepts.{key} must be a string or a list of strings")
    return card


def check_config_values(config: dict) -> None:
    """model_config's sizes are integers within CONFIG_LIMITS, its backbone known, its floats finite."""
    from dprotonet_core.model.backbones import BACKBONES

    backbone = config.get("backbone")
    if backbone not in BACKBONES:
        raise CheckpointError(f"{CARD_FILE}: model_config names an unknown backbone {str(backbone)[:40]!r}")
    for key, (low, high) in CONFIG_LIMITS.items():
        if key not in config:
            continue
        value = config[key]
        if not _is_int(value) or not low <= value <= high:
            raise CheckpointError(f"{CARD_FILE}: model_config.{key} must be an integer from {low} to {high}")
    if "mask_seed" in config and not _is_int(config["mask_seed"]):
        raise CheckpointError(f"{CARD_FILE}: model_config.mask_seed must be an integer")
    for key in ("epsilon", "class_connection", "incorrect_class_connection"):
        if key in config and not _is_number(config[key]):
            raise CheckpointError(f"{CARD_FILE}: model_config.{key} must be a finite number")
    for key in ("mean", "std"):
        value = config.get(key, [0.5, 0.5, 0.5])
        if not (isinstance(value, list) and len(value) == 3 and all(_is_number(v) for v in value)):
            raise CheckpointError(f"{CARD_FILE}: model_config.{key} must be three finite numbers")
        if key == "std" and min(value) <= 0:
            raise CheckpointError(f"{CARD_FILE}: model_config.std must be positive")
