"""Errors as ``application/problem+json`` (RFC 9457): bad input is a 4xx that names the field, never a 500.

The one mapping from the exception tree to HTTP: views raise or let through the domain's errors and
never translate them.
"""

from __future__ import annotations

import logging
from typing import Any

import werkzeug.exceptions
from flask import Flask, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from gpujobs import videos
from gpujobs.exceptions import Conflict, GpuJobsError, InvalidField, LimitReached, NotFound

log = logging.getLogger(__name__)

# Stands in for a path segment to find the route a malformed id was meant for.
_ANY_ID = "00000000-0000-4000-8000-000000000000"

PROBLEM_CONTENT_TYPE = "application/problem+json"
# ``app.extensions`` key: (path prefix, handler) of pages that answer an unrouted path under the prefix
# with a page of their own instead of a problem document (the dashboard's ``/ui``).
UNROUTED_PAGES = "gpujobs.unrouted_pages"


class ApiError(GpuJobsError):
    """An answer about the HTTP request itself (credentials, rate limit, media type, malformed JSON).

    The domain's errors carry no status; this one does, and ``headers`` go on the response.
    """

    def __init__(
        self, status: int, title: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra
        self.headers = headers or {}


# How each domain error answers; the most specific class in an error's MRO wins.
STATUSES: dict[type[GpuJobsError], tuple[int, str]] = {
    NotFound: (404, "Not Found"),
    Conflict: (409, "Conflict"),
    InvalidField: (422, "Unprocessable Content"),
    videos.UnsupportedVideo: (415, "Unsupported Media Type"),
    videos.VideoTooLarge: (413, "Content Too Large"),
}
#: Every error class that has an answer (the API sends it as problem+json, the dashboard as a page).
ANSWERED: tuple[type[GpuJobsError], ...] = (ApiError, *STATUSES)


def problem_of(exc: GpuJobsError) -> ApiError:
    """The answer to an error of ``ANSWERED``; for invalid input it names each field and why (422)."""
    if isinstance(exc, ApiError):
        return exc
    status, title = next(STATUSES[cls] for cls in type(exc).__mro__ if cls in STATUSES)
    if isinstance(exc, InvalidField):
        fields = ", ".join(dict.fromkeys(field for field, _ in exc.errors))
        errors = [{"field": field, "message": message} for field, message in exc.errors]
        return ApiError(status, title, f"invalid value for: {fields}", errors=errors)
    if isinstance(exc, LimitReached):
        return ApiError(status, title, str(exc), limitName=exc.name, limit=exc.limit, used=exc.used)
    return ApiError(status, title, str(exc))


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    """A problem+json response."""
    response = jsonify({"type": "about:blank", "title": title, "status": status, "detail": detail, **extra})
    response.status_code = status
    response.content_type = PROBLEM_CONTENT_TYPE
    return response


def register_error_handlers(app: Flask) -> None:
    """Turn every error into a problem document; unexpected ones are logged and answered 500 plainly."""

    def _answer(exc: GpuJobsError) -> Response:
        answer = problem_of(exc)
        response = problem(answer.status, answer.title, answer.detail, **answer.extra)
        response.headers.update(answer.headers)
        return response

    for error_class in ANSWERED:
        app.register_error_handler(error_class, _answer)

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError) -> Response:
        return _answer(InvalidField.from_validation(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> ResponseReturnValue:
        unrouted = isinstance(exc, werkzeug.exceptions.NotFound) and request.url_rule is None
        pages = app.extensions.get(UNROUTED_PAGES)
        if unrouted and pages and f"{request.path}/".startswith(f"{pages[0]}/"):
            return pages[1](exc)  # a browser's page, in the dashboard's own look
        detail = _no_route() if unrouted else exc.description
        response = problem(exc.code or 500, exc.name, detail or exc.name)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(OperationalError)
    def _database_down(exc: OperationalError) -> Response:
        log.warning("database unavailable: %s", type(exc.orig).__name__)
        response = problem(503, "Service Unavailable", "the database is unreachable; try again shortly")
        response.headers["Retry-After"] = "5"
        return response


def _no_route() -> str:
    """Why no route answered: a path segment that is not an id where a route takes one (``/v1/jobs/x``),
    said as such, rather than Werkzeug's advice to check the spelling."""
    adapter = current_app.url_map.bind("localhost")
    segments = request.path.split("/")
    for index, segment in enumerate(segments):
        if not segment:
            continue
        candidate = "/".join([*segments[:index], _ANY_ID, *segments[index + 1 :]])
        try:
            adapter.match(candidate, method=request.method)
        except werkzeug.exceptions.HTTPException:  # no route either (or another method's)
            continue
        return f"{segment!r} is not an id: ids are UUIDs such as {_ANY_ID}"
    return f"no route for {request.method} {request.path}"
