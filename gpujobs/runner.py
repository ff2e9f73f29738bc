"""Runs one claimed job: the handler, its context, its lease heartbeat, and the outcome.

This is what the ``run_job`` task calls. It turns the handler's return or exception into exactly one
fenced transition (``gpujobs.jobs``), then fires hooks and webhooks for terminal outcomes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from flask import Flask, current_app
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from gpujobs import jobs, logs, webhooks
from gpujobs.dispatch import send_task
from gpujobs.exceptions import JobCancelled, PermanentError, TransientError
from gpujobs.extensions import db
from gpujobs.models import Job
from gpujobs.registry import Definition, Handoff, get_definition
from gpujobs.states import JOB_TERMINAL, JobStatus

log = logging.getLogger(__name__)

# The longest wait a remote's Retry-After can impose before the next attempt. A server may send any
# number ("1e300", an HTTP date in the year 9999); a due time past the year 9999 raised OverflowError
# and lost the attempt until the lease rescue. A day is already longer than any honest rate limit.
MAX_RETRY_AFTER_SECONDS = 24 * 60 * 60


class RunContext:
    """The ``JobContext`` a handler receives: events, progress and cancellation for one attempt."""

    def __init__(self, claim: jobs.Claim, definition: Definition) -> None:
        self.job_id = str(claim.job_id)
        self.attempt = claim.attempt
        self.tenant = str(claim.tenant_id)
        self.definition = definition
        self._claim = claim
        self._cancelled = False
        self._checked_at = 0.0
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
    """Renews the lease every ``GPUJOBS_HEARTBEAT_INTERVAL_SECONDS`` (at most a third of the lease) while the
    handler runs, in its own app context; each renewal also reads the cancel flag."""

    def __init__(self, app: Flask, ctx: RunContext, lease_seconds: int) -> None:
        super().__init__(name=f"heartbeat-{ctx.job_id}", daemon=True)
        self._app, self._ctx, self._lease_seconds = app, ctx, lease_seconds
        self._interval_seconds = min(app.config["GPUJOBS_HEARTBEAT_INTERVAL_SECONDS"], lease_seconds / 3)
        self._stop_event = threading.Event()

    def run(self) -> None:
        with self._app.app_context():
            while not self._stop_event.wait(self._interval_seconds):
                try:
                    flag = jobs.renew_lease(
                        uuid.UUID(self._ctx.job_id), self._ctx.attempt, self._lease_seconds
                    )
                    db.session.commit()
                except Exception:  # a blip in PostgreSQL: try again next beat; the lease has slack
                    db.session.rollback()
                    log.warning("job %s: lease renewal failed, will retry", self._ctx.job_id, exc_info=True)
                    continue
                if flag is None or flag:
                    self._ctx.mark_cancelled()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def run_job(job_id: uuid.UUID) -> JobStatus | None:
    """Claim and run one job; returns its new status, or None when it was not ours to run."""
    row = db.session.execute(
        db.select(Job.definition_key, Job.definition_version).where(Job.id == job_id)
    ).one_or_none()
    if row is None:
        log.info("job %s: no such job (cleaned up?), message dropped", job_id)
        return None
    definition = get_definition(row.definition_key, row.definition_version)
    if definition is None:
        log.error("job %s: definition %s@%s is not registered here", job_id, *row)
        return None
    lease_seconds = current_app.config["GPUJOBS_LEASE_SECONDS"]
    claim = jobs.claim(
        job_id, definition, lease_seconds, current_app.config["GPUJOBS_TENANT_MAX_RUNNING_JOBS"]
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
        heartbeat.start()
        try:
            status = _execute(ctx, definition, claim)
        finally:
            heartbeat.stop()
        log.info("job %s: attempt %s ended %s", job_id, claim.attempt, status or "fenced out")
    return status


def _execute(ctx: RunContext, definition: Definition, claim: jobs.Claim) -> JobStatus | None:
    params = claim.params
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
            # The lease must outlive the wait before the follow-up task's first look.
            lease = current_app.config["GPUJOBS_LEASE_SECONDS"] + result.countdown_seconds
            jobs.renew_lease(claim.job_id, claim.attempt, lease)
            db.session.commit()
            _hand_off(claim, result)
            return JobStatus.RUNNING
        status = _store_success(definition, claim, result)
    if status in JOB_TERMINAL:
        webhooks.record_job_event(claim.job_id)
    db.session.commit()
    if status == JobStatus.SUCCEEDED:
        _hook(definition.on_success, ctx, params)
    elif status in (JobStatus.FAILED, JobStatus.RETRYING):
        _hook(definition.on_fail, ctx, params)
    if status in JOB_TERMINAL:
        _hook(definition.on_end, ctx, params)
        webhooks.publish_pending(claim.job_id)
    return status


def _hand_off(claim: jobs.Claim, handoff: Handoff) -> None:
    """Publish the follow-up task; if that fails, the lease expires and the rescue sweep reruns the job."""
    send_task(
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
) -> JobStatus | None:
    """Record success; a result PostgreSQL still refuses fails the job for good rather than looping."""
    try:
        return JobStatus.SUCCEEDED if jobs.succeed(claim.job_id, claim.attempt, storable(result)) else None
    except DBAPIError as exc:
        db.session.rollback()
        log.error("job %s: result could not be stored (%s)", claim.job_id, type(exc.orig).__name__)
        return _record_failure(definition, claim, PermanentError("the result could not be stored"))


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
    """Run an optional hook; a failing hook is logged, never allowed to change the job's outcome."""
    if hook is None:
        return
    try:
        hook(ctx, params)
    except Exception:
        log.exception("job %s: hook %s failed", ctx.job_id, getattr(hook, "__name__", hook))
