"""RSNA Pneumonia Detection Challenge, in the layout Kaggle ships it or its public JPEG / PNG conversion.

    <root>/stage_2_train_labels.csv          patientId,x,y,width,height,Target (one row per box)
    <root>/stage_2_train_images/<patientId>.dcm   (or .jpg / .jpeg / .png; one format per folder)
    <root>/metadata.csv                      optional: patientId,ViewPosition,... (the view of each film)

A patient with several boxes has several rows; a negative patient has one row with empty box fields. Boxes are
in pixels of the 1024 x 1024 originals whatever size the files are. Splits are by patient (one image per
patient), stratified by Target x ViewPosition when the views are known (the view is confounded with the label:
most positives are AP bedside films), else by Target.

Several folders load as one dataset (`load_rsna([A, B])`, the CLI's `--data A --data B`): each item records its
folder's name (attribute "folder"), the split is stratified by Target x view x folder, and each image's boxes
are scaled from the labels' 1024-px frame to the model's input by the frame, whatever the file's own size.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from dprotonet_core.data.datasets import (
    Box,
    DatasetLayoutError,
    ImageDataset,
    Item,
    boxes_to_mask,
    require,
    split_items,
)

CLASSES = ["no pneumonia", "pneumonia"]
LABELS_CSV = "stage_2_train_labels.csv"
IMAGES_DIR = "stage_2_train_images"
METADATA_CSV = "metadata.csv"
IMAGE_FORMATS = {".dcm": "DICOM", ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
BOX_FRAME = 1024  # the labels' boxes are in pixels of the 1024 x 1024 originals, whatever the file size
_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")

__all__ = ["CLASSES", "boxes_to_mask", "load_rsna", "read_rsna_labels", "roots_of", "union_items"]


def read_rsna_labels(csv_path: Path) -> dict[str, tuple[int, list[Box]]]:
    """patientId -> (Target, boxes) from the labels CSV, in file order."""
    patients: dict[str, tuple[int, list[Box]]] = {}
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetLayoutError(f"{csv_path} lacks column(s) {', '.join(missing)}")
        for row in reader:
            pid = row["patientId"].strip()
            target = int(float(row["Target"]))
            _, boxes = patients.setdefault(pid, (target, []))
            if target == 1 and row["x"].strip():
                boxes.append(tuple(float(row[k]) for k in ("x", "y", "width", "height")))  # type: ignore[arg-type]
            patients[pid] = (max(target, patients[pid][0]), boxes)
    return patients


def read_views(csv_path: Path) -> dict[str, str]:
    """patientId -> ViewPosition (AP / PA) from a metadata CSV; {} when the file is absent."""
    if not csv_path.is_file():
        return {}
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        if "patientId" not in (reader.fieldnames or []) or "ViewPosition" not in (reader.fieldnames or []):
            raise DatasetLayoutError(f"{csv_path} lacks column(s) patientId / ViewPosition")
        return {row["patientId"].strip(): row["ViewPosition"].strip() for row in reader}


def _image_files(images: Path) -> dict[str, Path]:
    """patientId -> image file of the folder; refuses a folder that mixes formats, naming a file of each."""
    files = {p.stem: p for p in sorted(images.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_FORMATS}
    formats: dict[str, Path] = {}
    for path in files.values():
        formats.setdefault(IMAGE_FORMATS[path.suffix.lower()], path)
    if len(formats) > 1:
        named = ", ".join(f"{kind} ({path.name})" for kind, path in formats.items())
        raise DatasetLayoutError(f"{images} mixes image formats: {named}; keep one format per folder")
    return files


def rsna_items(root: Path, folder_in_stratum: bool = False) -> list[Item]:
    """All patients of an RSNA folder as items; the layout is validated, missing paths are named. Each item's
    attributes name its view and folder; `folder_in_stratum` adds the folder to the splitting stratum (several
    folders loaded together)."""
    root = Path(root)
    csv_path = require(root / LABELS_CSV, "RSNA labels CSV")
    images = require(root / IMAGES_DIR, "RSNA image folder")
    labels = read_rsna_labels(csv_path)
    files = _image_files(images)
    unlabelled = sorted(set(files) - set(labels))
    if unlabelled:
        raise DatasetLayoutError(f"{files[unlabelled[0]]} has no row in {csv_path} "
                                 f"({len(unlabelled)} image(s) without a label)")
    absent = [pid for pid in labels if pid not in files]
    if absent:
        raise DatasetLayoutError(f"missing {len(absent)} RSNA image file(s), e.g. {images / absent[0]}.dcm "
                                 "(or .jpg / .png)")
    views = read_views(root / METADATA_CSV)
    items = []
    for pid, (target, boxes) in labels.items():
        view = views.get(pid)
        attributes = {"view": view} if view else {}
        attributes["folder"] = root.name
        stratum = f"{view or ''}|{root.name}" if folder_in_stratum else view
        items.append(Item(id=pid, path=files[pid], label=target, boxes=boxes, box_frame=(BOX_FRAME, BOX_FRAME),
                          stratum=stratum, group=pid if folder_in_stratum else None, attributes=attributes))
    return items


def roots_of(root: Path | str | Sequence[Path | str]) -> list[Path]:
    """One folder or several, as a list of paths (a str or Path is one folder)."""
    if isinstance(root, (str, Path)):
        return [Path(root)]
    return [Path(r) for r in root]


def union_items(roots: Sequence[Path]) -> list[Item]:
    """The items of every folder, in folder order; a patient in two folders is refused (a split by patient
    could then put one film in training and the other in the test)."""
    several = len(roots) > 1
    items: list[Item] = []
    seen: dict[str, Path] = {}
    for root in roots:
        for item in rsna_items(root, folder_in_stratum=several):
            if item.id in seen:
                raise DatasetLayoutError(f"patient {item.id} is in both {seen[item.id]} and {root}")
            seen[item.id] = root
            items.append(item)
    return items


def load_rsna(
    root: Path | str | Sequence[Path | str],
    split: str = "all",
    size: int = 224,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    cache: bool = True,
) -> ImageDataset:
    """The RSNA dataset (classes ["no pneumonia", "pneumonia"]) for one patient-level split of one folder or of
    several folders together."""
    items = split_items(union_items(roots_of(root)), split, val_fraction, test_fraction, seed)
    return ImageDataset(items, CLASSES, size, transform, cache=cache, name="rsna")
