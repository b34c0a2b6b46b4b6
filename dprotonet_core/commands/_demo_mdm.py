"""The MDM parts of `make-demo`: the prototype side stored in each checkpoint (eq. 14), and the query
side of the bundled samples (eq. 13) stored for the app (explain/store.py).

Both can be re-run on existing checkpoints (`make-demo --only prototype-mdm`, `--only sample-explanations`),
e.g. after an MDM setting changed, without training anything again.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from dprotonet_core.config import DEFAULT_MDM_PROFILE
from dprotonet_core.machine import machine_info

# samples.csv's dataset column -> the bundled checkpoint that reads such images
SAMPLE_CHECKPOINTS = {"ichallenge-pm": "ichallenge-pm", "rsna-pneumonia": "rsna-pneumonia"}


def prototype_side(ckpt, profile: str) -> tuple[list[torch.Tensor], float]:
    """Eq. 14 for every prototype, from its stored source image and mask index (explain/pair.py)."""
    from dprotonet_core.explain.mdm import profile as mdm_profile
    from dprotonet_core.explain.pair import prototype_sides

    result, seconds = prototype_sides(ckpt, mdm_profile(profile))
    return result.vectors, seconds


def prototype_mdm_record(profile: str, seconds: float) -> dict:
    """What the card says about its stored prototype-side masks."""
    from dprotonet_core.explain.mdm import profile as mdm_profile
    from dprotonet_core.explain.mdm import runnable

    return {"profile": profile, "seconds": round(seconds, 1),
            "mdm_config": dataclasses.asdict(runnable(mdm_profile(profile))),  # the arithmetic that ran
            "machine": machine_info()}


MEASURED_HERE = ("the fastest MDM profile that met issue 19's quality bar on this checkpoint against the 1,600-step "
                 "reference (python -m bench.mdm_quality, 12 images; README, Benchmarks)")


def mdm_default_record(profile: str, chosen_by: str | None = None) -> dict:
    """The card's "mdm_default_profile": the profile the app and `explain` start from for this checkpoint, what it
    runs, and how it was chosen (`chosen_by`; default: measured on this checkpoint by bench.mdm_quality)."""
    from dprotonet_core.explain.mdm import method_label, runnable
    from dprotonet_core.explain.mdm import profile as mdm_profile

    return {"profile": profile, "method": method_label(mdm_profile(profile), profile),
            "runs_here_as": method_label(runnable(mdm_profile(profile)), profile),
            "chosen_by": chosen_by or MEASURED_HERE}


def refresh_prototype_side(folder: Path, profile: str, card_updates: dict | None = None) -> dict:
    """Recompute and store the prototype-side mask vectors of an existing checkpoint folder (and write
    `card_updates` into its card); the weights, prototypes and everything else in the folder stay as they are.
    Returns the card's new prototype_mdm record."""
    from dprotonet_core.checkpoint import load_checkpoint, replace_prototype_masks

    vectors, seconds = prototype_side(load_checkpoint(folder), profile)
    record = prototype_mdm_record(profile, seconds)
    replace_prototype_masks(folder, vectors, record, card_updates)
    print(json.dumps({"checkpoint": str(folder), "prototype_mdm": record["seconds"]}), flush=True)
    return record


def sample_inputs(samples: Path) -> list[tuple[Path, str]]:
    """(file, dataset) of every row of samples.csv."""
    import csv

    with open(samples / "samples.csv", newline="") as f:
        return [(samples / row["file"], row["dataset"]) for row in csv.DictReader(f)]


def store_sample_explanations(samples: Path, checkpoints: Path,
                              profiles: Sequence[str] | dict[str, Sequence[str]] | None = None) -> list[dict]:
    """Run the query-side MDM (each profile named; None: the checkpoint's default profile, the config's default,
    paper and fast) on each bundled sample for the prototype the app explains first, exactly as the app prepares
    the image (default DICOM window); store them under samples/explanations.
    A result already stored for exactly the same inputs and settings is kept, not recomputed; stored files
    that no sample needs any more are removed."""
    from dprotonet_core import review
    from dprotonet_core.checkpoint import model_digest
    from dprotonet_core.explain import mdm, store

    out = samples / "explanations"
    out.mkdir(parents=True, exist_ok=True)
    rows, needed = [], set()
    loaded_checkpoints = {}
    for path, dataset in sample_inputs(samples):
        name = SAMPLE_CHECKPOINTS.get(dataset)
        if name is None or not (checkpoints / name / "card.json").is_file():
            continue
        if name not in loaded_checkpoints:
            loaded_checkpoints[name] = review.load_model(checkpoints / name)  # as the app holds it (channels_last)
        ck = loaded_checkpoints[name]
        sha = model_digest(ck.card)
        x = review.default_model_input(ck, path.read_bytes())
        prototype = review.default_prototype(review.predict(ck, x))
        chosen = profiles.get(name) if isinstance(profiles, dict) else profiles  # per checkpoint, or for all
        wanted = chosen if chosen is not None else (mdm.card_default_profile(ck.card), DEFAULT_MDM_PROFILE,
                                                    "paper", "fast")
        for profile in dict.fromkeys(wanted):  # in order, each once
            cfg = mdm.runnable(mdm.profile(profile))  # the arithmetic that runs is the one recorded
            needed.add(store.path_for(out, x[0], sha, prototype, profile, cfg).name)
            row = {"sample": path.name, "checkpoint": name, "prototype": prototype, "profile": profile}
            if store.load(out, x[0], sha, prototype, profile, cfg) is not None:
                row["kept"] = True
            else:
                explained = review.explain(ck, x, prototype, profile, time_limit_s=float("inf"))  # the app's run
                store.save(out, x[0], sha, prototype, profile, cfg, list(explained.query_vectors),
                           explained.mask_index, explained.iterations, explained.seconds, machine_info(),
                           explained.final_objective, explained.query_method)
                row.update(seconds=round(explained.seconds, 1),
                           max_S=round(float(explained.query_stack.sum(0).max()), 2))
            print(json.dumps(row), flush=True)
            rows.append(row)
    for stale in out.glob(f"*{store.SUFFIX}"):
        if stale.name not in needed:
            stale.unlink()
    return rows
