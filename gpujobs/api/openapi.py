"""OpenAPI metadata on views: ``@operation(...)`` records what the spec generator needs.

Views declare their request and response models (the same pydantic models they validate with), so
the document served at ``/openapi.json`` cannot drift from what the views accept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

View = TypeVar("View", bound=Callable[..., Any])


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
    """Attach OpenAPI metadata to a view function (read by the spec generator)."""

    def decorate(view: View) -> View:
        view.openapi_operation = Operation(  # type: ignore[attr-defined]
            summary, tag, request, query, responses or {}, auth, content_type
        )
        return view

    return decorate
