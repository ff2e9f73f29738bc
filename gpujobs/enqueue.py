"""Queueing a new job: its row, its first event and its published mark in one statement.

The tenant's priority limit is read and checked in the same statement, and the job goes out at once
only while its tenant's fairness window has room (``gpujobs.dispatch.admission``); otherwise it waits
unpublished for the dispatch sweep. The caller commits, then publishes (``gpujobs.operations``).
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import make_transient_to_detached

from gpujobs.exceptions import InvalidField, NotFound
from gpujobs.extensions import db
from gpujobs.jobs import PRIORITY_NAMES, priority_level, utcnow
from gpujobs.models import Job
from gpujobs.registry import Definition
from gpujobs.sealing import SealedHeaders, SealedJSON
from gpujobs.states import JobStatus


@dataclass(frozen=True)
class Admission:
    """When a new job is published at once: ``condition``, SQL over its tenant ``t``, that tenant's
    ``tenant_limits`` row ``l`` and the job's ``:priority`` (``gpujobs.dispatch``'s fairness window), with
    its bound ``params``."""

    condition: str
    params: dict[str, Any]


NOT_ADMITTED = Admission("false", {})

# A new job, its first event and its published mark in one statement (one round trip, no UPDATE of the
# row just inserted). ``tenant`` reads the tenant's own priority limit (else :max_priority) and whether
# the job may go out now; the job is inserted only within the limit (:max_priority NULL: no check), and
# its event only with it. One row back: the limit, and the job's columns if it was inserted.
_NEW_JOB = """
WITH tenant AS (
    SELECT COALESCE(l.max_priority, :max_priority) AS max_priority,
        CASE WHEN {admitted} THEN now() END AS published_at
    FROM tenants t LEFT JOIN tenant_limits l ON l.tenant_id = t.id
    WHERE t.id = :tenant_id
), job AS (
    INSERT INTO jobs (id, tenant_id, definition_key, definition_version, params, priority, priority_number,
        status, attempt, max_attempts, timeout_seconds, webhook_url, webhook_headers, idempotency_key,
        cancel_requested, dead_lettered, queued_at, created_at, published_at)
    SELECT :id, :tenant_id, :definition_key, :definition_version, :params, :priority, :priority_number,
        :status, 0, :max_attempts, :timeout_seconds, :webhook_url, :webhook_headers, :idempotency_key,
        false, false, :queued_at, :queued_at, tenant.published_at
    FROM tenant
    WHERE :max_priority IS NULL OR :priority <= tenant.max_priority
    RETURNING id, published_at, updated_at
), event AS (
    INSERT INTO job_events (job_id, type, attempt, data) SELECT id, 'job.queued', 0, :event FROM job
)
SELECT tenant.max_priority, job.id IS NOT NULL AS inserted, job.published_at, job.updated_at
FROM tenant LEFT JOIN job ON true"""
_JSONB_PARAMS = (
    bindparam("params", type_=SealedJSON),
    bindparam("webhook_headers", type_=SealedHeaders),
    bindparam("event", type_=JSONB),
)


# The columns a new job leaves NULL: set on the row object, so that reading one costs no query.
_UNSET_COLUMNS = (
    "progress",
    "result",
    "error",
    "started_at",
    "finished_at",
    "next_retry_at",
    "lease_expires_at",
)


@functools.cache
def _new_job_statement(admitted: str) -> TextClause:
    return text(_NEW_JOB.format(admitted=admitted)).bindparams(*_JSONB_PARAMS)


def new_job(
    *,
    tenant_id: uuid.UUID,
    definition: Definition,
    params: dict[str, Any],
    priority: int,
    priority_number: int | None = None,
    max_attempts: int | None = None,
    webhook_url: str | None = None,
    webhook_headers: dict[str, str] | None = None,
    idempotency_key: str | None = None,
    max_priority: int | None = None,
    admission: Admission = NOT_ADMITTED,
) -> Job:
    """Insert a queued job and its first event (then run its definition's ``on_queued``, which may add
    rows or raise); the caller commits, then publishes.

    ``max_priority``: the operator's default priority limit; above the tenant's own limit (else this
    one) nothing is inserted and InvalidField names ``priority``. ``admission``: the job is inserted
    marked published when it holds (the caller sends it after commit), else it waits unpublished for
    the dispatch sweep. One statement: the limit's read, the job, its event and its mark.
    """
    now = utcnow()
    values = {
        "id": uuid.uuid4(),
        "tenant_id": tenant_id,
        "definition_key": definition.key,
        "definition_version": definition.version,
        "params": params,
        "priority": priority,
        "priority_number": priority_number,
        "status": JobStatus.QUEUED.value,
        "max_attempts": max_attempts or definition.max_attempts,
        "timeout_seconds": definition.timeout_seconds,
        "webhook_url": webhook_url,
        "webhook_headers": webhook_headers,
        "idempotency_key": idempotency_key,
        "queued_at": now,
    }
    row = db.session.execute(
        _new_job_statement(admission.condition),
        {
            **values,
            **admission.params,
            "max_priority": max_priority,
            "event": {"priority": PRIORITY_NAMES[priority]},
        },
    ).one_or_none()
    if row is None:
        raise NotFound(f"no tenant {tenant_id}")
    if not row.inserted:
        raise priority_above_limit(row.max_priority)
    job = Job(
        **values,
        attempt=0,
        cancel_requested=False,
        dead_lettered=False,
        created_at=now,
        published_at=row.published_at,
        updated_at=row.updated_at,
        **dict.fromkeys(_UNSET_COLUMNS),
    )
    if definition.on_queued is not None:
        definition.on_queued(job.id, tenant_id, params)
    # The row is written: the session holds it as loaded, no flush. Only now, so that an ``on_queued``
    # that raises inside a savepoint (a schedule's tick, a spot replacement) leaves no ghost of it.
    make_transient_to_detached(job)
    db.session.add(job)
    return job


def priority_above_limit(highest: int) -> InvalidField:
    """The refusal of a priority above the tenant's limit ``highest`` (a level)."""
    top = max(number for number in range(11) if priority_level(number) == highest)
    return InvalidField(
        "priority", f"this tenant may use priorities up to {PRIORITY_NAMES[highest]} (0-{top})"
    )
