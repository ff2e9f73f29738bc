"""The job state machine. Every transition is one compare-and-set UPDATE in PostgreSQL.

A task claims a job with ``UPDATE ... WHERE status IN (...) RETURNING attempt``; the returned attempt
is the fencing token, and every later write carries ``AND attempt = :attempt``. A duplicate delivery
finds no row to claim and exits; a worker that wakes up after its lease was rescued finds its writes
refused. Functions here never commit: callers own the transaction, and publish only after commit.
This module never imports Flask request objects.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

from sqlalchemy import Row, bindparam, func, insert, select, text, update

from gpujobs.exceptions import InvalidField
from gpujobs.extensions import among, db, interval_seconds, rows_changed
from gpujobs.models import DeadLetter, Job, JobEvent, TenantLimits
from gpujobs.registry import Definition
from gpujobs.states import JOB_ACTIVE, JobStatus, sql_list

log = logging.getLogger(__name__)

# Stored as 0..3 so ORDER BY and queue choice are cheap; the API speaks the names.
PriorityName = Literal["low", "normal", "high", "critical"]
PRIORITY_NAMES: tuple[PriorityName, ...] = get_args(PriorityName)
PRIORITY_LEVELS: dict[str, int] = {name: level for level, name in enumerate(PRIORITY_NAMES)}
DEFAULT_PRIORITY = "normal"


def priority_level(value: str | int | None) -> int:
    """Map a public priority (a name, or 0-10 with higher more urgent) onto the four levels."""
    if value is None:
        return PRIORITY_LEVELS[DEFAULT_PRIORITY]
    if isinstance(value, bool):
        raise InvalidField("priority", "priority must be a name or an integer from 0 to 10")
    if isinstance(value, int):
        if not 0 <= value <= 10:
            raise InvalidField("priority", "priority integers run from 0 to 10")
        return 0 if value <= 2 else 1 if value <= 5 else 2 if value <= 8 else 3
    if value not in PRIORITY_LEVELS:
        choices = ", ".join(PRIORITY_NAMES)
        raise InvalidField("priority", f"priority must be one of {choices} or an integer from 0 to 10")
    return PRIORITY_LEVELS[value]


def utcnow() -> datetime:
    """The current time, timezone-aware (rows store timestamptz)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Claim:
    """A job this worker now runs, with the attempt number that fences every later write."""

    job_id: uuid.UUID
    attempt: int
    tenant_id: uuid.UUID
    params: dict[str, Any]
    max_attempts: int


# Built once: its parameters come with each call, so SQLAlchemy neither rebuilds nor re-hashes it.
# On the table, not the mapped class: a Core INSERT skips the ORM's bulk-insert bookkeeping per event.
_ADD_EVENT = insert(JobEvent.__table__)


def add_event(job_id: uuid.UUID, event_type: str, attempt: int, data: dict[str, Any] | None = None) -> None:
    """Append one line to the job's timeline (in the caller's transaction)."""
    db.session.execute(
        _ADD_EVENT, {"job_id": job_id, "type": event_type, "attempt": attempt, "data": data or {}}
    )


def mark_published(job_ids: list[uuid.UUID], published: bool = True) -> None:
    """Mark queued jobs as handed to the broker (or, after a failed publish, as not handed over).

    Marking happens before the publish, in the transaction that holds the rows, so two sweeps
    cannot both publish a job; a publish that then fails is un-marked for the next sweep.
    """
    if job_ids:
        db.session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status == JobStatus.QUEUED)
            .values(published_at=func.now() if published else None)
        )


_JOBS = Job.__table__
_LIMITS = TenantLimits.__table__

