"""Where make-demo's data lives and how it is credited (shared by the build, its card records and the benches)."""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
PALM_CREDIT = (
    "PALM / iChallenge-PM 2019 training set (Fang et al., Scientific Data 2024; Baidu and Zhongshan "
    "Ophthalmic Center), resized to 224 x 224"
)
RSNA_REAL = SHARED / "rsna-real"
RSNA_REAL_256 = SHARED / "rsna-real-256"
RSNA_FOLDERS = [RSNA_REAL, RSNA_REAL_256]  # trained on together: 2,710 real radiographs, 1,052 positive
RSNA_HEADERS = SHARED / "rsna" / "stage_2_train_images_dicom_headers.csv.gz"
KERMANY = SHARED / "kermany-chest-224"
CHEST_BACKBONE = Path("assets/backbones/chest-small_resnet-kermany.safetensors")
# Over both folders, by patient, stratified by Target x view x folder: test first (20%: 541 films), then
# validation (20% of the rest: 433 films, 192 of them rsna-real's 1:3 mix, on which the calibrator and threshold
# are fitted), training 1,736.
RSNA_SPLIT = {"seed": 0, "val_fraction": 0.2, "test_fraction": 0.2}
RSNA_CREDIT = (
    "RSNA Pneumonia Detection Challenge (2018) images and labels, built on NIH ChestX-ray14: Wang et al., "
    "\"ChestX-ray8\", CVPR 2017; Shih et al., \"Augmenting the National Institutes of Health Chest Radiograph "
    "Dataset with Expert Annotations of Possible Pneumonia\", Radiology: Artificial Intelligence 2019"
)
