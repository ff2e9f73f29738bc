"""Errors as ``application/problem+json`` (RFC 9457): bad input is a 4xx that names the field, never a 500."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"


class ApiError(Exception):
    """An error the API reports to the client as a problem document (``headers`` go on the response)."""

    def __init__(
        self, status: int, title: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra
        self.headers = headers or {}


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    """A problem+json response."""
    response = jsonify({"type": "about:blank", "title": title, "status": status, "detail": detail, **extra})
    response.status_code = status
    response.content_type = PROBLEM_CONTENT_TYPE
    return response


def unprocessable(field: str, message: str) -> ApiError:
    """A 422 naming one invalid field (the same shape as pydantic's errors)."""
    return ApiError(
        422,
        "Unprocessable Content",
        f"invalid value for: {field}",
        errors=[{"field": field, "message": message}],
    )


def validation_problem(exc: ValidationError, prefix: tuple[str, ...] = ()) -> ApiError:
    """422 listing each invalid field by its dotted path (``params.numbers.0``)."""
    errors = [
        {"field": ".".join(str(part) for part in (*prefix, *error["loc"])) or "body", "message": error["msg"]}
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    fields = ", ".join(dict.fromkeys(error["field"] for error in errors))
    return ApiError(422, "Unprocessable Content", f"invalid value for: {fields}", errors=errors)


def register_error_handlers(app: Flask) -> None:
    """Turn every error into a problem document; unexpected ones are logged and answered 500 plainly."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        response = problem(exc.status, exc.title, exc.detail, **exc.extra)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError) -> Response:
        return _api_error(validation_problem(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        response = problem(exc.code or 500, exc.name, exc.description or exc.name)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(OperationalError)
    def _database_down(exc: OperationalError) -> Response:
        log.warning("database unavailable: %s", type(exc.orig).__name__)
        response = problem(503, "Service Unavailable", "the database is unreachable; try again shortly")
        response.headers["Retry-After"] = "5"
        return response
