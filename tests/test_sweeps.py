"""The beat sweeps, called directly with time injected through the rows they read."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from datetime import timedelta

import pytest
import redis
from sqlalchemy import event, func, select, text, update
from support.polling import wait_for
from support.tenants import set_limits

from gpujobs import create_app, enqueue, jobs, operations
from gpujobs.dev.embedded import free_port
from gpujobs.dev.faults import lose_message
from gpujobs.extensions import db
from gpujobs.models import DeadLetter, Job, JobEvent
from gpujobs.registry import get_definition
from gpujobs.sweeps import clean_up, dispatch_due, rescue_stuck


def queued_jobs(tenant_id: str, count: int, key: str = "echo", params: dict | None = None) -> list[uuid.UUID]:
    """Queued jobs whose message never went out (as after a crash between commit and publish)."""
    definition = get_definition(key, 1)
    ids = [
        enqueue.new_job(
            tenant_id=uuid.UUID(tenant_id),
            definition=definition,
            params=definition.validate_params(params or {"message": "x"}),
            priority=1,
        ).id
        for _ in range(count)
    ]
    db.session.commit()
    return ids


def running_jobs(tenant_id: str, count: int, **values: object) -> list[uuid.UUID]:
    """Jobs claimed by a worker that then vanished; ``values`` override columns (time injection)."""
    ids = queued_jobs(tenant_id, count, "test.sleep", {"seconds": 0})
    definition = get_definition("test.sleep", 1)
    for job_id in ids:
        jobs.claim(job_id, definition, lease_seconds=60)
    db.session.execute(update(Job).where(Job.id.in_(ids)).values(**values))
    db.session.commit()
    return ids


def queue_length(app, queue: str = "normal") -> int:
    return redis.Redis.from_url(app.config["REDIS_URL"]).llen(queue)


def in_parallel(app, sweep, copies: int = 2) -> None:
    """Run the same sweep in several threads at once, each with its own session and connection."""
    barrier = threading.Barrier(copies)

    def run() -> None:
        with app.app_context():
            barrier.wait()
            sweep()

    threads = [threading.Thread(target=run) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)


def test_the_dispatch_sweep_publishes_a_job_whose_message_never_went_out(app, app_context, tenant):
    [job_id] = queued_jobs(tenant["id"], 1)
    assert queue_length(app) == 0
    assert dispatch_due() == 1
    assert queue_length(app) == 1
    assert db.session.get(Job, job_id).published_at is not None
    assert dispatch_due() == 0  # published and its queue holds it: nothing to do


def test_two_dispatch_sweeps_at_once_publish_each_job_once(app, app_context, tenant):
    set_limits(app, tenant, max_running_jobs=200)  # its window: all 200 may go out
    queued_jobs(tenant["id"], 200)
    in_parallel(app, dispatch_due)
    assert queue_length(app) == 200


@pytest.mark.slow
def test_a_batch_the_broker_refuses_stays_unpublished_for_the_next_sweep(app, tenant):
    # separate contexts: the middle step runs in a second app, whose Redis is down
    with app.app_context():
        ids = queued_jobs(tenant["id"], 5)
    down = create_app({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    with down.app_context():
        assert dispatch_due() == 5  # taken, marked, sent as one batch: the flush fails
        unpublished = db.session.scalars(select(Job.published_at).where(Job.id.in_(ids))).all()
    assert unpublished == [None] * 5
    with app.app_context():
        assert dispatch_due() == 5  # the next tick, with Redis back
    assert queue_length(app) == 5


def test_a_redis_flush_while_jobs_wait_loses_nothing(app, tenant, start_worker):
    # separate contexts: each step sees what the one before committed, in a fresh session
    with app.app_context():
        ids = [
            operations.submit(uuid.UUID(tenant["id"]), "echo", 1, {"message": str(i)}).id for i in range(20)
        ]
    redis.Redis.from_url(app.config["REDIS_URL"]).flushall()  # Redis restarted empty
    with app.app_context():
        db.session.execute(update(Job).values(published_at=func.now() - text("interval '1 minute'")))
        db.session.commit()
        assert dispatch_due() == 20
    start_worker()

    def all_succeeded() -> bool:
        with app.app_context():
            done = db.session.scalar(select(func.count()).where(Job.id.in_(ids), Job.status == "succeeded"))
        return done == 20

    wait_for(all_succeeded, timeout=60)


def submitted(tenant_id: str, count: int, key: str = "echo", params: dict | None = None) -> list[uuid.UUID]:
    """Jobs submitted one by one, as by the API: each committed and published on its own, in order."""
    return [
        operations.submit(uuid.UUID(tenant_id), key, 1, params or {"message": str(i)}).id
        for i in range(count)
    ]


def test_a_message_lost_from_a_busy_queue_is_sent_again_and_a_waiting_job_is_not(app, app_context, tenant):
    lost, *waiting = submitted(tenant["id"], 5)
    db.session.execute(update(Job).values(published_at=Job.published_at - text("interval '1 minute'")))
    db.session.commit()
    assert dispatch_due() == 0  # a backlog older than the bound, every message in place: nothing sent twice
    # The oldest, next to be taken; four later ones keep the queue busy.
    lose_message(app.config["REDIS_URL"], lost)
    assert queue_length(app) == 4
    assert dispatch_due() == 1
    assert queue_length(app) == 5
    republished = db.session.scalar(select(Job.published_at).where(Job.id == lost))
    assert republished > max(db.session.scalars(select(Job.published_at).where(Job.id.in_(waiting))))
    assert dispatch_due() == 0  # sent again once; its clock restarted


def test_a_lost_message_is_recovered_within_the_bound_while_a_worker_drains_the_queue(
    app, tenant, start_worker, monkeypatch
):
    bound, sweep_interval = 2.0, 0.5
    monkeypatch.setitem(app.config, "GPUJOBS_REPUBLISH_AFTER_SECONDS", bound)
    start_worker(concurrency=1, name="drain")
    with app.app_context():
        [plug] = submitted(tenant["id"], 1, "test.sleep", {"seconds": 3})  # keeps the worker busy meanwhile
        wait_for(lambda: db.session.scalar(select(Job.status).where(Job.id == plug)) == "running")
        ids = submitted(tenant["id"], 12, "test.sleep", {"seconds": 0.5})
        published_first = db.session.get(Job, ids[0]).published_at
        db.session.remove()
    lose_message(app.config["REDIS_URL"], ids[0])

    def sweep() -> tuple[int, int, object] | None:
        with app.app_context():
            republished = dispatch_due()
            left = queue_length(app)
            published_again = db.session.get(Job, ids[0]).published_at
            db.session.remove()
        return (republished, left, published_again) if republished else None

    republished, left, published_again = wait_for(sweep, timeout=30, interval=sweep_interval)
    assert republished == 1 and left > 1  # sent again while later messages still waited
    assert published_again <= published_first + timedelta(seconds=bound + sweep_interval + 1.0)

    def all_succeeded() -> bool:
        with app.app_context():
            done = db.session.scalar(select(func.count()).where(Job.id.in_(ids), Job.status == "succeeded"))
            db.session.remove()
        return done == len(ids)

    wait_for(all_succeeded, timeout=60)
    with app.app_context():
        starts = db.session.scalar(
            select(func.count()).where(JobEvent.job_id == ids[0], JobEvent.type == "job.started")
        )
        db.session.remove()
    assert starts == 1


def test_retries_become_due_and_are_queued_by_the_dispatch_sweep(app, app_context, tenant):
    [job_id] = running_jobs(tenant["id"], 1)
    jobs.fail_attempt(job_id, 1, "blip", retryable=True, retry_delay_seconds=3600)
    db.session.commit()
    dispatch_due()
    assert db.session.get(Job, job_id).status == "retrying"  # not yet due
    db.session.execute(update(Job).where(Job.id == job_id).values(next_retry_at=func.now()))
    db.session.commit()
    dispatch_due()
    db.session.expire_all()
    assert db.session.get(Job, job_id).status == "queued" and queue_length(app) == 1


def test_two_rescue_sweeps_at_once_rescue_each_expired_lease_once(app, app_context, tenant):
    expired = func.now() - text("interval '1 minute'")
    ids = running_jobs(tenant["id"], 50, lease_expires_at=expired)
    in_parallel(app, rescue_stuck)
    rescued = db.session.scalar(
        select(func.count()).where(JobEvent.job_id.in_(ids), JobEvent.type == "job.rescued")
    )
    assert rescued == 50
    assert db.session.scalar(select(func.count()).where(Job.id.in_(ids), Job.status == "queued")) == 50
    assert queue_length(app) == 50


def test_an_expired_lease_with_no_attempts_left_is_failed_and_dead_lettered(app, app_context, tenant):
    [job_id] = running_jobs(
        tenant["id"], 1, lease_expires_at=func.now() - text("interval '1 minute'"), max_attempts=1
    )
    rescue_stuck()
    job = db.session.get(Job, job_id)
    assert job.status == "failed" and "lease expired" in job.error
    assert db.session.scalar(select(func.count()).where(DeadLetter.job_id == job_id)) == 1


def test_a_job_running_past_its_timeout_is_failed_by_the_rescue_sweep(app, app_context, tenant):
    long_ago = func.now() - text("interval '2 hours'")
    [job_id] = running_jobs(tenant["id"], 1, started_at=long_ago, timeout_seconds=60)
    rescue_stuck()
    job = db.session.get(Job, job_id)
    assert job.status == "retrying" and job.error == "timed out after 60 s"


def test_cleanup_deletes_old_finished_jobs_with_their_events_in_batches(
    app, app_context, tenant, monkeypatch
):
    old = running_jobs(tenant["id"], 25)
    recent = running_jobs(tenant["id"], 5)
    for job_id in old + recent:
        jobs.succeed(job_id, 1, {})
    db.session.execute(
        update(Job).where(Job.id.in_(old)).values(finished_at=func.now() - text("interval '2 days'"))
    )
    db.session.commit()
    monkeypatch.setitem(app.config, "GPUJOBS_CLEANUP_BATCH_SIZE", 10)
    deletes: list[int] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        if context.statement.startswith("DELETE FROM jobs"):  # as written (sent as text or EXECUTE)
            deletes.append(cursor.rowcount)

    event.listen(db.engine, "after_cursor_execute", count)
    try:
        assert clean_up() == 25
    finally:
        event.remove(db.engine, "after_cursor_execute", count)
    assert deletes == [10, 10, 5, 0]  # then the pass over dead-lettered jobs, none of them old enough
    assert db.session.scalar(select(func.count()).select_from(Job)) == 5
    assert db.session.scalar(select(func.count()).where(JobEvent.job_id.in_(old))) == 0


def test_a_worker_told_to_stop_finishes_its_running_job_first(app, tenant, start_worker, app_context):
    worker = start_worker(concurrency=1, name="stopping")
    job_id = operations.submit(uuid.UUID(tenant["id"]), "test.sleep", 1, {"seconds": 2}).id

    def status() -> str:
        # a fresh context per poll: it sees what the worker committed since the last one
        with app.app_context():
            value = db.session.scalar(select(Job.status).where(Job.id == job_id))
        return value

    wait_for(lambda: status() == "running", timeout=30)
    os.kill(worker.process.pid, signal.SIGTERM)  # warm shutdown: running tasks may finish
    worker.process.wait(timeout=30)
    assert status() == "succeeded"


def test_one_row_that_fails_does_not_stop_the_rescue_sweep(app, app_context, tenant, monkeypatch):
    expired = func.now() - text("interval '1 minute'")
    first, second = running_jobs(tenant["id"], 2, lease_expires_at=expired)
    real_rescue = jobs.rescue

    def rescue_failing_on_first(job_id, attempt):
        if job_id == first:
            raise RuntimeError("a bad row")
        return real_rescue(job_id, attempt)

    monkeypatch.setattr(jobs, "rescue", rescue_failing_on_first)
    rescue_stuck()
    db.session.expire_all()
    assert db.session.get(Job, second).status == "queued"
    assert db.session.get(Job, first).status == "running"  # left for the next tick


def test_cleanup_keeps_dead_letters_and_jobs_whose_webhook_is_still_retrying(app, app_context, tenant):
    from gpujobs.models import WebhookDelivery

    dead, hooked, plain = running_jobs(tenant["id"], 3)
    jobs.fail_attempt(dead, 1, "boom", retryable=False, retry_delay_seconds=0)
    jobs.succeed(hooked, 1, {})
    jobs.succeed(plain, 1, {})
    db.session.add(
        WebhookDelivery(
            tenant_id=uuid.UUID(tenant["id"]), job_id=hooked, job_attempt=1, event_type="job.succeeded",
            url="http://127.0.0.1:9/hook", payload={}, status="pending",
        )
    )  # fmt: skip
    db.session.execute(update(Job).values(finished_at=func.now() - text("interval '2 days'")))
    db.session.commit()
    assert clean_up() == 1
    remaining = set(db.session.scalars(select(Job.id)))
    assert remaining == {dead, hooked}


def test_dead_lettered_jobs_go_with_their_dead_letters_after_their_own_retention(app, app_context, tenant):
    old_dead, young_dead, old_done = running_jobs(tenant["id"], 3)
    for job_id in (old_dead, young_dead):
        jobs.fail_attempt(job_id, 1, "boom", retryable=False, retry_delay_seconds=0)
    jobs.succeed(old_done, 1, {})
    db.session.execute(update(Job).values(finished_at=func.now() - text("interval '31 days'")))
    db.session.execute(
        update(Job).where(Job.id == young_dead).values(finished_at=func.now() - text("interval '29 days'"))
    )
    db.session.commit()
    assert app.config["GPUJOBS_DEAD_LETTER_RETENTION_DAYS"] == 30  # the default
    assert clean_up() == 2
    assert set(db.session.scalars(select(Job.id))) == {young_dead}
    assert set(db.session.scalars(select(DeadLetter.job_id))) == {young_dead}
