"""Redis Sentinel: the app, a real worker and beat follow a failover with no process restarted by hand.

A real deployment on loopback ports (``gpujobs.dev.faults.SentinelDeployment``: a primary, a replica
and three Sentinels, with passwords). The primary is SIGKILLed mid-run; the Sentinels promote the replica.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select
from support.polling import wait_for

from gpujobs import create_app, operations
from gpujobs.broker import redis_client
from gpujobs.dev.faults import REDIS_PASSWORD, SENTINEL_PASSWORD, SentinelDeployment
from gpujobs.extensions import db
from gpujobs.models import Job


@pytest.fixture
def sentinel_deployment(tmp_path: Path) -> Iterator[SentinelDeployment]:
    """A Sentinel deployment for one test."""
    deployment = SentinelDeployment(tmp_path / "sentinel")
    deployment.base.mkdir()
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture
def start_beat(
    process_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Factory: a real ``celery beat`` (env overrides allowed), stopped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**overrides: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "celery", "-A", "gpujobs.worker", "beat", "--loglevel", "INFO"]
        # The child keeps its own copy of the descriptor; ours is closed at once.
        with open(tmp_path / "beat.log", "wb") as log:
            started.append(
                subprocess.Popen(
                    command, env=dict(process_env, **overrides), stdout=log, stderr=subprocess.STDOUT
                )
            )
        return started[-1]

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=20)


def test_jobs_accepted_around_a_sentinel_failover_all_succeed_with_the_same_worker(
    app, tenant, sentinel_deployment, start_worker, start_beat
):
    env = sentinel_deployment.env
    sentinel_app = create_app({"TESTING": True, **env})
    worker = start_worker(concurrency=2, name="sentinel", **env)
    beat = start_beat(**env)
    tenant_id = uuid.UUID(tenant["id"])

    def submit(count: int) -> list[uuid.UUID]:
        with sentinel_app.app_context():
            ids = [operations.submit(tenant_id, "test.sleep", 1, {"seconds": 0.2}).id for _ in range(count)]
            db.session.remove()
        return ids

    def succeeded(ids: list[uuid.UUID]) -> int:
        with sentinel_app.app_context():
            done = db.session.scalar(select(func.count()).where(Job.id.in_(ids), Job.status == "succeeded"))
            db.session.remove()
        return done

    accepted = submit(20)
    wait_for(lambda: succeeded(accepted) >= 3, timeout=30)
    primary = sentinel_deployment.ports["primary"]
    assert sentinel_deployment.master_port() == primary
    sentinel_deployment.processes["primary"].send_signal(signal.SIGKILL)  # mid-run
    accepted += submit(10)  # while the Sentinels have not yet noticed: durable rows, published later
    wait_for(lambda: sentinel_deployment.master_port() == sentinel_deployment.ports["replica"], timeout=30)
    accepted += submit(10)  # after the promotion

    wait_for(lambda: succeeded(accepted) == len(accepted), timeout=120)
    # The worker and beat started above are still running (same PIDs, nothing restarted by hand), and
    # the worker did lose its broker and connect again, to the promoted replica.
    assert worker.process.poll() is None and beat.poll() is None, worker.log()
    assert worker.log().count("Connected to sentinel://") >= 2, worker.log()
    with sentinel_app.app_context():
        assert redis_client().ping()  # the app's own client follows the promoted replica too
        assert redis_client().connection_pool.get_master_address()[1] == sentinel_deployment.ports["replica"]
    with sentinel_app.test_client() as client:
        assert client.get("/ready").get_json()["checks"]["redis"] == "ok"


def test_flower_reads_the_queues_through_the_sentinels(app, sentinel_deployment):
    from flower.utils.broker import Broker

    env = {"REDIS_URL": sentinel_deployment.url, "GPUJOBS_REDIS_PASSWORD": REDIS_PASSWORD}
    sentinel_app = create_app({"TESTING": True, **env, "GPUJOBS_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD})
    celery = sentinel_app.extensions["celery"]
    sentinel_deployment.node("primary").lpush("normal", "a message")
    with celery.connection() as connection:  # what Flower's Broker view is given
        uri = connection.as_uri(include_password=True)
    broker = Broker(uri, broker_options=celery.conf.broker_transport_options, broker_use_ssl=None)

    async def depths() -> list[dict[str, object]]:
        # Flower's clients are closed here, inside their event loop: left to the garbage collector after
        # the loop is gone, they fail a later test with "loop is closed".
        pool = broker.redis.connection_pool
        try:
            return await broker.queues(["normal"])
        finally:
            await pool.disconnect()
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.connection_pool.disconnect()

    [normal] = asyncio.run(depths())
    assert normal == {"name": "normal", "messages": 1}


def test_a_plain_redis_url_gets_no_sentinel_options(app):
    celery = app.extensions["celery"]
    assert celery.conf.broker_url == app.config["REDIS_URL"]
    assert "master_name" not in celery.conf.broker_transport_options


def test_the_sentinel_compose_file_points_every_process_at_three_sentinels_watching_a_replicated_redis():
    root = Path(__file__).resolve().parent.parent
    base = yaml.safe_load((root / "docker-compose.yml").read_text())
    overlay = yaml.safe_load((root / "docker-compose.sentinel.yml").read_text())
    services = overlay["services"]
    sentinels = sorted(name for name in services if name.startswith("sentinel-"))
    assert len(sentinels) == 3
    url = overlay["x-redis-sentinel"]["REDIS_URL"]
    assert url == ";".join(f"sentinel://{name}:26379" for name in sentinels)
    uses_redis = [
        name for name, service in base["services"].items() if "REDIS_URL" in service.get("environment", {})
    ]
    assert uses_redis and all(services[name]["environment"]["REDIS_URL"] == url for name in uses_redis)
    assert services["redis-replica"]["command"][-3:] == ["--replicaof", "redis", "6379"]
    master = overlay["x-redis-sentinel"]["GPUJOBS_REDIS_SENTINEL_MASTER"]
    for name in sentinels:
        script = services[name]["command"][-1]
        assert f"sentinel monitor {master} redis 6379 2" in script and "--sentinel" in script
        assert set(services[name]["depends_on"]) == {"redis", "redis-replica"}
