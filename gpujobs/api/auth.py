"""Bearer-key authentication for API views: ``g.tenant`` is the caller's tenant, every query scopes on it.

Keys are looked up by SHA-256 digest and compared in constant time (``gpujobs.tenants``); each
authenticated request then counts against the key's rate limit.
"""

from __future__ import annotations

from collections.abc import Callable
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


def authenticate_request() -> None:
    """Set ``g.tenant`` from the bearer key and count the request, or raise 401 / 429."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    tenant = authenticate(key) if scheme.lower() == "bearer" and key else None
    if tenant is None:
        raise ApiError(
            401,
            "Unauthorized",
            "a valid API key is required: Authorization: Bearer <key>",
            headers={"WWW-Authenticate": 'Bearer realm="gpujobs"'},
        )
    g.tenant = tenant
    ratelimit.check(key_digest(key))
