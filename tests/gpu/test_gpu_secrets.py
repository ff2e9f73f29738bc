"""A private template's registry password reaches Novita's create call and nothing else of ours."""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import text
from support.gpu import REQUEST, next_monitor_look, wait_for_job
from support.tenants import grant

from gpujobs import runner
from gpujobs.extensions import db
from gpujobs.novita.sim import seed
from gpujobs.provisioning import create

PASSWORD = seed.REGISTRY_AUTHS[0]["password"]
PRIVATE = {key: value for key, value in REQUEST.items() if key != "imageUrl"} | {"templateId": "2"}


@pytest.fixture(autouse=True)
def _template_granted(app, tenant) -> None:
    """The operator granted the tenant the private template (without it, the create answers 422)."""
    grant(app, tenant, "template", PRIVATE["templateId"])


def everything_in_postgres(app) -> str:
    """Every row of every table, as JSON text."""
    with app.app_context():
        tables = [table.name for table in db.metadata.sorted_tables]
        rows = [
            db.session.execute(text(f"SELECT coalesce(json_agg(t)::text, '') FROM {table} t")).scalar_one()
            for table in tables
        ]
    return "\n".join(rows)


def everything_in_redis(app) -> bytes:
    """Every value in the broker's database: queues, unacknowledged messages, the status snapshot."""
    store = redis.Redis.from_url(app.config["REDIS_URL"])
    dumped = []
    for key in store.scan_iter():
        kind = store.type(key)
        if kind == b"list":
            dumped += store.lrange(key, 0, -1)
        elif kind == b"hash":
            dumped += store.hvals(key)
        elif kind == b"zset":
            dumped += store.zrange(key, 0, -1)
        elif kind == b"string":
            dumped.append(store.get(key))
    # Celery bodies are base64: decode what decodes, keep the rest as it is.
    return b"\n".join(dumped + [_maybe_base64(value) for value in dumped])


def _maybe_base64(value: bytes) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return b""


def test_a_private_template_runs_and_its_registry_password_is_in_no_row_message_or_log(
    app, client, tenant, sim, gpu_worker, hooks
):
    worker = gpu_worker()
    hook = hooks()
    response = client.post(
        "/v1/instances", json=PRIVATE | {"webhookUrl": hook.url}, headers=tenant["headers"]
    )
    assert response.status_code == 202
    wait_for_job(app, response.json["jobId"], "succeeded")
    # The image only pulls with the registry credentials: running proves they reached Novita.
    assert sim.instances()[0]["imageUrl"] == "registry.example.com/acme/worker:1.0"
    assert sim.count_calls("GET", "/repository/auths") == 1
    assert PASSWORD not in everything_in_postgres(app)
    assert PASSWORD.encode() not in everything_in_redis(app)
    assert PASSWORD not in worker.log()
    assert all(PASSWORD not in str(event) for event in hook.verified)


@pytest.fixture
def every_logger(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at DEBUG with every logger on (Alembic's fileConfig, run by the app fixture, disables them)."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    disabled = [logger for logger in loggers if logger.disabled]
    for logger in disabled:
        logger.disabled = False
    caplog.set_level(logging.DEBUG)
    yield caplog
    for logger in disabled:
        logger.disabled = True


def test_the_create_step_logs_nothing_of_the_password_and_hands_off_only_ids_and_numbers(
    app, tenant, sim, novita_config, every_logger, app_context
):
    job, _ = create.submit(uuid.UUID(tenant["id"]), PRIVATE)
    assert runner.run_job(job.id) == "running"
    assert PASSWORD.encode() not in everything_in_redis(app)
    args = next_monitor_look(app)
    assert all(isinstance(arg, (str, int, float)) and PASSWORD not in str(arg) for arg in args)
    assert any(r.name.startswith("gpujobs.novita") for r in every_logger.records)  # the client did log
    assert PASSWORD not in every_logger.text
