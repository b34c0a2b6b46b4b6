"""A checkpoint's card is untrusted text: the app shows it as written and never renders it as markdown.

A card whose name, task, training-data credit, intended use, limitations, decision-threshold record and a class
name hold markdown images (`![](http://...)`: every visitor's browser would fetch it), links and HTML goes
through the sidebar, the review page (an upload), the Prototypes and Model card pages. Every element whose text
Streamlit renders as markdown (markdown, captions, headings, alerts, radio and progress labels) must hold no
markdown construct once its backslash escapes are taken out, and still show the card's words.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from dprotonet_core import review
from tests.app_support import TINY_NAME, make_tiny_checkpoint
from tests.conftest import REPO

APP = str(REPO / "app.py")
TIMEOUT = 60
TRACKER = "![seen](http://127.0.0.1:9/tracker.png)"  # loopback port 9 (discard): nothing is ever fetched
LINK = "[click](http://127.0.0.1:9/x) <img src=x>"
CONSTRUCTS = ("![", "](", "<img", "<b>")

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def quick_mdm(monkeypatch):
    """The review page explains the upload: a few MDM steps are enough to render every element."""
    from dataclasses import replace

    from dprotonet_core.explain import mdm

    for name in list(mdm.MDM_PROFILES):
        monkeypatch.setitem(mdm.MDM_PROFILES, name, replace(mdm.profile(name), iterations=5))


def _hostile_checkpoint(root):
    folder = make_tiny_checkpoint(root / TINY_NAME)
    card = json.loads((folder / "card.json").read_text())  # card.json is not in its own hash list
    card.update({
        "name": f"Tiny {TRACKER}",
        "task": f"Task {TRACKER} {LINK}",
        "trained_on": f"nothing {TRACKER}",
        "training_data": {"credit": f"credit {TRACKER}"},
        "intended_use": f"use {TRACKER} <b>bold</b>",
        "limitations": [f"limit {TRACKER} with a long enough text"],
        "classes": ["normal", f"finding {TRACKER}"],
        "decision_threshold": {"value": 0.5, "rule": "youden", "chosen_on": f"split {TRACKER}"},
    })
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def _rendered_texts(at: AppTest) -> list[str]:
    """The markdown text of every element that Streamlit renders as markdown, sidebar included."""
    texts: list[str] = []

    def walk(node) -> None:
        children = getattr(node, "children", None)
        if children:
            for child in children.values():
                walk(child)
        proto = getattr(node, "proto", None)
        if proto is None:
            return
        for field in ("body", "label", "text", "caption"):
            value = getattr(proto, field, None)
            if isinstance(value, str) and value:
                texts.append(value)
        if getattr(node, "type", "") == "radio":  # radio options are markdown; select boxes show plain text
            texts.extend(str(o) for o in proto.options)
        captions = getattr(proto, "imgs", None)
        if captions is not None:
            texts.extend(i.caption for i in captions if getattr(i, "caption", ""))

    walk(at._tree)
    return texts


def _constructs(texts: list[str]) -> list[str]:
    found = []
    for text in texts:
        bare = re.sub(r"\\.", "", text)  # escaped characters show as themselves
        found += [f"{c!r} in {text[:90]!r}" for c in CONSTRUCTS if c in bare]
    return found


def test_card_text_is_shown_as_written_never_rendered(tmp_path, monkeypatch):
    folder = _hostile_checkpoint(tmp_path / "models")
    monkeypatch.setenv("DPROTONET_MODELS_DIR", str(folder.parent))
    monkeypatch.setenv("DPROTONET_SAMPLES_DIR", str(tmp_path / "no-samples"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["checkpoint_path"] = str(folder)
    at.run()
    assert not at.exception, at.exception
    sidebar = " ".join(review.unescaped(str(m.value)) for m in at.sidebar.markdown)
    assert "Task ![seen](http://127.0.0.1:9/tracker.png)" in sidebar, sidebar  # the words are shown, as text
    texts = _rendered_texts(at)

    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(4).random((70, 90, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
    at.file_uploader(key="upload").set_value(("x.png", buffer.getvalue(), "image/png")).run()
    assert not at.exception, at.exception
    assert any(str(s.value).startswith("Prediction:") for s in at.subheader)
    texts += _rendered_texts(at)
    for page in ("pages/prototypes.py", "pages/model_card.py"):
        at.switch_page(page).run()
        assert not at.exception, f"{page}: {at.exception}"
        texts += _rendered_texts(at)
    assert any("tracker.png" in t for t in texts), "the card's text is not on the pages at all"
    found = _constructs(texts)
    assert not found, "card text rendered as markdown:\n" + "\n".join(sorted(set(found)))


def test_plain_escapes_every_construct_and_keeps_the_words():
    for text in (TRACKER, LINK, "**bold** _it_ `code` $x$ ~~s~~ # head | a |", "a\nb\n\n- item"):
        shown = review.plain(text)
        assert "\n" not in shown
        assert not _constructs([shown])
        assert review.unescaped(shown) == " ".join(text.split())


def test_text_from_accepts_the_prototype_record_and_the_evaluation_is_shown_as_written(tmp_path, monkeypatch):
    """The task-fit reason (accepts), the prototype heatmaps' caption (prototype_mdm's profile) and the Evaluation
    page's lines (the evaluation folder's metrics.json) are the checkpoint's text too."""
    folder = make_tiny_checkpoint(tmp_path / "models" / TINY_NAME)
    card = json.loads((folder / "card.json").read_text())
    card["accepts"] = {"what": f"thing {TRACKER}", "colour": "grey"}  # a colour upload does not fit
    card["prototype_mdm"] = {**(card.get("prototype_mdm") or {}), "profile": f"standard {TRACKER}",
                             "mdm_config": {"iterations": 5, "lr": 0.04}}
    (folder / "card.json").write_text(json.dumps(card))
    evaluation = folder / "evaluation"
    evaluation.mkdir()
    (evaluation / "metrics.json").write_text(json.dumps({
        "dataset": {"name": f"set {TRACKER}", "split": "test", "n": 2, "notes": [f"note {LINK}"]},
        "classification": {"decision": f"rule {TRACKER}", "probability": f"p {LINK}"},
        "table5": {"columns": [], "rows": []}}))
    monkeypatch.setenv("DPROTONET_MODELS_DIR", str(folder.parent))
    monkeypatch.setenv("DPROTONET_SAMPLES_DIR", str(tmp_path / "no-samples"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["checkpoint_path"] = str(folder)
    at.run()
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(4).random((70, 90, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
    at.file_uploader(key="upload").set_value(("x.png", buffer.getvalue(), "image/png")).run()
    assert not at.exception, at.exception
    assert any("not what this model was made for" in e.value for e in at.error)
    texts = _rendered_texts(at)
    for page in ("pages/prototypes.py", "pages/evaluation.py"):
        at.switch_page(page).run()
        assert not at.exception, f"{page}: {at.exception}"
        texts += _rendered_texts(at)
    for words in ("thing", "standard", "set", "note", "rule"):  # each hostile field reached a page
        assert any(f"{words} " in review.unescaped(t) and "tracker.png" in t or "127.0.0.1:9/x" in t
                   for t in texts if words in t), words
    found = _constructs(texts)
    assert not found, "checkpoint text rendered as markdown:\n" + "\n".join(sorted(set(found)))
