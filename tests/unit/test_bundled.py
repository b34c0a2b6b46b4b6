"""The bundled demo checkpoints: listed by the app, verified, and able to classify their samples."""

from __future__ import annotations

import csv

import pytest

from dprotonet_core import review

BUNDLED = review.DEFAULT_MODELS_DIR


@pytest.fixture
def with_bundled(monkeypatch):
    monkeypatch.setenv(review.BUNDLED_ENV, "1")
    monkeypatch.delenv(review.MODELS_DIR_ENV, raising=False)


def _present() -> list[str]:
    return [name for name in review.BUNDLED_CHECKPOINTS if (BUNDLED / name / "card.json").is_file()]


def test_bundled_checkpoints_are_listed_valid(with_bundled):
    present = _present()
    if not present:
        pytest.skip("no bundled checkpoint in assets/checkpoints")
    entries = {e.path.name: e for e in review.list_checkpoints()}
    for name in present:
        assert entries[name].problem is None and entries[name].bundled
    assert all(e.bundled for e in review.list_checkpoints()[: len(present)])


def test_hiding_the_bundled_checkpoints(monkeypatch, tmp_path):
    monkeypatch.setenv(review.BUNDLED_ENV, "0")
    assert review.list_checkpoints(root=tmp_path) == []


@pytest.mark.parametrize("name", list(review.BUNDLED_CHECKPOINTS))
def test_bundled_checkpoint_classifies_its_samples(name):
    if name not in _present():
        pytest.skip(f"{name} is not bundled")
    checkpoint = review.load_model(BUNDLED / name)
    card = checkpoint.card
    assert len(checkpoint.prototypes) == checkpoint.model.config.num_prototypes
    assert checkpoint.prototype_mask_vectors is not None  # prototype side precomputed (eq. 14)
    assert ("SYNTHETIC" in card.get("synthetic_warning", "")) == bool(card.get("synthetic"))
    samples = review.ASSETS / "samples"
    rows = list(csv.DictReader(open(samples / "samples.csv"))) if (samples / "samples.csv").is_file() else []
    rows = [r for r in rows if r["dataset"] == name]
    answers = {}
    for row in rows:
        loaded = review.read_upload((samples / row["file"]).read_bytes())
        prediction = review.predict(checkpoint, review.model_input(checkpoint, loaded))
        answers[row["file"]] = prediction.class_name
        assert abs(sum(prediction.probabilities) - 1) < 1e-4
    assert len(answers) >= 4  # the samples are there to be compared
    wrong = {f for f, answer in answers.items() if answer != next(r["label"] for r in rows if r["file"] == f)}
    assert wrong == KNOWN_MISSES.get(name, set()), answers


# Samples the shipped models get wrong, kept as samples rather than swapped for easier ones (the samples are the
# first films of each kind in the test split, chosen before the model answered): the RSNA model calls this normal
# PA film pneumonia (calibrated p 0.298 against its threshold 0.290), a false positive a reviewer should see.
KNOWN_MISSES = {"rsna-pneumonia": {"rsna-5-pa-normal.jpg"}}
