"""``/v1/jobs`` and ``/v1/definitions``: submit, list, inspect and cancel jobs."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, g, url_for
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Select, select

from gpujobs import operations, resources, webhooks
from gpujobs.api import schemas
from gpujobs.api.auth import require_api_key
from gpujobs.api.fields import Priority, WebhookUrl
from gpujobs.api.idempotency import KEY_PATTERN, current_key, idempotent, job_key_conflicts
from gpujobs.api.openapi import operation
from gpujobs.api.pagination import PageQuery, after_cursor, page
from gpujobs.api.validation import parse_body, parse_query
from gpujobs.exceptions import NotFound
from gpujobs.extensions import db
from gpujobs.models import Job, JobEvent
from gpujobs.registry import all_definitions
from gpujobs.states import JobStatus

bp = Blueprint("jobs", __name__, url_prefix="/v1")

TAG = "jobs"
MAX_EVENTS_PER_PAGE = 1000
POSTGRES_BIGINT_MAX = 2**63 - 1


class SubmitJob(BaseModel):
    """Body of ``POST /v1/jobs``; ``params`` are validated by the definition's own model."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "definitionKey": "compute.math",
                    "definitionVersion": 1,
                    "params": {"operation": "sum", "numbers": [1, 2, 3]},
                    "priority": "high",
                }
            ]
        },
    )

    definitionKey: str = Field(min_length=1, max_length=100)
    definitionVersion: int = Field(default=1, ge=1, le=1000)
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = None
    maxAttempts: int | None = Field(default=None, ge=1, le=100)
    webhookUrl: WebhookUrl = None
    webhookHeaders: webhooks.WebhookHeaders | None = None
    idempotencyKey: str | None = Field(
        default=None, pattern=KEY_PATTERN, description="same as the Idempotency-Key header"
    )


class JobListQuery(PageQuery):
    """Filters of ``GET /v1/jobs``."""

    status: resources.JobStatus | None = None
    definitionKey: str | None = Field(None, min_length=1, max_length=100)


class EventsQuery(BaseModel):
    """``after``: the last event id already seen (0 from the start)."""

    model_config = ConfigDict(extra="ignore")

    after: int = Field(0, ge=0, le=POSTGRES_BIGINT_MAX)


def tenant_job(job_id: str | uuid.UUID) -> Job:
    """The caller's job; NotFound also for another tenant's job, which must not be told apart."""
    try:
        job_uuid = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(job_id)
    except ValueError:
        raise NotFound(f"no job {job_id}") from None
    job = db.session.scalar(select(Job).where(Job.id == job_uuid, Job.tenant_id == g.tenant.id))
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


@bp.post("/jobs")
@operation(summary="Submit a job", tag=TAG, request=SubmitJob, responses={202: resources.Job})
@require_api_key
@idempotent
def submit_job() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Accept a job: 202 once it is durably queued."""
    body = parse_body(SubmitJob)
    with job_key_conflicts():
        options = operations.JobOptions(
            priority=body.priority,
            max_attempts=body.maxAttempts,
            webhook_url=body.webhookUrl,
            webhook_headers=body.webhookHeaders,
            idempotency_key=current_key(),
        )
        job = operations.submit(g.tenant.id, body.definitionKey, body.definitionVersion, body.params, options)
    return resources.Job.json_of(job), 202, {"Location": url_for("jobs.get_job", job_id=job.id)}


@bp.get("/jobs")
@operation(summary="List jobs, newest first", tag=TAG, query=JobListQuery, responses={200: schemas.JobPage})
@require_api_key
def list_jobs() -> dict[str, Any]:
    """The caller's jobs filtered by ``status`` / ``definitionKey``, cursor-paginated."""
    args = parse_query(JobListQuery)
    query = after_cursor(jobs_query(g.tenant.id, args), Job, args.cursor).limit(args.limit + 1)
    return page(list(db.session.scalars(query)), args.limit, resources.Job.json_of)


def jobs_query(tenant_id: uuid.UUID, args: JobListQuery) -> Select[Any]:
    """A tenant's jobs with the list filters applied (the API and the dashboard list the same rows)."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if args.status is not None:
        query = query.where(Job.status == args.status)
    if args.definitionKey is not None:
        query = query.where(Job.definition_key == args.definitionKey)
    return query


@bp.get("/jobs/<uuid:job_id>")
@operation(summary="Get a job", tag=TAG, responses={200: resources.Job})
@require_api_key
def get_job(job_id: uuid.UUID) -> dict[str, Any]:
    """One job."""
    return resources.Job.json_of(tenant_job(job_id))


@bp.post("/jobs/<uuid:job_id>/cancel")
@operation(
    summary="Cancel a job",
    tag=TAG,
    responses={200: resources.Job, 202: resources.Job},
)
@require_api_key
def cancel_job(job_id: uuid.UUID) -> tuple[dict[str, Any], int]:
    """Queued jobs cancel at once (200), running ones go ``cancelling`` (202), finished ones stay (200)."""
    status = operations.cancel(job_id, g.tenant.id)
    db.session.expire_all()
    return resources.Job.json_of(tenant_job(job_id)), 202 if status == JobStatus.CANCELLING else 200


@bp.get("/jobs/<uuid:job_id>/events")
@operation(summary="A job's lifecycle events", tag=TAG, query=EventsQuery, responses={200: schemas.JobEvents})
@require_api_key
def job_events(job_id: uuid.UUID) -> dict[str, Any]:
    """The job's timeline, oldest first; ``after`` (an event id) continues a long one."""
    job = tenant_job(job_id)
    after = parse_query(EventsQuery).after
    events = db.session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job.id, JobEvent.id > after)
        .order_by(JobEvent.id)
        .limit(MAX_EVENTS_PER_PAGE)
    ).all()
    return {"jobId": str(job.id), "events": [resources.JobEvent.json_of(event) for event in events]}


@bp.get("/definitions")
@operation(summary="List job definitions", tag="definitions", responses={200: schemas.DefinitionList})
@require_api_key
def list_definitions() -> dict[str, Any]:
    """Every registered job definition and its defaults."""
    return {"definitions": [resources.Definition.json_of(d) for d in all_definitions()]}
