"""Request parsing for views: JSON bodies and query strings through pydantic models, errors as problems.

Malformed JSON is a 400; a well-formed request with invalid values is a 422 naming each field. Input
that PostgreSQL cannot store (NUL characters, lone surrogates, NaN/Infinity) is refused here, so a
hostile string can never reach the database and surface as a 500.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TypeVar

from flask import g, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from gpujobs.api.errors import ApiError
from gpujobs.exceptions import InvalidField

Model = TypeVar("Model", bound=BaseModel)

# Deep enough for any real document, shallow enough that walking it never hits the recursion limit.
MAX_JSON_DEPTH = 64


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def unstorable(value: str) -> str | None:
    """Why PostgreSQL would refuse this text (NUL or a lone surrogate), or None when it is fine."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def _check_storable(value: Any, path: tuple[str, ...], depth: int = 0) -> None:
    """Raise a 422 naming the first string (or key) PostgreSQL could not store."""
    if depth > MAX_JSON_DEPTH:
        raise InvalidField(".".join(path) or "body", f"nesting deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        reason = unstorable(value)
        if reason:
            raise InvalidField(".".join(path) or "body", reason)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_storable(key, (*path, key), depth + 1)
            _check_storable(item, (*path, key), depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_storable(item, (*path, str(index)), depth + 1)


def _body_bytes() -> bytes:
    """The raw body; 413 above ``MAX_CONTENT_LENGTH``, also for a chunked body without Content-Length.

    Werkzeug stops reading a chunked body at the limit without complaint (it only raises on a further
    read), so a body that fills the limit is probed for one more byte.
    """
    raw = request.get_data(cache=True)
    limit = request.max_content_length
    at_limit = request.content_length is None and limit is not None and len(raw) >= limit
    if at_limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return raw


def json_object(*, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object (parsed once per request); 415/400/413/422 when it is not usable.

    ``optional``: an empty body counts as ``{}`` (for actions whose body has only defaults).
    """
    if "json_body" in g:
        return g.json_body
    raw = _body_bytes()
    if optional and not raw.strip():
        g.json_body = {}
        return g.json_body
    if not request.is_json:
        raise ApiError(415, "Unsupported Media Type", "send a JSON body with Content-Type: application/json")
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        raise ApiError(400, "Bad Request", "the body is not valid JSON: it is nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ApiError(400, "Bad Request", f"the body is not valid JSON: {_reason(exc)}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Bad Request", "the body must be a JSON object")
    _check_storable(body, ())
    g.json_body = body
    return body


def _reason(exc: ValueError) -> str:
    """Why the body did not parse, without Python's advice to its own programmers."""
    if "int_max_str_digits" in str(exc):  # Python's guard against quadratic int parsing
        return f"a number has more than {sys.get_int_max_str_digits()} digits"
    return str(exc)[:200]


def parse_body(model: type[Model], *, optional: bool = False) -> Model:
    """The JSON body validated by ``model`` (unknown fields are refused when the model forbids extras)."""
    try:
        return model.model_validate(json_object(optional=optional))
    except ValidationError as exc:
        raise InvalidField.from_validation(exc) from None


def parse_query(model: type[Model]) -> Model:
    """The query string validated by ``model`` (first value of each parameter; NULs are already refused)."""
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise InvalidField.from_validation(exc) from None


def reject_unstorable_query() -> None:
    """``before_request`` guard: no view, documented or not, sees a query string PostgreSQL would refuse."""
    for name, value in request.args.items(multi=True):
        reason = unstorable(name) or unstorable(value)
        if reason:
            raise InvalidField(name, reason)