# The hot statements of a job's run, built once at import: each is one round trip that also writes its
# event (a data-modifying CTE), and SQLAlchemy finds its compiled form in the cache without rebuilding
# and hashing the expression per call. On the tables, not the mapped classes: plain Core, which skips
# the ORM's compile and loading steps (a quarter of a claim's CPU, a sixth of an echo job's worker).
#: What a claim needs of a job before it starts: its definition and its tenant's running-jobs limit.
_TO_CLAIM = (
    select(_JOBS.c.definition_key, _JOBS.c.definition_version, _JOBS.c.tenant_id, _LIMITS.c.max_running_jobs)
    .select_from(_JOBS.outerjoin(_LIMITS, _LIMITS.c.tenant_id == _JOBS.c.tenant_id))
    .where(_JOBS.c.id == bindparam("job_id"))
)
_CLAIM = text(
    f"""WITH claimed AS (
        UPDATE jobs SET status = '{JobStatus.RUNNING}', attempt = attempt + 1, started_at = now(),
            updated_at = now(), progress = NULL,
            lease_expires_at = now() + make_interval(secs => :lease_seconds)
        WHERE id = :job_id AND status = '{JobStatus.QUEUED}' AND NOT cancel_requested
        RETURNING id, attempt, tenant_id, params, max_attempts),
    event AS (
        INSERT INTO job_events (job_id, type, attempt, data)
        SELECT id, 'job.started', attempt, '{{}}'::jsonb FROM claimed)
    SELECT attempt, tenant_id, params, max_attempts FROM claimed"""
).columns(Job.attempt, Job.tenant_id, Job.params, Job.max_attempts)
_JOB_COLUMNS = ", ".join(column.name for column in Job.__table__.columns)
_SUCCEED = (
    text(
        f"""WITH done AS (
            UPDATE jobs SET status = '{JobStatus.SUCCEEDED}', result = :result, error = NULL,
                updated_at = now(), progress = 100.0, finished_at = now(), lease_expires_at = NULL
            WHERE id = :job_id AND attempt = :attempt AND status IN ({sql_list(JOB_ACTIVE)})
                AND NOT cancel_requested
            RETURNING {_JOB_COLUMNS}),
        event AS (
            INSERT INTO job_events (job_id, type, attempt, data)
            SELECT id, 'job.succeeded', attempt, '{{}}'::jsonb FROM done)
        SELECT {_JOB_COLUMNS} FROM done"""
    )
    .bindparams(bindparam("result", type_=_JOBS.c.result.type))
    .columns(*_JOBS.c)
)


_JOB_ROW = select(_JOBS).where(_JOBS.c.id == bindparam("job_id"))


def job_row(job_id: uuid.UUID) -> Row[Any]:
    """The row of a job known to exist, as it is now, read-only (a Core row: no ORM object to load and
    track)."""
    return db.session.execute(_JOB_ROW, {"job_id": job_id}).one()


def to_claim(job_id: uuid.UUID) -> Row[str, int, uuid.UUID, int | None] | None:
    """The job's ``definition_key``, ``definition_version``, ``tenant_id`` and its tenant's own
    ``max_running_jobs``, in one read: what ``claim`` needs first; None when there is no such job."""
    return db.session.execute(_TO_CLAIM, {"job_id": job_id}).one_or_none()


def claim(
    job_id: uuid.UUID,
    definition: Definition,
    lease_seconds: int,
    tenant_limit: int | None = None,
    *,
    owner: Row[str, int, uuid.UUID, int | None] | None = None,
) -> Claim | None:
    """Take a queued job for this worker, or None if it is not ours to run (duplicate, cancelled, full).

    A definition's concurrency limit and a tenant's running-jobs limit (its own, else ``tenant_limit``)
    are cluster-wide: an advisory lock per definition and per tenant serialises the count-then-claim,
    so two workers cannot both take the last slot. A job refused for a full limit goes back to
    "unpublished" and the dispatch sweep offers it again shortly. ``owner`` is ``to_claim``'s row when
    the caller has read it already.
    """
    if definition.concurrency_limit is not None and _full(
        definition.ref,
        (Job.definition_key == definition.key, Job.definition_version == definition.version),
        definition.concurrency_limit,
    ):
        _wait(job_id, f"{definition.ref} is at its concurrency limit")
        return None
    owner = owner or to_claim(job_id)
    if owner is None:
        return None
    limit = tenant_limit if owner.max_running_jobs is None else owner.max_running_jobs
    if limit is not None and _full(f"tenant:{owner.tenant_id}", (Job.tenant_id == owner.tenant_id,), limit):
        _wait(job_id, "its tenant is at its running-jobs limit")
        return None
    row = db.session.execute(_CLAIM, {"job_id": job_id, "lease_seconds": lease_seconds}).one_or_none()
    if row is None:
        return None
    return Claim(job_id, row.attempt, row.tenant_id, row.params, row.max_attempts)


