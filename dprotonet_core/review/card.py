"""The model card page: the card's sections, performance rows with intervals, integrity and provenance."""

from __future__ import annotations

from typing import Any

from dprotonet_core.evaluate.metrics import auc_interval, wilson_interval
from dprotonet_core.review.gallery import PrototypeCard
from dprotonet_core.review.text import plain

CARD_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Intended use and limits", ("intended_use", "limitations", "warnings", "out_of_scope")),
    ("What it accepts, and how it decides", ("accepts", "calibration", "decision_threshold", "ood")),
    ("Data", ("data", "trained_on", "dataset", "training_data", "split", "synthetic", "prototype_sources")),
    ("Training", ("training", "train_config", "loss_config", "mdm_config", "projection", "demo_plan",
                  "backbone_weights", "command_line", "seed", "build_seconds", "epoch_seconds")),
    ("Metrics", ("metrics",)),
    ("Model", ("classes", "backbone", "input_size", "model_config", "normalisation", "dtype")),
    ("Versions", ("software", "format_version")),
)


def card_sections(card: dict) -> list[tuple[str, dict[str, Any]]]:
    """card.json grouped for display; fields not named above go under 'Other'; hashes and tensor
    shapes are shown separately (see card_integrity)."""
    used = {"sha256", "tensors", "name", "task"}
    sections = []
    for title, keys in CARD_SECTIONS:
        fields = {k: card[k] for k in keys if k in card}
        used.update(fields)
        if fields:
            sections.append((title, fields))
    rest = {k: v for k, v in card.items() if k not in used}
    if rest:
        sections.append(("Other", rest))
    return sections


def _percent(value: Any) -> str | None:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else None


PERFORMANCE_CAPTION = (
    "The held-out test split was never used for training, model selection or choosing the threshold. The 95% "
    "interval (Wilson for proportions, Hanley & McNeil for ROC AUC) is the range a test set of that size cannot "
    "tell apart."
)
CROSS_VALIDATED_ROWS = (
    "Cross-validated rows: K models of the same recipe, each measured on the fold it did not train on; their "
    "interval column gives the spread over the folds (sample sd, lowest and highest fold), not a confidence interval."
)
CROSS_VALIDATION_CAPTION = (
    "This model was trained on every image of its dataset, so no split of it is held out: its expected figures are "
    "those of a cross-validation of the same recipe. " + CROSS_VALIDATED_ROWS
)


def performance_caption(card: dict) -> str:
    """The caption under the performance rows: what the held-out figures, or the cross-validated ones, mean."""
    from dprotonet_core.evaluate.data import trained_on_every_image

    if isinstance(card.get("cross_validation"), dict) and trained_on_every_image(card):
        return CROSS_VALIDATION_CAPTION
    if isinstance(card.get("cross_validation"), dict):
        return f"{PERFORMANCE_CAPTION} {CROSS_VALIDATED_ROWS}"
    return PERFORMANCE_CAPTION


