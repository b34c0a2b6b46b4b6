"""Out-of-distribution scores of the bundled checkpoints on look-alike images: per checkpoint and per candidate
score, the AUROC against the model's own held-out images, the share of look-alikes flagged at the threshold, and
the false alarms on the model's own held-out images at that threshold. Prints figures, asserts nothing.

    python -m bench.ood [--checkpoints assets/checkpoints] [--palm-cross-validation runs/cv-palm] [--only NAME]

Thresholds: the 99th percentile of each score over images the model did not train on. RSNA: the validation split
(false alarms: 5 seeded folds of the validation films, each against the threshold of the other four, which
the choice reads; and the test split, reported, never chosen on). iChallenge-PM (trained on all 400 PALM
photographs): the out-of-fold images of the 5-fold cross-validation, each scored by the fold model that did not
train on it, with that fold model's own detector; the false alarms are counted fold by fold with the threshold of
the other four folds' out-of-fold images, and the look-alikes go through the shipped model and its detector.

Look-alikes: bench/lookalikes.py (scikit-image and pydicom files, transforms of the checkpoint's own images and of
the other checkpoint's, generated images; nothing downloaded). The legacy candidates (ood.py: the pooled-feature
z-score the cards shipped before, the nearest-prototype distance) are measured alongside. After the table, the
held-out look-alikes (bench/lookalikes.py heldout_sets: files and transforms the choice was not made on) are
scored with every candidate, the shipped one marked (commands/_demo_ood.py CHOSEN).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bench.common import machine_info
from bench.lookalikes import heldout_sets, lookalike_sets
from dprotonet_core import ood, ood_detector
from dprotonet_core.checkpoint import load_checkpoint
from dprotonet_core.commands._demo_ood import CHOSEN, fitted_and_unseen
from dprotonet_core.commands._demo_paths import RSNA_SPLIT
from dprotonet_core.commands.make_demo import SHARED
from dprotonet_core.data.registry import load_dataset
from dprotonet_core.evaluate.data import load_eval_data
from dprotonet_core.evaluate.metrics import roc_auc
from dprotonet_core.ood_features import model_features

RSNA = [SHARED / "rsna-real", SHARED / "rsna-real-256"]
PALM = SHARED / "palm-training400-224"
KIND = {"ichallenge-pm": "fundus", "rsna-pneumonia": "chest"}


def split_images(dataset: str, root, split: str, size: int, card: dict, limit: int | None = None):
    data = load_eval_data(dataset, root, split, size, card)
    count = len(data) if limit is None else min(limit, len(data))
    step = max(1, len(data) // max(count, 1))
    return data, torch.stack([data.image(k) for k in range(0, len(data), step)[:count]])


def legacy_scores(model, images: torch.Tensor, stats: dict) -> dict[str, np.ndarray]:
    return {"legacy feature z-score": ood.score_images(model, images, "feature_zscore", stats=stats),
            "legacy nearest prototype": ood.score_images(model, images, "nearest_prototype")}


def all_scores(detector, model, images_or_features, stats) -> dict[str, np.ndarray]:
    features = images_or_features if isinstance(images_or_features, dict) else model_features(model,
                                                                                              images_or_features)
    return detector.component_scores(features)


def _legacy(model, train, unseen) -> dict[str, np.ndarray]:
    """The legacy candidates on the unseen images, their z-score statistics from the training images."""
    stats = ood.feature_stats(ood.image_features(model, _stack(train)))
    return legacy_scores(model, _stack(unseen), stats)


def _stack(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def rsna_parts(ck):
    """Detector fitted on the training films, thresholds from the validation films (make-demo's own code,
    dprotonet_core/commands/_demo_ood.py), false alarms on the test films."""
    detector, unseen, _, n_train, where = fitted_and_unseen(ck, "rsna", RSNA, extra=_legacy)
    size = ck.model.config.input_size
    train = load_dataset("rsna", RSNA, "train", size, transform=None, **RSNA_SPLIT)
    stats = ood.feature_stats(ood.image_features(ck.model, _stack(train)))
    test, test_images = split_images("rsna", RSNA, "test", size, ck.card)
    own = all_scores(detector, ck.model, test_images, stats)
    own.update(legacy_scores(ck.model, test_images, stats))
    items = test.dataset.items if hasattr(test, "dataset") else test.items
    groups = [(it.attributes.get("view"), "pneumonia" if int(test.label(k)) else "no pneumonia")
              for k, it in enumerate(items)]
    return (detector, stats, unseen, [own], [unseen], test_images, n_train, where), groups


def palm_parts(ck, cv: Path):
    """Fold models' scores on their out-of-fold images (each fold: its own detector from its training images)."""
    detector, unseen, per_fold, n_train, where = fitted_and_unseen(ck, "ichallenge-pm", PALM, cv, extra=_legacy)
    data = load_dataset("ichallenge-pm", PALM, "all", ck.model.config.input_size, transform=None)
    stats = ood.feature_stats(ood.image_features(ck.model, _stack(data)))
    return detector, stats, unseen, per_fold, per_fold, _stack(data), n_train, where


