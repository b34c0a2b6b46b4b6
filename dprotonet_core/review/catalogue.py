"""The checkpoint catalogue: which checkpoints the app lists, loading one, and what its card says in one line."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dprotonet_core.checkpoint import Checkpoint, CheckpointError, find_checkpoints, load_checkpoint, model_digest
from dprotonet_core.review.settings import (
    BUNDLED_CHECKPOINTS,
    BUNDLED_ENV,
    DEFAULT_MODELS_DIR,
    MODELS_DIR_ENV,
    ReviewError,
)


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint folder the picker offers (valid) or lists as invalid (with the problem)."""

    path: Path
    card: dict | None
    problem: str | None
    bundled: bool

    @property
    def valid(self) -> bool:
        return self.problem is None and self.card is not None

    @property
    def label(self) -> str:
        """The picker's entry: the card's short name (the full one does not fit the sidebar's width), else its name,
        else the folder's; "(demo)" for a bundled checkpoint."""
        card = self.card or {}
        short = card.get("short_name") if isinstance(card.get("short_name"), str) else None
        name = short or card.get("name") or self.path.name
        return f"{name} (demo)" if self.bundled else str(name)

    @property
    def full_name(self) -> str:
        """The card's full name (else the folder's): what the sidebar spells out under the picker."""
        name = (self.card or {}).get("name")
        return str(name) if isinstance(name, str) and name else self.path.name


def models_dir(environ: dict[str, str] | None = None) -> Path:
    """The models directory: $DPROTONET_MODELS_DIR, else assets/checkpoints."""
    value = (environ if environ is not None else os.environ).get(MODELS_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else DEFAULT_MODELS_DIR


def list_checkpoints(root: Path | None = None, bundled_root: Path = DEFAULT_MODELS_DIR) -> list[CheckpointEntry]:
    """The bundled demo checkpoints that exist, then every folder with a card.json under `root`.

    Only cards and hashes are checked (cheap); a folder that fails is listed with its problem."""
    root = models_dir() if root is None else root
    entries: dict[Path, CheckpointEntry] = {}
    sources = [(bundled_root, True), (root, False)]
    if os.environ.get(BUNDLED_ENV, "1").strip() == "0":  # a deployment serving only its own checkpoints
        sources = sources[1:]
    for base, is_bundled in sources:
        try:
            found = find_checkpoints(base)  # each folder checked on its own; a bad one comes back with its problem
        except OSError:
            found = []  # an unreadable models directory lists nothing rather than taking the pages down
        for path, card, problem in found:
            resolved = path.resolve()
            if resolved in entries:
                continue
            bundled = is_bundled and path.name in BUNDLED_CHECKPOINTS
            if is_bundled and not bundled:
                continue  # other folders under assets/ only when assets/ is the models dir
            entries[resolved] = CheckpointEntry(path=path, card=card, problem=problem, bundled=bundled)
    bundled_first = sorted(entries.values(), key=lambda e: (not e.bundled, e.path.name))
    return bundled_first


def load_model(path: str | Path) -> Checkpoint:
    """Load and verify a checkpoint (eval mode, frozen, weights stored channels_last: the MDM steps' faster
    layout, set once here because the loaded model is shared by every session). Wrap with st.cache_resource."""
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as exc:
        raise ReviewError(f"This checkpoint cannot be used: {' '.join(str(exc).split())}") from None
    except Exception as exc:  # an untrusted folder may fail in ways the checks did not foresee: one line, no trace
        raise ReviewError(f"This checkpoint cannot be used: it could not be loaded ({type(exc).__name__}).") from None
    checkpoint.model.to(memory_format=torch.channels_last)
    return checkpoint


def checkpoint_summary(card: dict) -> dict[str, Any]:
    """The sidebar's lines about a checkpoint: title, task, classes, trained on, synthetic. Every value is a
    string (a card is untrusted: whatever type a field has, the page gets text); render them with `plain`."""
    data = card.get("data") if isinstance(card.get("data"), dict) else {}
    trained_on = card.get("trained_on") or data.get("dataset") or "not stated in the card"
    config = card.get("model_config") if isinstance(card.get("model_config"), dict) else {}
    classes = card.get("classes") if isinstance(card.get("classes"), list) else []
    return {
        "title": str(card.get("name") or "checkpoint"),
        "task": str(card.get("task") or "not stated in the card"),
        "classes": [str(c) for c in classes],
        "trained_on": str(trained_on),
        "synthetic": card.get("synthetic") is True,
        "backbone": str(config.get("backbone", "?")),
        "input_size": str(config.get("input_size", "?")),
        "credit": data_credit(card),
    }


def data_credit(card: dict) -> str:
    """Who made the data a checkpoint learned from (training and pretraining), as the card credits it."""
    training = card.get("training_data") if isinstance(card.get("training_data"), dict) else {}
    credits = [str(training.get("credit") or "").strip()]
    pretraining = training.get("pretraining") if isinstance(training.get("pretraining"), dict) else {}
    if pretraining.get("credit"):
        credits.append(f"backbone pretrained on {pretraining['credit']}")
    return "; ".join(c for c in credits if c)


def checkpoint_id(checkpoint: Checkpoint) -> str:
    """A stable id for cache keys: the sha256 of the model file (from the verified card)."""
    digest = model_digest(checkpoint.card)
    return digest[:16] or str(checkpoint.path)
