"""Outbound HTTP to user-supplied URLs: SSRF refusals, pinning, no redirects, caps and deadlines.

Only loopback is ever connected to. Names are answered by a fake resolver (``outbound._resolve`` is the
module's single DNS call), and tests that must not connect at all replace ``socket.create_connection``
with a tripwire.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from gpujobs import outbound
from gpujobs.exceptions import PermanentError, TransientError
from gpujobs.outbound import UnsafeURLError, check_url, is_forbidden_address, send
from gpujobs.signing import generate_secret, webhook_headers

pytestmark = pytest.mark.timeout(30)

DRIP_INTERVAL_SECONDS = 0.5
SHORT_TOTAL_TIMEOUT_SECONDS = 1.5
DEADLINE_SLACK_SECONDS = 1.0  # W4: a delivery holds a worker at most total timeout + 1 s


# --- helpers -------------------------------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A loopback HTTP(S) server that records requests and answers with a configurable response."""

    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)

    def start(self, tls: ssl.SSLContext | None = None) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.requests.append(Recorded(self.command, self.path, headers, self.rfile.read(length)))
                self.send_response(receiver.status)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(receiver.body)))
                self.end_headers()
                self.wfile.write(receiver.body)

            do_GET = do_POST = do_PUT = handle_one

            def log_message(self, *args: object) -> None:
                pass

        class QuietServer(http.server.ThreadingHTTPServer):
            def handle_error(self, *args: object) -> None:
                pass  # the client hanging up after the body cap is expected

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def url(self, path: str = "/", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(tls: ssl.SSLContext | None = None, **kwargs: object) -> Receiver:
        started.append(Receiver(**kwargs).start(tls))  # type: ignore[arg-type]
        return started[-1]

    yield start
    for server in started:
        server.stop()


class FakeDNS:
    """Answers names from a table; a name with several answers gives the next one on each lookup."""

    def __init__(self) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        self.calls: list[str] = []

    def add(self, host: str, *answers: list[str]) -> None:
        self.answers[host] = list(answers)

    def resolve(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        queue = self.answers.get(host)
        if not queue:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return queue.pop(0) if len(queue) > 1 else queue[0]


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    dns = FakeDNS()
    dns.add("localhost", ["127.0.0.1", "::1"])
    dns.add("metadata.google.internal", ["169.254.169.254"])
    dns.add("ten.example", ["10.0.0.1"])
    dns.add("mixed.example", ["93.184.216.34", "127.0.0.1"])
    dns.add("mapped.example", ["::ffff:192.168.0.1"])
    dns.add("public.example", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
    monkeypatch.setattr(outbound, "_resolve", dns.resolve)
    return dns


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    def tripwire(address: object, *args: object, **kwargs: object) -> socket.socket:
        raise AssertionError(f"a refused URL must never be connected to, but {address} was dialled")

    monkeypatch.setattr(socket, "create_connection", tripwire)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- hostile URLs (OWASP SSRF cheat sheet) ------------------------------------------------------------

HOSTILE_URLS = {
    "loopback": ["http://127.0.0.1/", "http://127.8.9.10:8080/x", "http://localhost/", "http://[::1]/"],
    "unspecified": ["http://0.0.0.0/", "http://[::]/", "http://0/"],
    "ipv4-mapped": [
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:7f00:1]/",
        "http://mapped.example/",
    ],
    "ipv4-embedding": ["http://[::127.0.0.1]/", "http://[64:ff9b::7f00:1]/", "http://[2002:a00:1::]/"],
    "metadata": [
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/",
        "http://100.100.100.200/",
        "http://[fd00:ec2::254]/",
    ],
    "private": ["http://10.0.0.1/", "http://172.16.0.1/", "http://172.31.255.254/", "http://192.168.1.1/"],
    "cgnat": ["http://100.64.0.1/", "http://100.127.255.254/"],
    "ipv6-private": ["http://[fc00::1]/", "http://[fd12:3456::1]/", "http://[fe80::1]/", "http://[fec0::1]/"],
    "integer-encodings": [
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.1/",
        "http://0x7f000001/",
        "http://127.1/",
        "http://012.0.0.1/",
    ],
    "special": [
        "http://255.255.255.255/",
        "http://224.0.0.1/",
        "http://[ff02::1]/",
        "http://240.0.0.1/",
        "http://198.18.0.1/",
        "http://192.0.2.1/",
        "http://198.51.100.7/",
        "http://203.0.113.9/",
        "http://[2001:db8::1]/",
    ],
    "dns-to-private": ["http://ten.example/", "http://mixed.example/"],
    "scheme": ["ftp://example.com/", "file:///etc/passwd", "gopher://127.0.0.1:70/", "javascript:alert(1)"],
    "form": [
        "http://user:pass@public.example/",
        "http://public.example@127.0.0.1/",
        "http:///no-host",
        "http://public.example:0/",
        "http://public.example:99999/",
        "http://public.example:http/",
        "http://public.example\n/",
        "http://exa mple.com/",
        "http://public.example/" + "a" * 3000,
    ],
}
HOSTILE_CASES = [
    pytest.param(url, id=f"{kind}:{url[:40]}") for kind, urls in HOSTILE_URLS.items() for url in urls
]


@pytest.mark.parametrize("url", HOSTILE_CASES)
def test_hostile_urls_are_refused_at_submit_time(url: str, fake_dns: FakeDNS, no_connections: None) -> None:
    with pytest.raises(UnsafeURLError) as refused:
        check_url(url, allow_private=False)
    assert isinstance(refused.value, PermanentError)
    assert str(refused.value)


@pytest.mark.parametrize("url", HOSTILE_CASES)
def test_hostile_urls_are_refused_at_send_time_without_connecting(
    url: str, fake_dns: FakeDNS, no_connections: None
) -> None:
    with pytest.raises(UnsafeURLError):
        send("POST", url, allow_private=False, data=b"{}")


def test_localhost_is_refused_through_the_real_resolver(no_connections: None) -> None:
    with pytest.raises(UnsafeURLError, match=r"non-public address 127\.0\.0\.1"):
        check_url("http://localhost:8080/hook", allow_private=False)


def test_a_public_url_passes_the_submit_check(fake_dns: FakeDNS, no_connections: None) -> None:
    check_url("https://public.example/hooks/gpu", allow_private=False)
    check_url("http://93.184.216.34:8080/", allow_private=False)
    check_url("https://[2606:4700:4700::1111]/", allow_private=False)


def test_a_name_that_does_not_resolve_is_refused_at_submit_and_transient_at_send(fake_dns: FakeDNS) -> None:
    with pytest.raises(UnsafeURLError, match="could not be resolved"):
        check_url("https://nowhere.example/", allow_private=False)
    with pytest.raises(TransientError, match="could not be resolved"):
        send("POST", "https://nowhere.example/", allow_private=False, data=b"{}")


def test_metadata_addresses_stay_refused_even_when_private_targets_are_allowed(
    fake_dns: FakeDNS, no_connections: None
) -> None:
    for url in ("http://169.254.169.254/", "http://metadata.google.internal/", "http://[::ffff:a9fe:a9fe]/"):
        with pytest.raises(UnsafeURLError):
            check_url(url, allow_private=True)


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "2002:808:808::1",
        "64:ff9b::808:808",
    ],
)
def test_public_addresses_are_not_forbidden(address: str) -> None:
    assert not is_forbidden_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "100.64.0.1",
        "169.254.169.254",
        "::1",
        "::ffff:10.0.0.1",
        "fe80::1%eth0",
        "junk",
    ],
)
def test_non_public_and_unparseable_addresses_are_forbidden(address: str) -> None:
    assert is_forbidden_address(address)


