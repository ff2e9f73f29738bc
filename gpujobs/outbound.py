"""The one way the service makes HTTP calls to user-supplied URLs (webhooks and the ``call.api`` job).

Decisions (after OWASP's SSRF prevention cheat sheet and how Svix and Stripe deliver webhooks):

* ``http``/``https`` only, a host, no ``user:pass@``. Any port 1-65535: the address check, not the port,
  keeps calls off internal services, and real receivers listen on 8080, 8443, ...
* Unless ``allow_private``, every address a host resolves to must be public; one bad address refuses the
  URL (OWASP: check A and AAAA, reject any). ``REFUSED_NETWORKS`` is the one table of what is refused
  and why; IPv6 forms that carry an IPv4 address (mapped, translated, NAT64, 6to4, Teredo) are judged
  by that address too. Cloud metadata and platform endpoints are refused even with ``allow_private``.
* ``check_url`` (submit time) resolves names too, so a URL pointing inside is a 422 at once; a name that
  does not resolve then is refused as well (we cannot vouch for it, and typos surface immediately). In
  ``send`` a failed lookup is a TransientError instead: DNS outages pass.
* ``send`` resolves once and dials the checked IP itself (pinned), so DNS rebinding cannot swap in
  127.0.0.1; Host, SNI and certificate verification still use the hostname. Redirects are never followed.
* One total deadline covers connect, TLS, request, headers and body: a watchdog (``gpujobs.deadlines``)
  shuts the socket down when it passes, so a slow-drip server cannot hold a worker (DNS time counts but
  is bounded by the system resolver). The body is read up to a cap. Errors name scheme, host and port
  only: paths carry tokens.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import certifi

from gpujobs.deadlines import DEADLINES
from gpujobs.exceptions import PermanentError, TransientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH_CHARS = 2048
READ_CHUNK_BYTES = 16 * 1024
USER_AGENT = "gpujobs-outbound/1"

# A DNS name after IDNA encoding. Anything else (spaces, '%', '\\', ...) is refused, not guessed at.
_HOSTNAME_RE = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
# Hosts the C resolver would read as an IPv4 literal: 2130706433, 0x7f.1, 0177.0.0.1, 127.1.
_LEGACY_IPV4_RE = re.compile(r"[0-9a-fx.]+")


@dataclass(frozen=True)
class RefusedNetwork:
    """A range calls may not reach, and why; ``always``: refused even with GPUJOBS_WEBHOOK_ALLOW_PRIVATE."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    why: str
    always: bool = False


def _refused(cidr: str, why: str, *, always: bool = False) -> RefusedNetwork:
    return RefusedNetwork(ipaddress.ip_network(cidr), why, always)


