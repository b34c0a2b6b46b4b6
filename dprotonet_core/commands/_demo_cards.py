"""The records a demo checkpoint's card carries beside its weights (make-demo): what it accepts, its data and
credits, how it decides (calibrator and threshold, fitted on validation or on a cross-validation's out-of-fold
predictions), its out-of-distribution quantiles, and the refreshes that rewrite them in an existing card."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dprotonet_core.commands._demo_paths import CHEST_BACKBONE, PALM_CREDIT, RSNA_CREDIT

if TYPE_CHECKING:
    from dprotonet_core.commands.make_demo import DemoPlan

PALM_ACCEPTS = {"what": "colour fundus photograph", "modalities": ["OP", "XC", "OT"], "body_parts": ["EYE"],
                "colour": "colour"}

RSNA_ACCEPTS = {"what": "frontal chest radiograph", "modalities": ["CR", "DX"], "body_parts": ["CHEST"],
                "colour": "grey"}


def calibration_subset(plan: DemoPlan, val_ds):
    """The validation images the calibrator and the threshold are fitted on: those of plan.calibration_folder
    (the mix a clinic sends), or every validation image."""
    from dprotonet_core.data.datasets import ImageDataset

    if plan.calibration_folder is None:
        return val_ds
    items = [it for it in val_ds.items if it.attributes.get("folder") == plan.calibration_folder]
    if not items:
        raise ValueError(f"no validation image comes from folder {plan.calibration_folder!r}")
    return ImageDataset(items, val_ds.classes, val_ds.size, None, name=val_ds.name)


def cv_calibration(cv_record: dict | None) -> dict | None:
    """The Platt calibrator a cross-validation record carries (fitted on its out-of-fold predictions), None when the
    run stored none."""
    record = (cv_record or {}).get("out_of_fold_calibration") or {}
    if "slope" not in record:
        return None
    return {k: v for k, v in record.items() if k not in ("softmax_as_is", "platt_cross_fitted")}


def decision_records(plan: DemoPlan, model, val_ds, classes,
                     cv_record: dict | None = None) -> tuple[dict | None, float | None, dict | None]:
    """(calibration record, threshold, the card's decision_threshold record) of a trained model, both fitted on
    validation images after model selection (calibration_subset), never on the test split. No calibration and no
    threshold for a plan that asks for neither."""
    from dprotonet_core.calibration import calibrated_probability, dataset_margins, fit_platt
    from dprotonet_core.evaluate.metrics import choose_threshold

    if not plan.calibrate and plan.threshold_rule is None:
        return None, None, None
    if val_ds is None or len(val_ds) == 0:  # trained on every image: the cross-validation's out-of-fold calibrator
        calibration = cv_calibration(cv_record)
        record = argmax_threshold(calibration, classes)
        return calibration, (record or {}).get("value"), record
    subset = calibration_subset(plan, val_ds)
    where = (f"{len(subset)} validation images" + (f" of {plan.calibration_folder}" if plan.calibration_folder
                                                    else "") + ", after model selection")
    margins, labels = dataset_margins(model, subset)
    calibration = fit_platt(margins, labels, where) if plan.calibrate else None
    if plan.threshold_rule is None:
        return calibration, None, None
    scores = calibrated_probability(margins, calibration)
    threshold = choose_threshold(labels, scores, plan.threshold_rule, min_sensitivity=plan.min_sensitivity)
    chosen_for = {"youden": "the highest sensitivity + specificity",
                  "accuracy": "the highest accuracy",
                  "accuracy_at_sensitivity": f"the highest accuracy that keeps sensitivity >= {plan.min_sensitivity:g}"}
    name = classes[1]
    record = {"value": round(threshold, 4), "class": name, "rule": plan.threshold_rule,
              "chosen_for": chosen_for[plan.threshold_rule], "chosen_on": where,
              "on": "calibrated probability" if calibration else "the model's softmax of eq. 3",
              "meaning": f"the model answers {name!r} when p({name}) >= this value (instead of the paper's argmax "
                         "of eq. 3)"}
    if plan.threshold_rule == "accuracy_at_sensitivity":
        record["min_sensitivity"] = plan.min_sensitivity
    return calibration, threshold, record


def argmax_threshold(calibration: dict | None, classes) -> dict | None:
    """The decision_threshold record that keeps the paper's argmax of eq. 3 under a Platt calibrator: the logit
    difference m >= 0 is calibrated p(class 1) >= sigmoid(b) (slope a > 0). Without it the answer would be the
    argmax of the calibrated probabilities, a different rule than the one the cross-validation measured (on the
    PALM folds: out-of-fold accuracy 0.9775 by eq. 3's argmax, 0.950 by p >= 0.5). None without a calibrator."""
    import math

    if calibration is None or float(calibration["slope"]) <= 0:
        return None
    name = classes[1]
    value = 1.0 / (1.0 + math.exp(-float(calibration["intercept"])))
    return {"value": round(value, 4), "class": name, "rule": "argmax",
            "chosen_for": "the paper's argmax of eq. 3 (logit difference >= 0), the rule the cross-validation measured",
            "chosen_on": calibration.get("fitted_on", "the calibrator's out-of-fold predictions"),
            "on": "calibrated probability",
            "meaning": f"the model answers {name!r} when its eq. 3 logit for {name!r} is the larger one, which on the "
                       f"calibrated scale is p({name}) >= this value (sigmoid of the calibrator's intercept)"}


def ood_record(model, train_ds, val_ds) -> dict:
    """The card's out-of-distribution record: the score's quantiles over the training and validation images. A
    model trained on every image (val_ds None or empty) takes its flag threshold from the training images' scores,
    and the record says so."""
    from dprotonet_core import ood

    def images(dataset):
        return torch.stack([dataset[i][0] for i in range(len(dataset))])

    stats = ood.feature_stats(ood.image_features(model, images(train_ds)))
    train_scores = ood.score_images(model, images(train_ds), stats=stats)
    if val_ds is None or len(val_ds) == 0:
        record = ood.card_record(train_scores, train_scores, ood.DEFAULT_SCORE, stats)
        record.update({"flag_above": f"training {ood.FLAG_QUANTILE} (no validation images: every image trained "
                                     "the model)", "validation_images": 0})
        record.pop("validation_quantiles")
        return record
    return ood.card_record(train_scores, ood.score_images(model, images(val_ds), stats=stats), ood.DEFAULT_SCORE,
                           stats)


def refresh_card_checks(folder: Path, accepts: dict) -> dict:
    """Write `accepts` into an existing checkpoint's card (make-demo --only checks, which then writes the
    out-of-distribution detector, _demo_ood.write_detector); weights and everything else stay as they are."""
    from dprotonet_core.checkpoint import CARD_FILE, load_checkpoint

    full = json.loads((folder / CARD_FILE).read_text())
    full["accepts"] = accepts
    (folder / CARD_FILE).write_text(json.dumps(full, indent=2))
    load_checkpoint(folder)  # still verifies
    return full


def refresh_calibration(folder: Path, cv_folder: Path, plan: DemoPlan) -> dict | None:
    """Write the cross-validation record (with its out-of-fold calibration) and the calibrator it gives into an
    existing checkpoint's card trained on every image; weights and everything else stay. Returns the calibrator
    (None, and the card says why, when the run stored no out-of-fold predictions)."""
    from dprotonet_core.checkpoint import CARD_FILE, load_checkpoint
    from dprotonet_core.train.cross_validation import card_record

    full = json.loads((folder / CARD_FILE).read_text())
    full["cross_validation"] = card_record(cv_folder, dataclasses.asdict(plan))
    calibration = cv_calibration(full["cross_validation"])
    threshold = argmax_threshold(calibration, full["classes"])
    for key, value in (("calibration", calibration), ("decision_threshold", threshold)):
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    (folder / CARD_FILE).write_text(json.dumps(full, indent=2))
    load_checkpoint(folder)  # still verifies
    print(json.dumps({"checkpoint": str(folder), "calibration": calibration}), flush=True)
    return calibration


def distinct_source_counts(ckpt) -> dict:
    """Per class: prototypes, and how many distinct source images they were projected from."""
    out = {}
    for c, name in enumerate(ckpt.classes):
        records = [r for r in ckpt.prototypes if r.class_index == c]
        out[name] = {"prototypes": len(records), "distinct_source_images": len({r.source_id for r in records})}
    return out


def palm_card() -> dict:
    return {
        "accepts": PALM_ACCEPTS,
        "name": "iChallenge-PM (PALM) demo",
        "short_name": "iChallenge-PM",
        "task": "pathologic myopia (PM) vs. not, from colour fundus photographs",
        "synthetic": False,
        "trained_on": "400 real PALM / iChallenge-PM fundus photographs (224 px)",
        "training_data": {"dataset": "ichallenge-pm", "credit": PALM_CREDIT},
        "intended_use": "Demonstration and research on interpretable classification; not a medical device.",
        "warnings": [
            "Research software, not a medical device: not for diagnosis or treatment decisions.",
            "Trained from scratch (no ImageNet weights) on 400 images from one challenge dataset; "
            "expect it to fail on photographs from other cameras or populations.",
        ],
    }


def rsna_card() -> dict:
    from dprotonet_core.data.kermany import CREDIT as KERMANY_CREDIT

    return {
        "accepts": RSNA_ACCEPTS,
        "name": "RSNA pneumonia (real radiographs)",
        "short_name": "RSNA pneumonia",
        "task": "pneumonia (lung opacity) vs. not, from frontal chest radiographs of adults",
        "synthetic": False,
        "trained_on": "real adult chest radiographs of the RSNA Pneumonia Detection Challenge (NIH Clinical "
                      "Center, one hospital system): 2,710 films of two copies, rsna-real (1,200, the challenge's 1:3 "
                      "mix, 512 px) and rsna-real-256 (1,510, about 1:1, 256 px), used at 224 px, split by patient "
                      "(64% training, 16% validation, 20% test); backbone first pretrained on 6,754 real pediatric "
                      "radiographs (Kermany et al.)",
        "training_data": {"dataset": "rsna (real: ../shared/data/rsna-real + ../shared/data/rsna-real-256)",
                          "credit": RSNA_CREDIT,
                          "pretraining": {"dataset": "kermany-chest-224", "credit": KERMANY_CREDIT,
                                          "file": str(CHEST_BACKBONE)},
                          "view_confound": "over both folders 819 of 1,052 positives are AP (bedside) films against "
                                           "491 of 1,658 negatives (metadata.csv of each folder)",
                          "countered_by": "view x label balanced draws in training (train/sampling.py), selection "
                                          "on the lower within-view validation AUC; every figure is given per view "
                                          "and per folder beside the AUC of the view alone (view_shortcut_auc)"},
        "intended_use": "Research on interpretable classification of chest radiographs; not a medical device.",
        "warnings": [
            "Research software, not a medical device: not for diagnosis or treatment decisions.",
            "Trained on radiographs of one hospital system; the view (AP bedside vs PA) is confounded with the "
            "label there (most positives are bedside AP films). Training draws made view and label independent, "
            "but check the per-view figures and look at what the heatmap marks.",
        ],
    }


def palm_sample_credit(checkpoint: Path) -> str:
    """The PALM samples' credit, saying whether the bundled checkpoint trained on them (a model trained on all 400
    photographs has seen every PALM sample; one with a test split has not seen those drawn from it)."""
    from dprotonet_core.evaluate.data import trained_on_every_image

    card_file = Path(checkpoint) / "card.json"
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    if trained_on_every_image(card):
        images = (card.get("training_data") or {}).get("images", "all")
        return (f"{PALM_CREDIT}; one of the {images} photographs the bundled iChallenge-PM "
                "checkpoint was trained on, so not an image it has never seen")
    return f"{PALM_CREDIT}; from the bundled checkpoint's held-out test split"
