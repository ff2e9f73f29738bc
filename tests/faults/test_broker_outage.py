"""A broker outage of any length, a broker that comes back empty or read-only, costs no process (issue 19).

Real processes only: a redis-server of this test's own (so stopping it leaves the suite's Redis
alone), a real ``celery worker`` and ``celery beat`` on it, the suite's PostgreSQL for the rows.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests
from flask import Flask
from support.polling import wait_for
from support.processes import CeleryProcess

from gpujobs import operations
from gpujobs.dev.embedded import EmbeddedRedis, free_port
from gpujobs.extensions import db
from gpujobs.models import Job

OUTAGE_SECONDS = 4.0
JOB_TIMEOUT_SECONDS = 60.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server only this test uses, so it can be killed and brought back empty."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def broker_app(app: Flask, broker_env: dict[str, str]) -> Iterator[Flask]:
    """The service's app publishing to this test's Redis (same database as the suite's app)."""
    from gpujobs import create_app

    flask_app = create_app({"TESTING": True, "REDIS_URL": broker_env["REDIS_URL"]})
    yield flask_app
    app.extensions["celery"].set_default()  # the suite's app is Celery's default again


def restart_empty(server: EmbeddedRedis, down_seconds: float) -> None:
    """Kill Redis (no clean shutdown), keep it down a while, start it empty on the same port."""
    server._process.kill()
    server._process.wait()
    time.sleep(down_seconds)
    shutil.rmtree(server.data_dir, ignore_errors=True)
    server.start()


def submit(flask_app: Flask, tenant: dict[str, str], seconds: float) -> uuid.UUID:
    with flask_app.app_context():
        job_id = operations.submit(uuid.UUID(tenant["id"]), "test.sleep", 1, {"seconds": seconds}).id
        db.session.remove()
    return job_id


def succeeded(flask_app: Flask, job_ids: list[uuid.UUID]) -> Callable[[], bool]:
    def check() -> bool:
        with flask_app.app_context():
            statuses = {db.session.get(Job, job_id).status for job_id in job_ids}
            db.session.remove()
        return statuses == {"succeeded"}

    return check


def sweeping(flask_app: Flask, predicate: Callable[[], bool]) -> Callable[[], bool]:
    """``predicate``, after the dispatch sweep beat would run (re-sending what Redis lost)."""
    from gpujobs.sweeps import dispatch_due

    def check() -> bool:
        with flask_app.app_context():
            dispatch_due()
            db.session.remove()
        return predicate()

    return check


def celery(env: dict[str, str], log_path: Path, *args: str) -> CeleryProcess:
    """``celery -A gpujobs.worker <args>`` (beat, Flower) with its log in ``log_path``."""
    return CeleryProcess([sys.executable, "-m", "celery", "-A", "gpujobs.worker", *args], env, log_path)


@pytest.fixture
def broker_env(process_env: dict[str, str], own_redis: EmbeddedRedis) -> dict[str, str]:
    return dict(process_env, REDIS_URL=f"redis://127.0.0.1:{own_redis.port}/0")


@pytest.fixture
def beat(broker_env: dict[str, str], tmp_path: Path) -> Iterator[CeleryProcess]:
    process = celery(broker_env, tmp_path / "beat.log", "beat", "--loglevel", "INFO")
    yield process
    process.stop()


@pytest.fixture
def flower(broker_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[CeleryProcess, str]]:
    port = free_port()
    process = celery(broker_env, tmp_path / "flower.log", "flower", f"--port={port}", "--address=127.0.0.1")
    url = f"http://127.0.0.1:{port}/healthcheck"
    wait_for(lambda: answers(url), timeout=JOB_TIMEOUT_SECONDS)
    yield process, url
    process.stop()


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def attempt_of(flask_app: Flask, job_id: uuid.UUID) -> int:
    with flask_app.app_context():
        attempt = db.session.get(Job, job_id).attempt
        db.session.remove()
    return attempt


def test_worker_beat_and_flower_keep_their_pids_and_work_on_after_redis_comes_back_empty(
    broker_app, broker_env, tenant, start_worker, beat, flower, own_redis
):
    worker = start_worker(REDIS_URL=broker_env["REDIS_URL"])
    flower_process, flower_url = flower
    pids = [worker.process.pid, beat.process.pid, flower_process.process.pid]
    before = [submit(broker_app, tenant, 0.1) for _ in range(3)]
    wait_for(succeeded(broker_app, before), timeout=JOB_TIMEOUT_SECONDS)
    running = submit(broker_app, tenant, 2 * OUTAGE_SECONDS)  # in flight when Redis goes away
    wait_for(lambda: attempt_of(broker_app, running) == 1)

    restart_empty(own_redis, OUTAGE_SECONDS)
    worker_log_at_restart = len(worker.log())

    after = submit(broker_app, tenant, 0.1)  # its message may be lost; the dispatch sweep re-sends it
    wait_for(succeeded(broker_app, [after, running]), timeout=JOB_TIMEOUT_SECONDS)
    processes = {"worker": worker, "beat": beat, "flower": flower_process}
    for name, process in processes.items():
        assert process.process.poll() is None, f"{name} exited:\n{process.log()}"
    assert [worker.process.pid, beat.process.pid, flower_process.process.pid] == pids
    # The running attempt rode through the outage instead of being cancelled and run again.
    assert attempt_of(broker_app, running) == 1
    # Beat's schedule goes on: a dispatch sweep it sent after the restart ran on the worker.
    swept = re.compile(r"Task gpujobs\.sweep\.dispatch\[[^\]]+\] succeeded")
    wait_for(lambda: swept.search(worker.log()[worker_log_at_restart:]))
    assert answers(flower_url)


def test_a_worker_whose_redis_turns_read_only_for_a_while_keeps_its_pid_and_works_on(
    broker_app, broker_env, tenant, start_worker, own_redis, tmp_path
):
    # What a failover does to a client still connected to the old primary: it now talks to a replica.
    other = EmbeddedRedis(tmp_path / "other-redis")
    other.start()
    try:
        worker = start_worker(REDIS_URL=broker_env["REDIS_URL"])
        pid = worker.process.pid
        before = submit(broker_app, tenant, 0.1)
        wait_for(succeeded(broker_app, [before]), timeout=JOB_TIMEOUT_SECONDS)
        demoted = redis.Redis(port=own_redis.port)
        demoted.execute_command("REPLICAOF", "127.0.0.1", str(other.port))
        wait_for(lambda: "read only replica" in worker.log(), timeout=JOB_TIMEOUT_SECONDS)
        time.sleep(OUTAGE_SECONDS)
        demoted.execute_command("REPLICAOF", "NO", "ONE")
        after = submit(broker_app, tenant, 0.1)
        wait_for(sweeping(broker_app, succeeded(broker_app, [after])), timeout=JOB_TIMEOUT_SECONDS)
        assert worker.process.poll() is None, worker.log()
        assert worker.process.pid == pid
    finally:
        other.stop()


def test_the_threaded_webhook_worker_keeps_its_pid_and_delivers_after_redis_comes_back_empty(
    app, broker_app, broker_env, tenant, start_worker, own_redis
):
    """The webhook worker is one process of threads: it rides out the outage like the job worker, and
    a job finished after Redis came back empty still gets its signed webhook (the sweeps re-send)."""
    from support.receivers import Receiver
    from support.tenants import secret_of

    from gpujobs.sweeps import dispatch_due, publish_due_webhooks

    redis_url = broker_env["REDIS_URL"]
    jobs_worker = start_worker(name="jobs", role="jobs", REDIS_URL=redis_url)
    hooks = start_worker(concurrency=4, name="hooks", role="webhooks", REDIS_URL=redis_url)
    pids = [jobs_worker.process.pid, hooks.process.pid]
    receiver = Receiver(secret_of(app, tenant))

    def hooked_job(message: str) -> uuid.UUID:
        with broker_app.app_context():
            options = operations.JobOptions(webhook_url=receiver.url)
            job_id = operations.submit(uuid.UUID(tenant["id"]), "echo", 1, {"message": message}, options).id
            db.session.remove()
        return job_id

    def delivered(job_id: uuid.UUID) -> Callable[[], bool]:
        def check() -> bool:  # what beat would do meanwhile: re-send lost jobs and due deliveries
            with broker_app.app_context():
                dispatch_due()
                publish_due_webhooks()
                db.session.remove()
            return any(event["data"]["job"]["id"] == str(job_id) for event in receiver.verified)

        return check

    try:
        wait_for(delivered(hooked_job("before")), timeout=JOB_TIMEOUT_SECONDS, interval=0.5)
        restart_empty(own_redis, OUTAGE_SECONDS)
        wait_for(delivered(hooked_job("after")), timeout=JOB_TIMEOUT_SECONDS, interval=0.5)
        for process in (jobs_worker, hooks):
            assert process.process.poll() is None, process.log()
        assert [jobs_worker.process.pid, hooks.process.pid] == pids
    finally:
        receiver.close()
