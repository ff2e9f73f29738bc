"""Rate limit per API key: a fixed one-minute window counted in Redis (``GPUJOBS_RATE_LIMIT_PER_MINUTE``).

The counter is keyed by the key's SHA-256 digest, never the key. ``INCR`` and ``EXPIRE`` go in one
MULTI pipeline, so every counter expires. A fixed window lets a client burst up to twice the limit
across a window boundary: the price of one round trip per request, and fine for protecting the
service. If Redis cannot be reached the request goes through (logged once a minute): an outage of
the limiter must not become an outage of the API. Every limited answer carries ``RateLimit-Limit``,
``RateLimit-Remaining`` and ``RateLimit-Reset`` (seconds); a 429 adds ``Retry-After``.
"""

from __future__ import annotations

import logging
import math
import time

import redis
from flask import Response, current_app, g

from gpujobs.api.errors import ApiError
from gpujobs.broker import redis_client

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
_last_outage_log = 0.0


def check(key_digest: str) -> None:
    """Count one request of this API key; 429 once the key is over its limit for this window."""
    limit = current_app.config["GPUJOBS_RATE_LIMIT_PER_MINUTE"]
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    reset_seconds = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
    counter = f"gpujobs:ratelimit:{key_digest}:{window}"
    try:
        with redis_client().pipeline(transaction=True) as pipe:
            pipe.incr(counter)
            pipe.expire(counter, 2 * WINDOW_SECONDS)
            count, _ = pipe.execute()
    except redis.RedisError as exc:
        _log_outage(exc)
        return
    g.rate_limit_headers = {
        "RateLimit-Limit": str(limit),
        "RateLimit-Remaining": str(max(0, limit - count)),
        "RateLimit-Reset": str(reset_seconds),
    }
    if count > limit:
        raise ApiError(
            429,
            "Too Many Requests",
            f"this API key may send {limit} requests per minute; retry in {reset_seconds} s",
            headers={"Retry-After": str(reset_seconds)},
        )


def add_headers(response: Response) -> Response:
    """``after_request``: the caller's quota on every answer to a rate-limited request."""
    response.headers.update(g.get("rate_limit_headers", {}))
    return response


def _log_outage(exc: redis.RedisError) -> None:
    global _last_outage_log
    if time.monotonic() - _last_outage_log > WINDOW_SECONDS:
        _last_outage_log = time.monotonic()
        log.warning("rate limit not enforced: Redis unreachable (%s)", type(exc).__name__)
