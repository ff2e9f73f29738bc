"""Bearer-key authentication for API views: ``g.tenant`` is the caller's tenant, every query scopes on it.

Keys are looked up by SHA-256 digest and compared in constant time (``gpujobs.tenants``); each
authenticated request then counts against the key's rate limit. The key's tenant is cached in Redis and
read in the rate limit's round trip (``gpujobs.api.ratelimit``), so a request with a known key makes no
PostgreSQL query to authenticate: ``g.tenant`` is a ``Caller`` (the tenant's id and name), not a row.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import ParamSpec, TypeVar

from flask import g, request

from gpujobs.api import ratelimit
from gpujobs.api.errors import ApiError
from gpujobs.tenants import authenticate, key_digest

P = ParamSpec("P")
R = TypeVar("R")


def require_api_key(view: Callable[P, R]) -> Callable[P, R]:
    """Refuse requests without a valid ``Authorization: Bearer <key>`` (401) or over its limit (429)."""

    @wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        authenticate_request()
        return view(*args, **kwargs)

    return wrapped


@dataclass(frozen=True)
class Caller:
    """The tenant an API request acts for: what views need of it (every query scopes on ``id``)."""

    id: uuid.UUID
    name: str

    def cached(self) -> str:
        """Its form in the key cache."""
        return f"{self.id} {self.name}"

    @classmethod
    def from_cached(cls, value: str) -> Caller:
        tenant_id, _, name = value.partition(" ")
        return cls(uuid.UUID(tenant_id), name)


def authenticate_request() -> None:
    """Set ``g.tenant`` from the bearer key and count the request, or raise 401 / 429."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise _unauthorized()
    digest = key_digest(key)
    cached, count = ratelimit.lookup_and_count(digest)
    if cached is not None:
        g.tenant = Caller.from_cached(cached)
    else:
        tenant = authenticate(key)
        if tenant is None:
            raise _unauthorized()
        g.tenant = Caller(tenant.id, tenant.name)
        count = ratelimit.fill(digest, g.tenant.cached())
    ratelimit.enforce(count)


def _unauthorized() -> ApiError:
    return ApiError(
        401,
        "Unauthorized",
        "a valid API key is required: Authorization: Bearer <key>",
        headers={"WWW-Authenticate": 'Bearer realm="gpujobs"'},
    )
