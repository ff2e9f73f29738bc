"""Bearer-key authentication for API views: ``g.tenant`` is the caller's tenant."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import g, request

from gpujobs.api.errors import ApiError
from gpujobs.auth import authenticate

View = TypeVar("View", bound=Callable[..., Any])


def require_api_key(view: View) -> View:
    """Reject requests without a valid ``Authorization: Bearer <key>`` (401 with a challenge)."""

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        tenant = authenticate(key.strip()) if scheme.lower() == "bearer" and key.strip() else None
        if tenant is None:
            raise ApiError(
                401,
                "Unauthorized",
                "a valid API key is required: Authorization: Bearer <key>",
            )
        g.tenant = tenant
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]
