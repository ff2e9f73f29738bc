"""Rate limit per API key: a fixed one-minute window counted in Redis (``GPUJOBS_RATE_LIMIT_PER_MINUTE``),
in the same round trip as the lookup of the key's cached tenant.

The counter is keyed by the key's SHA-256 digest, never the key, and so is the cached tenant
(``gpujobs.tenants.KEY_CACHE_SECONDS``). One Lua script reads the cached tenant and, if there is one,
counts the request (``INCR`` and ``EXPIRE``, so every counter expires): an authenticated request costs
one Redis round trip and no PostgreSQL query. On a miss the caller looks the key up in PostgreSQL and
``fill`` caches it and counts in one more round trip; a key that is not valid is never counted. A fixed
window lets a client burst up to twice the limit across a window boundary: the price of one round trip
per request, and fine for protecting the service. If Redis cannot be reached the request goes through
(logged once a minute): an outage of the limiter must not become an outage of the API. Every limited
answer carries ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` (seconds); a 429 adds
``Retry-After``.
"""

from __future__ import annotations

import logging
import math
import time

import redis
from flask import Response, current_app, g

from gpujobs.api.errors import ApiError
from gpujobs.broker import redis_client, run_script
from gpujobs.tenants import KEY_CACHE_SECONDS, key_cache_name

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
_last_outage_log = 0.0

# KEYS: the key's cached tenant, its counter for this window. ARGV: the counter's lifetime (seconds).
# Returns {tenant, count} when the tenant is cached (the request counted), else {} (nothing counted).
_LOOKUP_AND_COUNT = """
local tenant = redis.call('GET', KEYS[1])
if not tenant then return {} end
local count = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return {tenant, count}
"""


def lookup_and_count(digest: str) -> tuple[str | None, int | None]:
    """The cached tenant of this key digest and, if cached, this request's count in the window.

    ``(None, None)``: not cached (look the key up, then ``fill``), or Redis unreachable (the request
    goes through unlimited; ``fill`` will fail the same way and say nothing more).
    """
    try:
        found = run_script(
            _LOOKUP_AND_COUNT, [key_cache_name(digest), _counter(digest)], [2 * WINDOW_SECONDS]
        )
    except redis.RedisError as exc:
        _log_outage(exc)
        return None, None
    if not found:
        return None, None
    return found[0].decode(), int(found[1])


def fill(digest: str, tenant: str) -> int | None:
    """Cache a key's tenant (looked up in PostgreSQL) and count this request; None if Redis is away."""
    counter = _counter(digest)
    try:
        with redis_client().pipeline(transaction=True) as pipe:
            pipe.set(key_cache_name(digest), tenant, ex=KEY_CACHE_SECONDS)
            pipe.incr(counter)
            pipe.expire(counter, 2 * WINDOW_SECONDS)
            _, count, _ = pipe.execute()
    except redis.RedisError as exc:
        _log_outage(exc)
        return None
    return int(count)


def enforce(count: int | None) -> None:
    """Set the quota headers of this request's ``count``; 429 once the key is over its limit."""
    if count is None:  # Redis unreachable: not counted, not limited
        return
    limit = current_app.config["GPUJOBS_RATE_LIMIT_PER_MINUTE"]
    now = time.time()
    reset_seconds = max(1, math.ceil((int(now // WINDOW_SECONDS) + 1) * WINDOW_SECONDS - now))
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


def _counter(digest: str) -> str:
    """This window's counter; ``{digest}`` is a hash tag, so it shares a cluster slot with the cache entry."""
    return f"gpujobs:ratelimit:{{{digest}}}:{int(time.time() // WINDOW_SECONDS)}"


def _log_outage(exc: redis.RedisError) -> None:
    global _last_outage_log
    if time.monotonic() - _last_outage_log > WINDOW_SECONDS:
        _last_outage_log = time.monotonic()
        log.warning("rate limit not enforced: Redis unreachable (%s)", type(exc).__name__)