def candidate_scores(scores: dict[str, np.ndarray], candidates: dict[str, list[str]],
                     normalisers: dict[str, float]) -> dict[str, np.ndarray]:
    out = {name: ood_detector.combine(scores, comps, normalisers) for name, comps in candidates.items()}
    out.update({k: v for k, v in scores.items() if k.startswith("legacy")})
    return out


def fold_false_alarms(folds, unseen_c, candidates, normalisers) -> dict[str, float]:
    """Share of images above the threshold (normalisers and threshold) taken from the other folds."""
    out = {}
    for c in unseen_c:
        hits = total = 0
        for k, fold in enumerate(folds):
            rest = {n: np.concatenate([f[n] for j, f in enumerate(folds) if j != k]) for n in fold}
            rest_norm = dict(normalisers)
            rest_norm.update({n: ood_detector.percentile(rest[n]) for n in normalisers})
            fold_c = candidate_scores(fold, candidates, rest_norm)[c]
            hits += int((fold_c > ood_detector.percentile(candidate_scores(rest, candidates, rest_norm)[c])).sum())
            total += len(fold_c)
        out[c] = hits / max(total, 1)
    return out


def report(name: str, parts, other_images: torch.Tensor) -> dict:
    ck = parts["ck"]
    detector, stats, unseen, own_sets, threshold_sets, own_images, n_train, where = parts["data"]
    candidates = ood_detector.candidate_names(detector.components)
    normalisers = {c: ood_detector.percentile(unseen[c]) for c in detector.components}
    for legacy in ("legacy feature z-score", "legacy nearest prototype"):
        normalisers[legacy] = ood_detector.percentile(unseen[legacy])
    unseen_c = candidate_scores(unseen, candidates, normalisers)
    thresholds = {c: ood_detector.percentile(v) for c, v in unseen_c.items()}
    size = ck.model.config.input_size
    sets = lookalike_sets(KIND[name], size, own_images, other_images)
    look = {}
    for label, images in sets.items():
        scores = all_scores(detector, ck.model, images, stats)
        scores.update(legacy_scores(ck.model, images, stats))
        look[label] = candidate_scores(scores, candidates, normalisers)
    n_look = sum(len(v) for v in sets.values())
    # false alarms. fold_fa: image by image, each fold of the images the model did not train on against the
    # threshold of the other folds (RSNA: 5 seeded folds of its validation films; iChallenge-PM: the cross-
    # validation's folds) - what the choice reads (CHOSEN); test_fa: RSNA's test films, reported, never chosen on
    if len(own_sets) == 1 and own_sets[0] is not threshold_sets[0]:
        own_c = candidate_scores(own_sets[0], candidates, normalisers)
        test_fa = {c: float((own_c[c] > thresholds[c]).mean()) for c in own_c}
        own_all = own_c
        order = np.random.default_rng(0).permutation(len(unseen["knn"]))
        folds = [{n: v[order[k::5]] for n, v in unseen.items()} for k in range(5)]
        own_what = f"its test split ({len(next(iter(own_c.values())))} images)"
    else:
        test_fa, folds = None, own_sets
        own_all = {c: np.concatenate([candidate_scores(f, candidates, normalisers)[c] for f in own_sets])
                   for c in unseen_c}
        own_what = f"the out-of-fold images ({len(own_all['knn'])})"
    fold_fa = fold_false_alarms(folds, unseen_c, candidates, normalisers)
    print(f"\n== {name}: trained on {n_train} images; thresholds = 99th percentile over {len(unseen_c['knn'])} "
          f"{where}; false alarms on {own_what}; {n_look} look-alikes in {len(sets)} sets")
    print(f"{'score':<28} {'AUROC':>6} {'flagged':>8} {'false alarms, folds':>20} {'false alarms, test':>19}")
    rows = {}
    for c in unseen_c:
        lookall = np.concatenate([look[s][c] for s in sets])
        auc = roc_auc(np.r_[np.zeros(len(own_all[c])), np.ones(len(lookall))], np.r_[own_all[c], lookall])
        flagged = float((lookall > thresholds[c]).mean())
        rows[c] = {"auroc": round(float(auc), 4), "flagged": round(flagged, 4),
                   "false_alarms_folds": round(fold_fa[c], 4), "components": candidates.get(c, [c])}
        test = "-" if test_fa is None else f"{test_fa[c]:.3f}"
        if test_fa is not None:
            rows[c]["false_alarms_test"] = round(test_fa[c], 4)
        print(f"{c:<28} {auc:>6.3f} {flagged:>8.3f} {fold_fa[c]:>20.3f} {test:>19}")
    if parts.get("groups") is not None and test_fa is not None:
        chosen = CHOSEN.get(name)
        flags = own_c[chosen] > thresholds[chosen]
        print(f"\nfalse alarms of {chosen} on the test split by view and label:")
        for group in sorted(set(parts["groups"])):
            where_g = np.array([g == group for g in parts["groups"]])
            print(f"  {str(group):<40} {int(flags[where_g].sum()):>3} / {int(where_g.sum())}")
    print(f"\nper set, share flagged ({', '.join(['stages+knn+input', 'stages', 'input', 'legacy feature z-score'])}):")
    for label in sets:
        shares = [float((look[label][c] > thresholds[c]).mean()) for c in
                  ("stages+knn+input", "stages", "input", "legacy feature z-score")]
        print(f"  {label:<58} {len(sets[label]):>3}  " + "  ".join(f"{s:.2f}" for s in shares))
    held = heldout_sets(KIND[name], size, own_images, other_images)
    held_scores = {}
    for label, images in held.items():
        scores = all_scores(detector, ck.model, images, stats)
        scores.update(legacy_scores(ck.model, images, stats))
        held_scores[label] = candidate_scores(scores, candidates, normalisers)
    chosen = CHOSEN.get(name)
    print(f"\nheld-out look-alikes ({sum(len(v) for v in held.values())} images in {len(held)} sets, made after "
          f"the card's score was chosen: {chosen}), share flagged:")
    for c in unseen_c:
        share = float(np.mean(np.concatenate([held_scores[s][c] > thresholds[c] for s in held])))
        rows[c]["heldout_flagged"] = round(share, 4)
        print(f"  {c:<28} {share:>6.3f}" + ("   <- shipped" if c == chosen else ""))
    print(f"per held-out set, share flagged by {chosen}:")
    for label in held:
        share = float((held_scores[label][chosen] > thresholds[chosen]).mean())
        print(f"  {label:<70} {len(held[label]):>3}  {share:.2f}")
    return {"rows": rows, "normalisers": normalisers, "thresholds": thresholds, "look_alikes": n_look,
            "threshold_images": int(len(unseen_c["knn"])), "where": where, "training_images": n_train,
            "detector": detector}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=Path("assets/checkpoints"))
    parser.add_argument("--palm-cross-validation", type=Path, help="a finished cross-validate --out folder")
    parser.add_argument("--only", choices=tuple(KIND))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_info())
    cks = {n: load_checkpoint(args.checkpoints / n) for n in KIND}
    palm_images = torch.stack([img for img, _ in (load_eval_data("ichallenge-pm", PALM, "all", 224,
                                                                  cks["ichallenge-pm"].card).dataset[i]
                                                   for i in range(0, 400, 20))])
    for name, ck in cks.items():
        if args.only and name != args.only:
            continue
        groups = None
        if name == "rsna-pneumonia":
            parts, groups = rsna_parts(ck)
            other = palm_images
        else:
            if args.palm_cross_validation is None:
                print("\n== ichallenge-pm: needs --palm-cross-validation (its thresholds come from out-of-fold images)")
                continue
            parts = palm_parts(ck, args.palm_cross_validation)
            other = split_images("rsna", RSNA, "test", 224, cks["rsna-pneumonia"].card, 8)[1]
        report(name, {"ck": ck, "data": parts, "groups": groups}, other)


if __name__ == "__main__":
    main()
