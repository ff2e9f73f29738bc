"""Use-cases that span a transition and its publication, shared by the API, the CLI and beat.

Each one validates, changes rows through ``gpujobs.jobs``, commits, and only then publishes.
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app

from gpujobs import jobs, webhooks
from gpujobs.dispatch import commit_and_publish, dispatch_of
from gpujobs.extensions import db
from gpujobs.models import DeadLetter, Job
from gpujobs.outbound import check_url
from gpujobs.registry import get_definition


def prepare(
    tenant_id: uuid.UUID,
    key: str,
    version: int,
    params: dict[str, Any],
    *,
    priority: str | int | None = None,
    max_attempts: int | None = None,
    webhook_url: str | None = None,
    idempotency_key: str | None = None,
) -> Job:
    """Validate one job and add it to the session, queued; the caller commits, then publishes
    (for rows that must commit in the same transaction as the job, like a GPU instance row).

    Raises LookupError (unknown definition), ValueError (bad priority),
    UnsafeURLError (webhook URL), pydantic.ValidationError (params), and IntegrityError when the
    tenant's idempotency key already belongs to a job.
    """
    definition = get_definition(key, version)
    if definition is None:
        raise LookupError(f"no job definition {key}@{version}")
    if webhook_url:  # refused here (422) rather than failing every delivery later
        check_url(webhook_url, allow_private=current_app.config["GPUJOBS_WEBHOOK_ALLOW_PRIVATE"])
    return jobs.new_job(
        tenant_id=tenant_id,
        definition=definition,
        params=definition.validate_params(params),
        priority=jobs.priority_level(priority),
        max_attempts=max_attempts,
        webhook_url=webhook_url,
        idempotency_key=idempotency_key,
    )


def submit(
    tenant_id: uuid.UUID,
    key: str,
    version: int,
    params: dict[str, Any],
    *,
    priority: str | int | None = None,
    max_attempts: int | None = None,
    webhook_url: str | None = None,
    idempotency_key: str | None = None,
) -> Job:
    """Validate and queue one job, commit, publish (see ``prepare`` for what it raises)."""
    job = prepare(
        tenant_id, key, version, params, priority=priority, max_attempts=max_attempts,
        webhook_url=webhook_url, idempotency_key=idempotency_key,
    )  # fmt: skip
    commit_and_publish([dispatch_of(job)])
    return job


def cancel(job_id: uuid.UUID, tenant_id: uuid.UUID) -> str | None:
    """Cancel a tenant's job; returns its status afterwards, or None if the tenant has no such job."""
    status = jobs.request_cancel(job_id, tenant_id)
    if status == jobs.CANCELLED:
        webhooks.record_job_event(job_id)
    db.session.commit()
    if status == jobs.CANCELLED:
        webhooks.publish_pending(job_id)
    return status


def redrive(
    dead_letter_id: uuid.UUID, tenant_id: uuid.UUID, max_attempts: int | None = None
) -> uuid.UUID | None:
    """Run a dead-lettered job again with a fresh budget (default: its definition's attempts)."""
    letter = db.session.get(DeadLetter, dead_letter_id)
    if letter is None or letter.tenant_id != tenant_id:
        return None
    definition_attempts = _default_attempts(letter.job_id)
    job_id = jobs.redrive(dead_letter_id, tenant_id, max_attempts or definition_attempts)
    if job_id is None:
        db.session.rollback()
        return None
    commit_and_publish([dispatch_of(db.session.get(Job, job_id))])
    return job_id


def _default_attempts(job_id: uuid.UUID) -> int:
    job = db.session.get(Job, job_id)
    definition = get_definition(job.definition_key, job.definition_version)
    return definition.max_attempts if definition else job.max_attempts
