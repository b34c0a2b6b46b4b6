"""Evaluation reports on disk: what the app's evaluation page reads.

<out>/metrics.json          classification + Table 5 (schema in runner._metrics_document; NaN -> null)
<out>/table5.md, table5.csv the Table-5 block, method x {AD, AI, D, I, DICE, IoU, PPV, Sensitivity, s/img}
<out>/curves.json           deletion/insertion curves: fractions, per-method mean and per-image curves
<out>/predictions.csv       id, label, predicted, probability of every class
<out>/per_image.csv         method, image id, target class, Y, O (AD/AI inputs), D, I, localisation, seconds
<out>/figures/*.html|.json|.png  deletion, insertion, confusion_matrix, roc (plotly; PNG via kaleido)

With --attach the same files, less the HTML pages and plotly.min.js, go to <checkpoint>/evaluation/
(runner.attach); the app draws the figures from their JSON.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

from dprotonet_core.evaluate.results import EVALUATION_DIR, TABLE5_COLUMNS, CamEvaluation, Predictions, per_image_rows

FIGURES_DIR = "figures"
_CHROMIUM = "/usr/bin/chromium"


def json_safe(value):
    """Recursively replace NaN/inf by None and numpy scalars by Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if column in ("AD", "AI"):
        return f"{value:.1f}"
    if column == "s/img":
        return f"{value:.2f}"
    return f"{value:.3f}"


def table5_markdown(metrics: dict) -> str:
    """Table 5 as a markdown table, with the run's context under it."""
    table = metrics["table5"]
    arrows = {c: ("↑" if table["higher_is_better"][c] else "↓") for c in TABLE5_COLUMNS}
    head = "| Method | " + " | ".join(f"{c} {arrows[c]}" for c in TABLE5_COLUMNS) + " | images | with GT |"
    lines = [head, "|" + "---|" * (len(TABLE5_COLUMNS) + 3)]
    for row in table["rows"]:
        cells = " | ".join(_fmt(row[c], c) for c in TABLE5_COLUMNS)
        lines.append(f"| {row['name']} | {cells} | {row['n_images']} | {row['n_localisation']} |")
    cfg, data = metrics["config"], metrics["dataset"]
    target = {"label": "the class the image's ground truth marks (whatever was predicted)",
              "predicted": "the predicted class"}.get(table["target"], f"the {table['target']} class")
    probability = (metrics.get("classification") or {}).get("probability") or "the model's softmax of eq. 3"
    lines += [
        "",
        f"Checkpoint `{metrics['checkpoint']['name']}` on {data['name']} ({data['split']}, {data['n']} images); "
        f"CAMs on {table['n_images']} images for {target}.",
        f"AD/AI/D/I on the probability {probability}. "
        f"AD/AI: explained map = {cfg['explained_map_mode']} (keep top {cfg['explained_map_keep_percent']:g}% of "
        f"CAM pixels). D/I: RISE, {cfg['deletion_step_fraction']:.4g} of the pixels per step, zero baseline / "
        f"blurred start (sigma {cfg['insertion_blur_sigma']:g}), ties of the map in a seeded random order. "
        f"Localisation: CAM top {cfg['top_percent_used']:g}% vs ground truth, images with ground truth only (section "
        "4.3 gives this cut-off for sensitivity; it is applied to DICE, IoU and PPV too). "
        f"s/img: {metrics['device']}, {metrics['threads']} thread(s).",
    ]
    lines += [f"NOTE: {note}" for note in data.get("notes") or [] if "training" in note]
    if metrics["checkpoint"]["synthetic"]:
        lines.append("SYNTHETIC: the checkpoint was trained on synthetic stand-in data.")
    return "\n".join(lines) + "\n"


def write_table5_csv(path: Path, metrics: dict) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "name", *TABLE5_COLUMNS, "n_images", "n_localisation"])
        for row in metrics["table5"]["rows"]:
            values = ["" if row[c] is None else row[c] for c in TABLE5_COLUMNS]
            writer.writerow([row["method"], row["name"], *values, row["n_images"], row["n_localisation"]])


def write_predictions_csv(path: Path, pred: Predictions, classes: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "predicted", *[f"p({c})" for c in classes]])
        for item_id, label, guess, probs in zip(pred.ids, pred.labels, pred.predicted, pred.probabilities):
            writer.writerow([item_id, classes[int(label)], classes[int(guess)], *[f"{p:.6f}" for p in probs]])


def write_per_image_csv(path: Path, cams: CamEvaluation) -> None:
    rows = per_image_rows(cams)
    columns = ["method", "id", "target", "Y", "O", "D", "I", "DICE", "IoU", "PPV", "Sensitivity", "seconds"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in columns})


def curves_document(cams: CamEvaluation) -> dict:
    """curves.json: the common x axis and, per method and curve, the mean and every image's curve."""
    methods = {}
    for method, scores in cams.methods.items():
        methods[method] = {
            kind: {
                "mean": np.mean(curves, axis=0).tolist() if curves else [],
                "per_image": [c.tolist() for c in curves],
            }
            for kind, curves in (("deletion", scores.deletion), ("insertion", scores.insertion))
        }
    return {"fractions": cams.fractions.tolist(), "image_ids": cams.image_ids, "methods": methods}


