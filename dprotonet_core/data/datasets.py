"""The common dataset every loader returns, and stratified splitting.

`ImageDataset[i]` is `(image, label)`: image a float tensor (3, S, S) in [0, 1], label an int. Images are
read with the same reader as uploads (io.read_image, so a DICOM is windowed as the app shows it), resized
with the same function, and cached in memory as uint8 so epochs do not decode files again. Optional
per-item ground truth (boxes in original pixels, or a mask file) gives masks at (S, S) for the
localisation metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dprotonet_core.data.io import pixels_to_tensor, read_image, resize_square

Box = tuple[float, float, float, float]  # x, y, width, height in original image pixels


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder does not have the publisher's layout; the message names the missing path."""


def require(path: Path, what: str) -> Path:
    """Return `path` if it exists, else raise DatasetLayoutError naming it and what it should hold."""
    if not path.exists():
        raise DatasetLayoutError(f"missing {what}: {path}")
    return path


@dataclass
class Item:
    """One image of a dataset: its id, file, label and optional ground truth."""

    id: str
    path: Path
    label: int
    boxes: list[Box] = field(default_factory=list)
    mask_path: Path | None = None
    crop: Box | None = None
    mask_is_dark: bool = False  # PALM masks: lesion pixels are 0 (black), background 255
    box_frame: tuple[int, int] | None = None  # (h, w) the boxes refer to, when not the file's own size
    group: str | None = None  # items of one group (a patient) always land in the same split
    stratum: str | None = None  # splits keep each (label, stratum)'s share, e.g. the view of a radiograph
    attributes: dict[str, str] = field(default_factory=dict)  # e.g. {"view": "AP"} for per-view metrics


def boxes_to_mask(boxes: Sequence[Box], orig_size: tuple[int, int], out_size: int | tuple[int, int]) -> np.ndarray:
    """Boolean mask (out_h, out_w) covering `boxes` (x, y, w, h in pixels of an image of orig_size=(h, w)).

    The one box-to-mask rule: a box covers every output pixel it touches (floor of the start, ceil of the
    end), clipped to the image. Boxes already in output pixels: pass orig_size == out_size.
    """
    out_h, out_w = (out_size, out_size) if isinstance(out_size, int) else out_size
    orig_h, orig_w = orig_size
    mask = np.zeros((out_h, out_w), dtype=bool)
    sy, sx = out_h / orig_h, out_w / orig_w
    for x, y, w, h in boxes:
        x0, y0 = int(np.floor(x * sx)), int(np.floor(y * sy))
        x1, y1 = int(np.ceil((x + w) * sx)), int(np.ceil((y + h) * sy))
        mask[max(y0, 0) : min(y1, out_h), max(x0, 0) : min(x1, out_w)] = True
    return mask


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split indices into (train, val) keeping each class's share; deterministic from `seed`.

    Every class with at least 2 items puts at least one in each part. The one stratified split: the loaders
    (split_items) and the trainer, when it carves a validation part itself, both call it. The shipped
    checkpoints' cards list the val/test ids it gave, so its draws (numpy's default_rng, a shuffle per
    class in sorted class order) must not change.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    train: list[int] = []
    val: list[int] = []
    for cls in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == cls)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        if val_fraction > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    return sorted(train), sorted(val)


def split_items(
    items: Sequence[Item], split: str, val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0
) -> list[Item]:
    """Select 'all', 'train', 'val' or 'test' items by stratified splitting (test first, then val).

    Items carrying a `group` (patient) or a `stratum` are split group by group, stratified by (label, stratum)
    of each group's first item; otherwise item by item, stratified by label."""
    if split == "all":
        return list(items)
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}: use all, train, val or test")
    grouped = any(it.group is not None or it.stratum is not None for it in items)
    units: list[list[int]] = []  # indices of the items of each splitting unit
    if grouped:
        by_key: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            by_key.setdefault(it.group if it.group is not None else f"item:{it.id}", []).append(i)
        units = list(by_key.values())
        keys = [f"{items[u[0]].label}|{items[u[0]].stratum or ''}" for u in units]
    else:
        units = [[i] for i in range(len(items))]
        keys = [items[i].label for i in range(len(items))]
    rest, test = stratified_split(keys, test_fraction, seed) if test_fraction > 0 else (list(range(len(units))), [])
    if split == "test":
        chosen = test
    else:
        tr, va = stratified_split([keys[i] for i in rest], val_fraction, seed + 1)
        chosen = [rest[i] for i in (tr if split == "train" else va)]
    return [items[i] for u in sorted(chosen) for i in units[u]]


