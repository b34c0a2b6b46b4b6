"""Query-side MDM results computed ahead of time, for the bundled sample images.

The paper protocol takes minutes on a 2-core CPU. `make-demo` runs it once per bundled sample and
checkpoint and stores the D optimised vectors here (safetensors, metadata as JSON strings); the app
then shows a sample's explanation at once. A stored result is used only when everything it depends
on is identical: the exact model input (sha256 of its float32 pixels), the checkpoint's model file,
the prototype, and the MDM settings of the profile. Anything else is recomputed, never guessed.
Only sample images are stored: nothing about an upload is ever written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dprotonet_core.config import MDMConfig

SUFFIX = ".safetensors"
# MDMConfig fields that do not change the result (run limits, speed, memory).
_NOT_RESULT = {"time_limit", "channels_last", "max_batch"}


@dataclass(frozen=True)
class StoredExplanation:
    vectors: list[torch.Tensor]  # D tensors (a_i, a_i)
    mask_index: int  # j_x
    iterations: int
    seconds: float  # what the optimisation took when it was stored
    machine: str
    final_objective: tuple[float, ...] = ()  # eq. 13 per vector at the stored vectors (older files: empty)
    method: str = ""  # mdm.method_label of the run: profile, steps, loss


def input_digest(x: torch.Tensor) -> str:
    """sha256 of the model input's float32 pixels (what the explanation depends on)."""
    return hashlib.sha256(x.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def settings_json(cfg: MDMConfig) -> str:
    """The result-relevant MDM settings, canonical JSON."""
    data = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_RESULT}
    # Fields added after files were written drop out at the value those files computed with: float32, and no
    # tail length unless the schedule has a tail.
    if data.get("precision") == "fp32":
        del data["precision"]
    if data.get("lr_schedule") != "tail":
        data.pop("lr_tail", None)
    if not data.get("fp32_tail"):
        data.pop("fp32_tail", None)
    return json.dumps(data, sort_keys=True)


def _identity(x: torch.Tensor, model_sha256: str, prototype: int, profile: str, cfg: MDMConfig) -> dict[str, str]:
    """Everything a stored result depends on, as its metadata strings (written by save, checked by load)."""
    return {
        "input_sha256": input_digest(x),
        "model_sha256": model_sha256,
        "prototype": str(int(prototype)),
        "profile": profile,
        "mdm_config": settings_json(cfg),
    }


def _file_name(identity: dict[str, str]) -> str:
    return (f"{identity['input_sha256'][:20]}-{identity['model_sha256'][:16]}-p{identity['prototype']}-"
            f"{identity['profile']}{SUFFIX}")


def save(
    folder: Path,
    x: torch.Tensor,
    model_sha256: str,
    prototype: int,
    profile: str,
    cfg: MDMConfig,
    vectors: list[torch.Tensor],
    mask_index: int,
    iterations: int,
    seconds: float,
    machine: str,
    final_objective: tuple[float, ...] | list[float] = (),
    method: str = "",
) -> Path:
    """Write one stored explanation; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    identity = _identity(x, model_sha256, prototype, profile, cfg)
    path = folder / _file_name(identity)
    tensors = {f"d{i + 1}": v.detach().float().cpu().contiguous() for i, v in enumerate(vectors)}
    meta = {
        **identity,
        "mask_index": str(int(mask_index)),
        "iterations": str(int(iterations)),
        "seconds": f"{seconds:.1f}",
        "machine": machine,
        "final_objective": json.dumps([round(float(v), 6) for v in final_objective]),
        "method": method,
    }
    save_file(tensors, str(path), metadata=meta)
    return path


def path_for(folder: Path, x: torch.Tensor, model_sha256: str, prototype: int, profile: str, cfg: MDMConfig) -> Path:
    """Where the explanation for these inputs is (or would be) stored."""
    return Path(folder) / _file_name(_identity(x, model_sha256, prototype, profile, cfg))


def load(
    folder: Path, x: torch.Tensor, model_sha256: str, prototype: int, profile: str, cfg: MDMConfig
) -> StoredExplanation | None:
    """The stored explanation for exactly these inputs, or None (then compute it)."""
    expected = _identity(x, model_sha256, prototype, profile, cfg)
    path = Path(folder) / _file_name(expected)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            names = sorted(f.keys(), key=lambda k: int(k[1:]))
            vectors = [f.get_tensor(k) for k in names]
    except Exception:  # a damaged file is ignored: the explanation is computed instead
        return None
    if any(meta.get(k) != v for k, v in expected.items()) or len(vectors) != cfg.num_vectors:
        return None
    sizes = [(cfg.base_size + i, cfg.base_size + i) for i in range(1, cfg.num_vectors + 1)]
    if [tuple(v.shape) for v in vectors] != sizes:
        return None
    if not all(bool(torch.isfinite(v).all()) and float(v.min()) >= 0 and float(v.max()) <= 1 for v in vectors):
        return None
    return StoredExplanation(
        vectors=vectors,
        mask_index=int(meta.get("mask_index", -1)),
        iterations=int(meta.get("iterations", 0)),
        seconds=float(meta.get("seconds", 0.0)),
        machine=meta.get("machine", "?"),
        final_objective=tuple(_floats(meta.get("final_objective", "[]"))),
        method=meta.get("method", ""),
    )


def _floats(text: str) -> list[float]:
    """A JSON list of numbers from metadata; anything else reads as empty."""
    try:
        values = json.loads(text)
        return [float(v) for v in values] if isinstance(values, list) else []
    except (ValueError, TypeError):
        return []


def stack(stored: StoredExplanation, size: int) -> np.ndarray:
    """(D, S, S) g(d_i) of a stored result."""
    from dprotonet_core.explain.mdm import mask_stack

    return mask_stack(stored.vectors, size)
