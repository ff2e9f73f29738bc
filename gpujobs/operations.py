"""Use-cases that span a transition and its publication, shared by the API, the CLI and beat.

Each one validates, changes rows through ``gpujobs.jobs``, commits, and only then publishes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from flask import current_app
from pydantic import ValidationError

from gpujobs import jobs, webhooks
from gpujobs.dispatch import commit_and_publish, dispatch_of
from gpujobs.exceptions import Conflict, InvalidField, NotFound
from gpujobs.extensions import db
from gpujobs.models import DeadLetter, Job
from gpujobs.outbound import UnsafeURLError, check_url
from gpujobs.registry import Definition, get_definition
from gpujobs.states import JobStatus


@dataclass(frozen=True, kw_only=True)
class JobOptions:
    """How to run one job, besides what and with which params; each None takes the default."""

    #: A name (``low`` … ``critical``) or 0-10 with higher more urgent; default ``normal``.
    priority: str | int | None = None
    #: Attempts before the job fails for good; default: its definition's.
    max_attempts: int | None = None
    #: The receiver of the job's webhook events; none: no events.
    webhook_url: str | None = None
    #: The tenant's key for this submission; a second job with it is refused.
    idempotency_key: str | None = None


DEFAULT_OPTIONS = JobOptions()


def validated(
    tenant_id: uuid.UUID, key: str, version: int, params: dict[str, Any]
) -> tuple[Definition, dict[str, Any]]:
    """The definition ``key@version`` and ``params`` normalised by its model (for a job or a schedule),
    checked against what the tenant may name (its own uploads, say).

    Raises InvalidField naming ``definitionKey``, or each bad ``params.*`` field.
    """
    definition = get_definition(key, version)
    if definition is None:
        raise InvalidField("definitionKey", f"no job definition {key}@{version}")
    try:
        valid = definition.validate_params(params)
    except ValidationError as exc:
        raise InvalidField.from_validation(exc, ("params",)) from None
    if definition.check_for_tenant is not None:
        definition.check_for_tenant(str(tenant_id), valid)
    return definition, valid


def prepare(
    tenant_id: uuid.UUID,
    key: str,
    version: int,
    params: dict[str, Any],
    options: JobOptions = DEFAULT_OPTIONS,
) -> Job:
    """Validate one job and add it to the session, queued; the caller commits, then publishes
    (for rows that must commit in the same transaction as the job, like a GPU instance row).

    Raises InvalidField (definition, params, priority, webhook URL), and IntegrityError when the
    tenant's idempotency key already belongs to a job.
    """
    definition, params = validated(tenant_id, key, version, params)
    if options.webhook_url:  # refused here (422) rather than failing every delivery later
        try:
            check_url(options.webhook_url, allow_private=current_app.config["GPUJOBS_WEBHOOK_ALLOW_PRIVATE"])
        except UnsafeURLError as exc:
            raise InvalidField("webhookUrl", str(exc)) from None
    return jobs.new_job(
        tenant_id=tenant_id,
        definition=definition,
        params=params,
        priority=jobs.priority_level(options.priority),
        max_attempts=options.max_attempts,
        webhook_url=options.webhook_url,
        idempotency_key=options.idempotency_key,
    )


def submit(
    tenant_id: uuid.UUID,
    key: str,
    version: int,
    params: dict[str, Any],
    options: JobOptions = DEFAULT_OPTIONS,
) -> Job:
    """Validate and queue one job, commit, publish (see ``prepare`` for what it raises)."""
    job = prepare(tenant_id, key, version, params, options)
    commit_and_publish([dispatch_of(job)])
    return job


def cancel(job_id: uuid.UUID, tenant_id: uuid.UUID) -> JobStatus:
    """Cancel a tenant's job; returns its status afterwards (NotFound if the tenant has no such job)."""
    status = jobs.request_cancel(job_id, tenant_id)
    if status is None:
        raise NotFound(f"no job {job_id}")
    if status == JobStatus.CANCELLED:
        webhooks.record_job_event(job_id)
    db.session.commit()
    if status == JobStatus.CANCELLED:
        webhooks.publish_pending(job_id)
    return status


def redrive(dead_letter_id: uuid.UUID, tenant_id: uuid.UUID, max_attempts: int | None = None) -> uuid.UUID:
    """Run a dead-lettered job again with a fresh budget (default: its definition's attempts).

    Raises NotFound (not the tenant's dead letter) or Conflict (already redriven).
    """
    letter = db.session.get(DeadLetter, dead_letter_id)
    if letter is None or letter.tenant_id != tenant_id:
        raise NotFound(f"no dead letter {dead_letter_id}")
    definition_attempts = _default_attempts(letter.job_id)
    job_id = jobs.redrive(dead_letter_id, tenant_id, max_attempts or definition_attempts)
    if job_id is None:
        db.session.rollback()
        raise Conflict("this dead letter was already redriven")
    commit_and_publish([dispatch_of(db.session.get(Job, job_id))])
    return job_id


def _default_attempts(job_id: uuid.UUID) -> int:
    job = db.session.get(Job, job_id)
    definition = get_definition(job.definition_key, job.definition_version)
    return definition.max_attempts if definition else job.max_attempts