def _full(lock: str, scope: tuple[Any, ...], limit: int) -> bool:
    """Whether ``limit`` jobs of ``scope`` run already; holds the scope's lock until the transaction ends.

    Locks are always taken in one order (definition, then tenant), so two claims never wait on each other.
    """
    db.session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:ref))"), {"ref": lock})
    return active_count(*scope) >= limit


def active_count(*scope: Any) -> int:
    """How many jobs matching ``scope`` (a definition's, a tenant's) are running now."""
    count = select(func.count()).select_from(Job).where(*scope, among(Job.status, JOB_ACTIVE))
    return int(db.session.execute(count).scalar_one())


def _wait(job_id: uuid.UUID, reason: str) -> None:
    """Leave the job queued and unpublished, for the dispatch sweep to offer again shortly."""
    db.session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED).values(published_at=None)
    )
    log.info("job %s waits: %s", job_id, reason)


def _fenced(job_id: uuid.UUID, attempt: int, *statuses: JobStatus) -> Any:
    return update(Job).where(Job.id == job_id, Job.attempt == attempt, Job.status.in_(statuses))


# Parameter names other than the columns' (an UPDATE reserves those for its SET clause). On the table,
# not the mapped class: Core statements skip the ORM's bulk-update machinery (a third of a renewal's CPU).
_OWNED = (
    _JOBS.c.id == bindparam("job"),
    _JOBS.c.attempt == bindparam("fence"),
    among(_JOBS.c.status, JOB_ACTIVE),
)
#: The lease renewal (parameters ``job``, ``fence``: the attempt, ``lease_seconds``), returning the
#: cancel flag; a caller may use it as a CTE to read with it in one round trip (the monitor's look).
RENEW_LEASE = (
    update(_JOBS)
    .where(*_OWNED)
    # Never shorten a lease: a hand-off may have extended it past the heartbeat's next renewal.
    .values(
        lease_expires_at=func.greatest(
            _JOBS.c.lease_expires_at,
            func.now() + interval_seconds(bindparam("lease_seconds")),
        )
    )
    .returning(_JOBS.c.cancel_requested)
)
_CANCEL_FLAG = select(_JOBS.c.cancel_requested).where(*_OWNED)


def renew_lease(job_id: uuid.UUID, attempt: int, lease_seconds: float) -> bool | None:
    """Extend a running job's lease; returns its cancel flag, or None if the lease is no longer ours."""
    params = {"job": job_id, "fence": attempt, "lease_seconds": lease_seconds}
    return db.session.execute(RENEW_LEASE, params).scalar_one_or_none()


def cancel_flag(job_id: uuid.UUID, attempt: int) -> bool | None:
    """A running job's cancel flag, or None if ``attempt`` no longer holds the job."""
    return db.session.scalar(_CANCEL_FLAG, {"job": job_id, "fence": attempt})


def hold(job_id: uuid.UUID, attempt: int) -> bool:
    """Lock the job's row if ``attempt`` still owns it; False when the job moved on.

    Until the transaction ends no claim, rescue or cancel can change the job, so what the caller does
    meanwhile (publishing a file) is done by the owner and by no one else.
    """
    owner = db.session.scalar(
        select(Job.id)
        .where(Job.id == job_id, Job.attempt == attempt, among(Job.status, JOB_ACTIVE))
        .with_for_update()
    )
    return owner is not None


