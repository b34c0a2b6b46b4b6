"""No patient data leaks: the PHI-laden DICOM (tests/hostile/make_corpus.py) through the whole review flow.

None of PHI_STRINGS (names, IDs, dates, institution, address, physician, free-text comment, phone, a private
tag) may appear in:
- the rendered page: every element of every run (AppTest), sidebar included;
- the exported report: the PNG bytes (no text/EXIF/time chunks at all; no PHI in any non-pixel chunk) and the
  JSON; every other media file the app hands to the browser;
- the logs: every logger at DEBUG for the whole run (Streamlit's included), warnings, stdout and stderr;
- any file created or modified during the session: HOME and TMPDIR point to fresh folders; those, the repository
  (virtual environment included), the system temp folder and the real home's ~/.streamlit and ~/.cache are
  scanned (every file changed since the flow began).
The upload's file name is itself PHI-laden: the app must not echo it. The last test checks that the scanners
do find planted PHI (a page element, a PNG text chunk, a log record), so a silent scanner cannot pass.

MDM's "fast" profile is cut to a few iterations here (speed on shared CPUs): the explanation still runs end to
end and fills both panes and the report; leaks do not depend on the iteration count.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from dprotonet_core import review
from tests.app_support import TINY_NAME, make_tiny_checkpoint
from tests.conftest import REPO
from tests.hostile.make_corpus import PHI_STRINGS, phi_dicom

APP = str(REPO / "app.py")
TIMEOUT = 60
PHI_FILE_NAME = "DOE^JANE^MARIE_MRN-99887766_19631127.dcm"
MAX_SCAN_BYTES = 256 * 1024 * 1024  # a file larger than this is reported, not read
METADATA_CHUNKS = (b"tEXt", b"iTXt", b"zTXt", b"eXIf", b"tIME")

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def quick_mdm(monkeypatch):
    from dataclasses import replace

    from dprotonet_core.explain import mdm

    for name in list(mdm.MDM_PROFILES):  # every profile, the app's default included
        monkeypatch.setitem(mdm.MDM_PROFILES, name, replace(mdm.profile(name), iterations=25))


def leaks(text: str | bytes, where: str) -> list[str]:
    """PHI strings found in `text` (case-insensitive), as 'where: string' lines."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    low = text.lower()
    return [f"{where}: {phi!r}" for phi in PHI_STRINGS if phi.lower() in low]


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG"
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        payload = data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + payload)
        chunks.append((kind, payload))
        pos += 12 + length
    return chunks


def png_leaks(data: bytes, where: str) -> list[str]:
    """A PNG must carry no metadata chunk; no chunk except pixel data may hold PHI."""
    found = []
    for kind, payload in png_chunks(data):
        if kind in METADATA_CHUNKS:
            found.append(f"{where}: {kind.decode()} metadata chunk")
        if kind != b"IDAT":
            found += leaks(payload, f"{where} {kind.decode()} chunk")
    return found


def element_leaks(at: AppTest, where: str) -> list[str]:
    """Every element of the page (main and sidebar); plotly image sources are checked as PNGs."""
    found: list[str] = []

    def walk(node) -> None:
        children = getattr(node, "children", None)
        if children:
            for child in children.values():
                walk(child)
        proto = getattr(node, "proto", None)
        if proto is None:
            return
        if getattr(node, "type", "") == "plotly_chart":
            import base64

            spec = json.loads(proto.spec)
            for trace in spec.get("data", []):
                source = trace.get("source", "")
                if isinstance(source, str) and source.startswith("data:image/png;base64,"):
                    found.extend(png_leaks(base64.b64decode(source.split(",", 1)[1]), f"{where} pane image"))
                    trace["source"] = "<png>"
            found.extend(leaks(json.dumps(spec), f"{where} plotly figure"))
            return
        found.extend(leaks(str(proto), f"{where} {getattr(node, 'type', 'element')}"))

    walk(at._tree)
    return found


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: keep its parts
            message = f"{record.msg!r} {record.args!r}"
        self.records.append(f"{record.name} {record.levelname} {message} {record.exc_text or ''}")


@pytest.fixture
def debug_logging():
    """Every logger (Streamlit's included, which do not propagate) at DEBUG into one capturing handler.

    Their own handlers are detached meanwhile (restored after): Streamlit's may hold a stream that pytest's
    capture has closed, and the records are all in the capture anyway."""
    handler = Capture()
    saved = []
    loggers = [logging.getLogger()] + [
        logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
    ]
    for logger in loggers:
        saved.append((logger, logger.level, logger.disabled, list(logger.handlers)))
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
        logger.addHandler(handler)
    yield handler
    for logger, level, disabled, handlers in saved:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled
        for h in handlers:
            logger.addHandler(h)


@pytest.fixture
def media(monkeypatch) -> list[tuple[str, bytes]]:
    """Every media file the app registers (download data, images): (mimetype, bytes)."""
    captured: list[tuple[str, bytes]] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def recording(self, path_or_data, mimetype, kind, filename=None):
        data = path_or_data if isinstance(path_or_data, bytes) else Path(path_or_data).read_bytes()
        captured.append((mimetype, data))
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", recording)
    return captured


def changed_files(roots: list[Path], since: float, skip: list[Path]) -> list[Path]:
    out = []
    skip_resolved = [s.resolve() for s in skip]
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, onerror=lambda _e: None):
            here = Path(dirpath)
            dirnames[:] = [d for d in dirnames if (here / d).resolve() not in skip_resolved]
            for name in filenames:
                path = here / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if max(st.st_mtime, st.st_ctime) >= since and path.is_file() and not path.is_symlink():
                    out.append(path)
    return sorted(set(out))


