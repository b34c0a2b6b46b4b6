"""make-demo's build of one checkpoint on tiny PALM-named images: the held-out test and the Table 3 baseline
measured on the same images, Table 4 at R = 1 and R, and a rebuild that replaces the old release's log and
evaluation reports instead of mixing them with the new weights (dprotonet_core/commands/make_demo.py)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
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


@pytest.mark.parametrize("pretraining", [None, "same-images"])
def test_palm_plan_trains_on_every_image_and_takes_its_figures_from_the_cross_validation(tmp_path, pretraining):
    """The shipped PALM plan's shape (no validation, no test split, no baseline) on tiny PALM-named images: all 40
    train the model for its fixed epochs, the card says there is no held-out split and carries the cross-validation
    record, the OOD threshold comes from the training images and says so, and the samples' credit says the
    checkpoint trained on them; `evaluate` refuses a held-out split the checkpoint does not have. The stacked recipe
    (same-images) first trains its classifier on the same 40 images and records that stage in the card."""
    from dprotonet_core.review.card import performance_rows

    data = tmp_path / "palm"
    _palm_like(data)
    out = tmp_path / "checkpoints" / "ichallenge-pm"
    plan = dataclasses.replace(make_demo.palm_plan(), backbone="tiny_cnn", input_size=32, epochs=2, batch_size=8,
                               views=2, backbone_pretraining=pretraining, pretrain_epochs=2)
    cv = {"k": 5, "images": 40, "dprotonet": {"at_last_epoch": {"accuracy": {"mean": 0.97, "sd": 0.01, "min": 0.96,
                                                                             "max": 0.98, "n": 5}}}}
    card = make_demo.build(plan, data, out, {**make_demo.palm_card(), "cross_validation": cv}, threads=1,
                           profile="fast")
    assert plan.holds_out is False and plan.baseline is False
    assert card["metrics"]["train_images"] == 40 and card["metrics"]["val_images"] == 0
    assert "test_accuracy" not in card["metrics"] and "table4_test_accuracy" not in card["metrics"]
    assert "no held-out split" in card["metrics"]["test_measured_on"]
    assert card["metrics"]["selected_on"].startswith("nothing (no validation split)")  # the last state, not a pick
    assert card["mdm_default_profile"]["profile"] == plan.mdm_profile  # where the app and `explain` start
    assert "5-fold cross-validation" in card["metrics"]["test_measured_on"]
    assert card["training_data"]["split"]["test_ids"] == [] and card["training_data"]["split"]["val_fraction"] == 0
    assert card["ood"]["validation_images"] == 0 and card["ood"]["flag_above"].startswith("training")
    shipped = load_checkpoint(out)
    assert shipped.card["cross_validation"] == cv and not (out / "resume").exists()
    if pretraining is None:
        assert "backbone_pretraining" not in card and card["backbone_weights"] == "random initialisation"
    else:
        first = card["backbone_pretraining"]
        assert first["train_images"] == 40 and [h["epoch"] for h in first["history"]] == [1, 2]
        assert first["recipe"]["epochs"] == 2 and card["backbone_weights"] == "first-stage-f_b.safetensors"
        assert not list(out.glob("*.safetensors.json"))  # the stage's f_b is an initialisation, not shipped
    assert any("cross-validation" in row["Measured on"] for row in performance_rows(shipped.card))
    assert "was trained on" in make_demo.palm_sample_credit(out)
    with pytest.raises(ValueError, match="trained on every image"):
        from dprotonet_core.evaluate.data import load_eval_data

        load_eval_data("ichallenge-pm", data, "test", 32, shipped.card)


def _rsna_like(root, n: int = 48) -> None:
    """A tiny RSNA folder in the JPEG layout: positives carry a bright box, views alternate."""
    images = root / "stage_2_train_images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(1)
    labels, meta = ["patientId,x,y,width,height,Target"], ["patientId,Target,ViewPosition"]
    for i in range(n):
        pid = f"{i:08d}-aaaa-bbbb-cccc-000000000000"
        target = int(i % 4 == 0)
        pixels = rng.integers(0, 80, (48, 48)).astype(np.uint8)
        if target:
            pixels[10:30, 8:24] += 150
        Image.fromarray(pixels).save(images / f"{pid}.jpg")
        labels.append(f"{pid},170,213,341,427,1" if target else f"{pid},,,,,0")
        meta.append(f"{pid},{target},{'AP' if i % 2 else 'PA'}")
    (root / "stage_2_train_labels.csv").write_text("\n".join(labels) + "\n")
    (root / "metadata.csv").write_text("\n".join(meta) + "\n")


def test_rsna_plan_on_tiny_real_layout(tmp_path):
    """The RSNA plan's parts on a tiny JPEG-layout set: a pretrained backbone file, class weights, selection on
    validation AUC, the validation threshold used on the test split, per-view figures, distinct prototype
    sources, the OOD quantiles and `accepts` in the card, and DICOM samples with their boxes."""
    from dprotonet_core.data.registry import load_dataset
    from dprotonet_core.data.transforms import train_transform
    from dprotonet_core.review import list_samples
    from dprotonet_core.train.pretrain import PretrainConfig, pretrain_backbone

    data = tmp_path / "rsna"
    _rsna_like(data)
    split = {"seed": 0, "val_fraction": 0.25, "test_fraction": 0.25}
    pre_train = load_dataset("rsna", data, "train", 32, transform=None, **split)
    weights = tmp_path / "backbone.safetensors"
    report = pretrain_backbone(pre_train, None, PretrainConfig(backbone="tiny_cnn", input_size=32, epochs=1,
                                                               batch_size=8), train_transform(32, hflip=False),
                               weights, progress=False)
    assert weights.is_file() and json.loads((tmp_path / "backbone.safetensors.json").read_text())["recipe"]
    assert report["selected_epoch"] == 1

    plan = make_demo.DemoPlan("rsna-pneumonia", "rsna", backbone="tiny_cnn", input_size=32, epochs=2, batch_size=8,
                              views=2, val_fraction=0.25, test_fraction=0.25, backbone_weights=str(weights),
                              lr_backbone=3e-4, class_weights="balanced", select_on="auc", threshold_rule="youden")
    out = tmp_path / "checkpoints" / "rsna-pneumonia"
    card = make_demo.build(plan, data, out, make_demo.rsna_card(), threads=1, profile="fast")
    metrics = card["metrics"]
    assert card["accepts"]["modalities"] == ["CR", "DX"] and card["synthetic"] is False
    assert 0.0 <= card["decision_threshold"]["value"] <= 1.0 and "validation" in card["decision_threshold"]["chosen_on"]
    assert card["loss_config"]["class_weights"][1] > card["loss_config"]["class_weights"][0]  # positives are rarer
    assert metrics["selected_on"] == "validation ROC AUC" and metrics["val_auc"] is not None
    assert set(metrics["test_by_view"]) == {"AP", "PA"} and metrics["test_images"] == 12
    assert "accuracy" in metrics["test_at_argmax"] and card["backbone_weights"] == "backbone.safetensors"
    for counts in card["prototype_sources"].values():
        assert counts["distinct_source_images"] == counts["prototypes"]
    # the out-of-distribution detector: fitted on the training films, its threshold from the validation films
    assert card["ood"]["score"] == "detector" and card["ood"]["threshold_from"] == "validation images"
    assert card["ood"]["threshold_images"] == len(card["training_data"]["split"]["val_ids"])
    assert card["ood"]["components"] == [f"stage_{k}" for k in range(1, 5)]  # CHOSEN["rsna-pneumonia"]
    shipped = load_checkpoint(out)
    assert shipped.decision_threshold == card["decision_threshold"]["value"] and shipped.ood_detector is not None

    samples = tmp_path / "samples"
    rsna_test = load_dataset("rsna", data, "test", 32, transform=None, **split)
    make_demo.write_samples(samples, tmp_path, [], rsna_test, tmp_path / "no-headers.csv.gz")
    listed = list_samples(samples)
    assert {s.file.rsplit(".", 1)[1] for s in listed} == {"dcm", "jpg"}
    positives = [s for s in listed if s.label == "pneumonia"]
    assert positives and all(s.boxes for s in positives)
    x, y, w, h = positives[0].boxes[0]
    assert (x, y, w, h) == (8.0, 10.0, 16.0, 20.0)  # 170/1024*48, ... in the 48 px file's own frame


def test_cross_validate_trains_dprotonet_and_its_backbone_on_the_same_folds(tmp_path, capsys):
    """`cross-validate` on tiny PALM-named images: K folds stratified by file letter, both models measured on each
    fold none of them trained on, the summary's mean over the stored folds; a second run keeps stored folds."""
    from dprotonet_core.cli import main

    data = tmp_path / "palm"
    _palm_like(data, per_class=10)
    out = tmp_path / "cv"
    argv = ["cross-validate", "--data", str(data), "--folds", "2", "--out", str(out), "--epochs", "2",
            "--views", "2", "--backbone", "tiny_cnn", "--input-size", "32", "--threads", "1",
            "--backbone-pretraining", "none"]  # the recipe with its baseline trained alongside, epoch for epoch
    assert main([*argv, "--only", "0"]) == 0
    folds = json.loads((out / "folds.json").read_text())["folds"]
    assert sorted(i for f in folds for i in f) == list(range(20))
    first = json.loads((out / "fold-0" / "figures.json").read_text())
    assert first["val_images"] == 10 and first["train_images"] == 10
    for model in ("dprotonet", "baseline"):
        assert 0.0 <= first[model]["accuracy"] <= 1.0 and first[model]["images"] == 10
    assert first["baseline_by_epoch"] == {"1": first["baseline_by_epoch"]["1"], "2": first["baseline_by_epoch"]["2"]}
    # the last epoch's state, measured on the fold: its accuracy is the curve's last point
    assert first["dprotonet_last"]["images"] == 10
    assert set(first["push_effects"]) == {"2"}  # the one prototype update, after the last epoch
    assert first["push_effects"]["2"]["before_from"] == "push"  # measured after the BN re-estimate, before moving
    # the curve's point for epoch 2 is its last projected state: after the last-layer epochs
    assert first["push_effects"]["2"]["last_layer"] == pytest.approx(first["dprotonet_by_epoch"]["2"])
    assert first["dprotonet_last"]["accuracy"] == pytest.approx(first["dprotonet_by_epoch"]["2"])
    assert main(argv) == 0  # fold 0 is kept, fold 1 trains
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folds_done"] == [0, 1] and summary["plan"]["epochs"] == 2
    accs = [json.loads((out / f"fold-{k}" / "figures.json").read_text())["dprotonet"]["accuracy"] for k in (0, 1)]
    assert summary["dprotonet"]["selected_in_fold"]["accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
    printed = capsys.readouterr().out
    assert summary["dprotonet"]["at_last_epoch"]["accuracy"]["n"] == 2
    assert "dprotonet: accuracy" in printed and "dprotonet after the last epoch: sensitivity" in printed
    assert "DProtoNet minus backbone at epoch 2 of the same fold" in printed
    assert "prototype update at epoch 2 (before: from the push): projection" in printed
    stored = [json.loads((out / f"fold-{k}" / "figures.json").read_text()) for k in (0, 1)]
    gaps = [f["dprotonet_by_epoch"]["2"] - f["baseline_by_epoch"]["2"] for f in stored]
    assert summary["dprotonet_minus_baseline_by_epoch"]["2"]["mean"] == pytest.approx(sum(gaps) / 2)


def test_cross_validate_resumes_a_fold_cut_short(tmp_path, monkeypatch):
    """A fold stopped after its DProtoNet run (here: in the baseline) resumes instead of training DProtoNet again:
    each schedule step is in the fold's log once, and the figures say where it resumed."""
    from dprotonet_core.cli import main
    from dprotonet_core.train import loop

    data = tmp_path / "palm"
    _palm_like(data, per_class=6)
    out = tmp_path / "cv"
    argv = ["cross-validate", "--data", str(data), "--folds", "2", "--out", str(out), "--epochs", "2",
            "--views", "2", "--backbone", "tiny_cnn", "--input-size", "32", "--threads", "1", "--only", "0",
            "--backbone-pretraining", "none"]
    real = loop.train_baseline

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_baseline", stopped)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert not (out / "fold-0" / "figures.json").exists()
    steps = len(loop.schedule(loop.TrainConfig(epochs=2)))
    monkeypatch.setattr(loop, "train_baseline", real)
    assert main(argv) == 0
    figures = json.loads((out / "fold-0" / "figures.json").read_text())
    assert figures["resumed_at_step"] == steps
    log = [json.loads(line) for line in (out / "fold-0" / "train_log.jsonl").read_text().splitlines() if line]
    assert sorted(e["step"] for e in log if e.get("phase") != "baseline") == list(range(steps))
    assert figures["baseline"]["images"] == 6


def test_cross_validate_stacked_recipe_starts_dprotonet_from_the_folds_own_classifier(tmp_path, capsys):
    """--backbone-pretraining same-images: each fold first trains f_b as a plain classifier on its own training
    images (kept as fold-k/backbone.safetensors, reused by a rerun), that classifier after its last epoch is the
    baseline, DProtoNet's f_b starts as its f_b, and the summary pairs the two final states, not epochs."""
    from safetensors.torch import load_file

    from dprotonet_core.cli import main
    from dprotonet_core.model.dprotonet import DProtoNet

    data = tmp_path / "palm"
    _palm_like(data, per_class=6)
    out = tmp_path / "cv"
    argv = ["cross-validate", "--data", str(data), "--folds", "2", "--out", str(out), "--epochs", "2",
            "--views", "2", "--backbone", "tiny_cnn", "--input-size", "32", "--threads", "1",
            "--backbone-pretraining", "same-images", "--pretrain-epochs", "2"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["plan"]["backbone_pretraining"] == "same-images" and summary["plan"]["baseline"] is False
    fold = json.loads((out / "fold-0" / "figures.json").read_text())
    record = json.loads((out / "fold-0" / "backbone.safetensors.json").read_text())
    assert fold["baseline_initialises_dprotonet"] is True
    assert fold["baseline"] == record["fold_figures"] and fold["baseline"]["selected_epoch"] == 2
    assert fold["baseline_by_epoch"] == {str(h["epoch"]): h["val_accuracy"] for h in record["history"]}
    assert record["train_images"] == fold["train_images"] and record["recipe"]["bf16"] is False
    # the DProtoNet run started from that f_b: the card names the file, and its initial f_b is those weights
    card = json.loads((out / "fold-0" / "card.json").read_text())
    assert card["backbone_weights"] == "backbone.safetensors"
    started = DProtoNet(load_checkpoint(out / "fold-0").model.config, str(out / "fold-0" / "backbone.safetensors"))
    first = load_file(str(out / "fold-0" / "backbone.safetensors"))
    assert all(torch.equal(v, first[k]) for k, v in started.backbone.state_dict().items() if k in first)
    paired = [json.loads((out / f"fold-{k}" / "figures.json").read_text()) for k in (0, 1)]
    gaps = [f["dprotonet_last"]["accuracy"] - f["baseline"]["accuracy"] for f in paired]
    assert summary["dprotonet_last_minus_baseline"]["accuracy"]["mean"] == pytest.approx(sum(gaps) / 2)
    assert "dprotonet_minus_baseline_by_epoch" not in summary  # stage-1 epochs are not DProtoNet's epochs
    printed = capsys.readouterr().out
    assert "the classifier DProtoNet starts from, after its last epoch" in printed
    # a rerun of a finished fold's first stage is not trained again
    (out / "fold-0" / "figures.json").unlink()
    stamp = (out / "fold-0" / "backbone.safetensors").stat().st_mtime_ns
    assert main([*argv, "--only", "0"]) == 0
    assert (out / "fold-0" / "backbone.safetensors").stat().st_mtime_ns == stamp