# --- figures ----------------------------------------------------------------------------------


def curve_figure(curves: dict, kind: str, names: dict[str, str]) -> go.Figure:
    """Mean deletion or insertion curve of every method, AUC in the legend (the paper's Figure 6)."""
    fig = go.Figure()
    x = np.asarray(curves["fractions"])
    for method, data in curves["methods"].items():
        mean = np.asarray(data[kind]["mean"])
        if mean.size:
            auc = float(np.trapezoid(mean, x))
            fig.add_trace(go.Scatter(x=x, y=mean, mode="lines", name=f"{names.get(method, method)} ({auc:.3f})"))
    what = "deleted" if kind == "deletion" else "inserted"
    fig.update_layout(
        title=f"{kind.capitalize()} curve (mean over images; AUC in brackets)",
        xaxis_title=f"fraction of pixels {what}", yaxis_title="class probability",
        yaxis_range=[0, 1], template="plotly_white",
    )
    return legend_below(fig)


def legend_below(fig: go.Figure) -> go.Figure:
    """The legend under the plot, one entry a line: the methods' long names beside a half-width chart left the
    curves a sliver of the width."""
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.25, "xanchor": "left", "x": 0},
                      height=520, margin={"b": 200})
    return fig


def confusion_figure(matrix: list[list[int]], classes: list[str]) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=matrix, x=classes, y=classes, colorscale="Blues", texttemplate="%{z}"))
    fig.update_layout(
        title="Confusion matrix", xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed",
        template="plotly_white",
    )
    return fig


