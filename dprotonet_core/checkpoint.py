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
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dprotonet_core import checkpoint_folder as folder_checks
from dprotonet_core.checkpoint_folder import (  # noqa: F401 - CheckpointError is this module's error too
    CARD_FILE,
    MAX_INDEX_BYTES,
    MAX_MASK_ELEMENTS,
    MAX_MODEL_ELEMENTS,
    MODEL_FILE,
    PROTOTYPE_DIR,
    PROTOTYPE_INDEX,
    CheckpointError,
)
from dprotonet_core.config import ModelConfig, from_dict, to_dict
from dprotonet_core.model.dprotonet import DProtoNet

FORMAT_VERSION = 1
MASK_VECTORS_FILE = "mask_vectors.safetensors"
_MASK_KEY = "feature_masks"
MAX_MASK_VECTORS = 64  # D of the prototype-side mask vectors (the bundled checkpoints: 10)


def model_digest(card: dict) -> str:
    """The sha256 of the weights file as a checkpoint's card records it ("" when it has none): the model's
    identity for caches and the samples' stored explanations."""
    return card.get("sha256", {}).get(MODEL_FILE, "")


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

    @classmethod
    def checked(cls, data, position: int, config: ModelConfig) -> PrototypeRecord:
        """A record of prototypes/index.json with every field of the type and range the model allows."""
        where = f"{PROTOTYPE_DIR}/{PROTOTYPE_INDEX}: record {position}"
        if not isinstance(data, dict) or any(k not in data for k in cls.__dataclass_fields__):
            raise CheckpointError(f"{where} lacks a field of {', '.join(cls.__dataclass_fields__)}")
        ints = {"index": config.num_prototypes, "class_index": config.num_classes,
                "mask_index": config.num_feature_masks, "views": 1_000_000}
        for key, bound in ints.items():
            value = data[key]
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < bound:
                raise CheckpointError(f"{where}: {key} must be an integer from 0 to {bound - 1}")
        if data["index"] != position:
            raise CheckpointError(f"{where}: its index is {data['index']}")
        for key in ("class_name", "source_id"):
            if not isinstance(data[key], str) or len(data[key]) > 200:
                raise CheckpointError(f"{where}: {key} must be a string")
        folder_checks.plain_name(data["image"], where)
        return cls.from_dict(data)


@dataclass
class Checkpoint:
    """A loaded, verified checkpoint."""

    path: Path
    model: DProtoNet
    card: dict
    prototypes: list[PrototypeRecord] = field(default_factory=list)
    prototype_mask_vectors: list[torch.Tensor] | None = None  # D tensors of (K, a_i, b_i)
    ood_detector: object | None = None  # ood_detector.Detector of ood.safetensors, for a card whose ood score is it

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
        """The source image of prototype `index` as uint8 (H, W, 3), at the model's input size (checked from the
        header before decoding, here too: the file was checked at load but is read again now)."""
        record = self.prototypes[index]
        rel = f"{PROTOTYPE_DIR}/{record.image}"
        with Image.open(folder_checks.inside(self.path, rel)) as im:
            _check_prototype_image(rel, im, int(self.model.config.input_size))
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


def read_card(folder: str | Path) -> dict:
    """card.json of a checkpoint folder (size, depth and field types checked), or CheckpointError."""
    card = folder_checks.read_json(Path(folder) / CARD_FILE, CARD_FILE, folder_checks.MAX_CARD_BYTES)
    return folder_checks.check_card_fields(card)


