"""``/v1/dlq``: jobs that exhausted their attempts, and their redrive."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, g
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Select, select

from gpujobs import operations, resources
from gpujobs.api import schemas
from gpujobs.api.auth import require_api_key
from gpujobs.api.openapi import operation
from gpujobs.api.pagination import PageQuery, after_cursor, page
from gpujobs.api.validation import parse_body, parse_query
from gpujobs.exceptions import NotFound
from gpujobs.extensions import db
from gpujobs.models import DeadLetter, Job

bp = Blueprint("dlq", __name__, url_prefix="/v1/dlq")

TAG = "dlq"
DEFAULT_DLQ_PAGE_SIZE = 100
MAX_DLQ_PAGE_SIZE = 1000
MAX_DLQ_OFFSET = 1_000_000  # a bound on the rows one request may make PostgreSQL skip


class Redrive(BaseModel):
    """Body of ``POST /v1/dlq/{id}/retry`` (optional): attempts granted, default the definition's."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"maxAttempts": 5}]})

    maxAttempts: int | None = Field(default=None, ge=1, le=100)


class DeadLetterQuery(PageQuery):
    """Filters and paging of ``GET /v1/dlq``: the Job Server's ``limit`` and ``offset``, or the cursor."""

    limit: int = Field(DEFAULT_DLQ_PAGE_SIZE, ge=1, le=MAX_DLQ_PAGE_SIZE, description="items per page")
    offset: int = Field(
        0,
        ge=0,
        le=MAX_DLQ_OFFSET,
        description="items to skip (after the cursor, if one is given); slower at depth, since PostgreSQL "
        "reads every skipped row: prefer nextCursor",
    )
    definitionKey: str | None = Field(None, min_length=1, max_length=100)


def tenant_letter(letter_id: str | uuid.UUID) -> DeadLetter:
    """The caller's dead letter (NotFound also for another tenant's)."""
    try:
        letter_uuid = letter_id if isinstance(letter_id, uuid.UUID) else uuid.UUID(letter_id)
    except ValueError:
        raise NotFound(f"no dead letter {letter_id}") from None
    letter = db.session.scalar(
        select(DeadLetter).where(DeadLetter.id == letter_uuid, DeadLetter.tenant_id == g.tenant.id)
    )
    if letter is None:
        raise NotFound(f"no dead letter {letter_id}")
    return letter


@bp.get("")
@operation(
    summary="List dead letters, newest first",
    tag=TAG,
    query=DeadLetterQuery,
    responses={200: schemas.DeadLetterPage},
)
@require_api_key
def list_dead_letters() -> dict[str, Any]:
    """Dead letters not yet redriven; filter by ``definitionKey``, page by ``cursor`` or ``offset``."""
    args = parse_query(DeadLetterQuery)
    query = after_cursor(dead_letters_query(g.tenant.id, args), DeadLetter, args.cursor)
    query = query.offset(args.offset).limit(args.limit + 1)
    return page(list(db.session.scalars(query)), args.limit, resources.DeadLetter.json_of)


def dead_letters_query(tenant_id: uuid.UUID, args: DeadLetterQuery) -> Select[Any]:
    """A tenant's dead letters not yet redriven, filtered (the API and the dashboard list the same rows)."""
    query = select(DeadLetter).where(DeadLetter.tenant_id == tenant_id, DeadLetter.redriven_at.is_(None))
    if args.definitionKey is not None:
        query = query.where(DeadLetter.definition_key == args.definitionKey)
    return query


@bp.get("/<uuid:letter_id>")
@operation(summary="Get a dead letter with its job", tag=TAG, responses={200: schemas.DeadLetterDetail})
@require_api_key
def get_dead_letter(letter_id: uuid.UUID) -> dict[str, Any]:
    """One dead letter with its job."""
    letter = tenant_letter(letter_id)
    job = resources.Job.json_of(db.session.get(Job, letter.job_id))
    return {**resources.DeadLetter.json_of(letter), "job": job}


@bp.post("/<uuid:letter_id>/retry")
@operation(
    summary="Redrive a dead letter",
    tag=TAG,
    request=Redrive,
    responses={202: resources.Job, 409: "already redriven"},
)
@require_api_key
def retry_dead_letter(letter_id: uuid.UUID) -> tuple[dict[str, Any], int]:
    """The job is queued again with a fresh attempt budget (an empty body is fine)."""
    body = parse_body(Redrive, optional=True)
    job_id = operations.redrive(letter_id, g.tenant.id, body.maxAttempts)
    return resources.Job.json_of(db.session.get(Job, job_id)), 202
