"""Failure injection for the simulator: one option set, settable at construction, in Python and over HTTP.

Options (`Faults.configure` keys; the same JSON keys work for `POST /_sim/inject`):

- `latency_seconds` (float): sleep before answering every API call.
- `error_rate` (0..1), `error_statuses` (list of ints, default 429/500/502/503/504), `seed` (int):
  answer that share of API calls with a random one of those statuses, from a seeded RNG.
- `retry_after_seconds` (float or null): send `Retry-After` on injected 429s.
- `fail_next`: an int N (the next N API calls answer 503), or `{"count", "status", "reason", "message",
  "html", "endpoint", "retry_after_seconds"}`; `endpoint` (e.g. "/gpu/instances") limits it to one path,
  `reason` picks a reason (a documented one implies its status), `html` answers a Cloudflare-style HTML
  page instead of JSON; status 200 fakes a garbled success answer.
- `lose_next_creates` (int): the next N creates DO create the instance, then drop the connection unanswered.
- `lose_next_responses`: `{"count", "endpoint"}`, the same for any POST endpoint (e.g. a start).
- `fail_pull_images` (list of image URLs), `fail_next_pulls` (int): image pulls that fail.
- `out_of_stock_clusters` (list of cluster ids): every product there has no free GPU.
- `auth_failure_status` (401 or 403): how a bad key is answered (UNAUTHORIZED or INVALID_API_KEY).
- `not_found_status` (400, 404 or 200): how an unknown instance is answered (docs/novita-api.md §13.11).
- `proxy_html_404`: a proxy in front of Novita answers with an HTML 404 page, before any auth check: an int
  N (the next N API calls), `true` (every call until set to `false` or 0), or `{"count", "endpoint"}`.
- `nested_error_envelope` (bool): render every JSON error as `{"error": {"code", "message"}}` (the reason
  leads the message) instead of the flat `{code, reason, message, metadata}`.
- `no_spot_capacity` (bool): spot creates answer INSUFFICIENT_RESOURCE and migrations
  MIGRATE_INSUFFICIENT_RESOURCE (on-demand creates are unaffected). A reclaim is injected with
  `reclaim_instances` (list of instance ids, see `SimState.inject`): spotStatus notified -> reclaiming ->
  terminated (phase durations "notified" and "reclaiming"), then status exited.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from gpujobs.novita import spec

DEFAULT_ERROR_STATUSES = tuple(sorted(spec.RETRYABLE_HTTP_STATUSES))
DEFAULT_FAIL_NEXT_STATUS = 503


def reason_for_status(http_status: int) -> str:
    """The documented reason that comes with a status; UNKNOWN is the only documented 5xx reason."""
    documented = (name for name, reason in spec.ERROR_REASONS.items() if reason.http_status == http_status)
    return next(documented, "UNKNOWN" if http_status >= 500 else "REQUEST")


@dataclass(frozen=True)
class ForcedFailure:
    """One injected error answer."""

    status: int
    reason: str
    message: str = ""
    html: bool = False
    endpoint: str | None = None
    retry_after_seconds: float | None = None

    @classmethod
    def from_option(cls, option: Mapping[str, Any]) -> ForcedFailure:
        """Build from a `fail_next` mapping; a reason alone implies its documented status."""
        reason = option.get("reason")
        status = int(option.get("status") or (spec.ERROR_REASONS[reason].http_status if reason else 0))
        status = status or DEFAULT_FAIL_NEXT_STATUS
        return cls(
            status=status,
            reason=reason or reason_for_status(status),
            message=str(option.get("message", "")),
            html=bool(option.get("html", False)),
            endpoint=option.get("endpoint"),
            retry_after_seconds=option.get("retry_after_seconds"),
        )


@dataclass(frozen=True)
class ProxyNotFound(ForcedFailure):
    """The HTML 404 page of a proxy or gateway in front of Novita (it never reaches the API)."""

    status: int = 404
    reason: str = ""
    html: bool = True


class Faults:
    """The current injection settings; thread-safe, deterministic given a seed and a call order."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self.reset(seed)

    def reset(self, seed: int = 0) -> None:
        """Back to a healthy server."""
        with self._lock:
            self._rng = random.Random(seed)
            self.latency_seconds = 0.0
            self.error_rate = 0.0
            self.error_statuses: tuple[int, ...] = DEFAULT_ERROR_STATUSES
            self.retry_after_seconds: float | None = None
            self._forced: deque[ForcedFailure] = deque()
            self._lost: deque[str] = deque()
            self.fail_pull_images: frozenset[str] = frozenset()
            self.fail_next_pulls = 0
            self.out_of_stock_clusters: frozenset[str] = frozenset()
            self.auth_failure_status = 401
            self.not_found_status = 400
            self.proxy_html_404_always = False
            self._proxy: deque[ProxyNotFound] = deque()
            self.nested_error_envelope = False
            self.no_spot_capacity = False

    def configure(self, options: Mapping[str, Any]) -> None:
        """Apply options (see the module docstring); unknown keys or bad values raise ValueError."""
        unknown = set(options) - set(self._setters)
        if unknown:
            raise ValueError(f"unknown fault options: {sorted(unknown)}")
        with self._lock:
            for key, value in options.items():
                self._setters[key](self, value)

    def _set_fail_next(self, value: int | Mapping[str, Any]) -> None:
        option = {"count": value} if isinstance(value, int) else value
        failure = ForcedFailure.from_option(option)
        self._forced.extend([failure] * int(option.get("count", 1)))

    def _set_lost(self, value: Mapping[str, Any]) -> None:
        self._lost.extend([str(value["endpoint"])] * int(value.get("count", 1)))

    def _set_seed(self, value: int) -> None:
        self._rng = random.Random(value)

    def _set_auth_failure_status(self, value: int) -> None:
        if value not in (401, 403):
            raise ValueError("auth_failure_status must be 401 or 403")
        self.auth_failure_status = value

    def _set_not_found_status(self, value: int) -> None:
        if value not in (200, 400, 404):
            raise ValueError("not_found_status must be 200, 400 or 404")
        self.not_found_status = value

    def _set_proxy_html_404(self, value: bool | int | Mapping[str, Any]) -> None:
        option: dict[str, Any] = dict(value) if isinstance(value, Mapping) else {"count": value}
        count = int(option.get("count", 1))
        if value is False or not count:  # switched off: no proxy in front any more
            self.proxy_html_404_always = False
            self._proxy.clear()
        elif value is True:
            self.proxy_html_404_always = True
        else:
            self._proxy.extend([ProxyNotFound(endpoint=option.get("endpoint"))] * count)

    _setters: ClassVar[dict[str, Callable[[Faults, Any], None]]] = {
        "latency_seconds": lambda self, v: setattr(self, "latency_seconds", float(v)),
        "error_rate": lambda self, v: setattr(self, "error_rate", float(v)),
        "error_statuses": lambda self, v: setattr(self, "error_statuses", tuple(int(s) for s in v)),
        "retry_after_seconds": lambda self, v: setattr(self, "retry_after_seconds", v),
        "seed": _set_seed,
        "fail_next": _set_fail_next,
        "lose_next_creates": lambda self, v: self._set_lost(
            {"count": v, "endpoint": spec.INSTANCE_CREATE_PATH}
        ),
        "lose_next_responses": _set_lost,
        "fail_pull_images": lambda self, v: setattr(self, "fail_pull_images", frozenset(v)),
        "fail_next_pulls": lambda self, v: setattr(self, "fail_next_pulls", int(v)),
        "out_of_stock_clusters": lambda self, v: setattr(self, "out_of_stock_clusters", frozenset(v)),
        "auth_failure_status": _set_auth_failure_status,
        "not_found_status": _set_not_found_status,
        "proxy_html_404": _set_proxy_html_404,
        "nested_error_envelope": lambda self, v: setattr(self, "nested_error_envelope", bool(v)),
        "no_spot_capacity": lambda self, v: setattr(self, "no_spot_capacity", bool(v)),
    }

    def take_proxy_failure(self, endpoint: str) -> ForcedFailure | None:
        """The proxy's HTML 404 for this call, if one is due (it answers before Novita checks the key)."""
        with self._lock:
            if self.proxy_html_404_always:
                return ProxyNotFound(endpoint=endpoint)
            for failure in self._proxy:
                if failure.endpoint in (None, endpoint):
                    self._proxy.remove(failure)
                    return failure
        return None

    def take_failure(self, endpoint: str) -> ForcedFailure | None:
        """The injected error for this call, if any: queued failures first, then the random share."""
        with self._lock:
            for failure in self._forced:
                if failure.endpoint in (None, endpoint):
                    self._forced.remove(failure)
                    return failure
            if self.error_rate and self._rng.random() < self.error_rate:
                status = self._rng.choice(self.error_statuses)
                retry_after = self.retry_after_seconds if status == 429 else None
                return ForcedFailure(status, reason_for_status(status), retry_after_seconds=retry_after)
        return None

    def take_lost_response(self, endpoint: str) -> bool:
        """Whether to drop this call's connection after doing the work."""
        with self._lock:
            if endpoint in self._lost:
                self._lost.remove(endpoint)
                return True
        return False

    def take_pull_failure(self, image_url: str) -> bool:
        """Whether this image pull fails (by image, or as one of the next N pulls)."""
        with self._lock:
            if image_url in self.fail_pull_images:
                return True
            if self.fail_next_pulls > 0:
                self.fail_next_pulls -= 1
                return True
        return False

    def snapshot(self) -> dict[str, Any]:
        """The current settings, for `GET /_sim/inject`."""
        with self._lock:
            return {
                "latency_seconds": self.latency_seconds,
                "error_rate": self.error_rate,
                "error_statuses": list(self.error_statuses),
                "retry_after_seconds": self.retry_after_seconds,
                "fail_next": [asdict(failure) for failure in self._forced],
                "lose_next_responses": list(self._lost),
                "fail_pull_images": sorted(self.fail_pull_images),
                "fail_next_pulls": self.fail_next_pulls,
                "out_of_stock_clusters": sorted(self.out_of_stock_clusters),
                "auth_failure_status": self.auth_failure_status,
                "not_found_status": self.not_found_status,
                "proxy_html_404": self.proxy_html_404_always or [asdict(failure) for failure in self._proxy],
                "nested_error_envelope": self.nested_error_envelope,
                "no_spot_capacity": self.no_spot_capacity,
            }
