"""Runs one claimed job: the handler, its context, its lease heartbeat, and the outcome.

This is what the ``run_job`` task calls. It turns the handler's return or exception into exactly one
fenced transition (``gpujobs.jobs``), then fires hooks and webhooks for terminal outcomes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from flask import Flask, current_app
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from gpujobs import dispatch, jobs, logs, webhooks
from gpujobs.deadlines import DEADLINES
from gpujobs.exceptions import JobCancelled, PermanentError, TransientError
from gpujobs.extensions import db
from gpujobs.models import Job, JobRow
from gpujobs.registry import Definition, Handoff, get_definition
from gpujobs.states import JOB_ACTIVE, JOB_TERMINAL, JobStatus

log = logging.getLogger(__name__)

# The longest wait a remote's Retry-After can impose before the next attempt. A server may send any
# number ("1e300", an HTTP date in the year 9999); a due time past the year 9999 raised OverflowError
# and lost the attempt until the lease rescue. A day is already longer than any honest rate limit.
MAX_RETRY_AFTER_SECONDS = 24 * 60 * 60
# The exit status of a pool process ended to stop a handler that ignored its cancel request (EX_SOFTWARE).
EXIT_CODE_HANDLER_STOPPED = 70


class RunContext:
    """The ``JobContext`` a handler receives: events, progress and cancellation for one attempt."""

    def __init__(self, claim: jobs.Claim, definition: Definition) -> None:
        self.job_id = str(claim.job_id)
        self.attempt = claim.attempt
        self.tenant = str(claim.tenant_id)
        self.definition = definition
        self.params = claim.params
        self._claim = claim
        self._cancelled = False
        # The claim has just read the flag (it takes only a job not asked to cancel): the first check
        # need not read it again before the interval.
        self._checked_at = time.monotonic()
        self._check_interval_seconds = current_app.config["GPUJOBS_CANCEL_CHECK_INTERVAL_SECONDS"]

    def emit_event(self, event_type: str, data: dict[str, Any] | None = None) -> None:
        """Append ``job.<event_type>`` to the timeline at once (committed, visible to the API)."""
        jobs.add_event(self._claim.job_id, f"job.{event_type}", self.attempt, data)
        db.session.commit()

    def progress(self, percent: float, message: str | None = None, **data: Any) -> None:
        """Record progress as a number on the job and as a ``job.progress`` event."""
        percent = max(0.0, min(100.0, float(percent)))
        if not jobs.record_progress(self._claim.job_id, self.attempt, percent):
            self._cancelled = True  # fenced out: someone else owns the job now, so stop
        payload = {"percent": round(percent, 2), **({"message": message} if message else {}), **data}
        jobs.add_event(self._claim.job_id, "job.progress", self.attempt, payload)
        db.session.commit()

    def cancel_requested(self) -> bool:
        """True once cancellation was asked for (or the lease was lost); read from the row at most once per
        ``GPUJOBS_CANCEL_CHECK_INTERVAL_SECONDS``, so a tight loop calling it costs no query per turn."""
        now = time.monotonic()
        if not self._cancelled and now - self._checked_at >= self._check_interval_seconds:
            self._checked_at = now
            flag = db.session.scalar(
                db.select(Job.cancel_requested).where(
                    Job.id == self._claim.job_id, Job.attempt == self.attempt
                )
            )
            db.session.commit()
            self._cancelled = flag is None or bool(flag)
        return self._cancelled

    def raise_if_cancelled(self) -> None:
        """Raise ``JobCancelled`` at a safe point when cancellation was requested."""
        if self.cancel_requested():
            raise JobCancelled("cancelled on request")

    @contextlib.contextmanager
    def hold_job(self) -> Iterator[bool]:
        """Yield whether this attempt still owns the job, holding its row lock until the block ends."""
        try:
            yield jobs.hold(self._claim.job_id, self.attempt)
        finally:
            db.session.commit()  # ends the transaction: releases the lock

    def mark_cancelled(self) -> None:
        """Called by the heartbeat when it learns of a cancel request or a lost lease."""
        self._cancelled = True


class Heartbeat(threading.Thread):
    """Renews the lease while the handler runs, and stops a handler that ignores a cancel request.

    It reads the job's cancel flag every ``GPUJOBS_CANCEL_CHECK_INTERVAL_SECONDS`` and renews the lease every
    ``GPUJOBS_HEARTBEAT_INTERVAL_SECONDS`` (at most a third of the lease), in its own app context. A cancel
    request still unheeded ``GPUJOBS_CANCEL_GRACE_SECONDS`` after it was seen is enforced here: see
    ``_end_overdue``.
    """

    def __init__(self, app: Flask, ctx: RunContext, lease_seconds: int) -> None:
        super().__init__(name=f"heartbeat-{ctx.job_id}", daemon=True)
        self._app, self._ctx, self._lease_seconds = app, ctx, lease_seconds
        self._renew_every = min(app.config["GPUJOBS_HEARTBEAT_INTERVAL_SECONDS"], lease_seconds / 3)
        self._check_every = app.config["GPUJOBS_CANCEL_CHECK_INTERVAL_SECONDS"]
        self._tick = min(self._check_every, self._renew_every)
        self._grace_seconds: float = app.config["GPUJOBS_CANCEL_GRACE_SECONDS"]
        self._stop_event = threading.Event()
        self._guard = threading.Lock()  # between a late start and a stop
        self._late_start: int | None = None

    def begin(self) -> None:
        """Start beating one tick from now, the time of the first beat anyway: a job that ends sooner
        (most do) costs no thread. The process's deadline thread starts this one then."""
        self._late_start = DEADLINES.arm(time.monotonic() + self._tick, self._start_if_running)

    def _start_if_running(self) -> None:
        with self._guard:
            if not self._stop_event.is_set():
                self.start()

    def run(self) -> None:
        renew_every, tick = self._renew_every, self._tick
        # Started a tick after the job (``begin``): beat at once, renew when the job is renew_every old.
        delay, renew_at = 0.0, time.monotonic() + renew_every - tick
        cancel_seen_at: float | None = None
        with self._app.app_context():
            while not self._stop_event.wait(delay):
                delay = tick
                now = time.monotonic()
                try:
                    flag = self._beat(renew=now >= renew_at)
                except Exception:  # a blip in PostgreSQL: try again next beat; the lease has slack
                    db.session.rollback()
                    log.warning("job %s: lease renewal failed, will retry", self._ctx.job_id, exc_info=True)
                    continue
                if now >= renew_at:
                    renew_at = now + renew_every
                if flag is None or flag:
                    self._ctx.mark_cancelled()
                if flag:
                    cancel_seen_at = now if cancel_seen_at is None else cancel_seen_at
                    if now - cancel_seen_at >= self._grace_seconds and _end_overdue(
                        self._ctx, self._grace_seconds
                    ):
                        return

    def _beat(self, *, renew: bool) -> bool | None:
        """The cancel flag, renewing the lease on the way when due; None once the lease is not ours."""
        job_id = uuid.UUID(self._ctx.job_id)
        if renew:
            flag = jobs.renew_lease(job_id, self._ctx.attempt, self._lease_seconds)
        else:
            flag = jobs.cancel_flag(job_id, self._ctx.attempt)
        db.session.commit()
        return flag

    def stop(self) -> None:
        if self._late_start is not None:
            DEADLINES.disarm(self._late_start)
        with self._guard:
            self._stop_event.set()
            started = self.ident is not None
        if started:
            self.join(timeout=5)