def roc_figure(classification: dict) -> go.Figure | None:
    roc = classification.get("roc")
    if not roc:
        return None
    auc = classification.get("roc_auc")
    label = "n/a" if auc is None or (isinstance(auc, float) and math.isnan(auc)) else f"{auc:.3f}"
    fig = go.Figure(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name=f"ROC (AUC {label})"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot"}, name="chance"))
    fig.update_layout(
        title=f"ROC, positive class: {classification.get('positive_class')}",
        xaxis_title="1 - specificity", yaxis_title="sensitivity", template="plotly_white",
    )
    return fig


def export_png(figures: dict[str, go.Figure], folder: Path) -> tuple[list[str], str | None]:
    """PNG copies through kaleido (needs a Chromium; Debian's /usr/bin/chromium is used when
    present). Returns (files written, the reason when PNG export failed)."""
    if os.path.exists(_CHROMIUM):
        os.environ.setdefault("BROWSER_PATH", _CHROMIUM)
    try:
        import plotly.io as pio

        paths = [folder / f"{name}.png" for name in figures]
        pio.write_images(list(figures.values()), paths)
    except Exception as exc:  # kaleido/chromium failures come in many types
        return [], f"PNG export failed ({type(exc).__name__}: {exc}); HTML figures only"
    return [p.name for p in paths], None


def write_figures(folder: Path, metrics: dict, curves: dict, png: bool = True) -> dict:
    """HTML (and PNG) figures; returns metrics.json's "figures" entry."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {row["method"]: row["name"] for row in metrics["table5"]["rows"]}
    figures: dict[str, go.Figure] = {}
    if curves["methods"]:
        figures["deletion"] = curve_figure(curves, "deletion", names)
        figures["insertion"] = curve_figure(curves, "insertion", names)
    cls = metrics["classification"]
    figures["confusion_matrix"] = confusion_figure(cls["confusion_matrix"], metrics["checkpoint"]["classes"])
    roc = roc_figure(cls)
    if roc is not None:
        figures["roc"] = roc
    for name, fig in figures.items():
        # "directory": one plotly.min.js beside the pages, so they open offline.
        fig.write_html(folder / f"{name}.html", include_plotlyjs="directory")
        fig.write_json(folder / f"{name}.json")  # for st.plotly_chart(plotly.io.read_json(...))
    written, problem = export_png(figures, folder) if png else ([], "PNG export not requested")
    entry = {name: {"html": f"{FIGURES_DIR}/{name}.html", "json": f"{FIGURES_DIR}/{name}.json"} for name in figures}
    for file in written:
        entry[Path(file).stem]["png"] = f"{FIGURES_DIR}/{file}"
    return {"files": entry, "png_problem": problem}


def write_reports(out: Path, metrics: dict, pred: Predictions, cams: CamEvaluation, classes: list[str]) -> dict:
    """Write every report file into `out`; metrics.json last, so its presence means a finished run.
    Returns metrics.json's content."""
    out.mkdir(parents=True, exist_ok=True)
    curves = curves_document(cams)
    (out / "curves.json").write_text(json.dumps(json_safe(curves)))
    write_predictions_csv(out / "predictions.csv", pred, classes)
    write_per_image_csv(out / "per_image.csv", cams)
    safe = json_safe(metrics)
    (out / "table5.md").write_text(table5_markdown(safe))
    write_table5_csv(out / "table5.csv", safe)
    safe["figures"] = write_figures(out / FIGURES_DIR, safe, curves)
    safe["files"] = {"table5_md": "table5.md", "table5_csv": "table5.csv", "curves": "curves.json",
                     "predictions": "predictions.csv", "per_image": "per_image.csv"}
    (out / "metrics.json").write_text(json.dumps(safe, indent=2))
    return safe


# --- reading it back (the Evaluation page) ---------------------------------------------------


@dataclass
class EvaluationView:
    """What `python -m dprotonet_core evaluate --attach` stored in <checkpoint>/evaluation/."""

    folder: Path
    metrics: dict
    table5: list[dict]  # rows of Table 5, formatted
    figures: dict[str, Any]  # name -> plotly Figure (read from the stored JSON)
    problems: list[str]


EVALUATION_JSON_MAX_BYTES = 4 * 1024 * 1024  # metrics.json of a 541-image split: 50 KB; a figure: 30 KB
_FIGURE_REFUSED = ("://", "data:", "javascript:", "<a", "<img", "<iframe", "<script", "src=", "href=")


def _figure_problem(value: Any) -> str | None:
    """Why a stored plotly figure is not drawn: it names a URL or HTML that plotly would render (a layout image
    fetched from elsewhere, a link); None when it holds neither. The evaluation folder is the checkpoint's, so
    untrusted like its card."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            lowered = item.lower()
            hit = next((mark for mark in _FIGURE_REFUSED if mark in lowered), None)
            if hit:
                return f"it holds {hit!r}"
    return None


def _table_value(value: Any) -> str | None:
    """A Table 5 cell as shown: a finite number to 3 decimals, "n/a" for none, None for anything else."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return f"{float(value):.3f}"


def load_evaluation(checkpoint_path: Path) -> EvaluationView | None:
    """Read the stored evaluation; None when there is none. Only JSON is read (no pickles), each file a regular
    file (no symbolic link) of at most EVALUATION_JSON_MAX_BYTES and MAX_JSON_DEPTH levels; a file or a value
    that fails is one line in `problems`, never an exception: the folder is the checkpoint's, untrusted input."""
    import plotly.io as pio

    from dprotonet_core.checkpoint_folder import CheckpointError, read_json

    folder = Path(checkpoint_path) / EVALUATION_DIR
    metrics_path = folder / "metrics.json"
    if folder.is_symlink():
        return EvaluationView(folder, {}, [], {}, ["the evaluation folder is a symbolic link; refused"])
    if not metrics_path.is_file() and not metrics_path.is_symlink():
        return None
    problems: list[str] = []
    try:
        metrics = read_json(metrics_path, "evaluation/metrics.json", EVALUATION_JSON_MAX_BYTES)
    except CheckpointError as exc:
        return EvaluationView(folder, {}, [], {}, [str(exc)])
    if not isinstance(metrics, dict):
        return EvaluationView(folder, {}, [], {}, ["evaluation/metrics.json is not a JSON object; refused"])
    table = metrics.get("table5") if isinstance(metrics.get("table5"), dict) else {}
    columns = [c for c in table.get("columns") or [] if isinstance(c, str)]
    better = table.get("higher_is_better") if isinstance(table.get("higher_is_better"), dict) else {}
    rows, bad_cells = [], 0
    for row in table.get("rows") or []:
        if not isinstance(row, dict):
            bad_cells += 1
            continue
        out = {"Method": str(row.get("name", row.get("method", "?")))}
        for c in columns:
            shown = _table_value(row.get(c))
            bad_cells += shown is None
            out[f"{c} {'↑' if better.get(c) else '↓'}"] = "n/a" if shown is None else shown
        images = row.get("n_images")
        out["images"] = images if isinstance(images, int) and not isinstance(images, bool) else None
        rows.append(out)
    if bad_cells:
        problems.append(f"Table 5 holds {bad_cells} value(s) that are not numbers: shown as n/a")
    figures: dict[str, Any] = {}
    files = (metrics.get("figures") or {}).get("files") if isinstance(metrics.get("figures"), dict) else None
    for name, entry in (files or {}).items() if isinstance(files, dict) else ():
        rel = entry.get("json") if isinstance(entry, dict) else None
        path = (folder / rel).resolve() if isinstance(rel, str) and rel else None
        if path is None or folder.resolve() not in path.parents or not path.is_file():
            continue
        try:
            value = read_json(folder / rel, f"evaluation/{rel}", EVALUATION_JSON_MAX_BYTES)
            problem = _figure_problem(value)
            if problem:
                problems.append(f"figure {name} is not drawn: {problem}")
                continue
            figures[name] = pio.from_json(json.dumps(value))
            if name in ("deletion", "insertion"):  # stored before the legend moved under the plot
                legend_below(figures[name])
        except CheckpointError as exc:
            problems.append(f"figure {name} cannot be read ({exc})")
        except Exception as exc:  # a damaged figure must not take the page down
            problems.append(f"figure {name} cannot be read ({type(exc).__name__})")
    return EvaluationView(folder, metrics, rows, figures, problems)
