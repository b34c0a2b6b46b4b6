"""The running server over real HTTP (tests/streamlit_client.py: the page's own protocol, no browser), with broken
checkpoint folders present in DPROTONET_MODELS_DIR.

1. No patient data on disk: a 2.3 MB DICOM whose header holds a patient's name, MRN and more is uploaded the way
   the page uploads it. While the server holds all of the body but its closing boundary (it has read every byte
   sent: our send queue and its receive queue are empty), no file the server process has open (/proc/PID/fd,
   deleted ones included) holds any PHI string; after the upload the server's temp folder holds none, and the
   process wrote less than the file's size in all (/proc/PID/io wchar: the body was never written anywhere).
   Then the page reads it, predicts and explains; the messages it sends, the server's log and its open files
   carry no PHI either. (Starlette spools a multipart part over 1 MB to a temporary file; app_ui raises the
   spooling limit to the upload limit.)
2. Several sessions at once, broken folders listed: four sessions upload four images concurrently; each gets its
   own prediction and finished panes, none an exception; the sidebar lists every broken folder as invalid; the
   server is healthy afterwards and its log has no traceback.

Bounded: 127.0.0.1 only, one server, a handful of requests, every wait with a timeout.
"""

from __future__ import annotations

import fcntl
import io
import os
import struct
import termios
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.app_support import TINY_NAME, make_tiny_checkpoint
from tests.bad_checkpoints import SOME, add_bad_checkpoints
from tests.hostile.make_corpus import PHI_STRINGS, phi_dicom
from tests.server_support import few_mdm_steps, streamlit_server
from tests.streamlit_client import StreamlitClient

pytestmark = pytest.mark.slow

MDM_STEPS = 5
SESSIONS = 4
DRAIN_TIMEOUT_S = 60
MAX_SCAN_BYTES = 512 * 1024 * 1024
PHI = [s.encode() for s in PHI_STRINGS]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    models = root / "models"
    good = make_tiny_checkpoint(models / TINY_NAME)
    bad = add_bad_checkpoints(models, good, SOME)
    tmpdir, home = root / "tmp", root / "home"
    tmpdir.mkdir()
    home.mkdir()
    log = root / "stderr.txt"
    env = {**os.environ, "DPROTONET_MODELS_DIR": str(models), "DPROTONET_SAMPLES_DIR": str(root / "no-samples"),
           "DPROTONET_BUNDLED": "0", "OMP_NUM_THREADS": "1", "DPROTONET_TORCH_THREADS": "1",
           "TMPDIR": str(tmpdir), "HOME": str(home), "DPROTONET_LOG_LEVEL": "DEBUG"}
    with open(log, "wb") as stderr, streamlit_server(env, stderr=stderr, launcher=few_mdm_steps(MDM_STEPS)) as (
        url, process
    ):
        yield {"url": url, "process": process, "tmpdir": tmpdir, "log": log, "bad": bad}


def _phi_in(data: bytes) -> list[str]:
    low = data.lower()
    return [p.decode() for p in PHI if p.lower() in low]