# Set in prefork pool processes only (``gpujobs.tasks``): there, and nowhere else, a handler that ignores a
# cancel request may be stopped by ending its process. In a thread or solo pool, or in a test that calls
# ``run_job`` directly, ending the process would end every other job with it, so the job is only ended.
_may_end_process = False


def allow_ending_process() -> None:
    """Called when a prefork pool process starts: it runs one job at a time, so it may end for one."""
    global _may_end_process
    _may_end_process = True


def _end_overdue(ctx: RunContext, grace_seconds: float) -> bool:
    """End a job whose handler ignored its cancel request for the grace period, then stop the handler.

    The job ends ``cancelled`` by the usual fenced write, so a handler that finishes later has its success
    refused. Then, in a prefork pool process, the process exits: its uncommitted writes die with its
    connection and Celery starts a fresh process; the redelivered message finds the job ended and is
    dropped. If the write fails (PostgreSQL away, or the handler holds the row's lock), the process exits
    all the same and the rescue sweep ends the job ``cancelled`` once its lease expires. A watchdog
    thread in the very process that runs this attempt is used rather than ``revoke(terminate=True)``: it
    needs no task id on the job, no broadcast through the broker, and cannot hit a process that has moved
    on to another task. Returns False when there was nothing to end (the job finished or moved on).
    """
    job_id = uuid.UUID(ctx.job_id)
    reason = f"cancelled: still running {grace_seconds:g} s after the cancel request, so it was stopped"
    ended: bool | None  # None: not known, the write failed
    try:
        db.session.execute(text("SET LOCAL lock_timeout = '2s'"))
        ended = jobs.cancel_running(job_id, ctx.attempt, reason)
        if ended:
            webhooks.record_job_event(job_id)
        db.session.commit()
    except SQLAlchemyError:
        db.session.rollback()
        log.warning("job %s: could not record the overdue cancellation", job_id, exc_info=True)
        ended = None
    if ended is False:
        return False
    if ended:
        log.warning(
            "job %s: handler ignored the cancel request for %g s; job cancelled", job_id, grace_seconds
        )
        _hook(ctx.definition.on_end, ctx, ctx.params)
        webhooks.publish_pending(job_id)
    if _may_end_process:
        log.warning("job %s: ending pool process %s to stop its handler", job_id, os.getpid())
        os._exit(EXIT_CODE_HANDLER_STOPPED)
    return bool(ended)  # not recorded (and no process to end here): the next tick tries again