def _verify_hashes(folder: Path, card: dict) -> None:
    """Every listed file, read only after its name is checked: inside the folder, no link, not a pickle."""
    expected: dict[str, str] = card["sha256"]
    if MODEL_FILE not in expected:
        raise CheckpointError(f"{CARD_FILE}: no sha256 for {MODEL_FILE}")
    paths = {rel: folder_checks.inside(folder, rel) for rel in expected}  # every name first, then any reading
    for rel, digest in expected.items():
        with open(paths[rel], "rb") as f:
            folder_checks.refuse_pickle_header(rel, f.read(4))
        actual = sha256_file(paths[rel])
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
    folder_checks.check_config_values(card["model_config"])
    try:
        config = from_dict(ModelConfig, card["model_config"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"card.json: model_config is not valid ({' '.join(str(exc).split())[:200]})") from None
    if len(card["classes"]) != config.num_classes:
        raise CheckpointError(
            f"card.json: {len(card['classes'])} classes listed but the model has {config.num_classes} outputs"
        )
    return config


_MAX_HEADER_BYTES = 16 * 1024 * 1024
_TENSOR_DTYPES = ("F16", "BF16", "F32", "F64", "U8", "I8", "I16", "I32", "I64", "BOOL")


def _safetensors_shapes(path: Path, what: str = MODEL_FILE) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors file's JSON header, without reading any tensor."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= _MAX_HEADER_BYTES:
                raise ValueError(f"header length {size}")
            header = json.loads(f.read(size))
        shapes = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            if spec["dtype"] not in _TENSOR_DTYPES or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in spec["shape"]
            ):
                raise ValueError(f"tensor {name[:40]!r} has dtype {str(spec['dtype'])[:10]} shape {spec['shape']}")
            shapes[name] = list(spec["shape"])
        return shapes
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise CheckpointError(f"{what}: cannot be read as safetensors ({' '.join(str(exc).split())[:200]})") from None


def _meta_model(config: ModelConfig) -> DProtoNet:
    """The card's model on the meta device (shapes only: no memory, no random init), within the size bounds."""
    with torch.device("meta"):
        model = DProtoNet(config)
    state = model.state_dict()
    if state[_MASK_KEY].numel() > MAX_MASK_ELEMENTS:
        raise CheckpointError(f"card.json: model_config asks for {state[_MASK_KEY].numel():,} feature-mask values "
                              f"(at most {MAX_MASK_ELEMENTS:,}); refused")
    total = sum(t.numel() for t in state.values())
    if total > MAX_MODEL_ELEMENTS:
        raise CheckpointError(f"card.json: model_config asks for {total:,} weights (at most {MAX_MODEL_ELEMENTS:,})")
    return model


def _check_declared_shapes(folder: Path, card: dict, config: ModelConfig) -> None:
    """Cheap form of _check_tensors: the file's header against the card and the card's model (on the meta device),
    before any tensor is read or the model is built."""
    model = _meta_model(config)
    shapes = {k: torch.empty(v, device="meta") for k, v in _safetensors_shapes(folder / MODEL_FILE).items()}
    _check_tensors(folder, card, shapes, model)


def _check_prototype_image(rel: str, im: Image.Image, size: int) -> None:
    if im.format != "PNG" or im.size != (size, size):
        raise CheckpointError(f"{rel}: a prototype image must be a {size} x {size} PNG (the model's input size); "
                              f"this is a {im.size[0]} x {im.size[1]} {im.format or 'unknown'} image")


def _read_records(folder: Path, card: dict, config: ModelConfig) -> list[PrototypeRecord]:
    """prototypes/index.json (when listed): one checked record per prototype, each image listed, inside the
    folder and a PNG of the model's input size (from its header; nothing is decoded)."""
    rel = f"{PROTOTYPE_DIR}/{PROTOTYPE_INDEX}"
    if rel not in card["sha256"]:
        return []
    data = folder_checks.read_json(folder_checks.inside(folder, rel), rel, MAX_INDEX_BYTES)
    if not isinstance(data, list):
        raise CheckpointError(f"{rel}: malformed (not a list of records)")
    if len(data) != config.num_prototypes:
        raise CheckpointError(f"{rel}: {len(data)} records for {config.num_prototypes} prototypes")
    records = [PrototypeRecord.checked(r, i, config) for i, r in enumerate(data)]
    for record in records:
        image_rel = f"{PROTOTYPE_DIR}/{record.image}"
        if image_rel not in card["sha256"]:
            raise CheckpointError(f"{rel}: record {record.index} names {record.image!r}, which card.json does not "
                                  "list with its sha256; refused")
        try:
            with Image.open(folder_checks.inside(folder, image_rel)) as im:
                _check_prototype_image(image_rel, im, int(config.input_size))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise CheckpointError(f"{image_rel}: not a readable image ({' '.join(str(exc).split())[:120]})") from None
    return records


