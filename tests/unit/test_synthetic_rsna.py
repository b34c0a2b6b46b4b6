"""The synthetic RSNA generator: exact layout, real labels, DICOMs like the real ones, determinism."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dprotonet_core.data import synthetic_rsna
from dprotonet_core.data.io import read_image

REAL_LABELS = synthetic_rsna.SHARED_RSNA / synthetic_rsna.LABELS_NAME


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not REAL_LABELS.exists():
        pytest.skip("shared RSNA labels not present")
    out = tmp_path_factory.mktemp("rsna")
    synthetic_rsna.generate(out, 8, seed=3, size=128, positive_fraction=0.5)
    return out


def test_layout_and_real_labels(tiny_set: Path) -> None:
    rows = list(csv.DictReader(open(tiny_set / "stage_2_train_labels.csv")))
    ids = {r["patientId"] for r in rows}
    assert len(ids) == 8
    assert {p.stem for p in (tiny_set / "stage_2_train_images").iterdir()} == ids
    real = {}
    with open(REAL_LABELS) as handle:
        for row in csv.DictReader(handle):
            if row["patientId"] in ids:
                real.setdefault(row["patientId"], []).append(row)
    for pid in ids:
        assert [r for r in rows if r["patientId"] == pid] == real[pid]
    assert sum(1 for pid in ids if real[pid][0]["Target"] == "1") == 4


def test_dicoms_like_rsna(tiny_set: Path) -> None:
    path = next((tiny_set / "stage_2_train_images").iterdir())
    ds = pydicom.dcmread(path)
    assert (ds.Modality, ds.BodyPartExamined, ds.PhotometricInterpretation) == ("CR", "CHEST", "MONOCHROME2")
    assert (ds.Rows, ds.Columns, ds.BitsStored) == (128, 128, 8)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert "SYNTHETIC" in ds.ImageComments and "SYNTHETIC" in ds.SeriesDescription
    assert ds.ViewPosition in ("AP", "PA") and ds.PatientID == path.stem
    assert "InstitutionName" not in ds and "PatientBirthDate" not in ds
    loaded = read_image(path.read_bytes())
    assert loaded.pixels.shape == (128, 128) and 0.15 < loaded.pixels.mean() < 0.85


def test_deterministic_and_fresh_uids(tmp_path: Path) -> None:
    if not REAL_LABELS.exists():
        pytest.skip("shared RSNA labels not present")
    a = synthetic_rsna.generate(tmp_path / "a", 2, seed=5, size=64)
    b = synthetic_rsna.generate(tmp_path / "b", 2, seed=5, size=64)
    assert a == b
    da = pydicom.dcmread(tmp_path / "a" / "stage_2_train_images" / f"{a[0]}.dcm")
    db = pydicom.dcmread(tmp_path / "b" / "stage_2_train_images" / f"{a[0]}.dcm")
    assert np.array_equal(da.pixel_array, db.pixel_array)
    assert da.SOPInstanceUID != db.SOPInstanceUID


def test_opacity_only_inside_boxes() -> None:
    patient = synthetic_rsna.Patient("0" * 8 + "-0000-0000-0000-" + "0" * 12, 1, [(300.0, 300.0, 200.0, 300.0)])
    negative = synthetic_rsna.Patient(patient.patient_id, 0, [])
    pos = synthetic_rsna.render(patient, 256, seed=1).astype(float)
    neg = synthetic_rsna.render(negative, 256, seed=1).astype(float)
    diff = pos - neg
    inside = diff[75:150, 75:125]
    outside = np.concatenate([diff[:60].ravel(), diff[170:].ravel()])
    assert inside.mean() > 5 and abs(outside.mean()) < 1.0


def test_cli_function(tmp_path: Path) -> None:
    if not REAL_LABELS.exists():
        pytest.skip("shared RSNA labels not present")
    assert synthetic_rsna.main_make_synthetic_rsna(["--out", str(tmp_path), "--n", "2", "--size", "64"]) == 0
    assert len(list((tmp_path / "stage_2_train_images").glob("*.dcm"))) == 2