def _open_file_leaks(pid: int) -> list[str]:
    """PHI in any regular file the process has open, read through /proc/PID/fd (deleted files included)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        try:
            target = os.readlink(path)
            if not os.path.isfile(path):
                continue  # sockets, pipes, devices
            with open(path, "rb") as f:
                data = f.read(MAX_SCAN_BYTES)
        except OSError:
            continue
        found += [f"open file {target}: {p!r}" for p in _phi_in(data)]
    return found


def _folder_leaks(folder: Path) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            found += [f"file {path}: {p!r}" for p in _phi_in(path.read_bytes()[:MAX_SCAN_BYTES])]
    return found


def _written_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/PID/io")


def _unsent(sock) -> int:
    """Bytes our socket has not yet had acknowledged by the server's kernel (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def _server_unread(server_port: int, client_port: int) -> int | None:
    """Bytes waiting in the server's receive queue for our connection (/proc/net/tcp), None if not found."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                return int(queues.split(":")[1], 16)
    return None


def _wait_drained(sock, server_port: int) -> None:
    """Until the server has read every byte sent so far (both queues empty); a bounded poll."""
    client_port = sock.getsockname()[1]
    pause = threading.Event()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        if _unsent(sock) == 0 and _server_unread(server_port, client_port) == 0:
            return
        pause.wait(0.05)
    raise AssertionError("the server did not read the upload's body")


def _dicom_with_phi() -> bytes:
    pixels = (np.add.outer(np.arange(1500), np.arange(1500)) % 251).astype(np.uint8)  # 2.25 MB of pixel data
    data = phi_dicom(pixels)
    assert len(data) > 2 * 1024 * 1024 and all(p in data for p in PHI)
    return data


def _upload_and_show(client: StreamlitClient, first, name: str, data: bytes, content_type: str, **upload):
    urls = client.file_urls(name)
    status = client.upload(urls.upload_url, name, data, content_type, **upload)
    assert status == 204, status
    state = client.uploader_state(first.widget_ids["file_uploader"], urls, name, len(data))
    return client.run([state])


def test_an_uploaded_dicom_never_reaches_a_file(server):
    url, pid = server["url"], server["process"].pid
    port = int(url.rsplit(":", 1)[1])
    data = _dicom_with_phi()
    client = StreamlitClient(url)
    try:
        first = client.run()
        assert not first.exceptions, first.exceptions
        during: list[str] = []

        def scan_while_held(sock) -> None:
            _wait_drained(sock, port)
            during.extend(_open_file_leaks(pid))
            during.extend(_folder_leaks(server["tmpdir"]))

        written_before = _written_bytes(pid)
        urls = client.file_urls("DOE^JANE^MARIE_MRN-99887766.dcm")
        status = client.upload(urls.upload_url, "DOE^JANE^MARIE_MRN-99887766.dcm", data, before_the_end=scan_while_held)
        written = _written_bytes(pid) - written_before
        assert status == 204, status
        assert not during, "PHI in a file while the upload was received:\n" + "\n".join(during)
        assert written < len(data) // 2, f"the server wrote {written} bytes while receiving a {len(data)} byte upload"
        after = _open_file_leaks(pid) + _folder_leaks(server["tmpdir"])
        assert not after, "PHI in a file after the upload:\n" + "\n".join(after)

        state = client.uploader_state(first.widget_ids["file_uploader"], urls, "DOE^JANE^MARIE_MRN-99887766.dcm",
                                      len(data))
        shown = client.run([state])
        assert not shown.exceptions, shown.exceptions
        assert any(t.startswith("Prediction:") for t in shown.texts("heading")), shown.elements
        assert "plotly_chart" in {k for k, _ in shown.elements}, "no finished panes"
        page = [f"page message: {p!r}" for raw in shown.raw for p in _phi_in(raw)]
        files = _open_file_leaks(pid) + _folder_leaks(server["tmpdir"])
        logged = [f"server log: {p!r}" for p in _phi_in(server["log"].read_bytes())]
        assert not page + files + logged, "PHI leaked:\n" + "\n".join(page + files + logged)
    finally:
        client.close()


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = (rng.random((60 + 6 * seed, 80 - 4 * seed, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def test_several_sessions_at_once_with_broken_folders_present(server):
    url, process = server["url"], server["process"]
    clients = [StreamlitClient(url) for _ in range(SESSIONS)]
    results: dict[int, object] = {}
    errors: list[str] = []
    try:
        firsts = [c.run() for c in clients]
        for first in firsts:
            assert not first.exceptions, first.exceptions
            invalid = [t for t in first.texts("expandable") if t.startswith("Invalid checkpoints")]
            assert invalid == [f"Invalid checkpoints ({len(server['bad'])})"], first.texts("expandable")
            listed = " ".join(first.texts("markdown"))
            assert all(name in listed for name in server["bad"]), listed

        def session(i: int) -> None:
            try:
                results[i] = _upload_and_show(clients[i], firsts[i], f"image-{i}.png", _png(i), "image/png")
            except Exception as exc:  # reported below with the session's number
                errors.append(f"session {i}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=session, args=(i,)) for i in range(SESSIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        assert not errors, errors
        assert sorted(results) == list(range(SESSIONS))
        for i, run in results.items():
            assert not run.exceptions, f"session {i}: {run.exceptions}"
            assert any(t.startswith("Prediction:") for t in run.texts("heading")), f"session {i}: no prediction"
            assert "plotly_chart" in {k for k, _ in run.elements}, f"session {i}: no finished panes"
    finally:
        for c in clients:
            c.close()
    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=10) as response:
        assert response.status == 200 and process.poll() is None
    log = server["log"].read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_the_websocket_refuses_a_host_it_does_not_serve(server):
    """.streamlit/config.toml's allowedHosts: a page reached under another name (DNS rebinding) gets no session."""
    import websocket
    from streamlit.proto.BackMsg_pb2 import BackMsg

    port = int(server["url"].rsplit(":", 1)[1])
    try:
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"],
                                         host="rebound.example.org", origin="http://rebound.example.org", timeout=30)
    except (websocket.WebSocketException, OSError):
        return  # refused at the handshake
    try:
        msg = BackMsg()
        msg.rerun_script.query_string = ""
        ws.send_binary(msg.SerializeToString())
        data = ws.recv()  # a served session answers at once; a refused one is closed (1008)
    except (websocket.WebSocketException, OSError):
        data = b""
    finally:
        ws.close()
    assert not data, "the app served a session to a host it does not know"


def test_the_client_refuses_any_address_but_loopback():
    with pytest.raises(ValueError, match="loopback only"):
        StreamlitClient("http://192.0.2.1:8501")