# --- the table of refused networks ---------------------------------------------------------------------


def _inside(row: outbound.RefusedNetwork) -> str:
    """An address inside the row's network (its last one: the first is often special on its own)."""
    return str(row.network[-1] if row.network.num_addresses > 1 else row.network.network_address)


@pytest.mark.parametrize("row", outbound.REFUSED_NETWORKS, ids=lambda row: str(row.network))
def test_every_row_of_the_refused_networks_table_is_refused_with_its_reason(
    row: outbound.RefusedNetwork, fake_dns: FakeDNS, no_connections: None
) -> None:
    address = _inside(row)
    assert outbound.refusal_reason(address) == row.why
    host = f"[{address}]" if row.network.version == 6 else address
    with pytest.raises(UnsafeURLError, match=row.why.split(" (")[0]):
        check_url(f"http://{host}/hook", allow_private=False)
    fake_dns.add("row.example", [address])
    with pytest.raises(UnsafeURLError, match="resolves to non-public address"):
        send("POST", "http://row.example/hook", allow_private=False, data=b"{}")
    if row.always:
        with pytest.raises(UnsafeURLError):
            check_url(f"http://{host}/hook", allow_private=True)
    else:
        assert outbound.refusal_reason(address, allow_private=True) is None


def _ipv6_forms(ipv4: str) -> dict[str, str]:
    """The IPv6 addresses that carry ``ipv4``: the forms a guard looking at IPv4 only would miss."""
    n = int(ipaddress.IPv4Address(ipv4))
    teredo_server = int(ipaddress.IPv4Address("65.54.227.120"))
    return {
        "mapped": f"::ffff:{ipv4}",
        "translated": f"::ffff:0:{ipv4}",
        "nat64": str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | n)),
        "nat64-local": str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b:1::")) | n)),
        "6to4": str(ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | 1)),
        "teredo": str(ipaddress.IPv6Address((0x20010000 << 96) | (teredo_server << 64) | (n ^ 0xFFFFFFFF))),
    }