def record_progress(job_id: uuid.UUID, attempt: int, percent: float) -> bool:
    """Store the latest progress figure; False if this attempt no longer owns the job."""
    result = db.session.execute(_fenced(job_id, attempt, *JOB_ACTIVE).values(progress=percent))
    return rows_changed(result) == 1


def succeed(job_id: uuid.UUID, attempt: int, result: dict[str, Any] | None) -> Row[Any] | None:
    """Finish a job as succeeded and return its row as it is now (``UPDATE ... RETURNING``, for the
    webhook event without a re-read); None when a newer attempt or a rescue got there first, or when a
    cancel was recorded while it ran (a cancelled job never ends succeeded).

    A Core row, read by attribute as a ``Job`` is; a ``Job`` loaded in the session sees the change
    after the commit (which expires it), not before.
    """
    params = {"job_id": job_id, "attempt": attempt, "result": result}
    return db.session.execute(_SUCCEED, params).one_or_none()


def cancel_running(job_id: uuid.UUID, attempt: int, reason: str) -> bool:
    """Finish a job whose handler stopped because cancellation was requested."""
    done = db.session.execute(
        _fenced(job_id, attempt, *JOB_ACTIVE).values(
            status=JobStatus.CANCELLED, error=reason, finished_at=func.now(), lease_expires_at=None
        )
    )
    if rows_changed(done) != 1:
        return False
    add_event(job_id, "job.cancelled", attempt, {"reason": reason})
    return True


def fail_attempt(
    job_id: uuid.UUID, attempt: int, error: str, *, retryable: bool, retry_delay_seconds: float
) -> JobStatus | None:
    """Record a failed attempt: ``retrying`` with a due time, or ``failed`` and dead-lettered.

    Returns the new status, or None when the write was fenced out. This is the one place that
    decides retry versus fail.
    """
    job = db.session.execute(
        select(Job.max_attempts, Job.cancel_requested, Job.tenant_id, Job.definition_key).where(
            Job.id == job_id, Job.attempt == attempt
        )
    ).one_or_none()
    if job is None:
        return None
    if retryable and attempt < job.max_attempts and not job.cancel_requested:
        due = utcnow() + timedelta(seconds=retry_delay_seconds)
        done = db.session.execute(
            _fenced(job_id, attempt, *JOB_ACTIVE).values(
                status=JobStatus.RETRYING, error=error, next_retry_at=due, lease_expires_at=None
            )
        )
        if rows_changed(done) != 1:
            return None
        add_event(job_id, "job.retrying", attempt, {"error": error, "nextRetryAt": due.isoformat()})
        return JobStatus.RETRYING
    return _fail(job_id, attempt, error, job.tenant_id, job.definition_key, from_statuses=JOB_ACTIVE)


def _fail(
    job_id: uuid.UUID,
    attempt: int,
    error: str,
    tenant_id: uuid.UUID,
    definition_key: str,
    *,
    from_statuses: tuple[JobStatus, ...],
) -> JobStatus | None:
    done = db.session.execute(
        _fenced(job_id, attempt, *from_statuses).values(
            status=JobStatus.FAILED,
            error=error,
            finished_at=func.now(),
            lease_expires_at=None,
            next_retry_at=None,
            dead_lettered=True,
        )
    )
    if rows_changed(done) != 1:
        return None
    db.session.add(
        DeadLetter(
            job_id=job_id, tenant_id=tenant_id, definition_key=definition_key, attempts=attempt, error=error
        )
    )
    add_event(job_id, "job.failed", attempt, {"error": error})
    add_event(job_id, "job.dead_lettered", attempt)
    return JobStatus.FAILED


