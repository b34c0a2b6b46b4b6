"""`predict`'s task-fit and out-of-distribution fields on the bundled checkpoints, and `--checkpoint auto`."""

from __future__ import annotations

import json

import pytest

from dprotonet_core import cli, review
from tests.conftest import PALM_DIR, REAL_DICOM, REPO

BUNDLED = REPO / "assets" / "checkpoints"
pytestmark = pytest.mark.skipif(
    not all((BUNDLED / n / "card.json").is_file() for n in review.BUNDLED_CHECKPOINTS)
    or not REAL_DICOM.is_file() or not PALM_DIR.is_dir(), reason="bundled checkpoints or shared data absent")


def _lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_auto_picks_the_fitting_checkpoint_per_file(capsys, tmp_path):
    from pydicom.data import get_testdata_file

    palm = sorted(PALM_DIR.glob("P*.jpg"))[0]
    mr = get_testdata_file("MR_small.dcm")
    code = cli.main(["predict", "--checkpoint", "auto", "--threads", "1", str(REAL_DICOM), str(palm), mr])
    chest, fundus, other = _lines(capsys)
    assert code == 2  # the MR fits no bundled checkpoint
    assert chest["checkpoint"].endswith("rsna-pneumonia") and chest["task_fit"]["fits"]
    assert fundus["checkpoint"].endswith("ichallenge-pm") and fundus["task_fit"]["fits"]
    assert "no bundled checkpoint is made for this image" in other["error"] and "modality MR" in other["error"]
    for line in (chest, fundus):
        assert set(line["ood"]) == {"score", "threshold", "flagged", "warning"} and line["ood"]["threshold"] is not None
    assert chest["prediction"] in ("pneumonia", "no pneumonia")  # the DICOM has no pneumonia label
    assert fundus["prediction"] == "PM"  # a P* photograph: pathologic myopia
    assert fundus["ood"]["flagged"] is False and fundus["ood"]["score"] < fundus["ood"]["threshold"]
    assert "p(pneumonia) >=" in chest["decision"] and fundus["decision"].startswith(
        "argmax of eq. 3 (the paper's rule), which is PM when the calibrated p(PM) >= 0.3395")


def test_a_chosen_checkpoint_says_when_the_file_does_not_fit(capsys):
    code = cli.main(["predict", "--checkpoint", str(BUNDLED / "ichallenge-pm"), "--threads", "1", str(REAL_DICOM)])
    (line,) = _lines(capsys)
    assert code == 0 and line["task_fit"]["fits"] is False and "modality CR" in line["task_fit"]["reason"]


def test_the_fundus_model_flags_a_chest_radiograph_as_unlike_its_training_images(capsys):
    """Not only the task-fit check: the out-of-distribution score itself moves for a foreign image."""
    palm = sorted(PALM_DIR.glob("P*.jpg"))[0]
    code = cli.main(["predict", "--checkpoint", str(BUNDLED / "ichallenge-pm"), "--threads", "1", str(palm),
                     str(REAL_DICOM)])
    own, foreign = _lines(capsys)
    assert code == 0 and own["ood"]["threshold"] == foreign["ood"]["threshold"]
    assert foreign["ood"]["score"] > own["ood"]["score"] and foreign["ood"]["flagged"] is True
    assert own["ood"]["flagged"] is False
