"""What the labels claim, checked against what was computed (issue: every figure honest): the recognition
metrics' probability is the card's calibrated one, Table 5's captions name the localisation reading, a report of
training images says so, the MDM picker's help names the one profile that runs eq. 13 as printed, the README
names each shipped checkpoint's prototype-side profile as its card records it."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dprotonet_core.evaluate.report import EvaluationView, table5_markdown
from dprotonet_core.evaluate.runner import probability_fn
from dprotonet_core.review.evaluation import table5_caption
from dprotonet_core.review.settings import MDM_PROFILE_HELP, MDM_PROFILES
from tests.conftest import REPO


def test_recognition_metrics_read_the_calibrated_probability(tiny_model):
    """probability_fn is what AD / AI / D / I score: with a calibrator of slope 0 every image gets p = 0.3."""
    x = torch.rand(3, 3, tiny_model.config.input_size, tiny_model.config.input_size)
    calibrated = probability_fn(tiny_model, {"slope": 0.0, "intercept": math.log(0.3 / 0.7)})(x)
    assert calibrated[:, 1].numpy() == pytest.approx(np.full(3, 0.3), abs=1e-6)
    with torch.no_grad():
        softmax = torch.softmax(tiny_model(x).logits, dim=1)
    assert torch.allclose(probability_fn(tiny_model)(x), softmax, atol=1e-6)


def _metrics(notes=()) -> dict:
    row = {"method": "mdm", "name": "MDM", "n_images": 2, "n_localisation": 2}
    from dprotonet_core.evaluate.results import TABLE5_COLUMNS

    row.update({c: 0.5 for c in TABLE5_COLUMNS})
    return {"checkpoint": {"name": "tiny", "synthetic": False},
            "dataset": {"name": "ichallenge-pm", "split": "all", "n": 400, "notes": list(notes)},
            "classification": {"probability": "calibrated (Platt scaling)"},
            "table5": {"rows": [row], "n_images": 2, "target": "label",
                       "higher_is_better": {c: c in ("AI", "I", "DICE", "IoU", "PPV", "Sensitivity")
                                            for c in TABLE5_COLUMNS}},
            "config": {"top_percent_used": 50.0, "explained_map_mode": "percentile", "explained_map_keep_percent": 50.0,
                       "deletion_step_fraction": 0.0179, "insertion_blur_sigma": 5.0},
            "device": "cpu", "threads": 2}


def test_both_table5_captions_name_the_localisation_reading():
    metrics = _metrics()
    page = table5_caption(EvaluationView(Path("."), metrics, [], {}, []), {})
    assert "top 50%" in page and "applied to DICE, IoU and PPV too" in page
    assert "calibrated (Platt scaling)" in page
    assert "applied to DICE, IoU and PPV too" in table5_markdown(metrics)


def test_a_table5_report_on_training_images_says_so():
    note = "all 400 images trained this model: these figures are on training images"
    assert f"NOTE: {note}" in table5_markdown(_metrics([note]))
    assert "NOTE:" not in table5_markdown(_metrics())


def test_the_picker_help_names_the_profile_that_runs_eq13_as_printed():
    assert "Every profile but the last" in MDM_PROFILE_HELP and "'Eq. 13 as printed'" in MDM_PROFILE_HELP
    assert "deletion-scaled distance" in MDM_PROFILES["paper"] and "as printed" in MDM_PROFILES["printed"]


def test_the_readme_names_each_checkpoints_prototype_side_profile_as_its_card_records_it():
    readme = " ".join((REPO / "README.md").read_text().split())
    said = re.search(r"the card's `prototype_mdm` record: \"(\w+)\" for RSNA, \"(\w+)\" for iChallenge-PM", readme)
    assert said, "the README no longer says which profile made each prototype side"
    for name, profile in zip(("rsna-pneumonia", "ichallenge-pm"), said.groups()):
        card = json.loads((REPO / "assets" / "checkpoints" / name / "card.json").read_text())
        assert card["prototype_mdm"]["profile"] == profile, name


@pytest.mark.parametrize("name", ["rsna-pneumonia", "ichallenge-pm"])
def test_each_cards_default_profile_label_is_what_that_profile_runs(name):
    from dprotonet_core.commands._demo_mdm import mdm_default_record

    record = json.loads((REPO / "assets" / "checkpoints" / name / "card.json").read_text())["mdm_default_profile"]
    fresh = mdm_default_record(record["profile"])
    assert record["method"] == fresh["method"] and "lr " in record["method"] and "betas" in record["method"]
