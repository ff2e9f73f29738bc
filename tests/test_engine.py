"""The job engine end to end: real PostgreSQL, Redis and Celery worker processes."""

from __future__ import annotations

import http.server
import os
import signal
import threading
import time
import uuid
from itertools import pairwise

import psycopg2
import psycopg2.errors
import pytest
from flask import Flask
from sqlalchemy import select
from support.polling import wait_for
from support.rows import event_types, job_row
from support.tenants import set_limits

from gpujobs import enqueue, jobs, operations, runner
from gpujobs.dispatch import Dispatch, publish
from gpujobs.exceptions import Conflict, NotFound
from gpujobs.extensions import db
from gpujobs.models import DeadLetter, Job, JobEvent
from gpujobs.registry import get_definition


def submit(app: Flask, tenant: dict, key: str, params: dict | None = None, **options) -> uuid.UUID:
    with app.app_context():
        job = operations.submit(
            uuid.UUID(tenant["id"]), key, 1, params or {}, operations.JobOptions(**options)
        )
        job_id = job.id
    return job_id


def status_is(app: Flask, job_id: uuid.UUID, *statuses: str):
    return lambda: job_row(app, job_id).status in statuses


def sweeping_until(app: Flask, predicate):
    """A predicate that first runs the dispatch sweep, standing in for beat's tick."""
    from gpujobs.sweeps import dispatch_due

    def check() -> bool:
        with app.app_context():
            dispatch_due()
        return predicate()

    return check


def test_a_job_runs_once_to_succeeded_with_its_result_and_timeline(app, tenant, worker):
    job_id = submit(app, tenant, "echo", {"message": "hi"})
    wait_for(status_is(app, job_id, "succeeded"))
    job = job_row(app, job_id)
    assert job.attempt == 1 and job.result is not None and job.finished_at is not None
    assert job.updated_at == job.finished_at  # its last change was its success
    assert event_types(app, job_id) == ["job.queued", "job.started", "job.succeeded"]


def test_a_duplicate_delivery_of_the_same_message_runs_the_handler_once(app, tenant, worker, app_context):
    job_id = submit(app, tenant, "test.sleep", {"seconds": 0.3})
    for _ in range(3):  # the same id published again, as a redelivery would
        publish(Dispatch(job_id, 1, 60, uuid.UUID(tenant["id"])))
    wait_for(status_is(app, job_id, "succeeded"))
    time.sleep(1.0)  # give the duplicates time to be consumed
    types = event_types(app, job_id)
    assert types.count("job.started") == 1 and types.count("job.effect") == 1


def test_a_stale_attempt_cannot_overwrite_newer_state(app_context, tenant):
    definition = get_definition("test.sleep", 1)
    job = enqueue.new_job(tenant_id=uuid.UUID(tenant["id"]), definition=definition, params={}, priority=1)
    db.session.commit()
    first = jobs.claim(job.id, definition, lease_seconds=60)
    db.session.commit()
    assert jobs.rescue(job.id, first.attempt)  # as if its lease had expired
    second = jobs.claim(job.id, definition, lease_seconds=60)
    db.session.commit()
    assert second.attempt == first.attempt + 1
    assert jobs.succeed(job.id, first.attempt, {"late": True}) is None
    assert jobs.renew_lease(job.id, first.attempt, 60) is None
    assert jobs.succeed(job.id, second.attempt, {"fresh": True}) is not None
    db.session.commit()
    assert db.session.get(Job, job.id).result == {"fresh": True}


