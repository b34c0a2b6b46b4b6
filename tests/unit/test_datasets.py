"""Dataset loaders: PALM labels on the real files, RSNA on a tiny synthetic set, splits, boxes, layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dprotonet_core.data import synthetic_rsna
from dprotonet_core.data.datasets import DatasetLayoutError, boxes_to_mask, stratified_split
from dprotonet_core.data.registry import load_dataset
from dprotonet_core.data.transforms import eval_transform, train_transform

PALM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "palm-training400-224"


def test_palm_labels_from_names() -> None:
    if not PALM.is_dir():
        pytest.skip("shared PALM data not present")
    ds = load_dataset("ichallenge-pm", PALM, "all", 32, transform=None)
    assert ds.classes == ["non-PM", "PM"] and len(ds) == 400
    assert ds.class_counts() == {"non-PM": 187, "PM": 213}
    names = {p.name[0] for p, y in zip(ds.paths, ds.labels) if y == 1}
    assert names == {"P"}
    image, label = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and isinstance(label, int)
    train = load_dataset("ichallenge-pm", PALM, "train", 32)
    val = load_dataset("ichallenge-pm", PALM, "val", 32)
    assert len(train) + len(val) == 400 and not set(train.ids) & set(val.ids)


def test_palm_csv_and_masks(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "Lesion_Masks" / "Atrophy"
    images.mkdir()
    masks.mkdir(parents=True)
    for name in ("V0001", "V0002"):
        Image.new("RGB", (40, 40), (120, 60, 30)).save(images / f"{name}.jpg")
    mask = np.full((40, 40), 255, np.uint8)
    mask[10:20, 10:20] = 0
    Image.fromarray(mask).save(masks / "V0001.bmp")
    (tmp_path / "labels.csv").write_text("ID,imgName,Label,Fovea_X,Fovea_Y\n1,V0001.jpg,1,3,4\n2,V0002.jpg,0,5,6\n")
    ds = load_dataset("ichallenge-pm", images, "all", 20, labels_csv=tmp_path / "labels.csv", mask_dir=masks)
    assert ds.labels == [1, 0]
    assert ds.mask(0)[5:10, 5:10].all() and ds.mask(0).sum() < 40 and not ds.mask(1).any()
    with pytest.raises(DatasetLayoutError, match="missing.*V0003.jpg"):
        (tmp_path / "labels.csv").write_text("ID,imgName,Label\n1,V0003.jpg,1\n")
        load_dataset("ichallenge-pm", images, "all", 20, labels_csv=tmp_path / "labels.csv")


def test_boxes_to_mask_scales() -> None:
    mask = boxes_to_mask([(256, 512, 256, 128), (0, 0, 10, 10)], (1024, 1024), 64)
    assert mask.shape == (64, 64)
    assert mask[32:40, 16:32].all() and not mask[40:, 32:].any() and mask[0, 0]


def test_rsna_on_synthetic(tmp_path: Path) -> None:
    if not (synthetic_rsna.SHARED_RSNA / synthetic_rsna.LABELS_NAME).exists():
        pytest.skip("shared RSNA labels not present")
    synthetic_rsna.generate(tmp_path, 8, seed=3, size=128, positive_fraction=0.5)
    ds = load_dataset("rsna", tmp_path, "all", 32, transform=None)
    assert len(ds) == 8 and ds.classes == ["no pneumonia", "pneumonia"]
    assert sum(ds.labels) == 4
    multi = [i for i, it in enumerate(ds.items) if len(it.boxes) > 1]
    assert multi, "the seed should give a patient with several boxes"
    for i, item in enumerate(ds.items):
        mask = ds.mask(i)
        if item.label == 0:
            assert mask is None and ds.boxes(i) == []
            continue
        assert mask.shape == (32, 32) and mask.any()
        x, y, w, h = item.boxes[0]
        cx, cy = int((x + w / 2) * 32 / 1024), int((y + h / 2) * 32 / 1024)
        assert mask[cy, cx]
    image, _ = ds[multi[0]]
    assert image.shape == (3, 32, 32) and 0 <= image.min() and image.max() <= 1
    train = load_dataset("rsna", tmp_path, "train", 32, val_fraction=0.25, test_fraction=0.25)
    test = load_dataset("rsna", tmp_path, "test", 32, val_fraction=0.25, test_fraction=0.25)
    assert not set(train.ids) & set(test.ids)
    (tmp_path / "stage_2_train_images" / f"{ds.ids[0]}.dcm").unlink()
    with pytest.raises(DatasetLayoutError, match=ds.ids[0]):
        load_dataset("rsna", tmp_path, "all", 32)


def test_layout_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="stage_2_train_labels.csv"):
        load_dataset("rsna", tmp_path, "all", 32)
    with pytest.raises(DatasetLayoutError, match="images.txt"):
        load_dataset("cub", tmp_path, "train", 32)
    with pytest.raises(DatasetLayoutError, match="cars_train"):
        load_dataset("cars", tmp_path, "train", 32)


def _write_jpg(path: Path, size: tuple[int, int] = (60, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 140, 200)).save(path)


def test_cub_layout_and_crop(tmp_path: Path) -> None:
    base = tmp_path / "CUB_200_2011"
    _write_jpg(base / "images" / "001.Bird" / "a.jpg")
    _write_jpg(base / "images" / "002.Other" / "b.jpg")
    (base / "images.txt").write_text("1 001.Bird/a.jpg\n2 002.Other/b.jpg\n")
    (base / "image_class_labels.txt").write_text("1 1\n2 2\n")
    (base / "classes.txt").write_text("1 001.Bird\n2 002.Other\n")
    (base / "bounding_boxes.txt").write_text("1 10.0 5.0 20.0 10.0\n2 0 0 60 40\n")
    (base / "train_test_split.txt").write_text("1 1\n2 0\n")
    train = load_dataset("cub", tmp_path, "train", 16, val_fraction=0.0, crop=True)
    test = load_dataset("cub", tmp_path, "test", 16)
    assert train.labels == [0] and test.labels == [1] and train.classes == ["001.Bird", "002.Other"]
    assert train[0][0].shape == (3, 16, 16) and train.mask(0).all()


def test_cars_devkit_and_csv(tmp_path: Path) -> None:
    from scipy.io import savemat

    _write_jpg(tmp_path / "cars_train" / "00001.jpg")
    _write_jpg(tmp_path / "cars_train" / "00002.jpg")
    (tmp_path / "devkit").mkdir()
    savemat(tmp_path / "devkit" / "cars_meta.mat", {"class_names": np.array(["AM General", "Acura"], dtype=object)})
    annos = np.zeros(2, dtype=[(k, "O") for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")])
    annos[0] = (1, 2, 30, 20, 1, "00001.jpg")
    annos[1] = (5, 5, 50, 35, 2, "00002.jpg")
    savemat(tmp_path / "devkit" / "cars_train_annos.mat", {"annotations": annos})
    ds = load_dataset("cars", tmp_path, "all", 16, transform=None)
    assert ds.classes == ["AM General", "Acura"] and ds.labels == [0, 1]
    assert ds.items[0].boxes == [(1.0, 2.0, 30.0, 19.0)]


def test_folder_layout(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        for i in range(3):
            _write_jpg(tmp_path / cls / f"{i}.jpg")
    ds = load_dataset("folder", tmp_path, "all", 16)
    assert ds.classes == ["a", "b"] and ds.labels == [0, 0, 0, 1, 1, 1]


def test_stratified_split_keeps_classes() -> None:
    labels = [0] * 80 + [1] * 20
    train, val = stratified_split(labels, 0.25, seed=1)
    assert sorted(train + val) == list(range(100))
    assert sum(labels[i] for i in val) == 5 and len(val) == 25
    assert stratified_split(labels, 0.25, seed=1) == (train, val)


def test_transforms_shapes_and_seed() -> None:
    x = torch.rand(3, 40, 50)
    assert eval_transform(24)(x).shape == (3, 24, 24)
    for hflip in (True, False):
        a, b = train_transform(24, seed=7, hflip=hflip)(x), train_transform(24, seed=7, hflip=hflip)(x)
        assert torch.equal(a, b) and a.shape == (3, 24, 24) and 0 <= a.min() and a.max() <= 1
