"""The README's Deployment section says what a deployment must set: its nginx example streams uploads (no request
body buffered to disk), cuts slow clients, bounds connections per address and forbids framing; the section names
the settings the app reads (allowedHosts, DPROTONET_DEMO, DPROTONET_MODELS_DIR) and the upload limit matches."""

from __future__ import annotations

import re

from dprotonet_core import review
from tests.conftest import REPO


def _deployment() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Deployment")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _nginx(section: str) -> str:
    blocks = re.findall(r"```nginx\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "one nginx example"
    return blocks[0]


def _directives(block: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in block.splitlines():
        code = line.split("#", 1)[0].strip().rstrip(";").strip()
        if code and not code.endswith(("{", "}")):
            name, _, value = code.partition(" ")
            found.setdefault(name, []).append(value.strip())
    return found


def test_the_nginx_example_streams_uploads_and_bounds_slow_clients():
    found = _directives(_nginx(_deployment()))
    assert found.get("proxy_request_buffering") == ["off"], "request bodies would be buffered to disk"
    assert found.get("client_max_body_size") == [f"{review.MAX_UPLOAD_MB}m"]
    assert "client_body_timeout" in found and "client_header_timeout" in found
    assert any(v.startswith("$binary_remote_addr zone=") for v in found.get("limit_conn_zone", []))
    assert found.get("limit_conn"), "no connection limit per address"
    headers = " ".join(found.get("add_header", []))
    assert "X-Frame-Options DENY" in headers and "Content-Security-Policy" in headers
    assert "frame-ancestors 'none'" in headers and "img-src 'self'" in headers


def test_the_section_says_what_a_deployment_must_set():
    section = _deployment()
    for words in ("proxy_request_buffering off", "allowedHosts", "server.address", "DPROTONET_DEMO=1",
                  "DPROTONET_MODELS_DIR", "test_http.py", "swap"):
        assert words in section, words
