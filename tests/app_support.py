"""A tiny but complete checkpoint for app tests (AppTest, browser, reliability).

`make_tiny_checkpoint(folder)` writes, in well under a second, a real checkpoint folder through
`checkpoint.save_checkpoint`: a tiny_cnn DProtoNet (64 px input, 2 classes, 2 prototypes each), prototype
source images, prototype-side MDM mask vectors (D = 10, eq. 14, fast profile) and a card marked synthetic.
Nothing is trained: the weights are seeded random, the shaping output is scaled up so feature distances are
large enough for MDM to keep a region (with raw random weights every mask fades to zero), and each prototype
is projected onto its own source image (P_j = z_j(x_j), eq. 10-11 with R = 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

TINY_CLASSES = ["normal", "finding"]
TINY_NAME = "tiny-test"


def tiny_model_config():
    from dprotonet_core.config import ModelConfig

    return ModelConfig(
        backbone="tiny_cnn",
        input_size=64,
        num_classes=2,
        prototypes_per_class=2,
        prototype_channels=16,
        shaping_hidden_channels=16,
        num_feature_masks=12,
    )


SHAPING_SCALE = 1000.0


def tiny_model():
    """The seeded tiny DProtoNet with prototypes projected onto blob images; returns (model, images)."""
    from dprotonet_core.data.synthetic import make_blob_images
    from dprotonet_core.model.dprotonet import DProtoNet

    config = tiny_model_config()
    torch.manual_seed(0)
    model = DProtoNet(config).eval()
    images, _, _ = make_blob_images(config.num_prototypes, size=config.input_size, seed=1)
    with torch.no_grad():
        model.shaping[2].weight.mul_(SHAPING_SCALE)
        model.shaping[2].bias.mul_(SHAPING_SCALE)
        z = model.feature_vectors(images)  # (K, n, D)
        for j in range(config.num_prototypes):
            model.prototypes[j] = z[j, j % config.num_feature_masks]
    return model, images


def make_tiny_checkpoint(folder: str | Path, *, name: str = TINY_NAME, synthetic: bool = True) -> Path:
    """Write the tiny checkpoint to `folder` (created) and return it."""
    from dprotonet_core.checkpoint import PrototypeRecord, save_checkpoint
    from dprotonet_core.explain import mdm

    model, images = tiny_model()
    config = model.config
    records, pictures = [], []
    for j in range(config.num_prototypes):
        class_index = j // config.prototypes_per_class
        records.append(
            PrototypeRecord(
                index=j,
                class_index=class_index,
                class_name=TINY_CLASSES[class_index],
                source_id=f"blob-{j:03d}",
                mask_index=j % config.num_feature_masks,
                views=4,
                image=f"proto_{j:03d}.png",
            )
        )
        pictures.append((images[j].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    card = {
        "name": name,
        "task": "Tiny test task: finding vs normal on synthetic blob images",
        "classes": TINY_CLASSES,
        "synthetic": synthetic,
        "trained_on": "nothing (seeded random weights, for tests only)",
        "data": {"dataset": "synthetic blobs", "train": 0, "validation": 0, "test": 0},
        "training": {"epochs": 0, "note": "untrained"},
        "metrics": {"test_accuracy": 0.5, "test_images": 8},
        "intended_use": "Automated tests of the review app.",
        "limitations": ["Random weights: predictions mean nothing."],
        "mdm_profile": "fast",
    }
    mask_indices = [r.mask_index for r in records]
    vectors = mdm.explain_prototypes(model, images, mask_indices, mdm.profile("fast")).vectors
    out = save_checkpoint(
        model,
        folder,
        card,
        prototypes=records,
        prototype_images=pictures,
        prototype_mask_vectors=vectors,
    )
    return Path(out)


def make_invalid_checkpoint(folder: str | Path) -> Path:
    """A folder with a card.json that names a model file which is not there (listed as invalid)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "card.json").write_text(json.dumps({"classes": ["a"], "model_config": {}, "sha256": {}, "tensors": {}}))
    return out


def make_models_dir(root: str | Path) -> Path:
    """A models directory holding the tiny checkpoint and one invalid folder."""
    root = Path(root)
    make_tiny_checkpoint(root / TINY_NAME)
    make_invalid_checkpoint(root / "broken-example")
    return root


def make_samples_dir(root: str | Path, sources: list[tuple[Path, str, str]]) -> Path:
    """A samples folder like assets/samples: the given (file, label, dataset) copied in, plus samples.csv."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lines = ["file,label,dataset,credit"]
    for source, label, dataset in sources:
        (root / source.name).write_bytes(Path(source).read_bytes())
        lines.append(f"{source.name},{label},{dataset},test copy of {dataset}")
    lines.append("missing.png,normal,nowhere,a row whose file is absent (skipped)")
    (root / "samples.csv").write_text("\n".join(lines) + "\n")
    return root


class ModelCallCounter:
    """Counts every call into a DProtoNet's network (feature_map: used by forward and by MDM)."""

    def __init__(self, monkeypatch) -> None:
        from dprotonet_core.model.dprotonet import DProtoNet

        self.calls = 0
        original = DProtoNet.feature_map

        def counted(model, x):
            self.calls += 1
            return original(model, x)

        monkeypatch.setattr(DProtoNet, "feature_map", counted)


def upload(at, name: str, data: bytes):
    """Give an AppTest's uploader a file and run the app; fails on any exception the page raised."""
    at.file_uploader(key="upload").set_value((name, data, "application/octet-stream"))
    at.run()
    assert not at.exception, at.exception
    return at
