"""Resume state of a training run: safetensors for tensors, JSON for everything else; no pickle.

    <out>/resume/state.json             the next step to run, history, best so far, configs
    <out>/resume/optimizers.safetensors Adam moments of every phase's optimiser
    <out>/resume/last/                  the model after the last finished step (a checkpoint folder)
    <out>/resume/best/                  the best model so far (a checkpoint folder), if any
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

RESUME_DIR = "resume"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizers.safetensors"


def resume_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / RESUME_DIR


def optimizer_state_to_files(optimizers: dict[str, torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], dict]:
    """Split optimiser state dicts into (tensors for safetensors, JSON-ready rest)."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {}
    for name, opt in optimizers.items():
        state = opt.state_dict()
        scalars: dict[str, dict] = {}
        for pid, entries in state["state"].items():
            for key, value in entries.items():
                if torch.is_tensor(value):
                    tensors[f"{name}/{pid}/{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(pid), {})[key] = value
        meta[name] = {"param_groups": state["param_groups"], "scalars": scalars}
    return tensors, meta


def optimizer_state_from_files(name: str, tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Rebuild one optimiser's state dict for `load_state_dict`."""
    state: dict[int, dict] = {}
    prefix = f"{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            _, pid, field = key.split("/", 2)
            state.setdefault(int(pid), {})[field] = value
    for pid, scalars in meta[name]["scalars"].items():
        state.setdefault(int(pid), {}).update(scalars)
    return {"state": state, "param_groups": meta[name]["param_groups"]}


def write_state(out_dir: str | Path, state: dict, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Write state.json and the optimisers atomically enough: temp files, then rename."""
    folder = resume_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = optimizer_state_to_files(optimizers)
    state = dict(state, optimizers=meta)
    tmp = folder / (OPTIMIZER_FILE + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / OPTIMIZER_FILE)
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, folder / STATE_FILE)


def read_state(out_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """(state.json, optimiser tensors) of an interrupted run, or None when there is none."""
    folder = resume_dir(out_dir)
    if not (folder / STATE_FILE).is_file():
        return None
    state = json.loads((folder / STATE_FILE).read_text())
    tensors = load_file(str(folder / OPTIMIZER_FILE)) if (folder / OPTIMIZER_FILE).is_file() else {}
    return state, tensors
