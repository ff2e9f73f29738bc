"""HTTP plumbing for the Novita client: one session, one request, typed errors, and the retry policy.

Kept apart from `client.py` so the client reads as the API it speaks. Nothing here logs or formats request
headers or bodies: the Authorization header and registry credentials only ever travel on the wire.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import requests
import urllib3
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from gpujobs.novita.errors import (
    NovitaConnectionError,
    NovitaPermanentError,
    NovitaProtocolError,
    NovitaTransientError,
    NovitaUnrecognizedAnswerError,
    error_from_response,
)

logger = logging.getLogger("gpujobs.novita")

RetryPredicate = Callable[[BaseException], bool]
# Told about every HTTP attempt: method, path (no ids: they travel as parameters) and outcome, which is
# "ok", the HTTP status class ("4xx", "5xx") or "429", "no_answer" (timeout, connection error), or
# "no_envelope" (a 404/405 without Novita's error envelope: a proxy or a wrong base URL answered).
CallObserver = Callable[[str, str, str], None]
NO_ENVELOPE_OUTCOME = "no_envelope"


def outcome_of(status_code: int | None) -> str:
    """The label of one attempt's outcome, as CallObserver receives it."""
    if status_code is None:
        return "no_answer"
    if 200 <= status_code < 300:
        return "ok"
    if status_code == 429:
        return "429"
    return f"{status_code // 100}xx"


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date; anything else is ignored."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _request_was_sent(exc: requests.exceptions.RequestException) -> bool:
    """False only when the connection was never established, so the server cannot have acted."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return False
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return not isinstance(reason, urllib3.exceptions.NewConnectionError)


class Transport:
    """Sends one request to Novita and returns its JSON object, or raises a typed Novita error."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout_seconds: float,
        read_timeout_seconds: float,
        user_agent: str,
        on_call: CallObserver | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = (connect_timeout_seconds, read_timeout_seconds)
        self._on_call = on_call
        self._session = requests.Session()
        # The environment's proxy (HTTPS_PROXY, NO_PROXY) and CA bundle for this base URL, read once: with
        # trust_env requests read them, and ~/.netrc, again on every call (3 % of a job worker's CPU in
        # bench.pipeline), and a .netrc entry for the host would have replaced the API key.
        self._session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        self._session.verify = bundle or True
        self._session.trust_env = False
        # Content-Type is documented as required on every endpoint, GETs included (docs/novita-api.md §1).
        self._session.headers.update(
            {
                "Authorization": f"Bearer {api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": user_agent,
            }
        )

    def close(self) -> None:
        """Release pooled connections."""
        self._session.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One HTTP call, no retries: a JSON object on 2xx, else a typed error."""
        started = time.monotonic()
        try:
            response = self._session.request(
                method, self.base_url + path, params=params, json=body, timeout=self._timeout
            )
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema,
        ):
            # A misconfigured base URL will not fix itself; retrying it would only hide the mistake.
            raise NovitaPermanentError(
                f"Novita base URL {self.base_url!r} is not a valid http(s) URL"
            ) from None
        except requests.exceptions.RequestException as exc:
            elapsed_ms = (time.monotonic() - started) * 1000
            logger.debug("novita %s %s -> %s after %.0f ms", method, path, type(exc).__name__, elapsed_ms)
            self._observe(method, path, outcome_of(None))
            sent = _request_was_sent(exc)
            raise NovitaConnectionError(
                f"Novita {method} {path} got no answer ({type(exc).__name__}"
                f"{'' if sent else ', request not sent'})",
                request_sent=sent,
            ) from exc
        elapsed_ms = (time.monotonic() - started) * 1000
        logger.debug("novita %s %s -> %s in %.0f ms", method, path, response.status_code, elapsed_ms)
        if response.ok:
            self._observe(method, path, outcome_of(response.status_code))
            return self._json_object(method, path, response)
        error = error_from_response(
            method=method,
            path=path,
            http_status=response.status_code,
            body=response.text,
            content_type=response.headers.get("Content-Type", ""),
            retry_after_seconds=parse_retry_after(response.headers.get("Retry-After")),
        )
        if isinstance(error, NovitaUnrecognizedAnswerError):
            # A configuration or protocol problem, not an answer about the instance: say so loudly.
            logger.warning("%s; retried, and nothing is concluded from it", error)
            self._observe(method, path, NO_ENVELOPE_OUTCOME)
        else:
            self._observe(method, path, outcome_of(response.status_code))
        raise error

    def _observe(self, method: str, path: str, outcome: str) -> None:
        if self._on_call is None:
            return
        try:
            self._on_call(method, path, outcome)
        except Exception:  # counting a call must never fail the call
            logger.debug("novita call observer failed", exc_info=True)

    @staticmethod
    def _json_object(method: str, path: str, response: requests.Response) -> dict[str, Any]:
        # Action bodies are undocumented and may be empty (§13.10): an empty body is an empty object.
        if not response.content.strip():
            return {}
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            kind = response.headers.get("Content-Type", "no content type")
            raise NovitaProtocolError(
                f"Novita {method} {path} answered HTTP {response.status_code} with a body that is not a JSON "
                f"object ({kind}); check the base URL",
                http_status=response.status_code,
            )
        return data


class RetryPolicy:
    """Exponential backoff with jitter that honours Retry-After, for a given notion of "retryable"."""

    def __init__(
        self, *, max_attempts: int, backoff_initial_seconds: float, backoff_max_seconds: float
    ) -> None:
        self.max_attempts = max_attempts
        self.backoff_max_seconds = backoff_max_seconds
        self._backoff = wait_exponential_jitter(
            multiplier=backoff_initial_seconds, max=backoff_max_seconds, jitter=backoff_initial_seconds
        )

    def retrying(self, retry_on: RetryPredicate) -> Retrying:
        """A tenacity loop that re-raises the last error once attempts run out."""
        return Retrying(
            retry=retry_if_exception(retry_on),
            # tenacity types `|` for stop_base only, though stop_any calls any stop callable (its StopBaseT).
            stop=stop_after_attempt(self.max_attempts) | self._retry_after_too_long,  # type: ignore[operator]
            wait=self._wait,
            before_sleep=self._log_retry,
            reraise=True,
        )

    @staticmethod
    def _retry_after(state: RetryCallState) -> float | None:
        exc = state.outcome.exception() if state.outcome else None
        return exc.retry_after_seconds if isinstance(exc, NovitaTransientError) else None

    def _retry_after_too_long(self, state: RetryCallState) -> bool:
        # A long Retry-After should not block a worker: give up and let the engine reschedule the job with
        # the error's retry_after_seconds.
        retry_after = self._retry_after(state)
        return retry_after is not None and retry_after > self.backoff_max_seconds

    def _wait(self, state: RetryCallState) -> float:
        return max(self._retry_after(state) or 0.0, self._backoff(state))

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.debug(
            "novita retry %d after %s, waiting %.2f s", state.attempt_number, type(exc).__name__, wait
        )
