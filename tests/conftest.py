"""Shared fixtures: real PostgreSQL and Redis (embedded unless TEST_DATABASE_URL / TEST_REDIS_URL),
migrations applied once, every table emptied before each test, and real Celery worker processes."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from sqlalchemy import text
from support.processes import CeleryProcess
from support.tenants import make_tenant
from werkzeug.serving import WSGIRequestHandler, make_server

from gpujobs.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from gpujobs.encryption import new_key

WORKER_READY_TIMEOUT_SECONDS = 60
# Short timings so crash recovery is observable in seconds, not minutes.
TEST_SETTINGS = {
    "GPUJOBS_LEASE_SECONDS": "3",
    "GPUJOBS_SWEEP_INTERVAL_SECONDS": "1",
    "GPUJOBS_WEBHOOK_ALLOW_PRIVATE": "1",
    "GPUJOBS_METRICS_PUBLIC": "1",
    "GPUJOBS_SHUTDOWN_TIMEOUT_SECONDS": "5",
    "GPUJOBS_DEFINITION_MODULES": "support.sample_definitions",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that starts a real worker process ``slow``: starting and stopping one takes seconds."""
    for item in items:
        if "start_worker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """URLs of a real PostgreSQL and Redis for the whole run."""
    base = tmp_path_factory.mktemp("servers")
    stops: list[Callable[[], None]] = []
    database_url = os.environ.get("TEST_DATABASE_URL")
    if not database_url:
        postgres = EmbeddedPostgres(base / "postgres")
        database_url = postgres.start()
        stops.append(postgres.stop)
    redis_url = os.environ.get("TEST_REDIS_URL")
    if not redis_url:
        broker = EmbeddedRedis(base / "redis")
        redis_url = broker.start()
        stops.append(broker.stop)
    yield {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
    for stop in reversed(stops):
        stop()


@pytest.fixture(scope="session")
def service_env(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment every process of the service under test gets (API, workers, CLI)."""
    env = dict(servers, **TEST_SETTINGS)
    env["GPUJOBS_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))
    env["GPUJOBS_ENCRYPTION_KEY"] = new_key()
    os.environ.update(env)
    return env


@pytest.fixture(scope="session")
def process_env(service_env: dict[str, str]) -> dict[str, str]:
    """The full environment for a subprocess of the service (worker, CLI): the same import path as
    pyproject's ``pythonpath`` (the repository and ``tests/``), so ``support`` is importable there too."""
    here = Path(__file__).resolve().parent
    return dict(os.environ, **service_env, PYTHONPATH=os.pathsep.join((str(here.parent), str(here))))


@pytest.fixture(scope="session")
def app(service_env: dict[str, str]) -> Iterator[Flask]:
    """The Flask app, with the schema built by the real migrations."""
    from flask_migrate import upgrade

    from gpujobs import create_app

    flask_app = create_app({"TESTING": True})
    with flask_app.app_context():
        upgrade()
    yield flask_app


@pytest.fixture(autouse=True)
def _clean_state(request: pytest.FixtureRequest) -> None:
    """Empty every table and the broker before each test that uses the app."""
    if "app" not in request.fixturenames:
        return
    flask_app: Flask = request.getfixturevalue("app")
    from gpujobs.extensions import db

    with flask_app.app_context():
        # The deployment's identity is written once by the migrations, as in production: it stays.
        tables = ", ".join(t.name for t in db.metadata.sorted_tables if t.name != "deployment")
        db.session.execute(text(f"TRUNCATE {tables} CASCADE"))
        db.session.commit()
    redis.Redis.from_url(flask_app.config["REDIS_URL"]).flushdb()


@pytest.fixture
def app_context(app: Flask) -> Iterator[None]:
    """An application context for the whole test, for calling domain code directly.

    Flask-SQLAlchemy removes the session when the context ends. A test that also makes requests keeps its
    own short contexts instead: a request reuses an app context that is already open (its ``g`` and its
    session), so it would no longer run as it does in production.
    """
    with app.app_context():
        yield


@pytest.fixture
def client(app: Flask):
    """A test client of the real app."""
    return app.test_client()


class _QuietHandler(WSGIRequestHandler):
    """No access log lines in the test output."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@pytest.fixture(scope="session")
def live_server(app: Flask) -> Iterator[str]:
    """The app behind a real threaded HTTP server on a free port (API clients, the browser); its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def tenant(app: Flask) -> dict[str, str]:
    """A tenant with an API key: ``{"id", "name", "key", "headers"}``."""
    return make_tenant(app, "acme")


class WorkerProcess(CeleryProcess):
    """A real ``celery worker`` subprocess of the service under test, ready to take tasks."""

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int, name: str, role: str) -> None:
        from gpujobs.dev.devserver import worker_command

        super().__init__(worker_command(role, concurrency, hostname=f"{name}@%h"), env, log_path)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited at start:\n{self.log()}")
            if b" ready." in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready in time:\n{self.log()}")

    def child_pids(self) -> list[int]:
        """Process ids of the pool's child processes (where tasks run)."""
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]


@pytest.fixture
def start_worker(
    process_env: dict[str, str], app: Flask, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start a real worker (extra env overrides allowed); all are stopped after the test.

    Its role (``gpujobs.celery_settings.WORKER_QUEUES``) is "all" unless a test needs the deployment's
    split between job and webhook workers.
    """
    started: list[WorkerProcess] = []

    def start(concurrency: int = 2, name: str = "w1", role: str = "all", **overrides: str) -> WorkerProcess:
        env = dict(process_env, **overrides)
        worker = WorkerProcess(env, tmp_path / f"{name}.log", concurrency, name, role)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """One real worker with two pool processes."""
    return start_worker()