def test_a_worker_killed_mid_job_is_rescued_after_its_lease_and_the_job_completes(app, tenant, start_worker):
    from gpujobs.sweeps import dispatch_due, rescue_stuck

    victim = start_worker(concurrency=1, name="victim")
    job_id = submit(app, tenant, "test.sleep", {"seconds": 3})
    wait_for(status_is(app, job_id, "running"))
    time.sleep(0.5)
    for pid in [victim.process.pid, *victim.child_pids()]:
        os.kill(pid, signal.SIGKILL)
    start_worker(concurrency=1, name="rescuer")
    started = time.monotonic()

    def rescued_and_done() -> bool:
        # a fresh context per poll: it sees what the worker committed since the last one
        with app.app_context():
            rescue_stuck()
            dispatch_due()
        return job_row(app, job_id).status == "succeeded"

    wait_for(rescued_and_done, timeout=40, interval=0.5)
    assert time.monotonic() - started < 40
    types = event_types(app, job_id)
    assert "job.rescued" in types and types.count("job.effect") == 1
    assert job_row(app, job_id).attempt == 2


def test_transient_failures_retry_with_backoff_then_succeed(app, tenant, worker, app_context):
    job_id = submit(app, tenant, "test.flaky")
    wait_for(sweeping_until(app, status_is(app, job_id, "succeeded")), timeout=30, interval=0.2)
    retries = db.session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.type == "job.retrying")
        .order_by(JobEvent.id)
    ).all()
    for event in retries:
        delay = (jobs.datetime.fromisoformat(event.data["nextRetryAt"]) - event.created_at).total_seconds()
        # RetryPolicy(0.5, 1.0) with full jitter: attempt 1 waits 0.25-0.5 s, attempt 2 0.5-1 s
        assert 0.2 <= delay <= 1.1, delay
    assert len(retries) == 2
    assert job_row(app, job_id).attempt == 3


def test_exhausted_attempts_land_in_the_dead_letter_queue_and_redrive_runs_again(
    app, tenant, worker, app_context
):
    job_id = submit(app, tenant, "failing", {}, max_attempts=2)
    wait_for(sweeping_until(app, status_is(app, job_id, "failed")), timeout=40, interval=0.3)
    letter = db.session.scalar(select(DeadLetter).where(DeadLetter.job_id == job_id))
    assert letter is not None and letter.attempts == 2
    assert operations.redrive(letter.id, uuid.UUID(tenant["id"]), 1) == job_id
    with pytest.raises(Conflict):  # only once
        operations.redrive(letter.id, uuid.UUID(tenant["id"]), 1)
    wait_for(
        lambda: job_row(app, job_id).attempt == 3 and job_row(app, job_id).status == "failed", timeout=30
    )
    assert job_row(app, job_id).dead_lettered
    assert "job.redriven" in event_types(app, job_id)


def test_a_queued_job_cancels_at_once_and_never_runs(app, tenant, app_context):
    job_id = submit(app, tenant, "echo", {"message": "never"})
    assert operations.cancel(job_id, uuid.UUID(tenant["id"])) == "cancelled"
    with pytest.raises(NotFound):  # another tenant cannot see it
        operations.cancel(job_id, uuid.uuid4())
    assert job_row(app, job_id).status == "cancelled"


def test_a_running_job_is_asked_to_stop_and_ends_cancelled(app, tenant, worker, app_context):
    job_id = submit(app, tenant, "test.sleep", {"seconds": 30})
    wait_for(status_is(app, job_id, "running"))
    assert operations.cancel(job_id, uuid.UUID(tenant["id"])) == "cancelling"
    wait_for(status_is(app, job_id, "cancelled"), timeout=10)
    assert "job.effect" not in event_types(app, job_id)


def test_a_critical_job_overtakes_a_backlog_of_low_jobs(app, tenant, start_worker, app_context):
    set_limits(app, tenant, max_priority=jobs.PRIORITY_LEVELS["critical"])
    backlog = [submit(app, tenant, "echo", {"message": str(i)}, priority="low") for i in range(300)]
    urgent = submit(app, tenant, "echo", {"message": "urgent"}, priority="critical")
    start_worker(concurrency=1, name="single")
    wait_for(status_is(app, urgent, "succeeded"), timeout=60)
    urgent_started = job_row(app, urgent).started_at
    started_before = db.session.scalar(
        select(db.func.count()).where(Job.id.in_(backlog), Job.started_at < urgent_started)
    )
    # Compared by start times, not by what finished when the test looked (the backlog keeps running).
    # A worker reads the queues in priority order, so the critical job goes first; one low message may
    # already be in hand when it arrives.
    assert started_before <= 1, started_before