def _check_mask_vectors(folder: Path, card: dict, config: ModelConfig) -> None:
    """prototypes/mask_vectors.safetensors (when listed): d1..dD, each (K, a_i, b_i) no larger than the input."""
    rel = f"{PROTOTYPE_DIR}/{MASK_VECTORS_FILE}"
    if rel not in card["sha256"]:
        return
    shapes = _safetensors_shapes(folder_checks.inside(folder, rel), rel)
    expected = {f"d{i + 1}" for i in range(len(shapes))}
    if not shapes or len(shapes) > MAX_MASK_VECTORS or set(shapes) != expected:
        raise CheckpointError(f"{rel}: expected tensors d1 ... dD (D at most {MAX_MASK_VECTORS})")
    for name, shape in shapes.items():
        if (len(shape) != 3 or shape[0] != config.num_prototypes
                or not all(1 <= n <= config.input_size for n in shape[1:])):
            raise CheckpointError(f"{rel}: tensor {name} has shape {shape}, not ({config.num_prototypes}, a, b)")


def _verify_folder(folder: Path) -> tuple[dict, ModelConfig, list[PrototypeRecord]]:
    """Everything about a folder that can be checked without reading a tensor: its entries (no links, no pickles,
    nothing unlisted in prototypes/), the card, every listed file's name and hash, the tensor header against the
    card and the card's model, the prototype records and images, the mask vectors' header."""
    if not folder.is_dir():
        raise CheckpointError("not a checkpoint folder (no such directory)")
    names = folder_checks.scan_folder(folder)
    card = read_card(folder)
    if MODEL_FILE not in card["sha256"]:
        raise CheckpointError(f"{CARD_FILE}: no sha256 for {MODEL_FILE}")
    for rel in card["sha256"]:
        folder_checks.listed_parts(rel)
    folder_checks.refuse_unlisted(names, card["sha256"])
    config = _check_config(card)
    _verify_hashes(folder, card)
    _check_declared_shapes(folder, card, config)
    records = _read_records(folder, card, config)
    _check_mask_vectors(folder, card, config)
    return card, config, records


def _refuse_non_finite(rel: str, tensors: dict[str, torch.Tensor]) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{rel}: tensor {name!r} holds NaN or infinite values; refused")