def run_job(job_id: uuid.UUID) -> JobStatus | None:
    """Claim and run one job; returns its new status, or None when it was not ours to run."""
    row = jobs.to_claim(job_id)
    if row is None:
        log.info("job %s: no such job (cleaned up?), message dropped", job_id)
        return None
    definition = get_definition(row.definition_key, row.definition_version)
    if definition is None:
        log.error("job %s: definition %s@%s is not registered here", job_id, *row[:2])
        return None
    lease_seconds = current_app.config["GPUJOBS_LEASE_SECONDS"]
    claim = jobs.claim(
        job_id, definition, lease_seconds, current_app.config["GPUJOBS_TENANT_MAX_RUNNING_JOBS"], owner=row
    )
    db.session.commit()
    if claim is None:
        log.info("job %s: not claimable (duplicate delivery, cancelled or at its limit)", job_id)
        return None
    with logs.bound(tenant=claim.tenant_id):
        log.info("job %s: attempt %s of %s started", job_id, claim.attempt, definition.ref)
        ctx = RunContext(claim, definition)
        # Flask types current_app as the Flask it stands for, hiding the proxy's own _get_current_object.
        heartbeat = Heartbeat(current_app._get_current_object(), ctx, lease_seconds)  # type: ignore[attr-defined]
        heartbeat.begin()
        try:
            status = _execute(ctx, definition, claim)
        finally:
            heartbeat.stop()
        log.info("job %s: attempt %s ended %s", job_id, claim.attempt, status or "fenced out")
    return status


def _execute(ctx: RunContext, definition: Definition, claim: jobs.Claim) -> JobStatus | None:
    params = claim.params
    ended: JobRow | None = None  # the row as a success left it
    try:
        _hook(definition.on_start, ctx, params)
        result = definition.handler(ctx, params)
    except JobCancelled as exc:
        db.session.rollback()
        cancelled = jobs.cancel_running(claim.job_id, claim.attempt, str(exc))
        status = JobStatus.CANCELLED if cancelled else None
    except Exception as exc:  # every failure, expected or not, becomes one recorded outcome
        db.session.rollback()
        status = _record_failure(definition, claim, exc)
    else:
        if isinstance(result, Handoff):
            # The lease must outlive the wait before the follow-up task's first look. The handler's last
            # writes (the create step's new instance, its event and webhook) commit with it.
            lease = current_app.config["GPUJOBS_LEASE_SECONDS"] + result.countdown_seconds
            jobs.renew_lease(claim.job_id, claim.attempt, lease)
            deliveries = webhooks.pending(claim.job_id)
            db.session.commit()
            webhooks.publish(claim.job_id, deliveries)
            _hand_off(claim, result)
            return JobStatus.RUNNING
        status, ended = _store_success(definition, claim, result)
    due: list[uuid.UUID] = []
    # A success with no receiver has no event to record and nothing of this attempt left untried (a
    # handler that records its own delivery, ``webhook.send``, tries it before it returns): no reads.
    if status in JOB_TERMINAL and (ended is None or ended.webhook_url):
        webhooks.record_job_event(claim.job_id, ended)
        due = webhooks.pending(claim.job_id)
    # Ended, or waiting for a retry: its tenant's next jobs take the slot, committed with the outcome.
    freed = dispatch.top_up(claim.job_id) if status is not None and status not in JOB_ACTIVE else []
    dispatch.commit_and_publish(freed, marked=True)
    if status == JobStatus.SUCCEEDED:
        _hook(definition.on_success, ctx, params)
    elif status in (JobStatus.FAILED, JobStatus.RETRYING):
        _hook(definition.on_fail, ctx, params)
    if status in JOB_TERMINAL:
        _hook(definition.on_end, ctx, params)
        webhooks.publish(claim.job_id, due)
    return status


