"""call.api@1: one real HTTP request to a caller-given endpoint, SSRF-guarded at submit and at send.

The URL is checked at submit, so a target inside the network is a 422, and again when the worker sends
(``gpujobs.outbound`` pins the checked address). 429 and 5xx answers are retried, honouring a numeric
Retry-After; other 4xx fail the job at once. The response body kept in the result is bounded.
"""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any, Literal

from flask import current_app, has_app_context
from pydantic import Field, StringConstraints, field_validator, model_validator

from gpujobs.exceptions import PermanentError, TransientError
from gpujobs.outbound import UnsafeURLError, check_url, send
from gpujobs.registry import JobContext, Params, job_definition

MAX_API_HEADERS = 20
MAX_API_BODY_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 64 * 1024
API_CONNECT_TIMEOUT_SECONDS = 5.0

# Hop-by-hop and framing headers belong to the HTTP client, not to the caller.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})

HeaderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,64}$")]
HeaderValue = Annotated[str, StringConstraints(pattern=r"^[^\r\n]{0,1024}$")]  # no header injection


class CallApiParams(Params):
    """Params of `call.api@1`: the one HTTP request to make, checked at submit so a bad target is a 422."""

    endpoint: str = Field(
        max_length=2048,
        pattern=r"^https?://",
        description="http or https URL to call; private and internal addresses are refused unless the "
        "service allows private ones",
    )
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = Field("GET", description="HTTP method")
    headers: dict[HeaderName, HeaderValue] = Field(
        default_factory=dict,
        max_length=MAX_API_HEADERS,
        description="request headers; Host, Content-Length, Transfer-Encoding and Connection are refused",
    )
    body: Any = Field(
        None,
        description=f"request body, sent as JSON (at most {MAX_API_BODY_BYTES} bytes); none with GET or HEAD",
    )
    timeoutSeconds: float = Field(
        15.0,
        gt=0,
        le=60,
        description=f"seconds the whole request may take, of which connecting at most "
        f"{API_CONNECT_TIMEOUT_SECONDS:g}",
    )

    @field_validator("headers")
    @classmethod
    def _no_reserved_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        if reserved := _RESERVED_HEADERS.intersection(name.lower() for name in headers):
            raise ValueError(f"headers may not set {', '.join(sorted(reserved))}")
        return headers

    @model_validator(mode="after")
    def _safe_request(self) -> CallApiParams:
        if self.body is not None and self.method in ("GET", "HEAD"):
            raise ValueError(f"{self.method} requests carry no body")
        if len(json.dumps(self.body)) > MAX_API_BODY_BYTES:
            raise ValueError(f"body is larger than {MAX_API_BODY_BYTES} bytes as JSON")
        if has_app_context():  # at submit time: a URL pointing inside is a 422, not a failed job later
            try:
                check_url(self.endpoint, allow_private=_allow_private())
            except UnsafeURLError as exc:
                raise ValueError(str(exc)) from None
        return self


def _allow_private() -> bool:
    return bool(current_app.config["GPUJOBS_WEBHOOK_ALLOW_PRIVATE"])


def _retry_after_seconds(value: str | None) -> float | None:
    """Honour a numeric Retry-After; the HTTP-date form is rare enough to fall back to backoff."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


@job_definition(
    "call.api",
    1,
    params_model=CallApiParams,
    max_attempts=3,
    timeout_seconds=120,
    concurrency_limit=10,  # be a polite client to whatever the endpoints are
    description="Makes one real, SSRF-guarded HTTP request and returns its status and a bounded body.",
)
def call_api(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Call the endpoint once; 429 and 5xx are retried, other 4xx fail the job at once."""
    method, endpoint = params["method"], params["endpoint"]
    response = send(
        method,
        endpoint,
        allow_private=_allow_private(),
        json_body=params["body"],
        headers=params["headers"],
        connect_timeout_seconds=min(API_CONNECT_TIMEOUT_SECONDS, params["timeoutSeconds"]),
        total_timeout_seconds=params["timeoutSeconds"],
        max_response_bytes=MAX_RESPONSE_BYTES,
    )
    status = response.status_code
    if status == 429 or status >= 500:
        retry_after = _retry_after_seconds(response.headers.get("retry-after"))
        raise TransientError(f"{method} {endpoint} answered {status}", retry_after_seconds=retry_after)
    if 400 <= status < 500:
        raise PermanentError(f"{method} {endpoint} answered {status}")
    content_type = response.headers.get("content-type", "")
    body: Any = response.body.decode("utf-8", errors="replace")
    if "json" in content_type and not response.truncated:
        with contextlib.suppress(ValueError):  # a server that mislabels its body: keep it as text
            body = json.loads(body)
    return {
        "endpoint": endpoint,
        "method": method,
        "statusCode": status,
        "contentType": content_type or None,
        "body": body,
        "sizeBytes": len(response.body),
        "truncated": response.truncated,
        "elapsedMs": response.elapsed_ms,
    }
