"""The checkpoint format (a folder; see DESIGN.md). Nothing here unpickles.

model.safetensors              every tensor of the model; the 240 feature masks as uint8
                               (exact: they are drawn on 256 levels), floats in fp32 or fp16
card.json                      classes, backbone, input size, configs, data, metrics,
                               versions, intended use, sha256 of every file
prototypes/index.json          one record per prototype: class, source image id, mask
                               index, number of views R, image file
prototypes/proto_XXX.png       the source image x^{p_t} at model input size
prototypes/mask_vectors.safetensors
                               the prototype-side MDM mask vectors d_i (eq. 14), one
                               tensor per i of shape (K, a_i, b_i); the (D, H, W) stack
                               is g(d_i), recomputed on load (a few KiB instead of MiB)
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dprotonet_core.config import ModelConfig, from_dict, to_dict
from dprotonet_core.model.dprotonet import DProtoNet

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CARD_FILE = "card.json"
PROTOTYPE_DIR = "prototypes"
PROTOTYPE_INDEX = "index.json"
MASK_VECTORS_FILE = "mask_vectors.safetensors"
_MASK_KEY = "feature_masks"
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib", ".npz")


def model_digest(card: dict) -> str:
    """The sha256 of the weights file as a checkpoint's card records it ("" when it has none): the model's
    identity for caches and the samples' stored explanations."""
    return card.get("sha256", {}).get(MODEL_FILE, "")


class CheckpointError(Exception):
    """A checkpoint folder that cannot be trusted; the message names the file and the problem."""


@dataclass
class PrototypeRecord:
    """Provenance of one prototype (eq. 9-11)."""

    index: int
    class_index: int
    class_name: str
    source_id: str
    mask_index: int
    views: int
    image: str  # file name inside prototypes/

    @classmethod
    def from_dict(cls, data: dict) -> PrototypeRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass
