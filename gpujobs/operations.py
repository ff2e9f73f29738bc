"""Use-cases that span a transition and its publication, shared by the API, the CLI and beat.

Each one validates, changes rows through ``gpujobs.jobs``, commits, and only then publishes.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from flask import current_app
from pydantic import ValidationError

from gpujobs import enqueue, jobs, limits, webhooks
from gpujobs.dispatch import admission, commit_and_publish, dispatch_of
from gpujobs.exceptions import Conflict, InvalidField, NotFound
from gpujobs.extensions import db
from gpujobs.models import DeadLetter, Job
from gpujobs.outbound import UnsafeURLError, check_url
from gpujobs.registry import Definition, get_definition
from gpujobs.states import JobStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class JobOptions:
    """How to run one job, besides what and with which params; each None takes the default."""

    #: A name (``low`` … ``critical``) or 0-10 with higher more urgent; default ``normal``.
    priority: str | int | None = None
    #: Attempts before the job fails for good; default: its definition's.
    max_attempts: int | None = None
    #: The receiver of the job's webhook events; none: no events.
    webhook_url: str | None = None
    #: Extra headers on each of the job's webhook deliveries (checked by ``webhooks.check_headers``).
    webhook_headers: dict[str, str] | None = None
    #: The tenant's key for this submission; a second job with it is refused.
    idempotency_key: str | None = None


DEFAULT_OPTIONS = JobOptions()


def validated(
    tenant_id: uuid.UUID, key: str, version: int, params: dict[str, Any]
) -> tuple[Definition, dict[str, Any]]:
    """The definition ``key@version`` and ``params`` normalised by its model (for a job or a schedule),
    checked against what the tenant may name (a Novita template it was granted, its own uploads).

    Raises InvalidField naming ``definitionKey``, each bad ``params.*`` field, or what the definition's
    ``authorize`` refuses this tenant.
    """
    definition = get_definition(key, version)
    if definition is None:
        raise InvalidField("definitionKey", f"no job definition {key}@{version}")
    try:
        params = definition.validate_params(params)
    except ValidationError as exc:
        raise InvalidField.from_validation(exc, ("params",)) from None
    if definition.authorize is not None:
        try:
            definition.authorize(tenant_id, params)
        except InvalidField as exc:
            errors = [(f"params.{field}", message) for field, message in exc.errors]
            raise InvalidField(*errors[0], errors=errors) from None
    return definition, params


def prepare(
    tenant_id: uuid.UUID,
    key: str,
    version: int,
    params: dict[str, Any],
    options: JobOptions = DEFAULT_OPTIONS,
    *,
    admit: bool = False,
) -> Job:
    """Validate one job and write it, queued, in the session's transaction; the caller commits, then
    publishes (for rows that must commit in the same transaction as the job, like a GPU instance row).
    ``admit``: mark it published as it is written if its tenant's window has room (``submit``, which
    sends it after commit); else ``commit_and_publish`` decides.

    Raises InvalidField (definition, params, a Novita resource not granted, a priority above the
    tenant's limit, webhook URL and headers), and IntegrityError when the tenant's idempotency key
    already belongs to a job.
    """
    definition, params = validated(tenant_id, key, version, params)
    if options.webhook_url:  # refused here (422) rather than failing every delivery later
        try:
            check_url(options.webhook_url, allow_private=current_app.config["GPUJOBS_WEBHOOK_ALLOW_PRIVATE"])
        except UnsafeURLError as exc:
            raise InvalidField("webhookUrl", str(exc)) from None
    if options.webhook_headers is not None:
        try:
            webhooks.check_headers(options.webhook_headers)
        except ValueError as exc:
            raise InvalidField("webhookHeaders", str(exc)) from None
    return enqueue.new_job(
        tenant_id=tenant_id,
        definition=definition,
        params=params,
        priority=jobs.priority_level(options.priority),
        priority_number=options.priority if isinstance(options.priority, int) else None,
        max_attempts=options.max_attempts,
        webhook_url=options.webhook_url,
        webhook_headers=options.webhook_headers,
        idempotency_key=options.idempotency_key,
        max_priority=limits.defaults().max_priority,  # the tenant's own limit is read as the job is written
        admission=admission() if admit else enqueue.NOT_ADMITTED,
    )


def submit(
    tenant_id: uuid.UUID,
    key: str,
    version: int,
    params: dict[str, Any],
    options: JobOptions = DEFAULT_OPTIONS,
) -> Job:
    """Validate and queue one job, commit, publish (see ``prepare`` for what it raises).

    The returned job keeps the values it was written with (the API's 202 body): the commit does not
    expire it, so describing it costs no re-read of the row. Its tenant's priority limit, the job, its
    first event and its published mark (when the tenant's window has room) are one statement.
    """
    job = prepare(tenant_id, key, version, params, options, admit=True)
    commit_admitted(job)
    log.info("job %s queued: %s@%s", job.id, key, version, extra={"job_id": str(job.id)})
    return job


def commit_admitted(job: Job) -> None:
    """Commit the transaction that wrote ``job`` (``prepare(admit=True)``), then send it if its tenant's
    window let it out as it was written.

    The commit expires nothing: the rows written keep their values for the caller's answer, which then
    costs no re-read.
    """
    session = db.session()
    expire, session.expire_on_commit = session.expire_on_commit, False
    try:
        commit_and_publish([dispatch_of(job)] if job.published_at is not None else [], marked=True)
    finally:
        session.expire_on_commit = expire


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

    Raises NotFound (not the tenant's dead letter) or Conflict (already redriven, or LimitReached from
    its definition's ``on_queued``).
    """
    letter = db.session.get(DeadLetter, dead_letter_id)
    if letter is None or letter.tenant_id != tenant_id:
        raise NotFound(f"no dead letter {dead_letter_id}")
    definition_attempts = _default_attempts(letter.job_id)
    job_id = jobs.redrive(dead_letter_id, tenant_id, max_attempts or definition_attempts)
    if job_id is None:
        db.session.rollback()
        raise Conflict("this dead letter was already redriven")
    job = db.session.get_one(Job, job_id)
    definition = get_definition(job.definition_key, job.definition_version)
    if definition is not None and definition.on_queued is not None:
        try:  # queued again, it is held to what a new job is (a GPU create to its tenant's quotas)
            definition.on_queued(job.id, tenant_id, job.params)
        except Exception:
            db.session.rollback()
            raise
    commit_and_publish([dispatch_of(job)])
    return job_id


def _default_attempts(job_id: uuid.UUID) -> int:
    job = db.session.get_one(Job, job_id)
    definition = get_definition(job.definition_key, job.definition_version)
    return definition.max_attempts if definition else job.max_attempts
