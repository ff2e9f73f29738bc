"""The settings the seed systems exposed, as ``GPUJOBS_*`` variables: each one takes effect where it must."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import psycopg2
import pytest
from flask import Flask
from sqlalchemy import text
from support.polling import wait_for

from gpujobs import jobs, operations, runner
from gpujobs.config import ConfigError, load_config
from gpujobs.exceptions import TransientError
from gpujobs.extensions import TCP_KEEPALIVES, db, engine_options
from gpujobs.registry import Definition, RetryPolicy, get_definition


def test_the_pool_settings_become_the_engines_options(tmp_path):
    env = {
        "GPUJOBS_DATA_DIR": str(tmp_path),
        "GPUJOBS_DB_POOL_SIZE": "3",
        "GPUJOBS_DB_MAX_OVERFLOW": "0",
        "GPUJOBS_DB_POOL_TIMEOUT_SECONDS": "7",
        "GPUJOBS_DB_POOL_RECYCLE_SECONDS": "120",
        "GPUJOBS_DB_CONNECT_TIMEOUT_SECONDS": "4",
    }
    options = engine_options(load_config(env))
    assert (
        options["pool_size"],
        options["max_overflow"],
        options["pool_timeout"],
        options["pool_recycle"],
    ) == (
        3,
        0,
        7.0,
        120,
    )
    assert options["connect_args"] == {"connect_timeout": 4, **TCP_KEEPALIVES}


def test_the_apps_engine_pools_and_connects_as_configured(app: Flask):
    with app.app_context():
        pool = db.engine.pool
        assert (pool.size(), pool._max_overflow, pool._timeout, pool._recycle) == (5, 15, 30.0, 300)
        with db.engine.connect() as connection:
            dsn = connection.connection.dbapi_connection.get_dsn_parameters()
        assert dsn["connect_timeout"] == "5"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GPUJOBS_DB_CONNECT_TIMEOUT_SECONDS", "1"),
        ("GPUJOBS_BACKOFF_JITTER", "1.5"),
        ("GPUJOBS_METRICS_CACHE_TTL_SECONDS", "-1"),
    ],
)
def test_unusable_seed_settings_stop_the_process_naming_the_variable(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        load_config({"GPUJOBS_DATA_DIR": str(tmp_path), name: value})


@pytest.fixture
def claimed(app: Flask, tenant):
    """A claimed test.sleep job, in an app context: ``(claim, definition)``."""
    with app.app_context():
        job = operations.submit(uuid.UUID(tenant["id"]), "test.sleep", 1, {"seconds": 1})
        definition = get_definition("test.sleep", 1)
        claim = jobs.claim(job.id, definition, 60)
        db.session.commit()
        yield claim, definition
        db.session.remove()


def _request_cancel(claim: jobs.Claim) -> None:
    assert jobs.request_cancel(claim.job_id, claim.tenant_id) is not None
    db.session.commit()


def test_the_cancel_check_reads_the_flag_no_more_often_than_its_interval(app, claimed, monkeypatch):
    claim, definition = claimed
    monkeypatch.setitem(app.config, "GPUJOBS_CANCEL_CHECK_INTERVAL_SECONDS", 0.2)
    ctx = runner.RunContext(claim, definition)
    assert not ctx.cancel_requested()
    _request_cancel(claim)
    assert not ctx.cancel_requested()  # read less than 0.2 s ago: not read again
    time.sleep(0.25)
    assert ctx.cancel_requested()


def test_the_heartbeat_renews_at_its_interval_and_brings_the_cancel_request(app, claimed, monkeypatch):
    claim, definition = claimed
    monkeypatch.setitem(app.config, "GPUJOBS_CANCEL_CHECK_INTERVAL_SECONDS", 3600)  # only the heartbeat reads
    monkeypatch.setitem(app.config, "GPUJOBS_HEARTBEAT_INTERVAL_SECONDS", 0.1)
    ctx = runner.RunContext(claim, definition)
    assert not ctx.cancel_requested()
    _request_cancel(claim)
    heartbeat = runner.Heartbeat(app, ctx, 60)
    heartbeat.start()
    try:
        deadline = time.monotonic() + 5
        while not ctx.cancel_requested() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ctx.cancel_requested()
        assert time.monotonic() < deadline
    finally:
        heartbeat.stop()
    assert not any(t.name == heartbeat.name for t in threading.enumerate())


def _lease_of(claim: jobs.Claim) -> float:
    query = text("SELECT extract(epoch FROM lease_expires_at) FROM jobs WHERE id = :id")
    lease = db.session.scalar(query, {"id": claim.job_id})
    db.session.commit()
    return float(lease)


def test_a_job_shorter_than_a_tick_starts_no_heartbeat_thread_and_a_longer_one_renews_its_lease(
    app, claimed, monkeypatch
):
    claim, definition = claimed
    monkeypatch.setitem(app.config, "GPUJOBS_CANCEL_CHECK_INTERVAL_SECONDS", 0.3)
    monkeypatch.setitem(app.config, "GPUJOBS_HEARTBEAT_INTERVAL_SECONDS", 0.3)
    quick = runner.Heartbeat(app, runner.RunContext(claim, definition), 60)
    quick.begin()
    quick.stop()  # the job ended within its first tick
    time.sleep(0.5)
    assert quick.ident is None  # its late start was called off
    before = _lease_of(claim)
    slow = runner.Heartbeat(app, runner.RunContext(claim, definition), 60)
    slow.begin()
    try:
        wait_for(lambda: _lease_of(claim) > before, timeout=5, interval=0.1)
        assert slow.is_alive()
    finally:
        slow.stop()
    assert not slow.is_alive()


def test_the_heartbeat_beats_at_least_three_times_per_lease(app, claimed):
    claim, definition = claimed
    heartbeat = runner.Heartbeat(app, runner.RunContext(claim, definition), 3)  # the setting says 10 s
    assert heartbeat._renew_every == 1


def _slow_definition() -> Definition:
    return Definition(
        key="test.backoff", version=1, handler=lambda ctx, params: None, retry=RetryPolicy(100, 1000)
    )


def test_the_backoff_cap_bounds_every_definitions_delay(app, monkeypatch):
    monkeypatch.setitem(app.config, "GPUJOBS_BACKOFF_MAX_SECONDS", 50)
    with app.app_context():
        delays = [runner._retry_delay_seconds(_slow_definition(), 3, TransientError("x")) for _ in range(50)]
    assert max(delays) <= 50 and min(delays) >= 50 * (1 - app.config["GPUJOBS_BACKOFF_JITTER"])


@pytest.mark.parametrize(("jitter", "low"), [(0.0, 400.0), (0.3, 280.0), (1.0, 0.0)])
def test_the_backoff_jitter_is_the_random_fraction_of_each_step(app, monkeypatch, jitter, low):
    monkeypatch.setitem(app.config, "GPUJOBS_BACKOFF_JITTER", jitter)
    with app.app_context():
        delays = [runner._retry_delay_seconds(_slow_definition(), 3, TransientError("x")) for _ in range(200)]
    assert low <= min(delays) and max(delays) <= 400
    assert (max(delays) - min(delays) > 1) == (jitter > 0)


@pytest.mark.parametrize(("ttl", "fresh"), [(0, True), (3600, False)])
def test_metrics_without_a_ttl_are_cached_for_the_configured_time(
    app, client, tenant, monkeypatch, ttl, fresh
):
    monkeypatch.setitem(app.config, "GPUJOBS_METRICS_CACHE_TTL_SECONDS", ttl)
    total = lambda: client.get("/v1/metrics", headers=tenant["headers"]).json["summary"]["total"]  # noqa: E731
    assert total() == 0
    client.post("/v1/jobs", json={"definitionKey": "echo", "params": {}}, headers=tenant["headers"])
    assert total() == (1 if fresh else 0)


def test_a_pooled_connection_the_server_closed_is_replaced_at_checkout_without_a_ping(
    app: Flask, client, tenant
):
    """No ``SELECT 1`` per checkout, yet a backend ended under the pool is never handed out: the next
    session and the next request get fresh connections, and succeed."""
    assert "pool_pre_ping" not in app.config["SQLALCHEMY_ENGINE_OPTIONS"]
    with app.app_context():
        first = db.session.scalar(text("SELECT pg_backend_pid()"))
        db.session.remove()  # back to the pool, idle
        ended = _end_every_other_backend(app.config["DATABASE_URL"])
        assert first in ended
        wait_for(lambda: not _alive(app.config["DATABASE_URL"], ended))
        second = db.session.scalar(text("SELECT pg_backend_pid()"))
        db.session.remove()
    assert second not in ended
    assert client.get("/v1/jobs", headers=tenant["headers"]).status_code == 200


def _end_every_other_backend(database_url: str) -> list[int]:
    with contextlib.closing(psycopg2.connect(database_url)) as admin, admin.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
        )
        pids = [pid for (pid,) in cursor.fetchall()]
        cursor.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s) AS pid", (pids,))
        return pids


def _alive(database_url: str, pids: list[int]) -> bool:
    with contextlib.closing(psycopg2.connect(database_url)) as admin, admin.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))
        return cursor.fetchone()[0] > 0
