"""A checkpoint's evaluation folder is untrusted input like its card (issue: safe to deploy): load_evaluation
reads only bounded JSON, refuses links, deep nesting, values that are not numbers and figures that would fetch
from elsewhere, each as one line in `problems`, never an exception; the Evaluation page shows one line for a
value of an unexpected type."""

from __future__ import annotations

import json
import os

import pytest
from streamlit.testing.v1 import AppTest

from dprotonet_core.evaluate.report import EVALUATION_JSON_MAX_BYTES, load_evaluation
from tests.app_support import make_tiny_checkpoint
from tests.conftest import REPO

FIGURE = {"data": [{"type": "scatter", "x": [0, 1], "y": [0, 1]}], "layout": {"title": {"text": "roc"}}}


def _evaluation(folder, metrics: dict | str, figures: dict | None = None):
    ev = folder / "evaluation"
    (ev / "figures").mkdir(parents=True, exist_ok=True)
    (ev / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    for name, value in (figures or {}).items():
        (ev / "figures" / f"{name}.json").write_text(json.dumps(value))
    return folder


def _metrics(**extra) -> dict:
    return {"dataset": {"name": "tiny", "split": "test", "n": 2},
            "table5": {"columns": ["AD", "DICE"], "higher_is_better": {"DICE": True},
                       "rows": [{"name": "MDM", "AD": 10.0, "DICE": 0.5, "n_images": 2}]},
            "figures": {"files": {"roc": {"json": "figures/roc.json"}}}, **extra}


def test_a_sound_evaluation_reads_back(tmp_path):
    view = load_evaluation(_evaluation(tmp_path, _metrics(), {"roc": FIGURE}))
    assert not view.problems and view.table5 == [{"Method": "MDM", "AD ↓": "10.000", "DICE ↑": "0.500",
                                                  "images": 2}]
    assert "roc" in view.figures


@pytest.mark.parametrize("damage, expected", [
    ("deep", "nests deeper"),
    ("huge", "larger than"),
    ("not-json", "not valid JSON"),
    ("list", "not a JSON object"),
    ("link", "not a regular file"),
])
def test_a_broken_metrics_file_is_one_line(tmp_path, damage, expected):
    folder = tmp_path / "ck"
    if damage == "deep":
        _evaluation(folder, "[" * 5000 + "]" * 5000)
    elif damage == "huge":
        _evaluation(folder, json.dumps({"pad": "x" * (EVALUATION_JSON_MAX_BYTES + 10)}))
    elif damage == "not-json":
        _evaluation(folder, "{not json")
    elif damage == "list":
        _evaluation(folder, "[1, 2]")
    else:
        outside = tmp_path / "elsewhere.json"
        outside.write_text(json.dumps(_metrics()))
        (folder / "evaluation").mkdir(parents=True)
        os.symlink(outside, folder / "evaluation" / "metrics.json")
    view = load_evaluation(folder)
    assert view is not None and len(view.problems) == 1 and expected in view.problems[0], view.problems
    assert view.table5 == [] and view.figures == {}


def test_values_that_are_not_numbers_are_shown_as_na_and_said(tmp_path):
    metrics = _metrics()
    metrics["table5"]["rows"][0].update({"AD": "abc", "DICE": float("nan"), "n_images": "many"})
    metrics["table5"]["rows"].append("not a row")
    view = load_evaluation(_evaluation(tmp_path, json.loads(json.dumps(metrics)), {"roc": FIGURE}))
    assert view.table5[0]["AD ↓"] == "n/a" and view.table5[0]["DICE ↑"] == "n/a" and view.table5[0]["images"] is None
    assert any("3 value(s) that are not numbers" in p for p in view.problems), view.problems


@pytest.mark.parametrize("hostile", [
    {"layout": {"images": [{"source": "http://127.0.0.1:9/tracker.png"}]}},
    {"layout": {"title": {"text": "<a href='http://127.0.0.1:9/'>click</a>"}}},
    {"data": [{"type": "scatter", "x": [0], "y": [0], "hovertemplate": "<img src=x>"}]},
])
def test_a_figure_that_would_fetch_or_link_is_not_drawn(tmp_path, hostile):
    view = load_evaluation(_evaluation(tmp_path, _metrics(), {"roc": {**FIGURE, **hostile}}))
    assert "roc" not in view.figures and any("figure roc is not drawn" in p for p in view.problems)


def test_the_evaluation_page_shows_one_line_for_a_value_of_an_unexpected_type(tmp_path, monkeypatch):
    folder = make_tiny_checkpoint(tmp_path / "models" / "tiny")
    _evaluation(folder, _metrics(classification={"accuracy": "high", "by_view": 7, "calibration": "x"}))
    monkeypatch.setenv("DPROTONET_MODELS_DIR", str(folder.parent))
    monkeypatch.setenv("DPROTONET_SAMPLES_DIR", str(tmp_path / "no-samples"))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.session_state["checkpoint_path"] = str(folder)
    at.run()
    at.switch_page("pages/evaluation.py").run()
    assert not at.exception, at.exception
    assert any("stored evaluation holds a value the page cannot show" in e.value for e in at.error)
