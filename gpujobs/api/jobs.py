"""``/v1/jobs`` and ``/v1/definitions``: submit, list, inspect and cancel jobs."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, g, request, url_for
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select

from gpujobs import operations
from gpujobs.api.auth import require_api_key
from gpujobs.api.errors import ApiError
from gpujobs.api.pagination import after_cursor, page, page_size
from gpujobs.definitions.registry import all_definitions
from gpujobs.extensions import db
from gpujobs.jobs import STATUSES
from gpujobs.models import Job, JobEvent
from gpujobs.outbound import UnsafeURLError
from gpujobs.serializers import event_to_dict, job_to_dict

bp = Blueprint("jobs", __name__, url_prefix="/v1")

MAX_EVENTS_PER_PAGE = 1000


class SubmitJob(BaseModel):
    """Body of ``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid")

    definitionKey: str = Field(min_length=1, max_length=100)
    definitionVersion: int = Field(default=1, ge=1, le=1000)
    params: dict[str, Any] = Field(default_factory=dict)
    priority: str | int | None = None
    maxAttempts: int | None = Field(default=None, ge=1, le=100)
    webhookUrl: str | None = Field(default=None, max_length=2000)
    idempotencyKey: str | None = Field(default=None, min_length=1, max_length=200)


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400 that says what is wrong with it."""
    if not request.is_json:
        raise ApiError(415, "Unsupported Media Type", "send a JSON body with Content-Type: application/json")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "Bad Request", "the body must be a JSON object")
    return body


def tenant_job(job_id: str) -> Job:
    """The caller's job, or 404 (also for another tenant's job, which must not be told apart)."""
    try:
        job_uuid = uuid.UUID(job_id)
    except ValueError:
        raise ApiError(404, "Not Found", f"no job {job_id}") from None
    job = db.session.scalar(select(Job).where(Job.id == job_uuid, Job.tenant_id == g.tenant.id))
    if job is None:
        raise ApiError(404, "Not Found", f"no job {job_id}")
    return job


@bp.post("/jobs")
@require_api_key
def submit_job() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Accept a job: 202 once it is durably queued."""
    body = SubmitJob.model_validate(json_body())
    try:
        job = operations.submit(
            g.tenant.id,
            body.definitionKey,
            body.definitionVersion,
            body.params,
            priority=body.priority,
            max_attempts=body.maxAttempts,
            webhook_url=body.webhookUrl,
            idempotency_key=request.headers.get("Idempotency-Key") or body.idempotencyKey,
        )
    except LookupError as exc:
        raise ApiError(422, "Unprocessable Content", str(exc), errors=[{"field": "definitionKey"}]) from None
    except ValidationError:
        raise  # params: answered by the app's handler with each field named
    except UnsafeURLError as exc:
        raise ApiError(422, "Unprocessable Content", str(exc), errors=[{"field": "webhookUrl"}]) from None
    except ValueError as exc:  # priority out of range (pydantic errors are handled by the app)
        raise ApiError(422, "Unprocessable Content", str(exc), errors=[{"field": "priority"}]) from None
    location = url_for("jobs.get_job", job_id=job.id)
    return job_to_dict(job), 202, {"Location": location}


@bp.get("/jobs")
@require_api_key
def list_jobs() -> dict[str, Any]:
    """The caller's jobs, newest first, filtered by ``status`` / ``definitionKey``, cursor-paginated."""
    limit = page_size(request.args.get("limit"))
    query = select(Job).where(Job.tenant_id == g.tenant.id)
    status = request.args.get("status")
    if status is not None:
        if status not in STATUSES:
            raise ApiError(400, "Bad Request", f"status must be one of {', '.join(STATUSES)}")
        query = query.where(Job.status == status)
    if request.args.get("definitionKey"):
        query = query.where(Job.definition_key == request.args["definitionKey"])
    query = after_cursor(query, Job, request.args.get("cursor")).limit(limit + 1)
    return page(list(db.session.scalars(query)), limit, job_to_dict)


@bp.get("/jobs/<job_id>")
@require_api_key
def get_job(job_id: str) -> dict[str, Any]:
    """One job."""
    return job_to_dict(tenant_job(job_id))


@bp.post("/jobs/<job_id>/cancel")
@require_api_key
def cancel_job(job_id: str) -> tuple[dict[str, Any], int]:
    """Ask a job to stop: queued jobs are cancelled at once, running ones move to ``cancelling``."""
    job = tenant_job(job_id)
    status = operations.cancel(job.id, g.tenant.id)
    db.session.expire_all()
    job = tenant_job(job_id)
    return job_to_dict(job), 202 if status == "cancelling" else 200


@bp.get("/jobs/<job_id>/events")
@require_api_key
def job_events(job_id: str) -> dict[str, Any]:
    """The job's timeline, oldest first; ``after`` (an event id) continues a long one."""
    job = tenant_job(job_id)
    after = request.args.get("after", "0")
    if not after.isdigit():
        raise ApiError(400, "Bad Request", "after must be an event id")
    events = db.session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job.id, JobEvent.id > int(after))
        .order_by(JobEvent.id)
        .limit(MAX_EVENTS_PER_PAGE)
    ).all()
    return {"jobId": str(job.id), "events": [event_to_dict(event) for event in events]}


@bp.get("/definitions")
@require_api_key
def list_definitions() -> dict[str, Any]:
    """Every registered job definition and its defaults."""
    return {
        "definitions": [
            {
                "key": d.key,
                "version": d.version,
                "description": d.description,
                "defaultMaxAttempts": d.max_attempts,
                "timeoutSeconds": d.timeout_seconds,
                "concurrencyLimit": d.concurrency_limit,
                "paramsSchema": d.params_model.model_json_schema(),
            }
            for d in all_definitions()
        ]
    }
