"""The RSNA loader on the public JPEG / PNG conversion, patient-level splits stratified by Target x view, the
Kermany pretraining corpus's patient keys, and the bundled samples' DICOM export."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dprotonet_core.data.datasets import DatasetLayoutError, Item, split_items, stratified_split
from dprotonet_core.data.io import read_image
from dprotonet_core.data.kermany import patient_key
from dprotonet_core.data.registry import load_dataset
from dprotonet_core.data.sample_dicom import rsna_sample_dicom

RSNA_REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "rsna-real"


def _rsna_folder(root: Path, n: int = 12, suffix: str = ".jpg", views: bool = True) -> list[str]:
    images = root / "stage_2_train_images"
    images.mkdir(parents=True)
    ids, rows, meta = [], ["patientId,x,y,width,height,Target"], ["patientId,Target,ViewPosition"]
    rng = np.random.default_rng(0)
    for i in range(n):
        pid = f"{i:08d}-0000-0000-0000-000000000000"
        target = int(i % 3 == 0)
        view = "AP" if i % 2 == 0 else "PA"
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(images / f"{pid}{suffix}")
        rows.append(f"{pid},100,200,300,400,1" if target else f"{pid},,,,,0")
        meta.append(f"{pid},{target},{view}")
        ids.append(pid)
    (root / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")
    if views:
        (root / "metadata.csv").write_text("\n".join(meta) + "\n")
    return ids


def test_jpeg_layout_reads_labels_views_and_boxes_in_the_1024_frame(tmp_path: Path) -> None:
    _rsna_folder(tmp_path)
    ds = load_dataset("rsna", tmp_path, "all", 32, transform=None)
    assert len(ds) == 12 and sum(ds.labels) == 4
    assert {it.attributes["view"] for it in ds.items} == {"AP", "PA"}
    positive = ds.labels.index(1)
    # boxes are in pixels of the 1024 originals, whatever the file's size (64 here): 100/1024*32 = 3.125
    x, y, w, h = ds.boxes(positive)[0]
    assert (x, y, w, h) == pytest.approx((3.125, 6.25, 9.375, 12.5))
    assert ds.mask(positive)[10, 8] and not ds.mask(positive)[0, 0]


def test_png_layout_and_clear_errors(tmp_path: Path) -> None:
    ids = _rsna_folder(tmp_path / "png", suffix=".png")
    assert len(load_dataset("rsna", tmp_path / "png", "all", 16, transform=None)) == 12
    mixed = tmp_path / "png" / "stage_2_train_images" / f"{ids[0]}.dcm"
    mixed.write_bytes(b"not used")
    (tmp_path / "png" / "stage_2_train_images" / f"{ids[0]}.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"mixes image formats.*\.dcm"):
        load_dataset("rsna", tmp_path / "png", "all", 16)
    _rsna_folder(tmp_path / "extra")
    stray = tmp_path / "extra" / "stage_2_train_images" / "ffffffff-0000-0000-0000-000000000000.jpg"
    Image.new("L", (8, 8)).save(stray)
    with pytest.raises(DatasetLayoutError, match="ffffffff-0000.*has no row"):
        load_dataset("rsna", tmp_path / "extra", "all", 16)


def test_split_by_patient_keeps_target_by_view_shares() -> None:
    items = [Item(f"p{i}", Path(f"p{i}.jpg"), int(i % 4 == 0), stratum="AP" if i % 3 else "PA") for i in range(240)]
    parts = {s: split_items(items, s, 0.25, 0.2, seed=0) for s in ("train", "val", "test")}
    ids = [set(it.id for it in part) for part in parts.values()]
    assert sum(map(len, ids)) == 240 and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    whole = Counter((it.label, it.stratum) for it in items)
    test = Counter((it.label, it.stratum) for it in parts["test"])
    for key, count in whole.items():
        assert test[key] == round(count * 0.2)  # every Target x view cell keeps its share
    # item-only data (no group, no stratum) splits exactly as before: by label alone
    plain = [Item(f"q{i}", Path("x"), i % 2) for i in range(10)]
    by_label = stratified_split([it.label for it in plain], 0.2, 0)[1]
    assert [it.id for it in split_items(plain, "test", 0.2, 0.2, 0)] == [plain[i].id for i in by_label]


def test_patient_groups_never_straddle_splits() -> None:
    items = [Item(f"f{i}", Path("x"), i % 2, group=f"person{i // 3}") for i in range(90)]
    train = {it.group for it in split_items(items, "train", 0.2, 0.0, 1)}
    val = {it.group for it in split_items(items, "val", 0.2, 0.0, 1)}
    assert train and val and not train & val


def test_kermany_patient_key() -> None:
    assert patient_key("PNEUMONIA/person1_bacteria_1.jpg", "person1") == "person1"
    assert patient_key("NORMAL/IM-0129-0001.jpg", "") == "IM-0129"
    assert patient_key("NORMAL/NORMAL2-IM-1427-0001.jpg", " ") == "NORMAL2-IM"


def test_sample_dicom_reads_as_its_jpeg_and_carries_no_identity(tmp_path: Path) -> None:
    pixels = np.tile(np.arange(10, 240, dtype=np.uint8), (32, 1))[:, :64]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    header = {"ViewPosition": "AP", "PatientSex": "F", "PatientAge": "51", "PixelSpacing": "0.143",
              "BodyPartExamined": "CHEST", "ConversionType": "WSD", "PatientName": "Doe^Jane"}
    out = rsna_sample_dicom(buffer.getvalue(), header, tmp_path / "s.dcm", 7, original_side=64)
    loaded = read_image(out.read_bytes())
    assert np.array_equal(loaded.pixels, read_image(buffer.getvalue()).pixels)  # same pixels as the image file
    import pydicom

    ds = pydicom.dcmread(out)
    assert (ds.Modality, ds.BodyPartExamined, ds.PhotometricInterpretation) == ("CR", "CHEST", "MONOCHROME2")
    assert list(ds.ImageType)[0] == "DERIVED" and ds.PatientID == "SAMPLE-007" and str(ds.PatientName) == ""
    assert ds.PatientAge == "051Y" and ds.ViewPosition == "AP"
    assert not [e.keyword for e in ds if e.VR in ("DA", "DT", "TM")]  # no dates or times


@pytest.mark.skipif(not RSNA_REAL.is_dir() or not (RSNA_REAL.parent / "rsna-real-256").is_dir(),
                    reason="shared rsna-real / rsna-real-256 not present")
def test_real_rsna_split_sizes() -> None:
    from dprotonet_core.commands.make_demo import RSNA_FOLDERS, RSNA_SPLIT

    parts = {s: load_dataset("rsna", RSNA_FOLDERS, s, 32, transform=None, **RSNA_SPLIT)
             for s in ("train", "val", "test")}
    assert {s: len(d) for s, d in parts.items()} == {"train": 1736, "val": 433, "test": 541}
    assert sum(sum(d.labels) for d in parts.values()) == 1052
    for d in parts.values():  # every (Target, view, folder) cell is in every split
        assert len(Counter((it.label, it.attributes["view"], it.attributes["folder"]) for it in d.items)) == 8
    calibration = [it for it in parts["val"].items if it.attributes["folder"] == "rsna-real"]
    assert len(calibration) == 192 and sum(it.label for it in calibration) == 48  # the 1:3 mix the threshold uses


def _prefixed_folder(root: Path, prefix: str, size: int) -> None:
    """A second RSNA folder: other patient ids, files of another size (boxes still in the 1024 frame)."""
    images = root / "stage_2_train_images"
    images.mkdir(parents=True)
    rows, meta = ["patientId,x,y,width,height,Target"], ["patientId,Target,ViewPosition"]
    rng = np.random.default_rng(1)
    for i in range(12):
        pid = f"{prefix}{i:07d}-0000-0000-0000-000000000000"
        target = int(i % 2 == 0)
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(images / f"{pid}.jpg")
        rows.append(f"{pid},512,512,256,128,1" if target else f"{pid},,,,,0")
        meta.append(f"{pid},{target},{'AP' if target else 'PA'}")
    (root / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")
    (root / "metadata.csv").write_text("\n".join(meta) + "\n")


def test_several_folders_load_as_one_dataset_split_by_target_view_and_folder(tmp_path: Path) -> None:
    _rsna_folder(tmp_path / "first")  # 64 px files
    _prefixed_folder(tmp_path / "second", "f", 128)  # 128 px files
    roots = [tmp_path / "first", tmp_path / "second"]
    whole = load_dataset("rsna", roots, "all", 32, transform=None)
    assert len(whole) == 24 and Counter(it.attributes["folder"] for it in whole.items) == {"first": 12, "second": 12}
    # each file's boxes come from the 1024-px frame, whatever the file's own size: 512/1024*32 = 16
    second = next(i for i, it in enumerate(whole.items) if it.attributes["folder"] == "second" and it.label)
    assert whole.boxes(second)[0] == pytest.approx((16.0, 16.0, 8.0, 4.0))
    splits = {s: load_dataset("rsna", roots, s, 32, transform=None, val_fraction=0.25, test_fraction=0.25)
              for s in ("train", "val", "test")}
    ids = [set(ds.ids) for ds in splits.values()]
    assert sum(len(i) for i in ids) == 24 and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for ds in (splits["val"], splits["test"]):  # every (Target, view, folder) cell of 3+ films reaches val and test
        assert {it.attributes["folder"] for it in ds.items} == {"first", "second"}
    # one folder alone keeps its old split (stratified by Target x view only)
    alone = load_dataset("rsna", roots[0], "test", 32, transform=None, val_fraction=0.25, test_fraction=0.25)
    assert alone.items[0].stratum in ("AP", "PA")


def test_a_patient_in_two_folders_is_refused(tmp_path: Path) -> None:
    _rsna_folder(tmp_path / "a")
    _rsna_folder(tmp_path / "b")
    with pytest.raises(DatasetLayoutError, match="in both"):
        load_dataset("rsna", [tmp_path / "a", tmp_path / "b"], "all", 16, transform=None)
