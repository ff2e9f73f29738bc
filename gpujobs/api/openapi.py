"""OpenAPI 3.1 from the views themselves: ``@operation(...)`` metadata plus the pydantic models they use.

Views declare their request, query and response models (the same models they validate with), and
:func:`build_spec` walks ``app.url_map`` to assemble the document served at ``/openapi.json``, so it
cannot drift from what the views accept. Error answers (problem+json), the bearer scheme, path
parameters and the ``Idempotency-Key`` header of ``@idempotent`` views are added here, once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from werkzeug.routing import Rule

from gpujobs.api import schemas
from gpujobs.api.errors import PROBLEM_CONTENT_TYPE
from gpujobs.api.idempotency import HEADER, KEY_PATTERN

View = TypeVar("View", bound=Callable[..., Any])

OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"
PROBLEM_REF = {"$ref": REF_TEMPLATE.format(model="Problem")}
ERROR_TITLES = {
    400: "Malformed request (the body is not valid JSON)",
    401: "Missing or invalid API key",
    404: "No such resource (another tenant's ids answer 404 too)",
    409: "Conflict (Idempotency-Key: the first request with this key is still running)",
    413: "Body larger than GPUJOBS_MAX_BODY_BYTES",
    415: "The body is not application/json",
    422: "Invalid values; errors[] names each field",
    429: "Over the API key's rate limit; see Retry-After",
    503: "PostgreSQL is unreachable; see Retry-After",
}
CONVERTER_SCHEMAS = {"uuid": {"type": "string", "format": "uuid"}, "int": {"type": "integer", "minimum": 0}}
RULE_VARIABLE = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")  # werkzeug's <converter(args):name>


@dataclass(frozen=True)
class Operation:
    """What one route documents: summary, tag, request body / query models, responses by status."""

    summary: str
    tag: str
    request: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel] | str] = field(default_factory=dict)
    auth: bool = True
    content_type: str = "application/json"


def operation(
    *,
    summary: str,
    tag: str,
    request: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    responses: dict[int, type[BaseModel] | str] | None = None,
    auth: bool = True,
    content_type: str = "application/json",
) -> Callable[[View], View]:
    """Attach OpenAPI metadata to a view function (read by :func:`build_spec`)."""

    def decorate(view: View) -> View:
        # mypy does not model attributes set on functions (python/mypy#2087).
        view.openapi_operation = Operation(  # type: ignore[attr-defined]
            summary, tag, request, query, responses or {}, auth, content_type
        )
        return view

    return decorate


# Views defined outside the API package (gpujobs.health), documented here rather than decorated there.
EXTERNAL_OPERATIONS = {
    "health.health": Operation(
        "Liveness: the process answers", "probes", responses={200: schemas.Health}, auth=False
    ),
    "health.ready": Operation(
        "Readiness: PostgreSQL and Redis answer (503 names the one that does not)",
        "probes",
        responses={200: schemas.Readiness, 503: schemas.Readiness},
        auth=False,
    ),
}


def documented(app: Flask) -> list[tuple[Rule, Any, Operation | None]]:
    """Every route with its view and its operation (None when undocumented), in path order."""
    routes = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        view = app.view_functions[rule.endpoint]
        op = getattr(view, "openapi_operation", None) or EXTERNAL_OPERATIONS.get(rule.endpoint)
        routes.append((rule, view, op))
    return routes


def undocumented_routes(app: Flask) -> list[str]:
    """``/v1`` routes whose view has no ``@operation`` (a test keeps this empty)."""
    return [rule.rule for rule, _, op in documented(app) if op is None and rule.rule.startswith("/v1")]


def build_spec(app: Flask, *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI document of every documented route of ``app``."""
    routes = [(rule, view, op) for rule, view, op in documented(app) if op is not None]
    models: set[tuple[type[BaseModel], JsonSchemaMode]] = {(schemas.Problem, "serialization")}
    for _, _, op in routes:
        models |= {(m, "serialization") for m in op.responses.values() if isinstance(m, type)}
        models |= {(op.request, "validation")} if op.request is not None else set()
    refs, document = models_json_schema(
        sorted(models, key=lambda m: (m[0].__name__, m[1])), ref_template=REF_TEMPLATE
    )
    components = document.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for rule, view, op in routes:
        path, parameters = _path(rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation_id = f"{method.lower()}_{rule.endpoint.replace('.', '_')}"
            paths.setdefault(path, {})[method.lower()] = _operation(
                op, operation_id, view, parameters, refs, components
            )
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "description": "API key"}},
        },
    }