# The one table of refused networks (a test per row). Python 3.11's own tables predate CVE-2024-4032's
# fixes and later IANA additions, so they are spelled out here; "not is_global" is checked on top. IPv6
# forms that carry an IPv4 address (see _embedded_ipv4) are judged by that address as well.
REFUSED_NETWORKS: tuple[RefusedNetwork, ...] = (
    # Cloud metadata and platform endpoints: never a webhook receiver.
    _refused("169.254.169.254/32", "cloud metadata (AWS, GCP, Azure, OpenStack)", always=True),
    _refused("168.63.129.16/32", "Azure platform endpoint (WireServer)", always=True),
    _refused("100.100.100.200/32", "Alibaba Cloud metadata", always=True),
    _refused("fd00:ec2::254/128", "AWS metadata over IPv6", always=True),
    _refused("0.0.0.0/8", "this network"),
    _refused("10.0.0.0/8", "private (RFC 1918)"),
    _refused("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
    _refused("127.0.0.0/8", "loopback"),
    _refused("169.254.0.0/16", "link-local"),
    _refused("172.16.0.0/12", "private (RFC 1918)"),
    _refused("192.0.0.0/24", "IETF protocol assignments"),
    _refused("192.0.2.0/24", "documentation (TEST-NET-1)"),
    _refused("192.88.99.0/24", "6to4 relay anycast"),
    _refused("192.168.0.0/16", "private (RFC 1918)"),
    _refused("198.18.0.0/15", "benchmarking"),
    _refused("198.51.100.0/24", "documentation (TEST-NET-2)"),
    _refused("203.0.113.0/24", "documentation (TEST-NET-3)"),
    _refused("224.0.0.0/4", "multicast"),
    _refused("240.0.0.0/4", "reserved and broadcast"),
    _refused("::/96", "IPv4-compatible (holds :: and ::1)"),
    _refused("::ffff:0:0:0/96", "IPv4-translated (SIIT, RFC 2765)"),
    _refused("64:ff9b:1::/48", "NAT64 local-use (RFC 8215)"),
    _refused("100::/64", "discard"),
    _refused("2001::/32", "Teredo"),
    _refused("2001::/23", "IETF protocol assignments"),
    _refused("2001:db8::/32", "documentation"),
    _refused("3fff::/20", "documentation"),
    _refused("5f00::/16", "SRv6 segment identifiers"),
    _refused("fc00::/7", "unique local"),
    _refused("fe80::/10", "link-local"),
    _refused("fec0::/10", "site-local"),
    _refused("ff00::/8", "multicast"),
)
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")


class UnsafeURLError(PermanentError):
    """The URL may not be called: bad scheme or form, or it points at a non-public address."""


@dataclass(frozen=True)
class OutboundResponse:
    """What came back: status, lower-cased headers, and the body up to the cap."""

    status_code: int
    headers: dict[str, str]
    body: bytes
    elapsed_ms: int
    truncated: bool

    @property
    def is_success(self) -> bool:
        """Only 2xx counts: a 3xx is a failure because redirects are never followed."""
        return 200 <= self.status_code < 300


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # lower-case IDNA name, or the normalised IP for literal hosts
    port: int
    request_target: str  # path and query; the fragment is never sent
    literal_ip: IPAddress | None

    def describe(self) -> str:
        """Where the call went, safe for logs: no path, no query."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def refusal_reason(ip: str | IPAddress, *, allow_private: bool = False) -> str | None:
    """Why a call to ``ip`` is refused, or None when it may be made."""
    try:
        addr = ip if isinstance(ip, IPAddress) else ipaddress.ip_address(str(ip).split("%", 1)[0])
    except ValueError:
        return "not an address"  # not provably an address we may reach
    embedded = _embedded_ipv4(addr)
    for candidate, where in ((addr, ""), (embedded, ", inside an IPv6 address")):
        for row in REFUSED_NETWORKS:
            if (
                candidate is not None
                and (row.always or not allow_private)
                and _within(candidate, row.network)
            ):
                return row.why + where
    if allow_private:
        return None
    judged = embedded if embedded is not None else addr  # ::ffff:8.8.8.8 and 64:ff9b::808:808 are 8.8.8.8
    if not judged.is_global or judged.is_multicast:
        return "not a public address"
    return None


def _within(addr: IPAddress, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return addr.version == network.version and addr in network


def is_forbidden_address(ip: str | IPAddress) -> bool:
    """True unless the address is plainly public, looking through the IPv6 forms that embed IPv4."""
    return refusal_reason(ip) is not None


def _embedded_ipv4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, translated, compatible, NAT64, 6to4, Teredo)."""
    if isinstance(addr, ipaddress.IPv4Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]  # the client's address
    if any(addr in net for net in (_IPV4_TRANSLATED, _NAT64_WELL_KNOWN, _IPV4_COMPATIBLE)):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def endpoint_of(url: str) -> str:
    """``scheme://host:port`` of a URL (UnsafeURLError if malformed): a receiver's identity, no path."""
    return _parse(url).describe()


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse an unsafe URL at submit time (the API turns UnsafeURLError into a 422)."""
    _checked_addresses(_parse(url), allow_private=allow_private, resolve_error=UnsafeURLError)


def send(
    method: str,
    url: str,
    *,
    allow_private: bool,
    json_body: object = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    connect_timeout_seconds: float = 5.0,
    total_timeout_seconds: float = 15.0,
    max_response_bytes: int = 64 * 1024,
) -> OutboundResponse:
    """Make one pinned, bounded HTTP call; TransientError on network trouble, UnsafeURLError if refused."""
    if json_body is not None and data is not None:
        raise ValueError("pass json_body or data, not both")
    started = time.monotonic()
    target = _parse(url)
    addresses = _checked_addresses(target, allow_private=allow_private, resolve_error=TransientError)

    request_headers = {"User-Agent": USER_AGENT, "Connection": "close"}
    body = data
    if json_body is not None:
        body = json.dumps(json_body, separators=(",", ":")).encode()
        request_headers["Content-Type"] = "application/json"
    request_headers.update(headers or {})

    connection_class = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    conn = connection_class(
        target.host, target.port, addresses, connect_timeout_seconds, started + total_timeout_seconds
    )
    deadline_message = f"{method} {target.describe()} exceeded the total timeout of {total_timeout_seconds}s"
    watchdog = DEADLINES.arm(started + total_timeout_seconds, conn.abort)
    try:
        conn.request(method, target.request_target, body=body, headers=request_headers)
        response = conn.getresponse()
        payload, truncated = _read_capped(response, max_response_bytes)
    except (OSError, http.client.HTTPException) as exc:
        if conn.aborted:
            raise TransientError(deadline_message) from exc
        raise TransientError(f"{method} {target.describe()} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        DEADLINES.disarm(watchdog)
        conn.close()
    if conn.aborted:  # the shutdown can also look like a clean end of body
        raise TransientError(deadline_message)

    response_headers: dict[str, str] = {}
    for name, value in response.getheaders():
        key = name.lower()
        response_headers[key] = f"{response_headers[key]}, {value}" if key in response_headers else value
    elapsed_ms = int((time.monotonic() - started) * 1000)
    return OutboundResponse(response.status, response_headers, payload, elapsed_ms, truncated)


def _parse(url: str) -> _Target:
    """Check the URL's form without touching the network."""
    if len(url) > MAX_URL_LENGTH_CHARS:
        raise UnsafeURLError(f"URL is longer than {MAX_URL_LENGTH_CHARS} characters")
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        # urlsplit silently drops tabs and newlines; refuse instead of calling a different URL.
        raise UnsafeURLError("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURLError(f"URL is malformed or its port is not in 1-65535 ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise UnsafeURLError(f"URL scheme {scheme or '(none)'!r} is not allowed; use http or https")
    if "@" in parts.netloc:
        raise UnsafeURLError("URL must not contain credentials (user:password@)")
    if not parts.hostname:
        raise UnsafeURLError("URL has no host")
    if port == 0:
        raise UnsafeURLError("URL port must be in 1-65535")

    host = parts.hostname
    literal_ip = _literal_ip(host)
    if literal_ip is not None:
        host = str(literal_ip)
    else:
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise UnsafeURLError("URL host is not a valid hostname") from None
        if len(host) > 253 or not _HOSTNAME_RE.fullmatch(host):
            raise UnsafeURLError("URL host is not a valid hostname")
    request_target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # http.client sends ASCII only: percent-encode the rest now rather than fail on every attempt.
    request_target = quote(request_target, safe="!#$%&'()*+,/:;=?@[]~")
    return _Target(scheme, host, port or DEFAULT_PORTS[scheme], request_target, literal_ip)


def _literal_ip(host: str) -> IPAddress | None:
    """Read the host as an IP the way the C resolver would, so 0x7f.1 is judged as 127.0.0.1."""
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host)
    if _LEGACY_IPV4_RE.fullmatch(host):
        with contextlib.suppress(OSError):  # inet_aton refuses it: a DNS name after all
            return ipaddress.IPv4Address(socket.inet_aton(host))
    return None


def _resolve(host: str, port: int) -> list[str]:
    """Look the name up once (A and AAAA); the only DNS call in this module, so tests can replace it."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _checked_addresses(
    target: _Target, *, allow_private: bool, resolve_error: type[PermanentError | TransientError]
) -> list[str]:
    """Resolve the target and return its addresses, refusing if any one of them is not allowed."""
    if target.literal_ip is not None:
        addresses = [str(target.literal_ip)]
    else:
        try:
            addresses = _resolve(target.host, target.port)
        except (OSError, UnicodeError) as exc:
            raise resolve_error(f"host {target.host!r} could not be resolved: {exc}") from None
        if not addresses:
            raise resolve_error(f"host {target.host!r} could not be resolved: no addresses")
    for address in addresses:  # one refused address refuses the URL, whatever the others are
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        why = refusal_reason(ip, allow_private=allow_private)
        if why is not None:
            if target.literal_ip is not None:
                raise UnsafeURLError(f"address {ip} is not a public address ({why})")
            raise UnsafeURLError(f"host {target.host!r} resolves to non-public address {ip} ({why})")
    return addresses


def _read_capped(response: http.client.HTTPResponse, cap_bytes: int) -> tuple[bytes, bool]:
    """Read at most cap_bytes (plus one, to know whether there was more); the rest is never read."""
    chunks: list[bytes] = []
    received = 0
    while received <= cap_bytes:
        # read1 hands back what has arrived instead of blocking until the whole chunk is filled.
        chunk = response.read1(min(READ_CHUNK_BYTES, cap_bytes + 1 - received))
        if not chunk:
            break
        chunks.append(chunk)
        received += len(chunk)
    body = b"".join(chunks)
    return body[:cap_bytes], received > cap_bytes


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """Certificate and hostname verification on, with the same CA bundle requests uses."""
    return ssl.create_default_context(cafile=certifi.where())


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to already-checked IPs; self.host stays the name for the Host header."""

    def __init__(
        self, host: str, port: int, addresses: list[str], connect_timeout: float, deadline: float
    ) -> None:
        super().__init__(host, port, timeout=max(0.001, deadline - time.monotonic()))
        self._addresses = addresses
        self._connect_timeout = connect_timeout
        self._deadline = deadline
        self._lock = threading.Lock()
        self._kill_switch: socket.socket | None = None
        self.aborted = False

    def connect(self) -> None:
        """Dial the pinned addresses in order; never resolve self.host again."""
        last_error: OSError = TimeoutError("total deadline passed before connecting")
        for ip in self._addresses:
            remaining = self._deadline - time.monotonic()
            if self.aborted or remaining <= 0:
                break
            try:
                raw = socket.create_connection((ip, self.port), timeout=min(self._connect_timeout, remaining))
            except OSError as exc:
                last_error = exc
                continue
            raw.settimeout(max(0.001, self._deadline - time.monotonic()))
            with self._lock:
                # A duplicate descriptor survives TLS wrapping; shutting it down ends the connection.
                self._kill_switch = raw.dup()
            if self.aborted:
                raw.close()
                break
            self.sock = self._wrap(raw)
            return
        raise last_error

    def _wrap(self, raw: socket.socket) -> socket.socket:
        return raw

    def abort(self) -> None:
        """Watchdog: at the total deadline, unblock whatever is reading or writing on the socket."""
        with self._lock:
            self.aborted = True
            if self._kill_switch is not None:
                with contextlib.suppress(OSError):  # the peer may have gone already
                    self._kill_switch.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        super().close()
        with self._lock:
            if self._kill_switch is not None:
                self._kill_switch.close()
                self._kill_switch = None


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """HTTPS to the pinned IP with SNI and certificate checks against the hostname, not the IP."""

    default_port = http.client.HTTPS_PORT

    def _wrap(self, raw: socket.socket) -> socket.socket:
        return _tls_context().wrap_socket(raw, server_hostname=self.host)