def _hand_off(claim: jobs.Claim, handoff: Handoff) -> None:
    """Publish the follow-up task; if that fails, the lease expires and the rescue sweep reruns the job."""
    dispatch.send_task(
        handoff.task,
        [str(claim.job_id), claim.attempt, *handoff.args],
        f"job {claim.job_id} hand-off to {handoff.task}",
        countdown=handoff.countdown_seconds or None,
    )


def storable(value: Any) -> Any:
    """The value with U+0000 replaced: PostgreSQL text and jsonb cannot hold it (a handler's result or
    error may carry one, e.g. a remote body or FFmpeg's stderr)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [storable(item) for item in value]
    return value


def _store_success(
    definition: Definition, claim: jobs.Claim, result: dict[str, Any] | None
) -> tuple[JobStatus | None, JobRow | None]:
    """Record success; a result PostgreSQL still refuses fails the job for good rather than looping.

    Success is refused once a cancel was recorded while the job ran: it ends cancelled instead, its
    result discarded (or not at all, when another attempt or the grace watchdog ended it first). With
    the status comes the succeeded row as ``succeed`` returned it (None otherwise), so it is not re-read.
    """
    try:
        job = jobs.succeed(claim.job_id, claim.attempt, storable(result))
        if job is not None:
            return JobStatus.SUCCEEDED, job
        reason = "cancelled on request; its result was discarded"
        cancelled = jobs.cancel_running(claim.job_id, claim.attempt, reason)
        return (JobStatus.CANCELLED if cancelled else None), None
    except DBAPIError as exc:
        db.session.rollback()
        log.error("job %s: result could not be stored (%s)", claim.job_id, type(exc.orig).__name__)
        return _record_failure(definition, claim, PermanentError("the result could not be stored")), None


def _record_failure(definition: Definition, claim: jobs.Claim, exc: BaseException) -> JobStatus | None:
    """Turn an exception into ``retrying`` or ``failed``: permanent errors never retry."""
    if isinstance(exc, SoftTimeLimitExceeded):
        error = f"timed out after {definition.timeout_seconds} s"
    elif isinstance(exc, (PermanentError, TransientError)):
        error = str(exc) or type(exc).__name__
    elif isinstance(exc, SQLAlchemyError):
        # Its message carries the SQL and its parameters: internals for the log, not for the job's owner.
        log.exception("job %s: database error", claim.job_id)
        cause = type(getattr(exc, "orig", None) or exc).__name__
        error = f"database error ({cause}); the worker log has the details"
    else:
        log.exception("job %s: handler raised an unexpected error", claim.job_id)
        error = f"{type(exc).__name__}: {exc}"
    return jobs.fail_attempt(
        claim.job_id,
        claim.attempt,
        storable(error[:2000]),
        retryable=not isinstance(exc, PermanentError),
        retry_delay_seconds=_retry_delay_seconds(definition, claim.attempt, exc),
    )


def _retry_delay_seconds(definition: Definition, attempt: int, exc: BaseException) -> float:
    """The remote's Retry-After, within [0, MAX_RETRY_AFTER_SECONDS]; else the definition's backoff, jittered
    and capped by the settings."""
    retry_after = getattr(exc, "retry_after_seconds", None)
    if retry_after is None or math.isnan(retry_after):
        return definition.retry.delay_seconds(
            attempt,
            jitter_fraction=current_app.config["GPUJOBS_BACKOFF_JITTER"],
            cap_seconds=current_app.config["GPUJOBS_BACKOFF_MAX_SECONDS"],
        )
    return min(max(retry_after, 0.0), MAX_RETRY_AFTER_SECONDS)


def _hook(hook: Any, ctx: RunContext, params: dict[str, Any]) -> None:
    """Run an optional hook; a failing hook is logged, never allowed to change the job's outcome.

    What the hook wrote is committed here (a hook that wrote nothing costs no round trip); a failing
    hook's writes are rolled back."""
    if hook is None:
        return
    try:
        hook(ctx, params)
        db.session.commit()
    except Exception:
        db.session.rollback()
        log.exception("job %s: hook %s failed", ctx.job_id, getattr(hook, "__name__", hook))
