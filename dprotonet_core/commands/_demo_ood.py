"""The out-of-distribution detector a demo checkpoint ships (ood_detector.py: ood.safetensors beside the weights,
the card's `ood` record naming the score, its normalisers, its threshold and the images the threshold came from).

Fitted on the images the model trained on; normalisers and threshold are 99th percentiles over images it did not
train on: RSNA its validation split; iChallenge-PM (trained on all 400 photographs) the out-of-fold images of its
cross-validation, each scored by the fold model that did not train on it with that fold's own detector. Which
score each card ships was chosen on bench/ood.py's look-alike figures (CHOSEN_BECAUSE); the test split was not
used to choose.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# the rule: the most look-alikes flagged with at most 5% false alarms on the model's own held-out images, ties to
# the fewer false alarms, and at least one component read from the model (input statistics alone would miss a
# look-alike with a fundus photograph's or a radiograph's statistics)
CHOSEN = {"rsna-pneumonia": "stages", "ichallenge-pm": "last_stage+knn+input"}
CHOSEN_BECAUSE = {
    "rsna-pneumonia": "bench/ood.py (73 look-alikes; thresholds from 433 validation films; false alarms on 5 folds "
                      "of them, each against the others' threshold): Mahalanobis over all four stages of f_b flagged "
                      "93.2% with 1.4% false alarms; the best single stage 90.4% (0.9-1.2%), kNN 87.7% (1.4%), input "
                      "statistics 71.2% (1.2%), stages + input 89.0% (1.4%); the score shipped before (pooled-feature "
                      "z-score) 20.5% (0.9%). On the 541 test films (not chosen on) it flags 3.0%: 4.3% of the "
                      "positives, 2.1% of the negatives",
    "ichallenge-pm": "bench/ood.py (74 look-alikes; thresholds from 400 out-of-fold photographs; false alarms fold by "
                     "fold with the other folds' threshold): last stage + kNN + input statistics flagged 100% with "
                     "1.8% false alarms; stages + input 100% (2.2%), stages alone 93.2% (2.2%), input alone 100% "
                     "(1.5%, no model component), kNN 25.7% (1.3%); the score shipped before (pooled-feature "
                     "z-score) 0% (1.8%)",
}


def fitted_and_unseen(ck, dataset: str, data_root, cv_folder: Path | None = None, extra=None):
    """(detector fitted on the training images, component scores of the images the model did not train on,
    per-fold component scores (one entry for RSNA), training image count, where the unseen images come from).
    `extra(model, training images, unseen images)`: more scores to add to the unseen ones (bench/ood.py's legacy
    candidates), each from the model that did not train on those images."""
    from dprotonet_core import ood_detector
    from dprotonet_core.data.registry import load_dataset
    from dprotonet_core.ood_features import dataset_features

    size = ck.model.config.input_size
    recorded = ck.card.get("training_data", {}).get("split", {})
    if recorded.get("val_fraction"):
        split = {"seed": int(recorded.get("seed", ck.card.get("seed", 0))),
                 "val_fraction": float(recorded["val_fraction"]),
                 "test_fraction": float(recorded.get("test_fraction") or 0.0)}
        train, val = (load_dataset(dataset, data_root, s, size, transform=None, **split) for s in ("train", "val"))
        expected = recorded.get("val_ids")
        if expected and sorted(map(str, expected)) != sorted(map(str, val.ids)):
            raise RuntimeError("the plan's validation split is not the card's; refusing to measure on it")
        features, labels = dataset_features(ck.model, train)
        detector = ood_detector.fit_detector(features, labels)
        unseen = detector.component_scores(dataset_features(ck.model, val)[0])
        if extra is not None:
            unseen.update(extra(ck.model, train, val))
        return detector, unseen, [unseen], len(labels), "validation images"
    if cv_folder is None:
        raise SystemExit("a checkpoint trained on every image takes its out-of-distribution threshold from its "
                         "cross-validation's fold models: pass --palm-cross-validation DIR")
    data = load_dataset(dataset, data_root, "all", size, transform=None)
    per_fold = out_of_fold_scores(data, cv_folder, extra)
    features, labels = dataset_features(ck.model, data)
    detector = ood_detector.fit_detector(features, labels)
    unseen = {name: np.concatenate([f[name] for f in per_fold]) for name in per_fold[0]}
    return detector, unseen, per_fold, len(labels), f"out-of-fold images of {len(per_fold)} cross-validation folds"


def has_fold_models(cv_folder: Path) -> bool:
    """Whether a cross-validation folder still holds every fold's model (not only the figures git keeps)."""
    try:
        folds = json.loads((Path(cv_folder) / "folds.json").read_text())
    except (OSError, ValueError):
        return False
    folds = folds.get("folds", folds)
    return bool(folds) and all((Path(cv_folder) / f"fold-{k}" / "card.json").is_file() for k in range(len(folds)))


