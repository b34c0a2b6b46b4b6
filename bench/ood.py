"""Out-of-distribution flag of the bundled checkpoints: false alarms on their own held-out test images, detection
of images from other domains, and the AUROC of each candidate score (ood.SCORES). Prints figures, asserts nothing.

    python -m bench.ood [--checkpoints assets/checkpoints] [--images 60]

In-distribution: each checkpoint's held-out test split. Out-of-distribution (made here or shipped in packages,
nothing downloaded): the other checkpoint's images (chest radiographs through the fundus model and fundus
photographs through the chest model), scikit-image's sample photographs and textures, pydicom's CT / MR /
ultrasound / CR test files, RSNA radiographs flipped upside down, uniform noise, blank images. Each score's
threshold is the 99th percentile of that score on the checkpoint's validation split, as the cards store it; the
feature z-score's statistics come from the training split, as make-demo computes them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bench.common import machine_info
from dprotonet_core import ood
from dprotonet_core.checkpoint import load_checkpoint
from dprotonet_core.commands.make_demo import RSNA_REAL, SHARED
from dprotonet_core.data.io import read_image, to_model_input
from dprotonet_core.evaluate.data import load_eval_data
from dprotonet_core.evaluate.metrics import roc_auc

DATA = {"ichallenge-pm": ("ichallenge-pm", SHARED / "palm-training400-224"), "rsna-pneumonia": ("rsna", RSNA_REAL)}


def split_images(name: str, split: str, size: int, card: dict, limit: int | None = None) -> torch.Tensor:
    dataset, root = DATA[name]
    data = load_eval_data(dataset, root, split, size, card)
    count = len(data) if limit is None else min(limit, len(data))
    step = max(1, len(data) // count)
    return torch.stack([data.image(k) for k in range(0, len(data), step)[:count]])


def package_images(size: int) -> dict[str, torch.Tensor]:
    """Natural photographs and textures (scikit-image), and DICOM test files of other modalities (pydicom)."""
    import skimage.data as sk
    from pydicom.data import get_testdata_file

    def tensor(pixels: np.ndarray) -> torch.Tensor:
        pixels = np.asarray(pixels)
        pixels = pixels.astype(np.float32) / (255.0 if pixels.dtype == np.uint8 else max(float(pixels.max()), 1.0))
        from dprotonet_core.data.io import pixels_to_tensor, resize_square

        return resize_square(pixels_to_tensor(pixels, 3), size)

    photos = ["astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field", "immunohistochemistry"]
    textures = ["camera", "brick", "grass", "gravel", "moon", "page", "text", "coins"]
    out = {"natural photographs (skimage)": torch.stack([tensor(getattr(sk, n)()) for n in photos]),
           "grey photographs / textures (skimage)": torch.stack([tensor(getattr(sk, n)()) for n in textures])}
    dicoms = []
    for name in ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm", "RG1_UNCR.dcm", "SC_rgb.dcm"):
        path = get_testdata_file(name)
        if path:
            dicoms.append(to_model_input(read_image(Path(path).read_bytes()), size)[0])
    out["DICOM CT / MR / US / CR / SC test files (pydicom)"] = torch.stack(dicoms)
    generator = torch.Generator().manual_seed(0)
    out["uniform noise"] = torch.rand(8, 3, size, size, generator=generator)
    out["blank (black, grey, white)"] = torch.stack([torch.full((3, size, size), v) for v in (0.0, 0.5, 1.0)])
    out["other-camera fundus (skimage retina; not counted as OOD)"] = tensor(sk.retina())[None]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=Path("assets/checkpoints"))
    parser.add_argument("--images", type=int, default=60, help="images per other-checkpoint set")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_info())
    cks = {n: load_checkpoint(args.checkpoints / n) for n in DATA if (args.checkpoints / n / "card.json").is_file()}
    for name, ck in cks.items():
        size = ck.model.config.input_size
        val = split_images(name, "val", size, ck.card)
        test = split_images(name, "test", size, ck.card)
        stats = ood.feature_stats(ood.image_features(ck.model, split_images(name, "train", size, ck.card)))
        sets = {}
        for other, other_ck in cks.items():
            if other != name:
                label = "chest radiographs (RSNA test)" if other == "rsna-pneumonia" else "fundus photographs (PALM)"
                sets[label] = split_images(other, "test", size, other_ck.card, args.images)
        if name == "rsna-pneumonia":
            sets["RSNA test radiographs flipped upside down"] = torch.flip(test[: args.images], dims=[2])
        sets.update(package_images(size))
        print(f"\n== {name}: in-distribution = its test split ({len(test)} images); threshold = validation q99 "
              f"({len(val)} images)")
        header = f"{'set':<58} {'n':>4} " + " ".join(f"{s[:18] + ' flag':>23}" for s in ood.SCORES)
        print(header)
        thresholds = {s: np.quantile(ood.score_images(ck.model, val, s, stats=stats), 0.99) for s in ood.SCORES}
        in_scores = {s: ood.score_images(ck.model, test, s, stats=stats) for s in ood.SCORES}
        row = " ".join(f"{(in_scores[s] > thresholds[s]).mean():>23.3f}" for s in ood.SCORES)
        print(f"{'own test split (false alarms)':<58} {len(test):>4} {row}")
        pooled = {s: [] for s in ood.SCORES}
        for label, images in sets.items():
            scores = {s: ood.score_images(ck.model, images, s, stats=stats) for s in ood.SCORES}
            counted = "not counted" not in label
            for s in ood.SCORES:
                if counted:
                    pooled[s].append(scores[s])
            row = " ".join(f"{(scores[s] > thresholds[s]).mean():>23.3f}" for s in ood.SCORES)
            print(f"{label:<58} {len(images):>4} {row}")
        print(f"{'AUROC, own test vs all counted OOD sets':<58} {'':>4} " + " ".join(
            f"{roc_auc(np.r_[np.zeros(len(in_scores[s])), np.ones(sum(map(len, pooled[s])))], np.r_[in_scores[s], np.concatenate(pooled[s])]):>23.3f}"  # noqa: E501
            for s in ood.SCORES))
        all_ood = np.concatenate(pooled[ood.DEFAULT_SCORE])
        print(f"{ood.DEFAULT_SCORE}: detection over all counted OOD images "
              f"{(all_ood > thresholds[ood.DEFAULT_SCORE]).mean():.3f} of {len(all_ood)}; card threshold "
              f"{(ck.card.get('ood') or {}).get('threshold')}")


if __name__ == "__main__":
    main()