PRIVATE_AND_METADATA = ["127.0.0.1", "10.0.0.1", "192.168.1.1", "169.254.169.254", "168.63.129.16"]
EMBEDDED_CASES = [
    pytest.param(form, ipv4, id=f"{kind}:{ipv4}")
    for ipv4 in PRIVATE_AND_METADATA
    for kind, form in _ipv6_forms(ipv4).items()
]


@pytest.mark.parametrize(("address", "ipv4"), EMBEDDED_CASES)
def test_ipv6_forms_of_private_and_metadata_addresses_are_refused(
    address: str, ipv4: str, no_connections: None
) -> None:
    assert is_forbidden_address(address)
    with pytest.raises(UnsafeURLError, match="is not a public address"):
        check_url(f"http://[{address}]/", allow_private=False)


@pytest.mark.parametrize("kind", ["mapped", "translated", "nat64", "6to4", "teredo"])
@pytest.mark.parametrize("ipv4", ["169.254.169.254", "168.63.129.16", "100.100.100.200"])
def test_ipv6_forms_of_metadata_addresses_stay_refused_when_private_targets_are_allowed(
    kind: str, ipv4: str, no_connections: None
) -> None:
    with pytest.raises(UnsafeURLError, match=r"metadata|platform endpoint"):
        check_url(f"http://[{_ipv6_forms(ipv4)[kind]}]/", allow_private=True)


@pytest.mark.parametrize(
    "answer",
    [
        ["93.184.216.34", "10.0.0.1"],
        ["10.0.0.1", "93.184.216.34"],
        ["2606:2800:220:1:248:1893:25c8:1946", "::ffff:127.0.0.1"],
        ["93.184.216.34", "64:ff9b::a9fe:a9fe"],
        ["93.184.216.34", "168.63.129.16"],
    ],
)
def test_a_dns_answer_mixing_public_and_private_addresses_is_refused(
    answer: list[str], fake_dns: FakeDNS, no_connections: None
) -> None:
    fake_dns.add("mixed-answer.example", answer)
    with pytest.raises(UnsafeURLError, match="resolves to non-public address"):
        check_url("https://mixed-answer.example/hook", allow_private=False)
    with pytest.raises(UnsafeURLError):
        send("POST", "https://mixed-answer.example/hook", allow_private=False, data=b"{}")


# --- pinning and DNS rebinding -------------------------------------------------------------------------


