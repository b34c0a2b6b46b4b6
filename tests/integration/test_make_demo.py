"""make-demo's build of one checkpoint on tiny PALM-named images: the held-out test and the Table 3 baseline
measured on the same images, Table 4 at R = 1 and R, and a rebuild that replaces the old release's log and
evaluation reports instead of mixing them with the new weights (dprotonet_core/commands/make_demo.py)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from dprotonet_core.checkpoint import load_checkpoint
from dprotonet_core.commands import make_demo


def _palm_like(folder, per_class: int = 20) -> None:
    """'P' names are PM (class 1), 'N' names non-PM: a bright disc on the left or on the right."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    for label, prefix in ((1, "P"), (0, "N")):
        for i in range(per_class):
            cx = 10 if label else 22
            disc = ((yy - 16) ** 2 + (xx - cx) ** 2 < 40) * 180
            pixels = np.clip(disc[..., None] + rng.integers(0, 60, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{prefix}{i + 1:04d}.jpg")


def test_build_measures_test_and_baseline_and_replaces_the_old_release(tmp_path):
    data = tmp_path / "palm"
    _palm_like(data)
    out = tmp_path / "checkpoints" / "ichallenge-pm"
    (out / "evaluation").mkdir(parents=True)
    (out / "evaluation" / "metrics.json").write_text('{"of": "the previous weights"}')
    (out / "train_log.jsonl").write_text(json.dumps({"phase": "from the previous build"}) + "\n")

    plan = make_demo.DemoPlan("ichallenge-pm", "ichallenge-pm", backbone="tiny_cnn", input_size=32, epochs=2,
                              batch_size=8, views=2)
    card = make_demo.build(plan, data, out, make_demo.palm_card(), threads=1, profile="fast")

    assert not (out / "evaluation").exists()  # reports of other weights are gone; `evaluate --attach` remeasures
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log and all(entry["phase"] != "from the previous build" for entry in log)
    metrics = card["metrics"]
    assert metrics["test_images"] == 8  # 20% of 40, stratified
    for key in ("test_accuracy", "baseline_test_accuracy", "baseline_val_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert set(metrics["table4_test_accuracy"]) == {"R=1", "R=2"}
    test_ids = set(card["training_data"]["split"]["test_ids"])
    assert len(test_ids) == 8 and not test_ids & set(card["training_data"]["split"]["val_ids"])
    shipped = load_checkpoint(out)  # verifies every hash; no pickle
    assert shipped.card["metrics"]["baseline_test_accuracy"] == metrics["baseline_test_accuracy"]
    assert shipped.classes == ["non-PM", "PM"] and not (out / "resume").exists()
