"""Typed Novita errors, each a TransientError or PermanentError so the engine decides retry-vs-fail once.

`error_from_response` turns any HTTP error answer into one of these: Novita's JSON envelope, flat
`{code, reason, message, metadata}` (docs/novita-api.md §12) or nested `{"error": {code, reason?, message}}`,
an undocumented reason, or a body that is not the envelope at all (an HTML page from Cloudflare or a proxy).
Messages carry method, path, status, reason and Novita's message, never request headers or bodies, so they
cannot leak the API key or registry passwords.

Evidence before belief: only an envelope that says not-found (400 RESOURCE_NOT_FOUND, or a 404 carrying the
envelope with a reason) is NovitaNotFoundError. A 404 or 405 without the envelope (or with one that gives no
reason) may come from something in front of Novita (a proxy, a gateway, a wrong base URL) and proves nothing
about the instance: NovitaUnrecognizedAnswerError, retried like any transient failure.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from gpujobs.exceptions import GpuJobsError, PermanentError, TransientError
from gpujobs.novita import spec

# Enough of a non-JSON body to recognise it in a log line, not enough to flood one.
BODY_SNIPPET_MAX_CHARS = 200


class NovitaError(GpuJobsError):
    """Mixin for every Novita error: the HTTP status and `reason` Novita sent, when there was an answer."""

    http_status: int | None = None
    reason: str | None = None


class NovitaTransientError(TransientError, NovitaError):
    """A Novita failure that may succeed later (429, 5xx, timeouts, dropped connections)."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        reason: str | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message, retry_after_seconds=retry_after_seconds)
        self.http_status = http_status
        self.reason = reason


