"""The dashboard's pages: overview, jobs, one job, instances, dead letters. Read-only; all tenant-scoped.

Lists use the API's keyset pagination (``limit``, ``cursor``) and filters (``status``,
``definitionKey``), and one job is looked up exactly as the API does, so another tenant's id is a 404.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

from flask import g, render_template, request
from pydantic import ValidationError
from sqlalchemy import select

from gpujobs.api.deliveries import MAX_DELIVERIES
from gpujobs.api.dlq import DeadLetterQuery, dead_letters_query
from gpujobs.api.jobs import MAX_EVENTS_PER_PAGE, JobListQuery, jobs_query, tenant_job
from gpujobs.api.pagination import PageQuery, after_cursor, page
from gpujobs.exceptions import InvalidField
from gpujobs.extensions import db
from gpujobs.masking import mask_secrets
from gpujobs.models import DeadLetter, Instance, Job, JobEvent, WebhookDelivery
from gpujobs.provisioning.actions import ALLOWED_FROM
from gpujobs.registry import all_definitions
from gpujobs.states import JOB_TERMINAL, DeliveryStatus, JobStatus
from gpujobs.ui import bp, figures
from gpujobs.ui.display import delivery_view, event_view, instance_view, job_view, preview

Query = TypeVar("Query", bound=PageQuery)
CANCELLABLE = (JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.RUNNING)
RECENT_FAILURES = 5
# Event types that close an attempt, and what they mean for it.
ATTEMPT_ENDS = {
    "job.succeeded": JobStatus.SUCCEEDED,
    "job.failed": JobStatus.FAILED,
    "job.retrying": "failed, retried",
    "job.rescued": "worker lost, requeued",
    "job.cancelled": JobStatus.CANCELLED,
}


def _args(model: type[Query]) -> Query:
    """The query string parsed by the API's own model for this list (empty form fields mean "any")."""
    try:
        return model.model_validate({name: value for name, value in request.args.items() if value})
    except ValidationError as exc:
        raise InvalidField.from_validation(exc) from None


def _listing(query: Any, model: Any, args: PageQuery) -> dict[str, Any]:
    """One page of ``query`` (newest first, after ``cursor``), as the API pages it."""
    query = after_cursor(query, model, args.cursor).limit(args.limit + 1)
    return page(list(db.session.scalars(query)), args.limit, lambda row: row)


def _definition_keys() -> list[str]:
    return sorted({definition.key for definition in all_definitions()})


@bp.get("/")
def overview() -> str:
    """Counts by status, 24-hour throughput, error rates, limits and grants, the latest failures."""
    failures = db.session.scalars(
        select(Job)
        .where(Job.tenant_id == g.tenant.id, Job.status == JobStatus.FAILED)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(RECENT_FAILURES)
    )
    return render_template(
        "ui/overview.html",
        **figures.overview(g.tenant.id),
        failures=[job_view(job) for job in failures],
        refresh=True,
    )


@bp.get("/jobs")
def jobs() -> str:
    """The tenant's jobs, newest first, filtered and cursor-paginated like ``GET /v1/jobs``."""
    args = _args(JobListQuery)
    listing = _listing(jobs_query(g.tenant.id, args), Job, args)
    return render_template(
        "ui/jobs.html",
        jobs=[job_view(job) for job in listing["items"]],
        next_cursor=listing["nextCursor"],
        filters=args,
        statuses=list(JobStatus),
        definition_keys=_definition_keys(),
        refresh=True,
    )


@bp.get("/jobs/<job_id>")
def job(job_id: str) -> str:
    """One job: params (secrets masked), result, timeline, attempts, errors, webhook deliveries."""
    row = tenant_job(job_id)
    events = db.session.scalars(
        select(JobEvent).where(JobEvent.job_id == row.id).order_by(JobEvent.id).limit(MAX_EVENTS_PER_PAGE)
    ).all()
    delivery_rows = db.session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.job_id == row.id, WebhookDelivery.tenant_id == g.tenant.id)
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
        .limit(MAX_DELIVERIES)
    )
    letter = None
    if row.dead_lettered:
        letter = db.session.scalar(
            select(DeadLetter).where(DeadLetter.job_id == row.id, DeadLetter.redriven_at.is_(None))
        )
    instance = db.session.scalar(select(Instance).where(Instance.job_id == row.id))
    timeline = [event_view(event) for event in events]
    deliveries = [delivery_view(delivery) for delivery in delivery_rows]
    return render_template(
        "ui/job.html",
        job=job_view(row),
        timeline=timeline,
        attempts=attempts(timeline),
        deliveries=deliveries,
        letter=letter,
        instance=instance_view(instance, datetime.now(UTC)) if instance else None,
        cancellable=row.status in CANCELLABLE,
        # Refresh while anything can still change: the job, or a webhook delivery being retried.
        refresh=row.status not in JOB_TERMINAL
        or any(d["status"] == DeliveryStatus.PENDING for d in deliveries),
    )


def attempts(timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each attempt's start, end, outcome and error, read off the timeline."""
    by_number: dict[int, dict[str, Any]] = {}
    for event in timeline:
        if event["attempt"] < 1:
            continue
        attempt = by_number.setdefault(
            event["attempt"], {"number": event["attempt"], "outcome": JobStatus.RUNNING}
        )
        if event["type"] == "job.started":
            attempt["started"] = event["at"]
        elif event["type"] in ATTEMPT_ENDS and "ended" not in attempt:
            attempt.update(ended=event["at"], outcome=ATTEMPT_ENDS[event["type"]])
            attempt["error"] = event["data"].get("error") or event["data"].get("reason")
    return [by_number[number] for number in sorted(by_number)]


@bp.get("/instances")
def instances() -> str:
    """The tenant's GPU instances with status, region, product, price, endpoints and age."""
    query = select(Instance).where(Instance.tenant_id == g.tenant.id)
    listing = _listing(query, Instance, _args(PageQuery))
    now = datetime.now(UTC)
    rows = []
    for instance in listing["items"]:
        view = instance_view(instance, now)
        view["actions"] = instance_actions(instance)
        rows.append(view)
    return render_template(
        "ui/instances.html", instances=rows, next_cursor=listing["nextCursor"], refresh=True
    )


def instance_actions(instance: Instance) -> list[str]:
    """The actions the instance's status allows (the same rule the API applies)."""
    return [action for action, allowed in ALLOWED_FROM.items() if instance.status in allowed]


@bp.get("/dlq")
def dead_letters() -> str:
    """Dead letters not yet redriven, newest first, each with its job's masked params."""
    args = _args(DeadLetterQuery)
    listing = _listing(dead_letters_query(g.tenant.id, args), DeadLetter, args)
    job_ids = [letter.job_id for letter in listing["items"]]
    params: dict[uuid.UUID, dict[str, Any]] = dict(
        db.session.execute(select(Job.id, Job.params).where(Job.id.in_(job_ids))).all()
    )
    letters = [
        {"letter": letter, "params": preview(mask_secrets(params.get(letter.job_id, {})))}
        for letter in listing["items"]
    ]
    return render_template(
        "ui/dlq.html",
        letters=letters,
        next_cursor=listing["nextCursor"],
        definition_key=args.definitionKey or "",
        definition_keys=_definition_keys(),
        refresh=True,
    )
