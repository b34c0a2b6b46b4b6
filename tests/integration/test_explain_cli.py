"""`python -m dprotonet_core explain` on a tiny checkpoint writes the four files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dprotonet_core.checkpoint import PrototypeRecord, save_checkpoint
from dprotonet_core.cli import main


def _checkpoint(tmp_path, model, with_vectors: bool):
    k = model.prototypes.shape[0]
    records = [PrototypeRecord(i, int(model.prototype_classes()[i]), "c", f"img{i}", i % 12, 1, f"proto_{i:03d}.png")
               for i in range(k)]
    images = [np.full((64, 64, 3), 40 * i, np.uint8) for i in range(k)]
    vectors = [torch.rand(k, 5 + i, 5 + i) for i in range(1, 11)] if with_vectors else None
    return save_checkpoint(model, tmp_path / "ck", {"classes": ["a", "b"]}, records, images, vectors)


def _run(tmp_path, ck, *extra):
    img = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((80, 70, 3)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "out"
    rc = main(["explain", "--checkpoint", str(ck), str(img), "--out", str(out), "--iterations", "3", *extra])
    assert rc == 0
    return out


def test_explain_cli_writes_four_files(tmp_path, tiny_model):
    ck = _checkpoint(tmp_path, tiny_model, with_vectors=True)
    out = _run(tmp_path, ck, "--gamma", "0", "--profile", "fast")
    masks = np.load(out / "query_masks.npy")
    assert masks.shape == (10, 64, 64) and masks.dtype == np.float32
    for name in ("query_heatmap.png", "prototype_heatmap.png"):
        with Image.open(out / name) as im:
            assert im.size == (64, 64)
    record = json.loads((out / "explanation.json").read_text())
    assert record["iterations"] == 3 and record["profile"] == "fast"
    assert {"prediction", "prototype", "j_x", "seconds", "box"} <= set(record)
    assert record["box"] == {"x0": 0, "y0": 0, "x1": 64, "y1": 64, "area": 64 * 64}  # gamma 0: all pixels


def test_explain_cli_computes_prototype_side_when_missing(tmp_path, tiny_model, capsys):
    ck = _checkpoint(tmp_path, tiny_model, with_vectors=False)
    out = _run(tmp_path, ck, "--prototype", "1")
    record = json.loads((out / "explanation.json").read_text())
    assert record["prototype"]["index"] == 1
    assert "computed now" in record["note"] and "computed now" in record["prototype_method"]
    assert "standard profile: Adam 3 steps" in record["query_method"] and len(record["final_objective"]) == 10
    assert (out / "prototype_heatmap.png").is_file()


def test_explain_decides_by_the_cards_rule_and_records_what_ran(tmp_path, tiny_model):
    import math

    from dprotonet_core.explain import mdm

    k = tiny_model.prototypes.shape[0]
    records = [PrototypeRecord(i, int(tiny_model.prototype_classes()[i]), "c", f"img{i}", i % 12, 1,
                               f"proto_{i:03d}.png") for i in range(k)]
    images = [np.full((64, 64, 3), 40 * i, np.uint8) for i in range(k)]
    vectors = [torch.rand(k, 5 + i, 5 + i) for i in range(1, 11)]
    # slope 0: every image gets p(b) = 0.9 >= the threshold 0.5, so the card's rule answers "b" whatever eq. 3's
    # argmax says, and the explained prototype is one of class b's
    card = {"classes": ["a", "b"], "calibration": {"slope": 0.0, "intercept": math.log(9.0)},
            "decision_threshold": {"value": 0.5, "rule": "youden"}}
    with torch.no_grad():  # eq. 3's argmax says "a" for any image: every prototype adds to a, none to b
        tiny_model.last_layer.weight.copy_(torch.stack([torch.ones(k), -torch.ones(k)]))
    ck = save_checkpoint(tiny_model, tmp_path / "ck", card, records, images, vectors)
    out = _run(tmp_path, ck, "--profile", "standard")
    record = json.loads((out / "explanation.json").read_text())
    assert record["prediction"]["class_name"] == "b" and record["prediction"]["probabilities_are"] == "calibrated"
    assert record["prediction"]["probabilities"][1] == pytest.approx(0.9)
    assert record["prototype"]["class_name"] == "b"
    ran = mdm.runnable(mdm.profile("standard"))
    assert record["mdm_config"]["precision"] == ran.precision  # float32 where bf16 is not native
    assert record["mdm_config_requested"]["precision"] == "bf16"


def test_explain_writes_the_dicom_objects_of_a_dicom_file(tmp_path, tiny_model):
    import shutil
    import subprocess

    import pydicom

    from tests.conftest import REAL_DICOM

    if not REAL_DICOM.is_file():
        pytest.skip("shared DICOM absent")
    ck = _checkpoint(tmp_path, tiny_model, with_vectors=True)
    out, dicom = tmp_path / "out", tmp_path / "dicom"
    rc = main(["explain", "--checkpoint", str(ck), str(REAL_DICOM), "--out", str(out), "--iterations", "2",
               "--profile", "fast", "--dicom-out", str(dicom)])
    assert rc == 0
    source = pydicom.dcmread(REAL_DICOM)
    record = json.loads((out / "explanation.json").read_text())
    objects = {p.stem: pydicom.dcmread(p) for p in dicom.glob("*.dcm")}
    assert set(objects) == {"SEG", "SR", "SC"}
    assert {o.StudyInstanceUID for o in objects.values()} == {source.StudyInstanceUID}
    classes = [i.TextValue for i in objects["SR"].ContentSequence
               if i.ConceptNameCodeSequence[0].CodeMeaning == "Predicted class"]
    assert classes == [record["prediction"]["class_name"]]
    if shutil.which("dciodvfy"):
        for path in dicom.glob("*.dcm"):
            run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
            assert not [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")], path
