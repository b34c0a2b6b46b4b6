"""`python -m dprotonet_core evaluate` end to end on a tiny checkpoint and a tiny folder dataset."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dprotonet_core.checkpoint import load_checkpoint, save_checkpoint
from dprotonet_core.cli import main
from dprotonet_core.config import EvalConfig
from dprotonet_core.data.synthetic import make_blob_images
from dprotonet_core.evaluate.data import EvalData
from dprotonet_core.evaluate.metrics import step_size
from dprotonet_core.evaluate.runner import evaluate_cams, table5_row

CLASSES = ["background", "blob"]
METHODS = ["mdm-fast", "gradcam", "gradcam++", "scorecam", "ablationcam"]


@pytest.fixture
def tiny_checkpoint(tiny_model, tmp_path) -> Path:
    return save_checkpoint(tiny_model, tmp_path / "ckpt", {"classes": CLASSES, "synthetic": True})


@pytest.fixture
def blob_folder(tmp_path) -> Path:
    images, labels, _ = make_blob_images(6, 64, seed=0)
    root = tmp_path / "data"
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return root


def test_evaluate_writes_every_output(tiny_checkpoint, blob_folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(blob_folder), "--out", str(out),
            "--dataset", "folder", "--split", "all", "--limit", "2", "--attach", "--no-progress",
            "--device", "cpu", "--methods", *METHODS]
    assert main(argv) == 0
    assert "Grad-CAM++" in capsys.readouterr().out

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classification"]["n"] == 6
    assert np.asarray(metrics["classification"]["confusion_matrix"]).sum() == 6
    for key in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        assert key in metrics["classification"]
    rows = metrics["table5"]["rows"]
    assert [r["method"] for r in rows] == METHODS
    for row in rows:
        assert row["n_images"] == 2
        for column in ("AD", "AI", "D", "I", "s/img"):
            assert isinstance(row[column], float) and math.isfinite(row[column]), (row["method"], column)
        assert 0.0 <= row["AD"] <= 100.0 and 0.0 <= row["AI"] <= 100.0  # percentages
        assert 0.0 <= row["D"] <= 1.0 and 0.0 <= row["I"] <= 1.0  # areas under a probability curve
    with open(out / "table5.csv") as f:
        assert len(list(csv.DictReader(f))) == len(METHODS)
    caption = (out / "table5.md").read_text()
    assert "| Method |" in caption
    # the caption names the class explained, the probability used, the tie order and the 50% reading
    assert "the class the image's ground truth marks" in caption and "softmax of eq. 3" in caption
    assert "seeded random order" in caption and "applied to DICE, IoU and PPV too" in caption
    with open(out / "per_image.csv") as f:
        assert len(list(csv.DictReader(f))) == 2 * len(METHODS)

    curves = json.loads((out / "curves.json").read_text())
    fractions = np.asarray(curves["fractions"])
    n_points = fractions.size
    assert fractions[0] == 0 and fractions[-1] == 1 and (np.diff(fractions) > 0).all()
    assert n_points == math.ceil(64 * 64 / step_size(64 * 64, EvalConfig().deletion_step_fraction)) + 1
    assert len(curves["methods"]["gradcam"]["deletion"]["per_image"]) == 2
    assert len(curves["methods"]["gradcam"]["insertion"]["mean"]) == n_points

    figures = metrics["figures"]
    for name in ("deletion", "insertion", "confusion_matrix", "roc"):
        assert (out / figures["files"][name]["html"]).is_file()
        assert (out / figures["files"][name]["json"]).is_file()
        png = figures["files"][name].get("png")
        assert (png and (out / png).is_file()) or figures["png_problem"]

    attached = tiny_checkpoint / "evaluation"
    assert (attached / "table5.md").is_file() and (attached / "figures" / "roc.json").is_file()
    assert not list(attached.rglob("*.html")) and not (attached / "figures" / "plotly.min.js").exists()
    stored = json.loads((attached / "metrics.json").read_text())
    assert stored["table5"]["rows"] == metrics["table5"]["rows"]
    assert all("html" not in entry for entry in stored["figures"]["files"].values())
    load_checkpoint(tiny_checkpoint)  # the hashes in card.json still hold


def test_evaluate_refuses_a_bad_dataset(tiny_checkpoint, tmp_path, capsys):
    argv = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "nowhere"),
            "--out", str(tmp_path / "out"), "--no-progress", "--limit", "0"]
    assert main(argv) == 2
    assert "nowhere" in capsys.readouterr().err


class _BlobsWithMasks(torch.utils.data.Dataset):
    """In-memory blob images with their ground-truth discs, as ImageDataset exposes them."""

    def __init__(self, n: int):
        self.images, self.labels, self.masks = make_blob_images(n, 64, seed=3)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])

    def has_ground_truth(self, i: int) -> bool:
        return bool(self.masks[i].any())

    def mask(self, i: int) -> np.ndarray | None:
        return self.masks[i].numpy() if self.masks[i].any() else None


def test_localisation_is_scored_on_annotated_images(tiny_model):
    dataset = _BlobsWithMasks(4)
    data = EvalData(dataset, list(range(4)), "memory", "-", "all", CLASSES)
    annotated = [k for k in range(4) if dataset.has_ground_truth(k)]
    result = evaluate_cams(tiny_model, data, annotated, ["gradcam"], EvalConfig(), 50.0, progress=False)
    row = table5_row("gradcam", result.methods["gradcam"], result.fractions)
    assert row["n_localisation"] == len(annotated) == 2
    for key in ("DICE", "IoU", "PPV", "Sensitivity"):
        assert 0.0 <= row[key] <= 1.0
    # the figures are those of the top-50% map against each disc, averaged: recompute them by hand
    from dprotonet_core.evaluate.cams import compute_cam
    from dprotonet_core.evaluate.metrics import localisation_scores

    by_hand = []
    for k, target in zip(annotated, result.targets):
        cam = compute_cam("gradcam", tiny_model, data.image(k), target, EvalConfig())
        by_hand.append(localisation_scores(cam, dataset.mask(k), 50.0))
    for key in ("DICE", "IoU", "PPV", "Sensitivity"):
        assert row[key] == pytest.approx(float(np.mean([s[key] for s in by_hand])), abs=1e-6), key
    assert result.targets == [data.label(k) for k in annotated]  # scored on the class the disc marks
