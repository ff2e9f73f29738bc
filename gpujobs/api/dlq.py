"""``/v1/dlq``: jobs that exhausted their attempts, and their redrive."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, g, request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from gpujobs import operations
from gpujobs.api.auth import require_api_key
from gpujobs.api.errors import ApiError
from gpujobs.api.pagination import after_cursor, page, page_size
from gpujobs.extensions import db
from gpujobs.models import DeadLetter, Job
from gpujobs.serializers import dead_letter_to_dict, job_to_dict

bp = Blueprint("dlq", __name__, url_prefix="/v1/dlq")


class Redrive(BaseModel):
    """Body of ``POST /v1/dlq/{id}/retry`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    maxAttempts: int | None = Field(default=None, ge=1, le=100)


def tenant_letter(letter_id: str) -> DeadLetter:
    """The caller's dead letter, or 404."""
    try:
        letter_uuid = uuid.UUID(letter_id)
    except ValueError:
        raise ApiError(404, "Not Found", f"no dead letter {letter_id}") from None
    letter = db.session.scalar(
        select(DeadLetter).where(DeadLetter.id == letter_uuid, DeadLetter.tenant_id == g.tenant.id)
    )
    if letter is None:
        raise ApiError(404, "Not Found", f"no dead letter {letter_id}")
    return letter


@bp.get("")
@require_api_key
def list_dead_letters() -> dict[str, Any]:
    """Dead letters not yet redriven, newest first; filter by ``definitionKey``."""
    limit = page_size(request.args.get("limit"))
    query = select(DeadLetter).where(DeadLetter.tenant_id == g.tenant.id, DeadLetter.redriven_at.is_(None))
    if request.args.get("definitionKey"):
        query = query.where(DeadLetter.definition_key == request.args["definitionKey"])
    query = after_cursor(query, DeadLetter, request.args.get("cursor")).limit(limit + 1)
    return page(list(db.session.scalars(query)), limit, dead_letter_to_dict)


@bp.get("/<letter_id>")
@require_api_key
def get_dead_letter(letter_id: str) -> dict[str, Any]:
    """One dead letter with its job."""
    letter = tenant_letter(letter_id)
    return {**dead_letter_to_dict(letter), "job": job_to_dict(db.session.get(Job, letter.job_id))}


@bp.post("/<letter_id>/retry")
@require_api_key
def retry_dead_letter(letter_id: str) -> tuple[dict[str, Any], int]:
    """Redrive: the job is queued again with a fresh attempt budget."""
    letter = tenant_letter(letter_id)
    body = Redrive.model_validate(request.get_json(silent=True) or {})
    job_id = operations.redrive(letter.id, g.tenant.id, body.maxAttempts)
    if job_id is None:
        raise ApiError(409, "Conflict", "this dead letter was already redriven")
    return job_to_dict(db.session.get(Job, job_id)), 202