def _refuse_non_finite_file(folder: Path, rel: str) -> None:
    """The same check on a listed safetensors file, one tensor at a time (the listing: bounded memory)."""
    try:
        with safe_open(str(folder_checks.inside(folder, rel)), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                _refuse_non_finite(rel, {name: f.get_tensor(name)})
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{rel}: cannot be read as safetensors ({' '.join(str(exc).split())[:200]})") from None


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load and verify a checkpoint folder; the model comes back in eval mode, frozen.

    The model is built only after the folder, the card and the tensor header passed `_verify_folder` (so a card
    cannot make it allocate more than the size bounds allow); tensors that are not finite are refused."""
    folder = Path(folder)
    card, config, records = _verify_folder(folder)
    try:
        state = load_file(str(folder / MODEL_FILE))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{MODEL_FILE}: cannot be read as safetensors ({' '.join(str(exc).split())[:200]})") \
            from None
    _refuse_non_finite(MODEL_FILE, state)
    model = DProtoNet(config)
    _check_tensors(folder, card, state, model)
    if _MASK_KEY in state:
        state[_MASK_KEY] = state[_MASK_KEY].to(torch.float32) / 255.0
    state = {k: v.to(model.state_dict()[k].dtype) for k, v in state.items()}
    model.load_state_dict(state)
    model.eval().requires_grad_(False).to(device)

    vectors = None
    rel = f"{PROTOTYPE_DIR}/{MASK_VECTORS_FILE}"
    if rel in card["sha256"]:
        try:
            loaded = load_file(str(folder_checks.inside(folder, rel)))
        except Exception as exc:
            raise CheckpointError(f"{rel}: cannot be read as safetensors ({' '.join(str(exc).split())[:200]})") \
                from None
        _refuse_non_finite(rel, loaded)
        vectors = [loaded[f"d{i + 1}"].float() for i in range(len(loaded))]
    return Checkpoint(path=folder, model=model, card=card, prototypes=records, prototype_mask_vectors=vectors,
                      ood_detector=_load_detector(folder, card, model))


def _load_detector(folder: Path, card: dict, model: DProtoNet):
    """The out-of-distribution detector a card's `ood` record names (score "detector"): its file must be listed
    with its hash, finite, of the model's stage widths, and fit the record (ood_detector.check_record)."""
    from dprotonet_core import ood_detector

    record = card.get("ood") or {}
    if record.get("score") != "detector":
        return None
    rel = ood_detector.DETECTOR_FILE
    if rel not in card["sha256"]:
        raise CheckpointError(f"{CARD_FILE}: ood names the detector but {rel} is not listed with its hash")
    try:
        detector = ood_detector.load_detector(folder_checks.inside(folder, rel), model.stage_widths)
        ood_detector.check_record(record, detector)
    except ValueError as exc:
        raise CheckpointError(f"{rel}: {' '.join(str(exc).split())[:200]}; refused") from None
    return detector


def _unexpected(exc: BaseException) -> str:
    """One line for a failure the checks did not foresee (no traceback, no server path)."""
    what = {RecursionError: "nested too deeply", MemoryError: "needs more memory than is available"}
    return f"could not be checked: {what.get(type(exc), type(exc).__name__)}; refused"


def find_checkpoints(models_dir: str | Path) -> list[tuple[Path, dict | None, str | None]]:
    """Every folder under `models_dir` holding a card.json: (path, card or None, problem or None).

    Each folder is checked on its own (`_verify_folder`: entries, card, hashes, tensor header, prototype
    records), and any failure, foreseen or not, lists that folder with a one-line problem; `load_checkpoint` then
    reads the tensors themselves."""
    found = []
    root = Path(models_dir)
    try:
        cards = sorted(root.glob("*/card.json")) if root.is_dir() else []
    except OSError:
        return found
    for card_path in cards:
        folder = card_path.parent
        try:
            card, _, _ = _verify_folder(folder)
            for rel in (MODEL_FILE, f"{PROTOTYPE_DIR}/{MASK_VECTORS_FILE}", "ood.safetensors"):
                if rel in card["sha256"]:
                    _refuse_non_finite_file(folder, rel)
            found.append((folder, card, None))
        except CheckpointError as exc:
            found.append((folder, None, " ".join(str(exc).split())))
        except Exception as exc:  # a folder is untrusted input: nothing it holds may stop the listing
            found.append((folder, None, _unexpected(exc)))
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
        for kept in ("ood.safetensors",):  # files beside the weights that the prototype side does not change
            if kept in ck.card["sha256"]:
                full["sha256"][kept] = ck.card["sha256"][kept]
        shutil.rmtree(folder / "prototypes")
        shutil.move(str(staged / "prototypes"), str(folder / "prototypes"))
        (folder / CARD_FILE).write_text(json.dumps(full, indent=2))
    load_checkpoint(folder)  # verifies hashes and shapes of what was written