class NovitaPermanentError(PermanentError, NovitaError):
    """A Novita failure that retrying the same call cannot fix; also used for undocumented 4xx reasons."""

    def __init__(self, message: str, *, http_status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.reason = reason


class RateLimitedError(NovitaTransientError):
    """429 RATE_LIMIT_EXCEEDED; `retry_after_seconds` is set when Novita sent Retry-After."""


class NovitaServerError(NovitaTransientError):
    """5xx: Novita or a proxy in front of it failed; the request may or may not have taken effect."""


class NovitaConnectionError(NovitaTransientError):
    """No HTTP answer (timeout, refused or dropped connection); `request_sent`: it may have acted."""

    def __init__(self, message: str, *, request_sent: bool) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class CreateOutcomeUnknownError(NovitaTransientError):
    """A create whose answer was lost: the instance may exist, so look it up by name before creating again."""


class NovitaAuthError(NovitaPermanentError):
    """401/403: the API key is missing, wrong or lacks permission (or Cloudflare blocked the client)."""


class NovitaNotFoundError(NovitaPermanentError):
    """Novita's envelope says the instance, template or auth does not exist (400 RESOURCE_NOT_FOUND, or
    a 404 carrying the envelope); the only answer that means "gone"."""


class InvalidRequestError(NovitaPermanentError):
    """Novita rejected the parameters (VALIDATOR_PARAM and friends); fix the request, do not retry."""


class InvalidStateError(NovitaPermanentError):
    """The action does not fit the instance's current state ("invalid state change", CONFLICT, ...)."""


class PlacementError(NovitaPermanentError):
    """This product cannot be placed in this cluster right now; another cluster or product may work."""


class InsufficientResourceError(PlacementError):
    """400 INSUFFICIENT_RESOURCE: out of stock or cluster full; fall back to another region or product."""


class ClusterUnavailableError(PlacementError):
    """400 CLUSTER_STATUS / NODE_STATUS: the cluster or node is abnormal; try another cluster."""


class AccountLimitError(NovitaPermanentError):
    """Balance, quota or operation limits of the Novita account were hit; a human has to act."""


class NovitaUnrecognizedAnswerError(NovitaTransientError):
    """An answer that is not Novita's (a 404/405 without its envelope, a GET without the instance): a proxy,
    gateway or wrong base URL answered. Retried, counted, and never read as "the instance is gone"."""


class DeleteUnconfirmedError(NovitaTransientError):
    """Novita took a delete, but a read does not show the instance removing or removed yet: not done."""


class NovitaProtocolError(NovitaTransientError):
    """A success status with a body that is not a JSON object: a proxy's or Cloudflare's page (§12: the
    client must survive bodies that are not JSON). Nothing is concluded from it: a read is retried (a
    look looks again, a job's attempt is retried), an action counts as accepted (any 2xx does, §8), and
    a create's outcome is unknown until the instance is looked up by name."""


_CLASS_BY_KIND: dict[spec.ErrorKind, type[NovitaTransientError] | type[NovitaPermanentError]] = {
    spec.ErrorKind.AUTH: NovitaAuthError,
    spec.ErrorKind.RATE_LIMIT: RateLimitedError,
    spec.ErrorKind.SERVER: NovitaServerError,
    spec.ErrorKind.NOT_FOUND: NovitaNotFoundError,
    spec.ErrorKind.INVALID_REQUEST: InvalidRequestError,
    spec.ErrorKind.INVALID_STATE: InvalidStateError,
    spec.ErrorKind.INSUFFICIENT_RESOURCE: InsufficientResourceError,
    spec.ErrorKind.CLUSTER_UNAVAILABLE: ClusterUnavailableError,
    spec.ErrorKind.ACCOUNT_LIMIT: AccountLimitError,
}


# Statuses that, without Novita's envelope, mean a proxy or gateway did not route the call to the API.
UNROUTED_HTTP_STATUSES = frozenset({404, 405})
_REASON_WORD = re.compile(r"\b[A-Z][A-Z_]+[A-Z]\b")


@dataclass(frozen=True)
class Envelope:
    """Novita's error envelope, read from either shape; `reason` may be absent in the nested one."""

    reason: str | None
    message: str


def _documented_reason(value: object) -> str | None:
    return value if isinstance(value, str) and value in spec.ERROR_REASONS else None


def parse_envelope(body: str) -> Envelope | None:
    """The envelope in a body, or None if the body is not one (HTML, empty, some other JSON).

    Flat `{code, reason, message, metadata?}` or nested `{"error": {code, reason?, message}}`: a `code`
    and a `reason` or `message`. Without a reason field, a documented reason given as the code or named
    in the message (CNOVITA's live tests find INSUFFICIENT_RESOURCE in the error text) is the reason, so
    region fallback works whichever shape Novita answers in.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    nested = data.get("error")
    source = nested if isinstance(nested, dict) else data
    code, reason, message = source.get("code"), source.get("reason"), source.get("message")
    # A documented reason is Novita's word even without a `code` beside it.
    if (code is None and _documented_reason(reason) is None) or (
        not isinstance(reason, str) and not isinstance(message, str)
    ):
        return None
    message = message if isinstance(message, str) else ""
    if not isinstance(reason, str) or not reason:
        in_message = (_documented_reason(word) for word in _REASON_WORD.findall(message))
        reason = _documented_reason(code) or next((word for word in in_message if word), None)
    return Envelope(reason=reason, message=message)


def _class_for_status(http_status: int) -> type[NovitaTransientError] | type[NovitaPermanentError]:
    """Classify by HTTP status alone, for undocumented reasons and bodies that are not the envelope."""
    if http_status in (401, 403):
        return NovitaAuthError
    if http_status == 429:
        return RateLimitedError
    if http_status >= 500:
        return NovitaServerError
    return NovitaPermanentError


def _class_for(
    http_status: int, envelope: Envelope | None
) -> type[NovitaTransientError] | type[NovitaPermanentError]:
    if envelope is not None:
        # SONTL saw "invalid state change" as the message; the reason that comes with it is not documented.
        if spec.INVALID_STATE_CHANGE_MESSAGE in envelope.message.lower():
            return InvalidStateError
        documented = spec.ERROR_REASONS.get(envelope.reason or "")
        if documented is not None:
            return _CLASS_BY_KIND[documented.kind]
    if http_status in UNROUTED_HTTP_STATUSES and (envelope is None or envelope.reason is None):
        # No reason, no evidence: `{"code": 404, "message": "Not Found"}` is what many gateways send too.
        return NovitaUnrecognizedAnswerError
    if http_status == 404:  # Novita's envelope, with its reason, on a 404: the thing is not there
        return NovitaNotFoundError
    return _class_for_status(http_status)


def _snippet(body: str) -> str:
    """The <title> of an HTML page, else the start of the body, on one line."""
    title = re.search(r"<title[^>]*>(.*?)</title>", body, re.IGNORECASE | re.DOTALL)
    text = title.group(1) if title else body
    return " ".join(text.split())[:BODY_SNIPPET_MAX_CHARS]


def error_from_response(
    *,
    method: str,
    path: str,
    http_status: int,
    body: str,
    content_type: str,
    retry_after_seconds: float | None = None,
) -> NovitaTransientError | NovitaPermanentError:
    """Build the typed error for a non-2xx answer, whatever its body looks like."""
    where = f"Novita {method} {path} failed with HTTP {http_status}"
    envelope = parse_envelope(body)
    if envelope is not None:
        text = f"{where} {envelope.reason or 'without a reason'}: {envelope.message or _snippet(body)}"
    elif body.lstrip().startswith(("{", "[")):
        # JSON, but not Novita's envelope (a gateway's own error, say): worth showing, briefly.
        text = f"{where} and a JSON body that is not Novita's error envelope: {_snippet(body)}"
    else:
        kind = content_type.split(";")[0].strip() or "no content type"
        text = (
            f"{where} and a non-JSON body ({kind}; likely a proxy or Cloudflare page, "
            f"check the base URL and User-Agent): {_snippet(body) or '(empty body)'}"
        )
    error_class = _class_for(http_status, envelope)
    reason = envelope.reason if envelope else None
    if issubclass(error_class, NovitaTransientError):
        return error_class(
            text, http_status=http_status, reason=reason, retry_after_seconds=retry_after_seconds
        )
    return error_class(text, http_status=http_status, reason=reason)
