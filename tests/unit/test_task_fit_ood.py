"""Task fit from what the file says (DICOM header, colour of the pixels) and the out-of-distribution score:
card fields, the quantile threshold, the routing to another checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dprotonet_core import ood
from dprotonet_core.data.io import LoadedImage
from dprotonet_core.review import CheckpointEntry, route, samples_for
from dprotonet_core.task_fit import chroma, first_fitting, image_colour, task_fit

CHEST = {"what": "frontal chest radiograph", "modalities": ["CR", "DX"], "body_parts": ["CHEST"], "colour": "grey"}
FUNDUS = {"what": "colour fundus photograph", "modalities": ["OP"], "body_parts": ["EYE"], "colour": "colour"}


def _dicom(modality: str, body: str, photometric: str = "MONOCHROME2") -> LoadedImage:
    return LoadedImage(np.full((8, 8), 0.5, np.float32), "dicom",
                       {"Modality": modality, "Body part": body}, photometric=photometric)


def _rgb(r: float, g: float, b: float) -> LoadedImage:
    pixels = np.zeros((16, 16, 3), np.float32)
    pixels[...] = (r, g, b)
    return LoadedImage(pixels, "jpeg")


def test_colour_is_read_from_the_pixels():
    assert chroma(np.zeros((4, 4), np.float32)) == 0.0
    assert chroma(_rgb(0.8, 0.3, 0.1).pixels) == pytest.approx(0.7)
    assert image_colour(_rgb(0.4, 0.4, 0.4)) == "grey"  # a radiograph stored as RGB is grey
    assert image_colour(_rgb(0.7, 0.35, 0.1)) == "colour"
    assert image_colour(_dicom("CR", "CHEST")) == "grey"


def test_task_fit_by_header_then_colour():
    assert task_fit(_dicom("CR", "CHEST"), CHEST).fits
    verdict = task_fit(_dicom("CR", "CHEST"), FUNDUS)
    assert not verdict.fits and "modality CR" in verdict.reason and "fundus" in verdict.reason
    assert not task_fit(_dicom("CR", "KNEE"), CHEST).fits  # right modality, wrong body part
    assert task_fit(_dicom("DX", ""), CHEST).fits  # a body part the file leaves out is not held against it
    assert not task_fit(_rgb(0.7, 0.35, 0.1), CHEST).fits  # a colour photograph is no radiograph
    assert task_fit(_rgb(0.7, 0.35, 0.1), FUNDUS).fits
    assert not task_fit(_rgb(0.5, 0.5, 0.5), FUNDUS).fits
    assert task_fit(_dicom("MR", "HEAD"), None).fits  # a card without `accepts` takes anything, and says so
    assert "does not say" in task_fit(_dicom("MR", "HEAD"), None).reason
    assert first_fitting(_dicom("CR", "CHEST"), [("palm", {"accepts": FUNDUS}), ("rsna", {"accepts": CHEST})]) == "rsna"
    assert first_fitting(_dicom("MR", "HEAD"), [("palm", {"accepts": FUNDUS}), ("x", {})]) is None


def test_route_switches_to_the_fitting_checkpoint_and_says_so_in_one_line():
    palm = CheckpointEntry(Path("/m/ichallenge-pm"), {"name": "iChallenge-PM", "accepts": FUNDUS}, None, True)
    rsna = CheckpointEntry(Path("/m/rsna-pneumonia"), {"name": "RSNA pneumonia", "accepts": CHEST}, None, True)
    routing = route(_dicom("CR", "CHEST"), palm, [palm, rsna])
    assert routing.switched and routing.path == rsna.path and routing.fit.fits
    assert routing.notice.startswith("Frontal chest radiograph: reviewed with the RSNA pneumonia model (the "
                                     "iChallenge-PM model is made for: colour fundus photograph)")
    assert "\n" not in routing.notice
    stay = route(_rgb(0.7, 0.3, 0.1), palm, [palm, rsna])
    assert not stay.switched and stay.notice is None
    none = route(_dicom("MR", "HEAD"), palm, [palm, rsna])
    assert not none.switched and not none.fit.fits and "No listed model" in none.notice


def test_samples_follow_the_checkpoint():
    from dprotonet_core.review import Sample

    a = Sample("a.jpg", "PM", "ichallenge-pm", "", Path("a.jpg"))
    b = Sample("b.dcm", "pneumonia", "rsna-pneumonia", "", Path("b.dcm"))
    assert samples_for([a, b], Path("/x/rsna-pneumonia")) == [b]
    assert samples_for([a, b], Path("/x/my-model")) == [a, b]


def test_ood_scores_by_hand():
    # s (B=2, n=2 masks, K=3 prototypes)
    s = torch.tensor([[[4.0, 1.0, 9.0], [2.0, 3.0, 0.5]], [[7.0, 8.0, 6.0], [5.0, 9.0, 9.0]]])
    assert ood.ood_scores(s, name="nearest_prototype").tolist() == [0.5, 5.0]  # min over masks and prototypes
    assert ood.ood_scores(s, name="mean_nearest_prototype").tolist() == pytest.approx([(2 + 1 + 0.5) / 3, 19 / 3])
    logits = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    assert ood.ood_scores(s, logits, "softmax").tolist() == pytest.approx([0.5, 1 - 1 / (1 + np.exp(-3.0))])
    with pytest.raises(ValueError, match="unknown OOD score"):
        ood.ood_scores(s, name="entropy")


def test_feature_zscore_by_hand():
    z = torch.tensor([[[1.0, 2.0], [3.0, 6.0]]])  # (B=1, n=2 masks, D=2): zbar = (2, 4)
    stats = {"mean": [1.0, 2.0], "std": [1.0, 4.0]}
    s = torch.zeros(1, 2, 3)
    assert ood.ood_scores(s, name="feature_zscore", z=z, stats=stats).tolist() == pytest.approx([(1 + 0.25) / 2])
    fitted = ood.feature_stats(np.array([[0.0, 5.0], [2.0, 5.0]]))
    assert fitted["mean"] == [1.0, 5.0] and fitted["std"][0] == 1.0 and fitted["std"][1] > 0  # floored, not 0
    with pytest.raises(ValueError, match="feature statistics"):
        ood.ood_scores(s, name="feature_zscore", z=z)


def test_quantile_threshold_and_check():
    val = np.arange(1, 101, dtype=float)  # 1..100
    record = ood.card_record(np.arange(10.0), val)
    assert record["threshold"] == pytest.approx(np.quantile(val, 0.99)) == pytest.approx(99.01)
    assert record["validation_images"] == 100 and record["training_quantiles"]["q50"] == pytest.approx(4.5)
    assert set(record["validation_quantiles"]) == {"q50", "q90", "q95", "q99", "q99_9"}
    assert ood.check(99.5, record).flagged and not ood.check(99.0, record).flagged
    assert ood.check(1e9, None).to_json() == {"score": 1e9, "threshold": None, "flagged": False}


def test_prediction_carries_the_nearest_prototype_distance(tiny_model, tiny_config):
    from dprotonet_core.inference import predict

    x = torch.rand(1, 3, tiny_config.input_size, tiny_config.input_size)
    with torch.no_grad():
        expected = float(tiny_model(x).distances.min())
    assert predict(tiny_model, x).ood_score == pytest.approx(expected, rel=1e-6)
