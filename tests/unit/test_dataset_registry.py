"""The dataset registry is the one source of per-dataset facts: CLI choices, flips, thresholds, tasks."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from dprotonet_core.cli import build_parser
from dprotonet_core.commands._data import augmentation
from dprotonet_core.config import EvalConfig
from dprotonet_core.data import palm, rsna
from dprotonet_core.data.registry import DATASETS, dataset_spec, default_transform, spec_or_fallback, train_augmentation
from dprotonet_core.evaluate.runner import EvalRequest, _top_percent


def _dataset_choices() -> dict[str, list[str]]:
    """command -> the --dataset choices its parser accepts, for every command that has the flag."""
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    found = {}
    for command, parser in subparsers.choices.items():
        for action in parser._actions:
            if action.dest == "dataset" and action.choices is not None:
                found[command] = list(action.choices)
    return found


def test_every_dataset_the_cli_accepts_has_a_spec() -> None:
    choices = _dataset_choices()
    assert {"train", "project", "evaluate"} <= set(choices)
    for command, names in choices.items():
        assert set(names) == set(DATASETS), command
    for name, spec in DATASETS.items():
        assert spec.name == name and dataset_spec(name) is spec and spec.task


def test_specs_are_frozen_and_aliases_resolve() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DATASETS["rsna"].hflip = True  # type: ignore[misc]
    assert dataset_spec("PALM") is dataset_spec("ichallenge_pm") is DATASETS["ichallenge-pm"]
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        dataset_spec("mnist")
    assert spec_or_fallback("mnist") is spec_or_fallback(None) is DATASETS["folder"]


def test_fixed_classes_are_the_loaders_own() -> None:
    assert DATASETS["rsna"].classes == tuple(rsna.CLASSES)
    assert DATASETS["ichallenge-pm"].classes == tuple(palm.CLASSES)
    assert DATASETS["cub"].classes is None and DATASETS["folder"].classes is None


def test_localisation_threshold_comes_from_the_spec_only() -> None:
    # Section 4.3: top 50% on RSNA and iChallenge-PM, top 80% on CUB.
    assert DATASETS["rsna"].top_percent == DATASETS["ichallenge-pm"].top_percent == 50.0
    assert DATASETS["cub"].top_percent == 80.0
    assert not hasattr(EvalConfig(), "top_percent")  # no second table of the numbers
    for name, spec in DATASETS.items():
        assert _top_percent(EvalRequest("ckpt", "data", "out", dataset=name)) == spec.top_percent
    assert _top_percent(EvalRequest("ckpt", "data", "out", dataset="unknown")) == DATASETS["folder"].top_percent
    assert _top_percent(EvalRequest("ckpt", "data", "out", dataset="cub", top_percent=30)) == 30.0


def _left_bright(size: int = 32) -> torch.Tensor:
    """An asymmetric image: left half white, right half black (a flip swaps which side is bright)."""
    image = torch.zeros(3, size, size)
    image[..., : size // 2] = 1.0
    return image


def _flipped(out: torch.Tensor) -> bool:
    half = out.shape[-1] // 2
    return bool(out[..., half:].mean() > out[..., :half].mean())


def test_rsna_train_augmentation_never_flips() -> None:
    assert DATASETS["rsna"].hflip is False
    image = _left_bright()
    for seed in range(60):
        for transform in (train_augmentation("rsna", 32, seed), default_transform("rsna", "train", 32, seed)):
            out = transform(image)
            assert out.shape == (3, 32, 32) and 0 <= out.min() and out.max() <= 1
            assert not _flipped(out), seed


def test_flip_follows_the_spec() -> None:
    # The same image under a dataset that allows flips does get mirrored: the check above can see a flip.
    assert DATASETS["ichallenge-pm"].hflip is True
    image = _left_bright()
    assert any(_flipped(train_augmentation("ichallenge-pm", 32, seed)(image)) for seed in range(60))
    # The unseeded form train/project use (torch's global generator), and unknown data: no flip.
    torch.manual_seed(0)
    assert not any(_flipped(augmentation("rsna", 32, seed=0)(image)) for _ in range(30))
    assert not any(_flipped(train_augmentation(None, 32, seed)(image)) for seed in range(30))