def request_cancel(job_id: uuid.UUID, tenant_id: uuid.UUID) -> JobStatus | None:
    """Cancel a job: waiting jobs stop at once, running ones are asked to stop (a durable flag).

    Returns the job's status after the request, or None when no such job belongs to the tenant.
    """
    waiting = db.session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.tenant_id == tenant_id,
            Job.status.in_((JobStatus.QUEUED, JobStatus.RETRYING)),
        )
        .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=func.now(), next_retry_at=None)
        .returning(Job.attempt)
    ).one_or_none()
    if waiting is not None:
        add_event(job_id, "job.cancelled", waiting.attempt, {"reason": "cancelled before it ran"})
        return JobStatus.CANCELLED
    running = db.session.execute(
        update(Job)
        .where(Job.id == job_id, Job.tenant_id == tenant_id, Job.status == JobStatus.RUNNING)
        .values(status=JobStatus.CANCELLING, cancel_requested=True)
        .returning(Job.attempt)
    ).one_or_none()
    if running is not None:
        add_event(job_id, "job.cancelling", running.attempt)
        return JobStatus.CANCELLING
    status = db.session.scalar(select(Job.status).where(Job.id == job_id, Job.tenant_id == tenant_id))
    return None if status is None else JobStatus(status)


def redrive(dead_letter_id: uuid.UUID, tenant_id: uuid.UUID, budget: int) -> uuid.UUID | None:
    """Queue a dead-lettered job again with a fresh budget of ``budget`` more attempts.

    The attempt counter keeps growing (it is the fence), so the budget is added on top of it.
    Returns the job id, or None when the letter is unknown to the tenant or already redriven.
    """
    letter = db.session.execute(
        update(DeadLetter)
        .where(
            DeadLetter.id == dead_letter_id,
            DeadLetter.tenant_id == tenant_id,
            DeadLetter.redriven_at.is_(None),
        )
        .values(redriven_at=func.now())
        .returning(DeadLetter.job_id)
    ).one_or_none()
    if letter is None:
        return None
    row = db.session.execute(
        update(Job)
        .where(Job.id == letter.job_id, Job.status == JobStatus.FAILED)
        .values(
            status=JobStatus.QUEUED,
            max_attempts=Job.attempt + budget,
            dead_lettered=False,
            error=None,
            cancel_requested=False,
            queued_at=func.now(),
            published_at=None,
            finished_at=None,
        )
        .returning(Job.attempt)
    ).one_or_none()
    if row is None:
        return None
    add_event(letter.job_id, "job.redriven", row.attempt, {"additionalAttempts": budget})
    return letter.job_id


def rescue(job_id: uuid.UUID, attempt: int) -> bool:
    """Take back a job whose lease expired: requeue it, or fail it once its attempts are spent.

    Returns True when the job was requeued (and must be published). A worker that lost its process
    mid-job counts as a used attempt, so a poison job that kills workers stops at ``max_attempts``.
    """
    job = db.session.execute(
        select(Job.max_attempts, Job.cancel_requested, Job.tenant_id, Job.definition_key).where(
            Job.id == job_id, Job.attempt == attempt
        )
    ).one_or_none()
    if job is None:
        return False
    if job.cancel_requested:
        cancel_running(job_id, attempt, "cancelled; its worker stopped")
        return False
    if attempt >= job.max_attempts:
        reason = "worker lost (lease expired) and no attempts left"
        _fail(job_id, attempt, reason, job.tenant_id, job.definition_key, from_statuses=JOB_ACTIVE)
        return False
    done = db.session.execute(
        _fenced(job_id, attempt, *JOB_ACTIVE).values(
            status=JobStatus.QUEUED, queued_at=func.now(), published_at=None, lease_expires_at=None
        )
    )
    if rows_changed(done) != 1:
        return False
    add_event(job_id, "job.rescued", attempt, {"reason": "lease expired"})
    return True
