"""The environment's HTTP proxy settings still carry the client's calls (they are read once, at start)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
import requests


class ForwardProxy(http.server.ThreadingHTTPServer):
    """A plain-HTTP forward proxy on loopback that records each request line it passes on."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        super().__init__(("127.0.0.1", 0), _Forward)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(http.server.BaseHTTPRequestHandler):
    server: ForwardProxy

    def _forward(self) -> None:
        self.server.seen.append(f"{self.command} {self.path}")  # a proxy is sent the absolute URL
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "proxy-connection")}
        with requests.Session() as session:
            session.trust_env = False  # not through itself: HTTP_PROXY names this proxy
            answer = session.request(self.command, self.path, data=body, headers=headers, timeout=10)
        self.send_response(answer.status_code)
        self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = _forward

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    server = ForwardProxy()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_calls_go_through_the_proxy_the_environment_names_unless_no_proxy_bypasses_it(
    make_client, sim, proxy, monkeypatch
):
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    make_client().list_instances()
    assert proxy.seen and all(line.split()[1].startswith(sim.url) for line in proxy.seen)
    calls = len(proxy.seen)

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    make_client().list_instances()
    assert len(proxy.seen) == calls  # bypassed: straight to the simulator