def test_a_concurrency_limit_holds_across_two_worker_processes(app, tenant, start_worker):
    start_worker(concurrency=2, name="a")
    start_worker(concurrency=2, name="b")
    ids = [submit(app, tenant, "test.limited", {"seconds": 0.5}) for _ in range(4)]
    all_done = lambda: all(job_row(app, job_id).status == "succeeded" for job_id in ids)  # noqa: E731
    wait_for(sweeping_until(app, all_done), timeout=60, interval=0.3)
    spans = sorted((job_row(app, i).started_at, job_row(app, i).finished_at) for i in ids)
    for (_, earlier_end), (later_start, _) in pairwise(spans):
        assert later_start >= earlier_end


def test_a_database_error_in_a_handler_is_recorded_without_its_sql_or_parameters(app, tenant, app_context):
    job_id = submit(app, tenant, "test.db_error")
    assert runner.run_job(job_id) == "failed"
    error = job_row(app, job_id).error
    assert error.startswith("database error (UndefinedTable)")
    assert "SELECT" not in error and "hunter2" not in error


def test_a_result_with_a_nul_character_is_stored_with_it_replaced(app, tenant, worker):
    job_id = submit(app, tenant, "test.nul")
    wait_for(status_is(app, job_id, "succeeded", "failed"))
    job = job_row(app, job_id)
    assert job.status == "succeeded" and job.result == {"body": "before\ufffdafter"}


class _RateLimited(http.server.BaseHTTPRequestHandler):
    """Answers every request 429 with the Retry-After the test put in the path (``/<value>``)."""

    def do_GET(self) -> None:
        self.send_response(429)
        self.send_header("Retry-After", self.path.lstrip("/"))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.mark.parametrize("retry_after", ["1e300", "inf", "99999999999999"])
def test_a_huge_retry_after_from_a_remote_server_is_capped_and_the_job_retries(app, tenant, retry_after):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RateLimited)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/{retry_after}"
        job_id = submit(app, tenant, "call.api", {"endpoint": endpoint})
        with app.app_context():
            assert runner.run_job(job_id) == "retrying"
            db.session.remove()
    finally:
        server.shutdown()
        server.server_close()
    job = job_row(app, job_id)
    wait = (job.next_retry_at - job.started_at).total_seconds()
    assert abs(wait - runner.MAX_RETRY_AFTER_SECONDS) < 60  # the attempt took well under a minute


def test_only_the_attempt_that_owns_a_job_holds_it_and_no_one_changes_the_job_meanwhile(app, tenant):
    job_id = submit(app, tenant, "test.sleep")
    with app.app_context():
        definition = get_definition("test.sleep", 1)
        claim = jobs.claim(job_id, definition, 60)
        db.session.commit()
        ctx = runner.RunContext(claim, definition)
        other = psycopg2.connect(app.config["DATABASE_URL"])
        try:
            with other.cursor() as cursor:
                cursor.execute("SET lock_timeout = '200ms'")
                with ctx.hold_job() as held:
                    assert held
                    with pytest.raises(psycopg2.errors.LockNotAvailable):
                        cursor.execute("UPDATE jobs SET attempt = attempt + 1 WHERE id = %s", (str(job_id),))
                    other.rollback()
                cursor.execute("UPDATE jobs SET attempt = attempt + 1 WHERE id = %s", (str(job_id),))
                other.commit()  # a newer attempt took the job over
            with ctx.hold_job() as held:
                assert not held
        finally:
            other.close()
            db.session.remove()