def out_of_fold_scores(data, cv_folder: Path, extra=None) -> list[dict[str, np.ndarray]]:
    """Per fold: the component scores of its out-of-fold images under that fold's model and a detector fitted on
    that fold's training images. Needs the fold models (cross-validate --out keeps them; git keeps only figures)."""
    from dprotonet_core import ood_detector
    from dprotonet_core.checkpoint import load_checkpoint
    from dprotonet_core.ood_features import dataset_features

    folds = json.loads((cv_folder / "folds.json").read_text())
    folds = folds.get("folds", folds)
    missing = [k for k in range(len(folds)) if not (cv_folder / f"fold-{k}" / "card.json").is_file()]
    if missing:
        raise SystemExit(f"{cv_folder}: folds {missing} have no model (fold-N/card.json); the out-of-distribution "
                         "threshold needs every fold model of the cross-validation")
    per_fold = []
    for k, held_out in enumerate(folds):
        model = load_checkpoint(cv_folder / f"fold-{k}").model
        held = {int(i) for i in held_out}
        train = [data[i] for i in range(len(data)) if i not in held]
        features, labels = dataset_features(model, train)
        detector = ood_detector.fit_detector(features, labels)
        unseen = [data[i] for i in sorted(held)]
        scores = detector.component_scores(dataset_features(model, unseen)[0])
        if extra is not None:
            scores.update(extra(model, train, unseen))
        per_fold.append(scores)
        print(f"fold {k}: {len(train)} training, {len(held)} out-of-fold images", flush=True)
    return per_fold


def write_detector(folder: Path, name: str, plan, data_root, cv_folder: Path | None = None) -> dict:
    """Fit, choose (CHOSEN[name]) and store the detector in an existing checkpoint folder: ood.safetensors, its
    hash in card.json and the card's `ood` record. Weights and everything else stay as they are."""
    from dprotonet_core import ood_detector
    from dprotonet_core.checkpoint import CARD_FILE, load_checkpoint, sha256_file

    ck = load_checkpoint(folder)
    detector, unseen, _, n_train, where = fitted_and_unseen(ck, plan.dataset, data_root, cv_folder)
    chosen = CHOSEN.get(name, "stages")
    components = ood_detector.candidate_names(detector.components)[chosen]
    choice = ood_detector.choose(unseen, chosen, components, where, n_train)
    path = folder / ood_detector.DETECTOR_FILE
    detector.save(path)
    full = json.loads((folder / CARD_FILE).read_text())
    full["ood"] = choice.record({"chosen_because": CHOSEN_BECAUSE[name],
                                 "unseen_quantiles": _quantiles(ood_detector.combine(unseen, components,
                                                                                     choice.normalisers))})
    full["sha256"][ood_detector.DETECTOR_FILE] = sha256_file(path)
    (folder / CARD_FILE).write_text(json.dumps(full, indent=2))
    load_checkpoint(folder)  # still verifies, detector included
    print(json.dumps({"checkpoint": str(folder), "ood": {k: full["ood"][k] for k in ("detector", "threshold",
                                                                                      "threshold_images")}}),
          flush=True)
    return full["ood"]


def _quantiles(scores: np.ndarray) -> dict[str, float]:
    return {f"q{q:g}": round(float(np.percentile(scores, q)), 6) for q in (50, 90, 95, 99)}
