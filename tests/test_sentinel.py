"""Redis Sentinel: the app, a real worker and beat follow a failover with no process restarted by hand.

A real deployment on loopback ports: a primary, a replica and three Sentinels, every one the same
``valkey-server`` binary (Redis-compatible; the Sentinels started with ``--sentinel``), with passwords
on both the data nodes and the Sentinels. The primary is SIGKILLed mid-run; the Sentinels promote the replica.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import yaml
from sqlalchemy import func, select
from support.polling import wait_for

from gpujobs import create_app, operations
from gpujobs.broker import redis_client
from gpujobs.dev.embedded import free_port, redis_server_executable
from gpujobs.extensions import db
from gpujobs.models import Job

MASTER = "mymaster"
REDIS_PASSWORD = "data-node-secret"
SENTINEL_PASSWORD = "sentinel-secret"
START_TIMEOUT_SECONDS = 20.0


@dataclass
class SentinelDeployment:
    """A primary, a replica and three Sentinels watching them, all real ``valkey-server`` processes."""

    base: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start(self) -> None:
        """Start every node and wait until the replica is in sync and the Sentinels know each other."""
        self.ports = {name: free_port() for name in ("primary", "replica", "s1", "s2", "s3")}
        data = ["--requirepass", REDIS_PASSWORD, "--masterauth", REDIS_PASSWORD, "--appendonly", "yes"]
        self._run("primary", [*data, "--port", str(self.ports["primary"])])
        replica_of = ["--replicaof", "127.0.0.1", str(self.ports["primary"])]
        self._run("replica", [*data, "--port", str(self.ports["replica"]), *replica_of])
        for name in ("s1", "s2", "s3"):
            conf = self.base / f"{name}.conf"
            conf.write_text(
                f"port {self.ports[name]}\nbind 127.0.0.1\ndir {self.base}\n"
                f"requirepass {SENTINEL_PASSWORD}\nsentinel sentinel-pass {SENTINEL_PASSWORD}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.ports['primary']} 2\n"
                f"sentinel auth-pass {MASTER} {REDIS_PASSWORD}\n"
                # Short timings, so a failover takes seconds here (production keeps the defaults).
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
            )
            self._run(name, [str(conf), "--sentinel"], config_first=True)
        replica = self.node("replica")
        wait_for(lambda: replica.info("replication")["master_link_status"] == "up", START_TIMEOUT_SECONDS)
        for name in ("s1", "s2", "s3"):
            sentinel = self.node(name, SENTINEL_PASSWORD)
            wait_for(
                lambda s=sentinel: (
                    int(s.sentinel_master(MASTER)["num-other-sentinels"]) == 2
                    and len(s.sentinel_slaves(MASTER)) == 1
                ),
                START_TIMEOUT_SECONDS,
            )

    def _run(self, name: str, args: list[str], config_first: bool = False) -> None:
        common = ["--bind", "127.0.0.1", "--dir", str(self.base), "--logfile", str(self.base / f"{name}.log")]
        if not config_first:
            common += ["--save", "", "--appendfilename", f"{name}.aof"]
        command = [redis_server_executable(), *args, *common]
        self.processes[name] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self._answers(name), START_TIMEOUT_SECONDS, interval=0.05)

    def _answers(self, name: str) -> bool:
        if self.processes[name].poll() is not None:
            raise RuntimeError(f"{name} exited:\n{(self.base / f'{name}.log').read_text()}")
        password = SENTINEL_PASSWORD if name.startswith("s") else REDIS_PASSWORD
        try:
            return bool(self.node(name, password).ping())
        except redis.RedisError:
            return False

    def node(self, name: str, password: str = REDIS_PASSWORD) -> redis.Redis:
        """A direct client of one node."""
        return redis.Redis(port=self.ports[name], password=password, socket_timeout=2)

    @property
    def url(self) -> str:
        """``REDIS_URL`` as Celery users write it for Sentinel."""
        return ";".join(f"sentinel://127.0.0.1:{self.ports[name]}" for name in ("s1", "s2", "s3"))

    def master_port(self) -> int:
        """The port the Sentinels name as the master right now."""
        _, port = self.node("s1", SENTINEL_PASSWORD).sentinel_get_master_addr_by_name(MASTER)
        return int(port)

    def stop(self) -> None:
        """Stop every node still running."""
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()


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
        command += ["-s", str(tmp_path / "celerybeat-schedule")]
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
    env = {
        "REDIS_URL": sentinel_deployment.url,
        "GPUJOBS_REDIS_PASSWORD": REDIS_PASSWORD,
        "GPUJOBS_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
    }
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
    [normal] = asyncio.run(broker.queues(["normal"]))
    assert normal == {"name": "normal", "messages": 1}
    # Flower closes its master client but not the Sentinel's own connections; their streams warn "loop is
    # closed" whenever the garbage collector meets them (in a later test). Collect them here instead.
    del broker
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


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
