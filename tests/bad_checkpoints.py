"""Checkpoint folders that cannot be trusted, for the safety, HTTP and load tests: each is the tiny test checkpoint
(tests/app_support.py) with one thing wrong.

VARIANTS: (name, how to break a copy of the folder, words the one-line refusal must contain). Hash, shape and
pickle problems; card.json too large, too deep, or with fields of the wrong type; an unknown backbone; sizes that
would make building the model allocate gigabytes; file names that point outside the folder, symbolic links,
unlisted files; NaN weights; a prototype image far larger than the model's input.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

# A file outside every checkpoint folder that a hostile card points at (the test never expects its hash shown).
OUTSIDE_FILE = Path("/etc/passwd")


def card(folder: Path) -> dict:
    return json.loads((folder / "card.json").read_text())


def write_card(folder: Path, value: dict) -> None:
    (folder / "card.json").write_text(json.dumps(value, indent=1))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rehash(folder: Path, rel: str) -> None:
    value = card(folder)
    value["sha256"][rel] = sha256(folder / rel)
    write_card(folder, value)


def tampered_model(folder: Path) -> None:
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF  # one byte of the last tensor
    (folder / "model.safetensors").write_bytes(bytes(data))


def tampered_prototype_image(folder: Path) -> None:
    path = folder / "prototypes" / "proto_001.png"
    path.write_bytes(path.read_bytes() + b"\x00")


def card_shape(folder: Path) -> None:
    value = card(folder)
    value["tensors"]["prototypes"]["shape"] = [4, 8]
    write_card(folder, value)


def model_shape(folder: Path) -> None:
    """Tensors, card and hash agree with each other, but not with the model the card describes."""
    state = load_file(str(folder / "model.safetensors"))
    state["prototypes"] = state["prototypes"][:, :8].contiguous()
    save_file(state, str(folder / "model.safetensors"))
    value = card(folder)
    value["tensors"]["prototypes"]["shape"] = [4, 8]
    write_card(folder, value)
    rehash(folder, "model.safetensors")


def card_classes(folder: Path) -> None:
    value = card(folder)
    value["classes"] = ["normal", "finding", "other"]
    write_card(folder, value)


def card_without_hashes(folder: Path) -> None:
    value = card(folder)
    del value["sha256"]
    write_card(folder, value)


def card_not_json(folder: Path) -> None:
    (folder / "card.json").write_text("{ not json")


def pickle_by_suffix(folder: Path) -> None:
    (folder / "optimizer.pt").write_bytes(b"anything")


def pickle_by_header(folder: Path) -> None:
    """A pickle under an innocent name, listed with its hash: refused from its first bytes."""
    (folder / "prototypes" / "extra.dat").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    rehash(folder, "prototypes/extra.dat")


def unlisted_prototype_file(folder: Path) -> None:
    (folder / "prototypes" / "extra.dat").write_bytes(pickle.dumps({"a": 1}, protocol=4))


def torch_save_as_model(folder: Path) -> None:
    """torch.save (a zip holding a pickle) under the model's name, with card.json's hash updated to match."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    (folder / "model.safetensors").write_bytes(buffer.getvalue())
    rehash(folder, "model.safetensors")


def unknown_backbone(folder: Path) -> None:
    value = card(folder)
    value["model_config"]["backbone"] = "resnet9000"
    write_card(folder, value)


def deeply_nested_card(folder: Path) -> None:
    """100,000 nested lists: json.loads itself raises RecursionError."""
    text = (folder / "card.json").read_text().rstrip()
    assert text.endswith("}")
    (folder / "card.json").write_text(text[:-1] + ', "notes": ' + "[" * 100_000 + "]" * 100_000 + "}")


def nested_card(folder: Path) -> None:
    """Parsable, but 200 levels deep (would exhaust the recursion of any renderer that walks it)."""
    value = card(folder)
    value["notes"] = json.loads("[" * 200 + "]" * 200)
    write_card(folder, value)


def huge_card(folder: Path) -> None:
    value = card(folder)
    value["notes"] = "x" * (3 * 1024 * 1024)
    write_card(folder, value)


def integer_class_names(folder: Path) -> None:
    value = card(folder)
    value["classes"] = [0, 1]
    write_card(folder, value)


def name_not_a_string(folder: Path) -> None:
    value = card(folder)
    value["name"] = {"nested": ["object"]}
    write_card(folder, value)


def prototype_record_of_wrong_types(folder: Path) -> None:
    """prototype_mdm's settings of the wrong types (read by the pages' captions and by explain)."""
    value = card(folder)
    value["prototype_mdm"] = {"profile": "standard", "mdm_config": {"betas": {"a": 5}}}
    write_card(folder, value)


def ood_detector_not_listed(folder: Path) -> None:
    """The card names the out-of-distribution detector, but no ood.safetensors is listed with its hash."""
    value = card(folder)
    value["ood"] = {"score": "detector", "threshold": 1.0, "components": ["stage_1"], "normalisers": {"stage_1": 1}}
    write_card(folder, value)


def huge_mask_count(folder: Path) -> None:
    """4 million feature masks: 4 GB for the masks alone, were the model built."""
    value = card(folder)
    value["model_config"]["num_feature_masks"] = 4_000_000
    write_card(folder, value)


def huge_mask_tensor(folder: Path) -> None:
    """Each size within its own bound, but 4096 masks x 4096 channels x 4 x 4 = 268 million mask values."""
    value = card(folder)
    value["model_config"]["num_feature_masks"] = 4096
    value["model_config"]["prototype_channels"] = 4096
    write_card(folder, value)


