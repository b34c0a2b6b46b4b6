"""De-identification: only allow-listed technical fields; PHI never reaches the user."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pydicom
import pytest

from dprotonet_core.data.deid import deidentified_metadata, has_burned_in_annotation
from dprotonet_core.data.io import read_image
from tests.hostile.make_corpus import PHI_STRINGS, phi_dicom


def test_phi_never_returned(caplog: pytest.LogCaptureFixture) -> None:
    data = phi_dicom()
    with caplog.at_level(logging.DEBUG):
        loaded = read_image(data)
    shown = repr(loaded.metadata) + repr(loaded.notices) + repr(loaded.window) + repr(loaded.file_windows)
    for phi in PHI_STRINGS:
        assert phi.lower() not in shown.lower(), phi
        assert phi.lower() not in caplog.text.lower(), phi
    assert loaded.metadata["Body part"] == "other"  # a name planted in a coded field is not echoed
    assert "Patient sex" not in loaded.metadata and "059" not in shown
    assert any("burned-in" in n for n in loaded.notices)


def test_allow_list_fields() -> None:
    ds = pydicom.dcmread(io.BytesIO(phi_dicom()))
    meta = deidentified_metadata(ds)
    assert set(meta) <= {
        "Modality",
        "Body part",
        "View",
        "Rows",
        "Columns",
        "Frames",
        "Pixel spacing (mm)",
        "Imager pixel spacing (mm)",
        "Bits stored",
        "Photometric interpretation",
        "Encoding",
    }
    assert meta["Modality"] == "CR" and meta["Rows"] == "64"
    assert has_burned_in_annotation(ds)


def test_reading_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    read_image(phi_dicom())
    assert list(tmp_path.iterdir()) == []