def performance_rows(card: dict) -> list[dict[str, str]]:
    """The card's measured figures as readable rows (Measure, Value, 95% interval, Measured on), most important
    first: held-out test, the backbone-only baseline on the same images (Table 3), single- vs multi-image
    projection (Table 4), validation, fp16. Accuracies on a stated number of images carry their Wilson
    interval (how far a test set that small can pin them down). Figures a card does not have are left out."""
    m = card.get("metrics") if isinstance(card.get("metrics"), dict) else {}
    n_test, n_val = m.get("test_images"), m.get("val_images")
    test_on = f"held-out test split ({n_test} images)" if n_test else "held-out test split"
    val_on = f"validation split ({n_val} images, selects the epoch)" if n_val else "validation split"
    rows: list[dict[str, str]] = []

    def add(measure: str, value: Any, on: str, n: Any = None, fmt=_percent) -> None:
        text = fmt(value)
        if text is None:
            return
        interval = ""
        if isinstance(n, int) and n > 0 and 0.0 <= value <= 1.0:
            low, high = wilson_interval(round(value * n), n)
            interval = f"{100 * low:.1f}% to {100 * high:.1f}%"
        rows.append({"Measure": measure, "Value": text, "95% interval": interval, "Measured on": on})

    def add_auc(measure: str, value: Any, on: str, positives: Any, negatives: Any) -> None:
        if not isinstance(value, (int, float)) or value != value:
            return
        interval = ""
        if isinstance(positives, int) and isinstance(negatives, int) and positives > 0 and negatives > 0:
            low, high = auc_interval(float(value), positives, negatives)
            interval = f"{low:.3f} to {high:.3f}"
        rows.append({"Measure": measure, "Value": f"{value:.3f}", "95% interval": interval, "Measured on": on})

    rows += cross_validation_rows(card.get("cross_validation"))
    n_pos = m.get("test_positives")
    n_neg = n_test - n_pos if isinstance(n_test, int) and isinstance(n_pos, int) else None
    threshold = (card.get("decision_threshold") or {}).get("value")
    at = f"; answer at p({card['classes'][1]}) >= {threshold:.3f}" if threshold is not None else ""
    add("Accuracy", m.get("test_accuracy"), test_on + at, n_test)
    add("Sensitivity (recall of the positive class)", m.get("test_sensitivity"), test_on + at, n_pos)
    add("Specificity", m.get("test_specificity"), test_on + at, n_neg)
    add_auc("ROC AUC", m.get("test_roc_auc"), test_on, n_pos, n_neg)
    shortcut = m.get("test_view_shortcut_auc")
    if isinstance(shortcut, (int, float)):
        add_auc("ROC AUC of the view alone (AP film = positive): the shortcut", shortcut, test_on, n_pos, n_neg)
    ece = (m.get("test_calibration") or {}).get("ece") if isinstance(m.get("test_calibration"), dict) else None
    add("Expected calibration error (10 bins)", ece, test_on, None,
        fmt=lambda v: None if _percent(v) is None else f"{v:.3f}")
    subsets = [("view", k, f) for k, f in sorted((m.get("test_by_view") or {}).items())]
    subsets += [("folder", k, f) for k, f in sorted((m.get("test_by_folder") or {}).items())]
    for kind, name, fig in subsets:
        if not isinstance(fig, dict):
            continue
        what = f"{name} films" if kind == "view" else f"films of {name}"
        on = f"{what} of the test split ({fig.get('images')} images, {fig.get('positives')} positive){at}"
        v_pos, v_n = fig.get("positives"), fig.get("images")
        v_neg = v_n - v_pos if isinstance(v_n, int) and isinstance(v_pos, int) else None
        label = f"{name} view" if kind == "view" else name
        add(f"{label}: accuracy", fig.get("accuracy"), on, v_n)
        add(f"{label}: sensitivity", fig.get("sensitivity"), on, v_pos)
        add_auc(f"{label}: ROC AUC", fig.get("roc_auc"), on, v_pos, v_neg)
        if kind == "folder" and isinstance(fig.get("view_shortcut_auc"), (int, float)):
            add_auc(f"{label}: ROC AUC of the view alone", fig["view_shortcut_auc"], on, v_pos, v_neg)
        cal = fig.get("calibration") if isinstance(fig.get("calibration"), dict) else {}
        if kind == "folder":
            add(f"{label}: expected calibration error", cal.get("ece"), on, None,
                fmt=lambda v: None if _percent(v) is None else f"{v:.3f}")
        b_fig = (m.get(f"baseline_test_by_{kind}") or {}).get(name)
        if isinstance(b_fig, dict):
            add_auc(f"{label}: backbone-only classifier ROC AUC (Table 3)", b_fig.get("roc_auc"), on, v_pos, v_neg)
    argmax = m.get("test_at_argmax") if isinstance(m.get("test_at_argmax"), dict) else {}
    add("Accuracy at the paper's argmax (eq. 3)", argmax.get("accuracy"), test_on + "; p >= 0.5", n_test)
    add("Sensitivity at the paper's argmax (eq. 3)", argmax.get("sensitivity"), test_on + "; p >= 0.5", n_pos)
    b_at = (f"; its own threshold {m['baseline_decision_threshold']:.3f}" if m.get("baseline_decision_threshold")
            is not None else "")
    add("Backbone-only classifier, accuracy (Table 3)", m.get("baseline_test_accuracy"),
        test_on + "; same backbone and epochs, no prototypes" + b_at, n_test)
    add_auc("Backbone-only classifier, ROC AUC (Table 3)", m.get("baseline_test_roc_auc"),
            test_on + "; same backbone and epochs, no prototypes", n_pos, n_neg)
    table4 = m.get("table4_test_accuracy") if isinstance(m.get("table4_test_accuracy"), dict) else {}
    def views(key: Any) -> str:  # "R=40" -> "40"
        return str(key).split("=")[-1]

    for key, value in sorted(table4.items(), key=lambda kv: (not views(kv[0]).isdigit(), views(kv[0]).zfill(9))):
        r = views(key)
        kind = "single-image" if r == "1" else "multi-image"
        add(f"Accuracy after {kind} projection, R = {r} (Table 4)", value, test_on + at, n_test)
    add("Accuracy", m.get("val_accuracy"), val_on, n_val)
    add("Backbone-only classifier, accuracy (Table 3)", m.get("baseline_val_accuracy"), val_on, n_val)
    change = m.get("fp16_accuracy_change")
    add("Accuracy change fp32 -> fp16 (as shipped)", change, val_on,
        fmt=lambda v: None if _percent(v) is None else f"{100 * v:+.1f} points")
    return rows


def _spread(fig: dict) -> str:
    """'sd 1.3 points; folds 96.2% to 98.8%' for a mean_sd record of a proportion."""
    return f"sd {100 * fig['sd']:.1f} points; folds {100 * fig['min']:.1f}% to {100 * fig['max']:.1f}%"