class Checkpoint:
    """A loaded, verified checkpoint."""

    path: Path
    model: DProtoNet
    card: dict
    prototypes: list[PrototypeRecord] = field(default_factory=list)
    prototype_mask_vectors: list[torch.Tensor] | None = None  # D tensors of (K, a_i, b_i)

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @property
    def synthetic(self) -> bool:
        return bool(self.card.get("synthetic", False))

    @property
    def decision_threshold(self) -> float | None:
        """The card's threshold on p(class 1), chosen on validation; None: the paper's argmax of eq. 3."""
        value = (self.card.get("decision_threshold") or {}).get("value")
        return None if value is None else float(value)

    @property
    def calibration(self) -> dict | None:
        """The card's calibrator of p(class 1) (calibration.py: Platt slope and intercept), None when it has none."""
        record = self.card.get("calibration")
        return record if isinstance(record, dict) and "slope" in record and "intercept" in record else None

    def prototype_image(self, index: int) -> np.ndarray:
        """The source image of prototype `index` as uint8 (H, W, 3)."""
        record = self.prototypes[index]
        with Image.open(self.path / PROTOTYPE_DIR / record.image) as im:
            return np.asarray(im.convert("RGB"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def software_versions() -> dict[str, str]:
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "dprotonet_core": FORMAT_VERSION.__str__(),
    }


def _state_for_saving(model: DProtoNet, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if name == _MASK_KEY:
            tensor = torch.round(tensor * 255).to(torch.uint8)
        elif tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[name] = tensor.contiguous()
    return state


def save_checkpoint(
    model: DProtoNet,
    out_dir: str | Path,
    card: dict,
    prototypes: list[PrototypeRecord] | None = None,
    prototype_images: list[np.ndarray] | None = None,
    prototype_mask_vectors: list[torch.Tensor] | None = None,
    dtype: str = "float32",
) -> Path:
    """Write a checkpoint folder. `card` holds the descriptive fields (classes, task, data, ...);
    the model config, tensor shapes, versions and hashes are added here."""
    out = Path(out_dir)
    (out / PROTOTYPE_DIR).mkdir(parents=True, exist_ok=True)
    torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    state = _state_for_saving(model, torch_dtype)
    save_file(state, str(out / MODEL_FILE), metadata={"format": "dprotonet", "version": str(FORMAT_VERSION)})

    files: dict[str, str] = {}
    if prototypes is not None:
        if prototype_images is None or len(prototype_images) != len(prototypes):
            raise ValueError("one source image per prototype is required")
        for record, image in zip(prototypes, prototype_images):
            buffer = io.BytesIO()
            Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
            (out / PROTOTYPE_DIR / record.image).write_bytes(buffer.getvalue())
        index = [record.__dict__ for record in prototypes]
        (out / PROTOTYPE_DIR / PROTOTYPE_INDEX).write_text(json.dumps(index, indent=1))
    if prototype_mask_vectors is not None:
        vectors = {f"d{i + 1}": v.detach().cpu().float().contiguous() for i, v in enumerate(prototype_mask_vectors)}
        save_file(vectors, str(out / PROTOTYPE_DIR / MASK_VECTORS_FILE))
    for path in sorted((out / PROTOTYPE_DIR).iterdir()):
        files[f"{PROTOTYPE_DIR}/{path.name}"] = sha256_file(path)
    files[MODEL_FILE] = sha256_file(out / MODEL_FILE)

    full = dict(card)
    full.update(
        {
            "format_version": FORMAT_VERSION,
            "model_config": to_dict(model.config),
            "tensors": {
                k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in state.items()
            },
            "dtype": dtype,
            "software": software_versions(),
            "sha256": files,
        }
    )
    full.setdefault("classes", [f"class {i}" for i in range(model.config.num_classes)])
    (out / CARD_FILE).write_text(json.dumps(full, indent=2))
    return out


def _refuse_pickles(folder: Path) -> None:
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix.lower() in _PICKLE_SUFFIXES:
            raise CheckpointError(f"{path.name}: pickle-type files are not accepted in a checkpoint folder")
        with open(path, "rb") as f:
            head = f.read(4)
        if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
            raise CheckpointError(f"{path.relative_to(folder)}: looks like a Python pickle; refused")
        if head in (b"PK\x03\x04", b"PK\x05\x06"):
            raise CheckpointError(
                f"{path.relative_to(folder)}: a zip archive (torch.save's format, which holds a pickle); refused"
            )


def read_card(folder: str | Path) -> dict:
    """card.json of a checkpoint folder, or CheckpointError."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise CheckpointError(f"{CARD_FILE} is missing")
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{CARD_FILE} is not valid JSON ({exc})") from None
    for key in ("classes", "model_config", "sha256", "tensors"):
        if key not in card:
            raise CheckpointError(f"{CARD_FILE} has no {key!r} field")
    return card


def _verify_hashes(folder: Path, card: dict) -> None:
    expected: dict[str, str] = card["sha256"]
    if MODEL_FILE not in expected:
        raise CheckpointError(f"{CARD_FILE}: no sha256 for {MODEL_FILE}")
    for rel, digest in expected.items():
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(f"{rel}: listed in {CARD_FILE} but missing")
        actual = sha256_file(path)
        if actual != digest:
            raise CheckpointError(f"{rel}: sha256 {actual[:12]}... differs from card.json's {digest[:12]}...")


def _check_tensors(folder: Path, card: dict, state: dict[str, torch.Tensor], model: DProtoNet) -> None:
    declared = card["tensors"]
    own = model.state_dict()
    for name, tensor in state.items():
        if name not in declared:
            raise CheckpointError(f"{MODEL_FILE}: tensor {name!r} is not declared in card.json")
        if list(tensor.shape) != list(declared[name]["shape"]):
            raise CheckpointError(
                f"{MODEL_FILE}: tensor {name!r} has shape {list(tensor.shape)}, "
                f"card.json says {declared[name]['shape']}"
            )
        if name not in own:
            raise CheckpointError(
                f"{MODEL_FILE}: tensor {name!r} does not belong to a {model.config.backbone} DProtoNet"
            )
        if tensor.shape != own[name].shape:
            raise CheckpointError(
                f"{MODEL_FILE}: tensor {name!r} has shape {list(tensor.shape)}, "
                f"the card's model expects {list(own[name].shape)}"
            )
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(f"{MODEL_FILE}: tensor {missing[0]!r} is missing ({len(missing)} in all)")


def _check_config(card: dict) -> ModelConfig:
    """The card's model config, and that the card's class list agrees with it."""
    try:
        config = from_dict(ModelConfig, card["model_config"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"card.json: model_config is not valid ({exc})") from None
    if len(card["classes"]) != config.num_classes:
        raise CheckpointError(
            f"card.json: {len(card['classes'])} classes listed but the model has {config.num_classes} outputs"
        )
    return config


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors file's JSON header, without reading any tensor."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= 100_000_000:
                raise ValueError(f"header length {size}")
            header = json.loads(f.read(size))
        return {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{MODEL_FILE}: cannot be read as safetensors ({exc})") from None


def _check_declared_shapes(folder: Path, card: dict, config: ModelConfig) -> None:
    """Cheap form of _check_tensors for listing: the file's header against the card and the card's model
    (built on the meta device: shapes only, no memory, no random init)."""
    with torch.device("meta"):
        model = DProtoNet(config)
    shapes = {k: torch.empty(v, device="meta") for k, v in _safetensors_shapes(folder / MODEL_FILE).items()}
    _check_tensors(folder, card, shapes, model)


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load and verify a checkpoint folder; the model comes back in eval mode, frozen."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError("not a checkpoint folder (no such directory)")
    _refuse_pickles(folder)
    card = read_card(folder)
    _verify_hashes(folder, card)
    config = _check_config(card)
    try:
        state = load_file(str(folder / MODEL_FILE))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{MODEL_FILE}: cannot be read as safetensors ({exc})") from None
    model = DProtoNet(config)
    _check_tensors(folder, card, state, model)
    if _MASK_KEY in state:
        state[_MASK_KEY] = state[_MASK_KEY].to(torch.float32) / 255.0
    state = {k: v.to(model.state_dict()[k].dtype) for k, v in state.items()}
    model.load_state_dict(state)
    model.eval().requires_grad_(False).to(device)

    records: list[PrototypeRecord] = []
    index_path = folder / PROTOTYPE_DIR / PROTOTYPE_INDEX
    if index_path.is_file():
        try:
            records = [PrototypeRecord.from_dict(r) for r in json.loads(index_path.read_text())]
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{PROTOTYPE_DIR}/{PROTOTYPE_INDEX}: malformed ({exc})") from None
        if len(records) != config.num_prototypes:
            raise CheckpointError(
                f"{PROTOTYPE_DIR}/{PROTOTYPE_INDEX}: {len(records)} records for {config.num_prototypes} prototypes"
            )
    vectors = None
    vec_path = folder / PROTOTYPE_DIR / MASK_VECTORS_FILE
    if vec_path.is_file():
        loaded = load_file(str(vec_path))
        vectors = [loaded[f"d{i + 1}"] for i in range(len(loaded))]
    return Checkpoint(path=folder, model=model, card=card, prototypes=records, prototype_mask_vectors=vectors)


def find_checkpoints(models_dir: str | Path) -> list[tuple[Path, dict | None, str | None]]:
    """Every folder under `models_dir` holding a card.json: (path, card or None, problem or None).

    Checked here (cheap): pickles, the card, hashes, and tensor shapes from the file's header against the card
    and the card's model; `load_checkpoint` then reads the tensors themselves."""
    found = []
    root = Path(models_dir)
    if not root.is_dir():
        return found
    for card_path in sorted(root.glob("*/card.json")):
        folder = card_path.parent
        try:
            _refuse_pickles(folder)
            card = read_card(folder)
            _verify_hashes(folder, card)
            _check_declared_shapes(folder, card, _check_config(card))
            found.append((folder, card, None))
        except CheckpointError as exc:
            found.append((folder, None, str(exc)))
    return found


def replace_prototype_masks(folder: Path | str, vectors: list[torch.Tensor], record: dict,
                            card_updates: dict | None = None) -> None:
    """Store new prototype-side mask vectors (D tensors (K, a_i, a_i)) in an existing checkpoint folder, with the
    card's `prototype_mdm` record saying how they were made. The weights file stays byte for byte (its hash
    keys caches and stored explanations); refuses if re-saving would change any weight."""
    import shutil
    import tempfile

    from safetensors.torch import load_file

    folder = Path(folder)
    ck = load_checkpoint(folder)
    card = {k: v for k, v in ck.card.items()
            if k not in ("format_version", "model_config", "tensors", "dtype", "software", "sha256")}
    card["prototype_mdm"] = record
    card.update(card_updates or {})
    images = [ck.prototype_image(i) for i in range(len(ck.prototypes))]
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        staged = save_checkpoint(ck.model, Path(tmp) / "new", card, ck.prototypes, images, vectors,
                                 dtype=ck.card.get("dtype", "float16"))
        before, after = load_file(str(folder / MODEL_FILE)), load_file(str(staged / MODEL_FILE))
        if before.keys() != after.keys() or any(
            before[k].dtype != after[k].dtype or not torch.equal(before[k], after[k]) for k in before
        ):
            raise RuntimeError(f"{folder}: re-saving changed the weights; refusing to replace them")
        full = json.loads((staged / CARD_FILE).read_text())
        full["sha256"][MODEL_FILE] = sha256_file(folder / MODEL_FILE)
        shutil.rmtree(folder / "prototypes")
        shutil.move(str(staged / "prototypes"), str(folder / "prototypes"))
        (folder / CARD_FILE).write_text(json.dumps(full, indent=2))
    load_checkpoint(folder)  # verifies hashes and shapes of what was written
