"""make-demo's MDM steps on existing folders: the prototype side recomputed in place, the samples' stored
explanations written and then found by the app (dprotonet_core/commands/_demo_mdm.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch
from safetensors.torch import save_file

from dprotonet_core import review
from dprotonet_core.checkpoint import load_checkpoint, sha256_file
from dprotonet_core.commands import _demo_mdm
from tests.app_support import make_samples_dir, make_tiny_checkpoint
from tests.conftest import PALM_DIR


def test_prototype_side_is_recomputed_in_place_weights_untouched(tmp_path):
    folder = make_tiny_checkpoint(tmp_path / "ichallenge-pm")
    weights = sha256_file(folder / "model.safetensors")
    original = load_checkpoint(folder)
    before = original.prototype_mask_vectors
    assert before is not None
    stale = folder / "prototypes" / "mask_vectors.safetensors"  # zeroed: the recomputation must replace them
    save_file({f"d{i + 1}": torch.zeros_like(v) for i, v in enumerate(before)}, str(stale))
    card = json.loads((folder / "card.json").read_text())
    card["sha256"]["prototypes/mask_vectors.safetensors"] = sha256_file(stale)
    (folder / "card.json").write_text(json.dumps(card))
    assert float(load_checkpoint(folder).prototype_mask_vectors[0].max()) == 0.0

    record = _demo_mdm.refresh_prototype_side(folder, "fast")
    after = load_checkpoint(folder)  # verifies every hash
    assert sha256_file(folder / "model.safetensors") == weights
    assert after.card["prototype_mdm"]["profile"] == "fast" and record["mdm_config"]["distance"] == "deletion"
    assert any(float(v.max()) > 0 for v in after.prototype_mask_vectors)  # the zeroed ones were replaced
    again, _ = _demo_mdm.prototype_side(after, "fast")  # eq. 14 on the stored source images, deterministic
    for a, b in zip(after.prototype_mask_vectors, again):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert after.classes == original.classes and after.card["classes"] == original.card["classes"]


def test_sample_explanations_are_stored_and_found_by_the_app(tmp_path, monkeypatch):
    checkpoints = tmp_path / "checkpoints"
    make_tiny_checkpoint(checkpoints / "ichallenge-pm")
    palm = sorted(PALM_DIR.glob("*.jpg"))[:1]
    samples = make_samples_dir(tmp_path / "samples", [(palm[0], "PM", "ichallenge-pm")])
    shutil.copy(palm[0], samples / "unlisted.jpg")  # a file not listed in samples.csv: not explained
    (samples / "explanations").mkdir()
    (samples / "explanations" / "stale.safetensors").write_bytes(b"no sample needs this")
    rows = _demo_mdm.store_sample_explanations(samples, checkpoints, profiles=("fast",))
    assert [r["sample"] for r in rows] == [palm[0].name] and "kept" not in rows[0]
    stored = list((samples / "explanations").glob("*.safetensors"))
    assert len(stored) == 1 and stored[0].name != "stale.safetensors"
    before = stored[0].read_bytes()
    again = _demo_mdm.store_sample_explanations(samples, checkpoints, profiles=("fast",))
    assert again[0].get("kept") and stored[0].read_bytes() == before  # same inputs: kept, not recomputed

    monkeypatch.setenv(review.SAMPLES_DIR_ENV, str(samples))
    checkpoint = review.load_model(checkpoints / "ichallenge-pm")
    x = review.default_model_input(checkpoint, palm[0].read_bytes())
    prototype = review.default_prototype(review.predict(checkpoint, x))
    found = review.stored_explanation(checkpoint, x, prototype, "fast")
    assert found is not None and found.precomputed and found.prototype == prototype
    live = review.explain(checkpoint, x, prototype, "fast")
    np.testing.assert_allclose(found.query_stack, live.query_stack, atol=1e-4)  # what the app would compute
    assert review.stored_explanation(checkpoint, torch.flip(x, [-1]), prototype, "fast") is None  # other pixels