def cross_validation_rows(cv: Any) -> list[dict[str, str]]:
    """The card's cross-validation record as performance rows: the recipe's figures after its last epoch (no
    selection), the backbone-only classifier at the same epoch of the same folds, their paired difference, and the
    figures of the states selected on each fold (optimistic, said so). The interval column gives the spread over
    folds, not a confidence interval."""
    if not isinstance(cv, dict):
        return []
    k, n = cv.get("k"), cv.get("images")
    epochs = (cv.get("recipe") or {}).get("epochs")
    on = (f"{k}-fold cross-validation over {n} images: each fold by a model of the same recipe that never trained "
          f"on it")
    last = f"after the last epoch{f' ({epochs})' if epochs else ''}, no selection"
    rows: list[dict[str, str]] = []

    def add(measure: str, fig: Any, where: str) -> None:
        if isinstance(fig, dict) and isinstance(fig.get("mean"), (int, float)):
            rows.append({"Measure": measure, "Value": f"{100 * fig['mean']:.1f}%", "95% interval": _spread(fig),
                         "Measured on": where})

    d, b = cv.get("dprotonet") or {}, cv.get("baseline") or {}
    names = (("accuracy", "Accuracy"), ("sensitivity", "Sensitivity (recall of the positive class)"),
             ("specificity", "Specificity"))
    for key, label in names:
        add(f"{label}, cross-validated", (d.get("at_last_epoch") or {}).get(key), f"{on}; {last}")
    recipe = cv.get("recipe") or {}
    if recipe.get("backbone_pretraining") == "same-images":  # the baseline is the first stage DProtoNet starts from
        stage = recipe.get("pretrain_epochs")
        add("Backbone-only classifier that DProtoNet starts from, accuracy, cross-validated (Table 3)",
            b.get("accuracy_at_last_epoch"),
            f"{on}; the same folds and backbone, f_b + GAP + linear, no prototypes; after its last epoch"
            f"{f' ({stage})' if stage else ''}, no selection")
    else:
        add("Backbone-only classifier, accuracy, cross-validated (Table 3)", b.get("accuracy_at_last_epoch"),
            f"{on}; the same folds, backbone and epochs, no prototypes; {last}")
    gap = cv.get("dprotonet_minus_baseline_at_last_epoch")
    if gap is None:  # a stacked run pairs the two final states, not epochs (train/cross_validation.py)
        gap = (cv.get("dprotonet_last_minus_baseline") or {}).get("accuracy")
    if isinstance(gap, dict) and isinstance(gap.get("mean"), (int, float)):
        rows.append({"Measure": "DProtoNet minus its backbone-only classifier, accuracy",
                     "Value": f"{100 * gap['mean']:+.1f} points",
                     "95% interval": f"sd {100 * gap['sd']:.1f} points; folds {100 * gap['min']:+.1f} to "
                                     f"{100 * gap['max']:+.1f}",
                     "Measured on": f"{on}; paired by fold, {last}"})
    for key, label in names[:2]:
        add(f"{label}, cross-validated, state selected on each fold", (d.get("selected_in_fold") or {}).get(key),
            f"{on}; each fold's best projected state on that fold, so optimistic by that selection")
    return rows


def card_integrity(card: dict) -> list[dict[str, str]]:
    """One row per file with its sha256 (verified on load) and, for the model, the tensor count."""
    rows = [{"File": name, "sha256": digest} for name, digest in sorted((card.get("sha256") or {}).items())]
    return rows


def card_label(key: str) -> str:
    """'intended_use' -> 'Intended use'."""
    return key.replace("_", " ").capitalize()


def _card_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def card_value_markdown(key: str, value: Any) -> str | None:
    """Markdown for a scalar or a list of scalars; None for nested values (shown as JSON). The card's own text is
    escaped (text.plain): shown as written, never rendered as markdown (no remote image, link or HTML)."""
    label = plain(card_label(key))
    if isinstance(value, bool):
        return f"**{label}:** {'yes' if value else 'no'}"
    if isinstance(value, (str, int, float)) or value is None:
        return f"**{label}:** {plain(value)}"
    if isinstance(value, dict) and value and all(isinstance(v, (str, int, float, bool)) or v is None
                                                  for v in value.values()):
        lines = "\n".join(f"- {plain(card_label(str(k)))}: {plain(_card_scalar(v))}" for k, v in value.items())
        return f"**{label}**\n\n{lines}"
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        if all(isinstance(v, str) and len(v) > 30 for v in value):
            return f"**{label}:**\n" + "\n".join(f"- {plain(v)}" for v in value)
        return f"**{label}:** {', '.join(plain(v) for v in value)}"
    return None


def prototype_provenance(card: PrototypeCard) -> list[dict[str, str]]:
    """The detail table of one prototype."""
    rows = [
        {"Field": "Prototype", "Value": f"#{card.index}"},
        {"Field": "Class", "Value": card.class_name},
        {"Field": "Source image", "Value": card.source_id},
        {"Field": "Feature mask index (j)", "Value": str(card.mask_index)},
        {"Field": "Augmented views R (eq. 9-11)", "Value": str(card.views)},
    ]
    rows += [{"Field": f"Weight to {c}", "Value": f"{w:.3f}"} for c, w in card.weights.items()]
    return rows
