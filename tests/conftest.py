"""Shared fixtures. Tests run on the CPU with one thread each so parallel helpers stay fair."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PALM_DIR = SHARED_DATA / "palm-training400-224"
REAL_DICOM = SHARED_DATA / "dicom" / "cr-chest-pa-jpeg-baseline.dcm"

torch.set_num_threads(1)
# The app under test lists only the checkpoints a test puts in DPROTONET_MODELS_DIR, not the bundled demos
# (tests/unit/test_bundled.py covers those); set before any fixture copies the environment for a server.
os.environ["DPROTONET_BUNDLED"] = "0"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def tiny_config():
    from tests.app_support import tiny_model_config

    return tiny_model_config()


@pytest.fixture
def tiny_model(tiny_config):
    from dprotonet_core.model.dprotonet import DProtoNet

    torch.manual_seed(0)
    return DProtoNet(tiny_config).eval()