def test_a_rebinding_name_passes_at_submit_but_is_refused_at_send(
    fake_dns: FakeDNS, receiver: Callable[..., Receiver]
) -> None:
    canary = receiver()
    fake_dns.add("rebind.example", ["93.184.216.34"], ["127.0.0.1"])
    url = f"http://rebind.example:{canary.port}/hook"
    check_url(url, allow_private=False)
    with pytest.raises(UnsafeURLError, match=r"127\.0\.0\.1"):
        send("POST", url, allow_private=False, data=b"{}")
    assert canary.requests == []


def test_send_resolves_once_and_connects_to_the_checked_ip_not_the_name(
    fake_dns: FakeDNS, receiver: Callable[..., Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = receiver()
    fake_dns.add("receiver.test", ["127.0.0.1"])
    looked_up: list[object] = []
    real_getaddrinfo = socket.getaddrinfo
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda host, *a, **k: looked_up.append(host) or real_getaddrinfo(host, *a, **k)
    )
    response = send("POST", server.url("/hook", host="receiver.test"), allow_private=True, data=b"{}")
    assert response.status_code == 200
    assert fake_dns.calls == ["receiver.test"]
    assert "receiver.test" not in looked_up  # the HTTP layer never resolved the name again
    assert server.requests[0].headers["host"] == f"receiver.test:{server.port}"


# --- delivering ----------------------------------------------------------------------------------------


def test_allow_private_delivers_a_post_with_its_headers_and_body(receiver: Callable[..., Receiver]) -> None:
    server = receiver(body=b'{"received":true}', headers={"X-Reply": "yes"})
    response = send("POST", server.url("/hooks/gpu?x=1"), allow_private=True, json_body={"a": 1, "b": [2]})
    assert response.status_code == 200 and response.is_success
    assert response.body == b'{"received":true}' and not response.truncated
    assert response.headers["x-reply"] == "yes"
    assert response.elapsed_ms >= 0
    request = server.requests[0]
    assert (request.method, request.path) == ("POST", "/hooks/gpu?x=1")
    assert json.loads(request.body) == {"a": 1, "b": [2]}
    assert request.headers["content-type"] == "application/json"


def test_a_non_ascii_path_is_percent_encoded_rather_than_failing(receiver: Callable[..., Receiver]) -> None:
    server = receiver()
    send("GET", server.url("/hooks/päth?q=é"), allow_private=True)
    assert server.requests[0].path == "/hooks/p%C3%A4th?q=%C3%A9"


def test_a_signed_webhook_sent_through_send_verifies_at_the_receiver(
    receiver: Callable[..., Receiver],
) -> None:
    server = receiver(status=204, body=b"")
    secret = generate_secret()
    body = json.dumps({"type": "job.succeeded", "job": {"id": "job_1"}}).encode()
    headers = webhook_headers([secret], "evt_1", int(time.time()), body)
    response = send("POST", server.url(), allow_private=True, data=body, headers=headers)
    assert response.status_code == 204
    received = server.requests[0]
    assert received.body == body
    assert Webhook(secret).verify(received.body, received.headers) == json.loads(body)


def test_redirects_are_returned_not_followed(receiver: Callable[..., Receiver]) -> None:
    canary = receiver()
    redirector = receiver(status=302, headers={"Location": canary.url("/stolen")})
    response = send("POST", redirector.url(), allow_private=True, data=b"{}")
    assert response.status_code == 302 and not response.is_success
    assert response.headers["location"] == canary.url("/stolen")
    assert canary.requests == []


@pytest.mark.parametrize(
    ("body_bytes", "cap_bytes", "truncated"),
    [(200_000, 1000, True), (1000, 1000, False), (999, 1000, False), (1001, 1000, True)],
)
def test_the_response_body_is_read_only_up_to_the_cap(
    receiver: Callable[..., Receiver], body_bytes: int, cap_bytes: int, truncated: bool
) -> None:
    server = receiver(body=b"x" * body_bytes)
    response = send("GET", server.url(), allow_private=True, max_response_bytes=cap_bytes)
    assert len(response.body) == min(body_bytes, cap_bytes)
    assert response.truncated is truncated


def test_a_refused_connection_is_transient_and_does_not_echo_the_path_or_query() -> None:
    url = f"http://127.0.0.1:{free_port()}/hooks/SECRET_TOKEN?sig=hunter2"
    with pytest.raises(TransientError) as failed:
        send("POST", url, allow_private=True, data=b"{}")
    assert "SECRET_TOKEN" not in str(failed.value) and "hunter2" not in str(failed.value)


# --- the total deadline --------------------------------------------------------------------------------

DRIP_PREFIXES = {
    "body": b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n",
    "headers": b"HTTP/1.1 200 OK\r\nX-Drip: ",
    "silence": None,
}


@pytest.fixture
def drip_server(request: pytest.FixtureRequest) -> Iterator[int]:
    """A server that reads the request, then sends one byte every DRIP_INTERVAL_SECONDS (or nothing)."""
    prefix: bytes | None = request.param
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    stop = threading.Event()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            while not stop.is_set():
                try:
                    if prefix is not None:
                        conn.sendall(prefix)
                        prefix_sent = b"a"
                        while not stop.wait(DRIP_INTERVAL_SECONDS):
                            conn.sendall(prefix_sent)
                    stop.wait(DRIP_INTERVAL_SECONDS)
                except OSError:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()
    thread.join(timeout=5)


@pytest.mark.parametrize("drip_server", list(DRIP_PREFIXES.values()), ids=list(DRIP_PREFIXES), indirect=True)
def test_a_slow_drip_server_is_cut_off_at_the_total_timeout(drip_server: int) -> None:
    started = time.monotonic()
    with pytest.raises(TransientError, match="total timeout"):
        send(
            "POST",
            f"http://127.0.0.1:{drip_server}/",
            allow_private=True,
            data=b"{}",
            total_timeout_seconds=SHORT_TOTAL_TIMEOUT_SECONDS,
        )
    elapsed = time.monotonic() - started
    assert (
        SHORT_TOTAL_TIMEOUT_SECONDS - 0.1 <= elapsed <= SHORT_TOTAL_TIMEOUT_SECONDS + DEADLINE_SLACK_SECONDS
    )


# --- https: SNI and certificate checks use the hostname while the socket goes to the pinned IP ---------


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA and a certificate for receiver.test, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make test certificates")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ca_extensions = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]
    run("req", "-x509", *ec, *ca_extensions, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=receiver.test")
    (d / "san.ext").write_text("subjectAltName=DNS:receiver.test\n")
    signing = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-extfile", "san.ext"]
    run("x509", "-req", "-in", "server.csr", *signing, "-out", "server.pem", "-days", "2")
    return d


@pytest.fixture
def tls_receiver(
    test_ca: Path, receiver: Callable[..., Receiver], monkeypatch: pytest.MonkeyPatch
) -> Receiver:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(test_ca / "server.pem", test_ca / "server.key")
    client_ctx = ssl.create_default_context(cafile=str(test_ca / "ca.pem"))
    monkeypatch.setattr(outbound, "_tls_context", lambda: client_ctx)
    return receiver(tls=server_ctx)


def test_https_to_a_pinned_ip_sends_sni_and_verifies_the_certificate_for_the_hostname(
    tls_receiver: Receiver, fake_dns: FakeDNS
) -> None:
    fake_dns.add("receiver.test", ["127.0.0.1"])
    response = send(
        "POST", tls_receiver.url(host="receiver.test", scheme="https"), allow_private=True, data=b"{}"
    )
    assert response.status_code == 200
    assert tls_receiver.server_names == ["receiver.test"]
    assert tls_receiver.requests[0].headers["host"] == f"receiver.test:{tls_receiver.port}"


def test_https_refuses_a_certificate_for_another_name_as_transient(
    tls_receiver: Receiver, fake_dns: FakeDNS
) -> None:
    fake_dns.add("impostor.test", ["127.0.0.1"])
    with pytest.raises(TransientError, match="SSLCertVerificationError"):
        send("POST", tls_receiver.url(host="impostor.test", scheme="https"), allow_private=True, data=b"{}")
    assert tls_receiver.requests == []
