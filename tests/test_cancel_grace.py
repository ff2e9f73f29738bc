"""Cancellation with a grace period: a handler that ignores the flag is stopped, and never succeeds."""

from __future__ import annotations

import time
import uuid

from flask import Flask
from support.polling import wait_for
from support.rows import event_types, job_row

from gpujobs import enqueue, jobs, operations, runner
from gpujobs.extensions import db
from gpujobs.registry import get_definition
from gpujobs.states import JobStatus

GRACE_SECONDS = "1"


def submit(app: Flask, tenant: dict, key: str, params: dict) -> uuid.UUID:
    with app.app_context():
        return operations.submit(uuid.UUID(tenant["id"]), key, 1, params).id


def cancel(app: Flask, tenant: dict, job_id: uuid.UUID) -> JobStatus:
    with app.app_context():
        return operations.cancel(job_id, uuid.UUID(tenant["id"]))


def test_a_handler_that_ignores_the_cancel_request_is_stopped_after_the_grace_period(
    app, tenant, start_worker
):
    worker = start_worker(concurrency=1, GPUJOBS_CANCEL_GRACE_SECONDS=GRACE_SECONDS)
    job_id = submit(app, tenant, "test.stubborn", {"seconds": 30})
    wait_for(lambda: job_row(app, job_id).status == JobStatus.RUNNING)
    requested = time.monotonic()
    assert cancel(app, tenant, job_id) == JobStatus.CANCELLING

    wait_for(lambda: job_row(app, job_id).status == JobStatus.CANCELLED, timeout=15)
    assert time.monotonic() - requested < 10  # the grace period and a tick or two, not the 30 s sleep
    job = job_row(app, job_id)
    assert job.attempt == 1 and job.result is None and "was stopped" in job.error
    assert event_types(app, job_id)[-1] == "job.cancelled"
    wait_for(lambda: "ending pool process" in worker.log())

    # The pool process that held it was replaced, and the worker goes on running jobs.
    next_id = submit(app, tenant, "test.sleep", {"seconds": 0.1})
    wait_for(lambda: job_row(app, next_id).status == JobStatus.SUCCEEDED, timeout=30)
    assert "job.effect" not in event_types(app, job_id)  # the stopped handler's effect never happened


def test_a_handler_that_stops_within_the_grace_period_is_cancelled_the_cooperative_way(
    app, tenant, start_worker
):
    worker = start_worker(concurrency=1, GPUJOBS_CANCEL_GRACE_SECONDS="30")
    job_id = submit(app, tenant, "test.sleep", {"seconds": 30})
    wait_for(lambda: job_row(app, job_id).status == JobStatus.RUNNING)
    cancel(app, tenant, job_id)
    wait_for(lambda: job_row(app, job_id).status == JobStatus.CANCELLED, timeout=10)
    assert job_row(app, job_id).error == "cancelled on request"
    assert "ending pool process" not in worker.log()


def test_a_job_that_finished_before_the_cancel_request_stays_as_it_finished(app, tenant, worker):
    job_id = submit(app, tenant, "test.sleep", {"seconds": 0})
    wait_for(lambda: job_row(app, job_id).status == JobStatus.SUCCEEDED)
    assert cancel(app, tenant, job_id) == JobStatus.SUCCEEDED
    assert job_row(app, job_id).status == JobStatus.SUCCEEDED


def claimed(tenant: dict) -> jobs.Claim:
    definition = get_definition("test.stubborn", 1)
    job = enqueue.new_job(tenant_id=uuid.UUID(tenant["id"]), definition=definition, params={}, priority=1)
    db.session.commit()
    claim = jobs.claim(job.id, definition, lease_seconds=60)
    db.session.commit()
    return claim


def test_success_is_refused_once_a_cancel_was_recorded_while_the_job_ran(app, app_context, tenant):
    claim = claimed(tenant)
    jobs.request_cancel(claim.job_id, claim.tenant_id)
    db.session.commit()
    assert not jobs.succeed(claim.job_id, claim.attempt, {"done": True})

    status, _ = runner._store_success(get_definition("test.stubborn", 1), claim, {"done": True})
    db.session.commit()
    job = job_row(app, claim.job_id)
    assert status == JobStatus.CANCELLED and job.status == JobStatus.CANCELLED and job.result is None


def test_the_watchdog_ends_an_overdue_job_in_process_without_ending_a_process_it_may_not(
    app, app_context, tenant
):
    claim = claimed(tenant)
    jobs.request_cancel(claim.job_id, claim.tenant_id)
    db.session.commit()
    ctx = runner.RunContext(claim, get_definition("test.stubborn", 1))
    assert runner._end_overdue(ctx, 1.0)  # this test process is no pool process: it goes on
    assert not runner._end_overdue(ctx, 1.0)  # already ended: nothing to do
    assert job_row(app, claim.job_id).status == JobStatus.CANCELLED