def absolute_prototype_image(folder: Path) -> None:
    index = json.loads((folder / "prototypes" / "index.json").read_text())
    index[1]["image"] = str(OUTSIDE_FILE)
    (folder / "prototypes" / "index.json").write_text(json.dumps(index))
    rehash(folder, "prototypes/index.json")


def traversal_prototype_image(folder: Path) -> None:
    index = json.loads((folder / "prototypes" / "index.json").read_text())
    index[1]["image"] = "../../../../../../etc/passwd"
    (folder / "prototypes" / "index.json").write_text(json.dumps(index))
    rehash(folder, "prototypes/index.json")


def traversal_in_hash_list(folder: Path) -> None:
    """The sha256 list names a file far outside the folder, with a wrong hash (an old loader printed the real
    one)."""
    value = card(folder)
    value["sha256"]["../../../../../../etc/passwd"] = "0" * 64
    write_card(folder, value)


def absolute_in_hash_list(folder: Path) -> None:
    value = card(folder)
    value["sha256"][str(OUTSIDE_FILE)] = "0" * 64
    write_card(folder, value)


def symlinked_prototype_image(folder: Path) -> None:
    """proto_001.png is a link to a copy outside the folder (same bytes, so its hash still matches)."""
    target = folder.parent / f".{folder.name}-outside.png"
    shutil.copy(folder / "prototypes" / "proto_001.png", target)
    (folder / "prototypes" / "proto_001.png").unlink()
    os.symlink(target, folder / "prototypes" / "proto_001.png")


def nan_weights(folder: Path) -> None:
    state = load_file(str(folder / "model.safetensors"))
    state["last_layer.weight"][0, 0] = float("nan")
    save_file(state, str(folder / "model.safetensors"))
    rehash(folder, "model.safetensors")


def infinite_weights(folder: Path) -> None:
    state = load_file(str(folder / "model.safetensors"))
    state["prototypes"][1, 2] = float("inf")
    save_file(state, str(folder / "model.safetensors"))
    rehash(folder, "model.safetensors")


def huge_prototype_image(folder: Path) -> None:
    """A 6000 x 6000 PNG (a few KB on disk, 108 MB decoded) where a 64 x 64 one belongs."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((6000, 6000, 3), np.uint8)).save(buffer, format="PNG", compress_level=1)
    (folder / "prototypes" / "proto_001.png").write_bytes(buffer.getvalue())
    rehash(folder, "prototypes/proto_001.png")


# (name, how to break the folder, words the message must contain)
VARIANTS: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
    ("tampered-model", tampered_model, ("model.safetensors", "sha256")),
    ("tampered-prototype-image", tampered_prototype_image, ("proto_001.png", "sha256")),
    ("card-shape", card_shape, ("prototypes", "shape", "card.json")),
    ("model-shape", model_shape, ("prototypes", "shape")),
    ("card-classes", card_classes, ("classes",)),
    ("card-without-hashes", card_without_hashes, ("card.json", "sha256")),
    ("card-not-json", card_not_json, ("card.json", "JSON")),
    ("pickle-by-suffix", pickle_by_suffix, ("optimizer.pt", "pickle")),
    ("pickle-by-header", pickle_by_header, ("extra.dat", "pickle")),
    ("unlisted-prototype-file", unlisted_prototype_file, ("extra.dat", "not listed")),
    ("torch-save-as-model", torch_save_as_model, ("model.safetensors", "pickle")),
    ("unknown-backbone", unknown_backbone, ("backbone", "resnet9000")),
    ("deeply-nested-card", deeply_nested_card, ("card.json", "nests deeper")),
    ("nested-card", nested_card, ("card.json", "nests deeper")),
    ("huge-card", huge_card, ("card.json", "larger than")),
    ("integer-class-names", integer_class_names, ("classes", "strings")),
    ("name-not-a-string", name_not_a_string, ("name", "string")),
    ("huge-mask-count", huge_mask_count, ("num_feature_masks",)),
    ("huge-mask-tensor", huge_mask_tensor, ("feature-mask",)),
    ("absolute-prototype-image", absolute_prototype_image, ("index.json", "plain file name")),
    ("traversal-prototype-image", traversal_prototype_image, ("index.json", "plain file name")),
    ("traversal-in-hash-list", traversal_in_hash_list, ("sha256", "etc/passwd", "refused")),
    ("absolute-in-hash-list", absolute_in_hash_list, ("sha256", "etc/passwd", "refused")),
    ("symlinked-prototype-image", symlinked_prototype_image, ("proto_001.png", "symbolic link")),
    ("nan-weights", nan_weights, ("last_layer.weight", "NaN")),
    ("infinite-weights", infinite_weights, ("prototypes", "infinite")),
    ("huge-prototype-image", huge_prototype_image, ("proto_001.png", "64 x 64", "6000 x 6000")),
    ("prototype-record-of-wrong-types", prototype_record_of_wrong_types, ("prototype_mdm.mdm_config",)),
    ("ood-detector-not-listed", ood_detector_not_listed, ("ood.safetensors", "not listed")),
]

# A few of them, for the tests that need bad folders present rather than each one checked.
SOME = ("unknown-backbone", "deeply-nested-card", "integer-class-names", "traversal-in-hash-list", "nan-weights",
        "huge-mask-count")


def add_bad_checkpoints(root: Path, good: Path, names: tuple[str, ...] | None = None) -> list[str]:
    """Copies of the good checkpoint folder under `root`, one broken per variant (all, or those named)."""
    made = []
    for name, breaker, _ in VARIANTS:
        if names is not None and name not in names:
            continue
        shutil.copytree(good, root / name)
        breaker(root / name)
        made.append(name)
    return made
