"""A minimal Streamlit client over real HTTP and the websocket, for tests that need the server's own upload path
(AppTest never takes it) without a browser: what the page sends, in the same protocol (BackMsg / ForwardMsg
protobufs on /_stcore/stream, the XSRF cookie and header, multipart PUT to /_stcore/upload_file/...).

Loopback only: `StreamlitClient` refuses any URL that is not http://127.0.0.1:PORT. Every wait has a timeout.
"""

from __future__ import annotations

import http.cookiejar
import socket
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

import websocket
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

TIMEOUT_S = 120


@dataclass
class Run:
    """What one script run sent: its elements as (type, text) and every raw message (for scanning)."""

    elements: list[tuple[str, str]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    widget_ids: dict[str, str] = field(default_factory=dict)  # element type -> widget id (the last of each type)

    def texts(self, kind: str) -> list[str]:
        return [text for k, text in self.elements if k == kind]

    @property
    def exceptions(self) -> list[str]:
        return self.texts("exception")


def _element_text(element) -> str:
    kind = element.WhichOneof("type")
    inner = getattr(element, kind)
    for name in ("body", "message", "label"):
        value = getattr(inner, name, None)
        if isinstance(value, str) and value:
            return value
    return ""


class StreamlitClient:
    """One browser session: a websocket to the app plus the HTTP requests the page makes."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "http" or parsed.hostname != "127.0.0.1" or not parsed.port:
            raise ValueError(f"loopback only: {url}")
        self.url, self.port = url, parsed.port
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        with opener.open(f"{url}/_stcore/health", timeout=TIMEOUT_S) as response:
            response.read()
        self.xsrf = next(c.value for c in jar if c.name == "_streamlit_xsrf")
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{self.port}/_stcore/stream", subprotocols=["streamlit", self.xsrf],
            cookie=f"_streamlit_xsrf={self.xsrf}", origin=url, timeout=TIMEOUT_S,
        )
        self.session_id = ""

    def close(self) -> None:
        self.ws.close()

    def _send(self, msg: BackMsg) -> None:
        self.ws.send_binary(msg.SerializeToString())

    def _receive(self) -> tuple[ForwardMsg, bytes]:
        data = self.ws.recv()
        msg = ForwardMsg()
        msg.ParseFromString(data)
        if msg.WhichOneof("type") == "new_session":
            self.session_id = msg.new_session.initialize.session_id or self.session_id
        return msg, data

    def run(self, widget_states: list | None = None) -> Run:
        """Ask for a script run (as the page does on load and after a widget changes) and collect it to its end."""
        msg = BackMsg()
        msg.rerun_script.query_string = ""
        for state in widget_states or []:
            msg.rerun_script.widget_states.widgets.append(state)
        self._send(msg)
        run = Run()
        while True:
            fm, data = self._receive()
            run.raw.append(data)
            kind = fm.WhichOneof("type")
            if kind == "delta" and fm.delta.WhichOneof("type") == "add_block":  # expanders, columns, ...
                block = fm.delta.add_block
                block_kind = block.WhichOneof("type") or ""
                run.elements.append((block_kind, getattr(getattr(block, block_kind, None), "label", "") or ""))
            if kind == "delta" and fm.delta.WhichOneof("type") == "new_element":
                element = fm.delta.new_element
                element_kind = element.WhichOneof("type")
                run.elements.append((element_kind, _element_text(element)))
                widget_id = getattr(getattr(element, element_kind), "id", "")
                if isinstance(widget_id, str) and widget_id:
                    run.widget_ids[element_kind] = widget_id
            if kind == "script_finished":
                return run

    def file_urls(self, name: str):
        """The upload and delete URLs the server hands out for one file (the page asks before every upload)."""
        msg = BackMsg()
        msg.file_urls_request.request_id = uuid.uuid4().hex
        msg.file_urls_request.file_names.append(name)
        msg.file_urls_request.session_id = self.session_id
        self._send(msg)
        while True:
            fm, _ = self._receive()
            if fm.WhichOneof("type") == "file_urls_response":
                return fm.file_urls_response.file_urls[0]

    def upload(self, upload_url: str, name: str, data: bytes, content_type: str = "application/dicom",
               before_the_end: Callable[[socket.socket], None] | None = None) -> int:
        """PUT `data` as the page does (multipart/form-data, XSRF header and cookie) on a raw socket; returns the
        HTTP status. `before_the_end(sock)` runs when all but the closing boundary has been sent."""
        boundary = uuid.uuid4().hex
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                f"Content-Type: {content_type}\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        body = head + data + tail
        request = (f"PUT {upload_url} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                   f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n"
                   f"X-Xsrftoken: {self.xsrf}\r\nCookie: _streamlit_xsrf={self.xsrf}\r\nOrigin: {self.url}\r\n"
                   "Connection: close\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT_S) as sock:
            sock.sendall(request + body[: -len(tail)])
            if before_the_end is not None:
                before_the_end(sock)
            sock.sendall(tail)
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return int(reply.split(b" ", 2)[1])

    def uploader_state(self, widget_id: str, urls, name: str, size: int):
        """The file uploader's widget state once the file is uploaded (what the page sends with its rerun)."""
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        state = WidgetState(id=widget_id)
        info = state.file_uploader_state_value.uploaded_file_info.add()
        info.file_id, info.name, info.size = urls.file_id, name, size
        info.file_urls.CopyFrom(urls)
        return state
