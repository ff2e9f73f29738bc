"""A whole gpujobs deployment on this machine for benchmarks and fault injection.

Real servers (embedded PostgreSQL and Redis), the API under gunicorn, Celery workers and beat as
separate processes, and the Novita simulator: the same shape as production, on loopback only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import requests

from gpujobs.devserver import worker_command
from gpujobs.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 60


class Cluster:
    """Starts and controls every process; use as a context manager."""

    def __init__(self, data_dir: Path, *, workers: int = 2, concurrency: int = 2, **settings: str) -> None:
        self.data_dir, self.workers_wanted, self.concurrency = data_dir, workers, concurrency
        self.settings = settings
        self.stack = ExitStack()
        self.workers: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Cluster:
        from flask_migrate import upgrade

        from gpujobs import create_app
        from gpujobs.auth import create_api_key

        self.postgres = EmbeddedPostgres(self.data_dir / "postgres")
        self.redis = EmbeddedRedis(self.data_dir / "redis")
        self.env = dict(
            os.environ,
            DATABASE_URL=self.postgres.start(),
            REDIS_URL=self.redis.start(),
            GPUJOBS_DATA_DIR=str(self.data_dir),
            GPUJOBS_WEBHOOK_ALLOW_PRIVATE="1",
            GPUJOBS_DEFINITION_MODULES="bench.workloads",
            PYTHONPATH=str(ROOT),
            **self.settings,
        )
        self.stack.callback(self._stop_servers)
        os.environ.update(
            {k: self.env[k] for k in ("DATABASE_URL", "REDIS_URL", "GPUJOBS_DEFINITION_MODULES")}
        )
        app = create_app()
        with app.app_context():
            upgrade()
            self.api_key = create_api_key("bench")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = self._spawn(
            [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{self.port}", "-w", "2", "--threads", "8",
             "gpujobs.wsgi:app"], "api",
        )  # fmt: skip
        self.beat = self._spawn(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "gpujobs.worker",
                "beat",
                "-s",
                str(self.data_dir / "beat"),
            ],
            "beat",
        )
        for index in range(self.workers_wanted):
            self.workers.append(self._start_worker(index))
        self._wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        for process in [self.api, self.beat, *self.workers]:
            _terminate(process)
        self.stack.close()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def _spawn(self, command: list[str], name: str) -> subprocess.Popen[bytes]:
        log = open(self.data_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        return subprocess.Popen(
            command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _start_worker(self, index: int) -> subprocess.Popen[bytes]:
        return self._spawn(
            worker_command(self.concurrency, hostname=f"bench{index}-{time.time_ns()}@%h"), f"worker{index}"
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("the API did not become ready")

    def kill_worker(self, index: int) -> None:
        """SIGKILL a worker and its pool children mid-job, then start a fresh one in its place."""
        os.killpg(self.workers[index].pid, signal.SIGKILL)
        self.workers[index].wait()
        self.workers[index] = self._start_worker(index)

    def pause_worker(self, index: int, seconds: float) -> None:
        """SIGSTOP a worker (and its children) past its lease, then let it run again."""
        os.killpg(self.workers[index].pid, signal.SIGSTOP)
        time.sleep(seconds)
        os.killpg(self.workers[index].pid, signal.SIGCONT)

    def restart_redis_empty(self) -> None:
        """Stop Redis, throw its data away, start it again on the same port."""
        self.redis.stop()
        shutil.rmtree(self.redis.data_dir, ignore_errors=True)
        self.redis.start()

    def stop_postgres(self) -> None:
        self.postgres.stop()

    def start_postgres(self) -> None:
        self.postgres.start()

    def _stop_servers(self) -> None:
        self.redis.stop()
        self.postgres.stop()


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
