"""A 3-epoch run on tiny synthetic data through the CLI: train, predict (JSON lines, exit code 2 on a bad
file), project, resume; the model beats chance on held-out images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dprotonet_core.cli import main
from dprotonet_core.data.synthetic import make_blob_images

CLASSES = ("blob", "plain")


def _write_folder(root: Path, n: int, seed: int) -> list[Path]:
    images, labels, _ = make_blob_images(n, 64, seed)
    paths = []
    for i in range(n):
        folder = root / ("blob" if int(labels[i]) == 1 else "plain")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{i:03d}.png"
        Image.fromarray((images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
        paths.append(path)
    return paths


TRAIN_ARGS = [
    "--dataset", "folder", "--backbone", "tiny_cnn", "--input-size", "64", "--epochs", "3",
    "--warm-epochs", "1", "--batch-size", "16", "--projection-views", "3", "--last-layer-epochs", "1",
    "--prototypes-per-class", "2", "--threads", "1", "--quiet",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    _write_folder(root / "data", 80, seed=0)
    out = root / "ckpt"
    assert main(["train", "--data", str(root / "data"), "--out", str(out), *TRAIN_ARGS]) == 0
    return root, out


def test_train_writes_checkpoint_card_and_log(trained):
    from dprotonet_core.checkpoint import load_checkpoint

    _, out = trained
    ckpt = load_checkpoint(out)
    card = ckpt.card
    assert card["classes"] == list(CLASSES) and card["backbone"] == "tiny_cnn" and card["input_size"] == 64
    assert card["metrics"]["val_accuracy"] > 0.5  # beats chance (balanced classes)
    assert card["training_data"]["split"]["val_images"] == 16
    assert len(card["epoch_seconds"]) == 4  # 1 warm + 2 joint + 1 last-layer
    assert len(ckpt.prototypes) == 4 and all(r.views == 3 for r in ckpt.prototypes)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["phase"] for e in log] == ["warm", "joint", "joint", "push", "last_layer"]
    assert {"loss", "cross_entropy", "cluster", "separation", "l1", "train_accuracy"} <= set(log[0])
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))


def test_model_beats_chance_on_new_images(trained):
    from dprotonet_core.checkpoint import load_checkpoint
    from dprotonet_core.inference import predict_batch

    _, out = trained
    ckpt = load_checkpoint(out)
    images, labels, _ = make_blob_images(60, 64, seed=123)
    predictions = predict_batch(ckpt.model, images, ckpt.classes)
    truth = ["blob" if int(v) == 1 else "plain" for v in labels]
    accuracy = np.mean([p.class_name == t for p, t in zip(predictions, truth)])
    assert accuracy > 0.6


def test_predict_json_lines_and_exit_code(trained, capsys):
    root, out = trained
    good = sorted((root / "data" / "blob").glob("*.png"))[0]
    bad = root / "broken.png"
    bad.write_bytes(b"this is not an image")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(out), str(good), str(bad), "--top-k", "3"]) == 2
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert set(first) == {"file", "checkpoint", "prediction", "class_index", "probabilities", "probabilities_are",
                          "model_softmax", "decision", "task_fit", "ood", "top_prototypes"}
    assert first["probabilities_are"] == "the model's softmax of eq. 3 (not calibrated)"
    assert first["decision"] == "argmax of eq. 3" and first["task_fit"]["fits"]  # a card without `accepts`
    assert first["ood"]["threshold"] is None and first["ood"]["flagged"] is False  # nor OOD quantiles
    assert first["prediction"] == list(CLASSES)[first["class_index"]]
    assert sum(first["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert len(first["top_prototypes"]) == 3
    row = first["top_prototypes"][0]
    assert row["contribution"] == pytest.approx(row["weight"] * row["similarity"], rel=1e-4, abs=1e-5)
    assert set(second) == {"file", "error"} and "\n" not in second["error"]
    assert main(["predict", "--checkpoint", str(out), str(good)]) == 0


def test_project_command_rewrites_prototypes(trained, capsys):
    from dprotonet_core.checkpoint import load_checkpoint

    root, out = trained
    new = root / "reprojected"
    code = main(["project", "--checkpoint", str(out), "--dataset", "folder", "--data", str(root / "data"),
                 "--views", "2", "--out", str(new), "--threads", "1"])
    assert code == 0
    ckpt = load_checkpoint(new)
    assert all(r.views == 2 for r in ckpt.prototypes)
    assert ckpt.card["projection"]["views"] == 2


def test_resume_reproduces_an_uninterrupted_run(trained, tmp_path, capsys):
    """Stopped after two steps, then resumed: the same model as the unbroken run (CPU, deterministic)."""
    from dprotonet_core.checkpoint import load_checkpoint

    root, out = trained
    broken = tmp_path / "broken"
    args = ["train", "--data", str(root / "data"), "--out", str(broken), *TRAIN_ARGS]
    assert main([*args, "--stop-after", "2"]) == 0
    assert "stopped_after_step" in capsys.readouterr().out
    assert not (broken / "card.json").exists()
    assert main([*args, "--resume"]) == 0
    a, b = load_checkpoint(out), load_checkpoint(broken)
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[name]), name
    assert a.card["metrics"]["val_accuracy"] == b.card["metrics"]["val_accuracy"]
    log = [json.loads(line) for line in (broken / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [0, 1, 2, 3, 4]