def _crop(pixels: np.ndarray, box: Box) -> np.ndarray:
    """Crop (H, W[, 3]) pixels to a box, clipped to the image."""
    x, y, w, h = box
    height, width = pixels.shape[:2]
    x0, y0 = max(int(x), 0), max(int(y), 0)
    x1, y1 = min(int(np.ceil(x + w)), width), min(int(np.ceil(y + h)), height)
    return pixels[y0:y1, x0:x1] if x1 > x0 and y1 > y0 else pixels


class ImageDataset(Dataset):
    """Images of one split: `(tensor (3, S, S) in [0, 1], label)` per index, with ids, paths and classes."""

    def __init__(
        self,
        items: Sequence[Item],
        classes: Sequence[str],
        size: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache: bool = True,
        name: str = "",
    ) -> None:
        self.items = list(items)
        self.classes = list(classes)
        self.size = size
        self.transform = transform
        self.name = name
        self._cache: dict[int, tuple[torch.Tensor, tuple[int, int]]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> list[str]:
        """Item ids (patientId, file stem, ...), in index order."""
        return [it.id for it in self.items]

    @property
    def paths(self) -> list[Path]:
        """Image files, in index order."""
        return [it.path for it in self.items]

    @property
    def labels(self) -> list[int]:
        """Class indices, in index order."""
        return [it.label for it in self.items]

    def _decode(self, index: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """Read, crop and resize one image -> (uint8 tensor (3, S, S), original (h, w) before crop)."""
        item = self.items[index]
        loaded = read_image(item.path.read_bytes())
        pixels = loaded.pixels
        orig = (int(pixels.shape[0]), int(pixels.shape[1]))
        if item.crop is not None:
            pixels = _crop(pixels, item.crop)
        image = resize_square(pixels_to_tensor(pixels, 3), self.size)
        return (image * 255.0).round().to(torch.uint8), orig

    def _cached(self, index: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """The decoded uint8 image and original size, from the cache when there is one."""
        if self._cache is None:
            return self._decode(index)
        if index not in self._cache:
            self._cache[index] = self._decode(index)
        return self._cache[index]

    def image(self, index: int) -> torch.Tensor:
        """The untransformed float image (3, S, S) in [0, 1]."""
        return self._cached(index)[0].float() / 255.0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.items[index].label)

    def boxes(self, index: int) -> list[Box]:
        """Ground-truth boxes scaled to (S, S) pixels (x, y, w, h); empty when none."""
        item = self.items[index]
        if not item.boxes:
            return []
        orig_h, orig_w = item.box_frame or self._cached(index)[1]
        sx, sy = self.size / orig_w, self.size / orig_h
        return [(x * sx, y * sy, w * sx, h * sy) for x, y, w, h in item.boxes]

    def has_ground_truth(self, index: int) -> bool:
        """True when the item has boxes or a mask file."""
        item = self.items[index]
        return bool(item.boxes) or item.mask_path is not None

    def mask(self, index: int) -> np.ndarray | None:
        """Ground-truth mask (S, S) bool from the mask file or boxes; None when the item has neither."""
        item = self.items[index]
        if item.mask_path is not None:
            return self._mask_from_file(item)
        if item.boxes:
            orig = item.box_frame or self._cached(index)[1]
            boxes = item.boxes
            if item.crop is not None:
                cx, cy, cw, ch = item.crop
                boxes = [(x - cx, y - cy, w, h) for x, y, w, h in boxes]
                orig = (int(round(ch)), int(round(cw)))
            return boxes_to_mask(boxes, orig, self.size)
        return None

    def _mask_from_file(self, item: Item) -> np.ndarray:
        """Read a mask image (trusted dataset file) and resize it to (S, S) bool."""
        if item.mask_path is None or not item.mask_path.exists():
            return np.zeros((self.size, self.size), dtype=bool)
        with Image.open(item.mask_path) as img:
            grey = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        if item.crop is not None:
            grey = _crop(grey, item.crop)
        resized = resize_square(torch.from_numpy(grey)[None], self.size)[0].numpy()
        return resized < 0.5 if item.mask_is_dark else resized >= 0.5

    def class_counts(self) -> dict[str, int]:
        """Number of items per class name."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(c) for name, c in zip(self.classes, counts)}


IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder` (by suffix), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