def _path(rule: Rule) -> tuple[str, list[dict[str, Any]]]:
    """``/v1/jobs/<uuid:job_id>`` → ``/v1/jobs/{job_id}`` and its path parameters."""
    parameters = []
    for converter, name in RULE_VARIABLE.findall(rule.rule):
        schema = CONVERTER_SCHEMAS.get(converter, {"type": "string"})
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    return RULE_VARIABLE.sub(lambda match: f"{{{match[2]}}}", rule.rule), parameters


def _operation(
    op: Operation,
    operation_id: str,
    view: Any,
    path_parameters: list[dict[str, Any]],
    refs: dict[Any, Any],
    components: dict[str, Any],
) -> dict[str, Any]:
    parameters = [*path_parameters, *_query_parameters(op.query)]
    if getattr(view, "idempotent", False):
        parameters.append(_idempotency_header())
    spec: dict[str, Any] = {
        "summary": op.summary,
        "description": (view.__doc__ or "").strip(),
        "operationId": operation_id,
        "tags": [op.tag],
        "parameters": parameters,
        "security": [{"bearerAuth": []}] if op.auth else [],
    }
    errors = {503}
    if op.request is not None:
        reference = refs[(op.request, "validation")]
        body_schema = _resolve(reference, components)
        media: dict[str, Any] = {"schema": reference}
        if body_schema.get("examples"):  # the model's own, shown (and sent by "try it") by viewers
            media["example"] = body_schema["examples"][0]
        required = bool(body_schema.get("required"))
        spec["requestBody"] = {"required": required, "content": {op.content_type: media}}
        errors |= {400, 413, 415, 422}
    if op.query is not None:
        errors.add(422)
    if path_parameters:
        errors.add(404)
    if op.auth:
        errors |= {401, 429}
    if getattr(view, "idempotent", False):
        errors |= {409, 422}
    spec["responses"] = _responses(op, errors, refs)
    return spec


def _responses(op: Operation, errors: set[int], refs: dict[Any, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in sorted(set(op.responses) | errors):
        declared = op.responses.get(status)
        description = declared if isinstance(declared, str) else ERROR_TITLES.get(status, "OK")
        response: dict[str, Any] = {"description": description}
        if isinstance(declared, type):
            response["description"] = (declared.__doc__ or declared.__name__).strip().splitlines()[0]
            response["content"] = {"application/json": {"schema": refs[(declared, "serialization")]}}
        elif status >= 400:
            response["content"] = {PROBLEM_CONTENT_TYPE: {"schema": PROBLEM_REF}}
        responses[str(status)] = response
    return responses


def _query_parameters(model: type[BaseModel] | None) -> list[dict[str, Any]]:
    """One parameter per field; optional ones drop the ``null`` branch (a query string has no null).

    A field typed by a status enum is written out in place, so the parameter's ``enum`` is there to read.
    """
    if model is None:
        return []
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    defs = {name: _untitled(d) for name, d in schema.get("$defs", {}).items()}
    required = set(schema.get("required", []))
    parameters = []
    for name, prop in schema.get("properties", {}).items():
        branches = [_resolve(b, defs) for b in prop.get("anyOf", []) if b != {"type": "null"}]
        value = {k: v for k, v in prop.items() if k not in ("title", "description", "anyOf")}
        if len(branches) == 1:
            value |= branches[0]
        elif branches:
            value["anyOf"] = branches
        if value.get("default", 0) is None:
            del value["default"]
        parameters.append(
            {"name": name, "in": "query", "required": name in required, "schema": value}
            | ({"description": prop["description"]} if "description" in prop else {})
        )
    return parameters


def _idempotency_header() -> dict[str, Any]:
    return {
        "name": HEADER,
        "in": "header",
        "required": False,
        "description": "Retry-safe submission: the same key and body replay the first answer (for 24 h).",
        "schema": {"type": "string", "pattern": KEY_PATTERN, "minLength": 1, "maxLength": 200},
    }


def _untitled(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k not in ("title", "description")}


def _resolve(reference: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    return components[reference["$ref"].rsplit("/", 1)[-1]] if "$ref" in reference else reference