def test_phi_never_leaves_the_dicom(tmp_path, monkeypatch, debug_logging, media, capfd):
    ck_root = tmp_path / "models"
    make_tiny_checkpoint(ck_root / TINY_NAME)
    home, tmpdir = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmpdir.mkdir()
    real_home, system_tmp = Path.home(), Path(tempfile.gettempdir())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() re-reads TMPDIR
    monkeypatch.setenv("DPROTONET_MODELS_DIR", str(ck_root))
    monkeypatch.setenv("DPROTONET_SAMPLES_DIR", str(tmp_path / "no-samples"))
    monkeypatch.setenv("DPROTONET_LOG_LEVEL", "DEBUG")  # the app's own audit log at its most verbose
    data = phi_dicom()
    assert all(phi.encode() in data for phi in PHI_STRINGS)  # the file really holds them

    since = time.time() - 1.0
    found: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        at.session_state["checkpoint_path"] = str(ck_root / TINY_NAME)  # bundled demos may be listed first
        at.run()
        assert at.sidebar.selectbox(key="checkpoint_picker").value == str(ck_root / TINY_NAME)
        at.file_uploader(key="upload").set_value((PHI_FILE_NAME, data, "application/dicom")).run()
        assert not at.exception, at.exception
        assert any(str(s.value).startswith("Prediction:") for s in at.subheader)
        assert any("burned-in" in str(w.value).lower() for w in at.sidebar.warning)  # the file says YES
        found += element_leaks(at, "page after upload")
        steps = [
            ("gamma", lambda: at.slider(key="gamma").set_value(5.0).run()),
            ("window preset", lambda: at.sidebar.selectbox(key="window_preset").set_value("full").run()
             if "full" in at.sidebar.selectbox(key="window_preset").options else at.run()),
            ("view", lambda: at.radio(key="view").set_value("outline").run()),
            ("other prototype", lambda: _other_prototype(at)),
            ("model card", lambda: at.switch_page("pages/model_card.py").run()),
            ("review again", lambda: at.switch_page("pages/review.py").run()),
        ]
        for name, step in steps:
            step()
            assert not at.exception, f"{name}: {at.exception}"
            found += element_leaks(at, f"page after {name}")
    assert not at.exception

    # The exported report (and every other media file: the PNG report, the JSON, images).
    pngs = [d for m, d in media if m == "image/png"]
    jsons = [d for m, d in media if m == "application/json"]
    assert pngs and jsons, f"no report exported: {[m for m, _ in media]}"
    for i, (mimetype, payload) in enumerate(media):
        if mimetype == "image/png":
            found += png_leaks(payload, f"media #{i} (PNG)")
        else:
            found += leaks(payload, f"media #{i} ({mimetype})")
    report = json.loads(jsons[-1])
    assert report["image"]["sha256"] == review.file_hash(data)  # the hash, never the name or the header
    found += leaks(json.dumps(report), "report JSON")

    # Logs at DEBUG, warnings, stdout/stderr.
    assert debug_logging.records, "no log record at all: the DEBUG capture is not working"
    audit = [r for r in debug_logging.records if r.startswith("dprotonet_core.review")]
    digest = review.file_hash(data)[:12]
    assert any(digest in r and "prediction" in r for r in audit), audit  # hashes and timings are logged
    assert any(digest in r and "explanation" in r for r in audit), audit
    found += leaks("\n".join(debug_logging.records), "log record")
    found += leaks("\n".join(str(w.message) for w in caught), "warning")
    out, err = capfd.readouterr()
    found += leaks(out, "stdout") + leaks(err, "stderr")

    # Every file created or changed anywhere we can see since the flow began.
    roots = [home, tmpdir, REPO, system_tmp, real_home / ".streamlit", real_home / ".cache"]
    skip = [REPO / ".git", tmp_path / "models"]
    files = changed_files(roots, since, skip)
    too_big = []
    for path in files:
        try:
            size = path.stat().st_size
            if size > MAX_SCAN_BYTES:
                too_big.append(str(path))
                continue
            found += leaks(path.read_bytes(), f"file {path}")
        except OSError:
            continue
    assert not too_big, f"new files too large to scan: {too_big}"
    print(f"\nPHI scan: {len(PHI_STRINGS)} strings; {len(media)} media files, "
          f"{len(debug_logging.records)} log records, {len(files)} new or changed files scanned")
    assert not found, "PHI leaked:\n" + "\n".join(sorted(set(found)))


def _other_prototype(at: AppTest) -> AppTest:
    radio = next(r for r in at.radio if r.label == "Explain with prototype")
    values = [int(o.split()[0].lstrip("#")) for o in radio.options]
    return radio.set_value(values[1]).run()


def test_the_scanners_find_planted_phi(debug_logging):
    """Guards the test above: each scanner reports a planted PHI string."""
    name = PHI_STRINGS[0]

    def page() -> None:
        import streamlit as st

        st.sidebar.table([{"Field": "Patient", "Value": "DOE^JANE^MARIE"}])
        st.caption("ok")

    at = AppTest.from_function(page).run()
    assert element_leaks(at, "page"), "element scan missed a name in a sidebar table"

    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", name)
    buffer = __import__("io").BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG", pnginfo=info)
    found = png_leaks(buffer.getvalue(), "png")
    assert any("tEXt metadata" in f for f in found) and any(name in f for f in found)

    logging.getLogger("dprotonet_core.somewhere").debug("reading %s", name)
    assert leaks("\n".join(debug_logging.records), "log"), "DEBUG capture missed a record"
