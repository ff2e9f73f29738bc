"""A whole gpujobs deployment on this machine for benchmarks and fault injection.

Real servers (embedded PostgreSQL and Redis), the API under gunicorn, Celery workers and beat as
separate processes, and optionally the Novita simulator in this process (``simulator=``): the same shape
as production, on loopback only. With a simulator, every process gets ``NOVITA_API_KEY`` and
``NOVITA_BASE_URL``; other settings such as ``GPUJOBS_MONITOR_INTERVAL_SECONDS`` go in as keywords.
``redis_env=`` points it at a Redis the caller runs (a Sentinel deployment's ``env``) instead of an
embedded one of its own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import ExitStack
from operator import itemgetter
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import redis
import requests

from gpujobs.dev.devserver import web_command, worker_command
from gpujobs.dev.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from gpujobs.novita.simulator import NovitaSimulator

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 60


class Cluster:
    """Starts and controls every process; use as a context manager."""

    def __init__(
        self,
        data_dir: Path,
        *,
        workers: int = 2,
        concurrency: int = 2,
        simulator: NovitaSimulator | None = None,
        redis_env: Mapping[str, str] | None = None,
        **settings: str,
    ) -> None:
        self.data_dir, self.workers_wanted, self.concurrency = data_dir, workers, concurrency
        self.settings, self.redis_env = settings, redis_env
        # Served from this process for the cluster's lifetime (started here unless it already serves).
        self.simulator = simulator
        self.stack = ExitStack()
        self.workers: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Cluster:
        try:
            self._start()
        except BaseException:
            self.__exit__()  # a deployment that failed to start must not leave servers behind
            raise
        return self

    def _start(self) -> None:
        from flask_migrate import upgrade

        from gpujobs import create_app
        from gpujobs.encryption import new_key
        from gpujobs.tenants import create_api_key

        self.postgres = EmbeddedPostgres(self.data_dir / "postgres")
        novita: dict[str, str] = {}
        if self.simulator is not None:
            if self.simulator.url is None:
                self.simulator.start()
                self.stack.callback(self.simulator.stop)
            novita = {
                "NOVITA_API_KEY": self.simulator.config.api_key,
                "NOVITA_BASE_URL": self.simulator.base_url,
            }
        # Every web process must sign sessions with one key (gpujobs.wsgi refuses to start without it).
        secret = os.environ.get("GPUJOBS_SECRET_KEY") or secrets.token_hex(32)
        encryption_key = os.environ.get("GPUJOBS_ENCRYPTION_KEY") or new_key()
        self.stack.callback(self._stop_servers)
        redis_env = dict(self.redis_env or {})
        if not redis_env:
            self.redis = EmbeddedRedis(self.data_dir / "redis")
            redis_env["REDIS_URL"] = self.redis.start()
        self.env = dict(
            os.environ,
            DATABASE_URL=self.postgres.start(),
            **redis_env,
            GPUJOBS_DATA_DIR=str(self.data_dir),
            GPUJOBS_WEBHOOK_ALLOW_PRIVATE="1",
            GPUJOBS_DEFINITION_MODULES="bench.workloads",
            # One API key sends every request of a benchmark: the per-key limit would answer with 429s.
            GPUJOBS_RATE_LIMIT_PER_MINUTE="1000000",
            # The priority benchmark's tenant sends `critical` jobs, above a tenant's default limit.
            GPUJOBS_TENANT_MAX_PRIORITY="critical",
            # The pipeline benchmark's tenant holds hundreds of instances, above the default GPU quota (10).
            GPUJOBS_TENANT_MAX_INSTANCES="",
            # One tenant alone, measured without the fairness window (the figures in bench/README.md
            # were taken so); bench.starvation sets the window it measures.
            GPUJOBS_TENANT_MAX_PUBLISHED="",
            PYTHONPATH=str(ROOT),
            **{
                "GPUJOBS_SECRET_KEY": secret,
                "GPUJOBS_ENCRYPTION_KEY": encryption_key,
                **novita,
                **self.settings,
            },
        )
        # Explicit config, not os.environ: the caller's process (a test run) must keep its own settings.
        app = create_app(
            {
                "DATABASE_URL": self.env["DATABASE_URL"],
                **redis_env,
                "GPUJOBS_DEFINITION_MODULES": ["bench.workloads"],
                "GPUJOBS_ENCRYPTION_KEY": encryption_key,
            }
        )
        with app.app_context():
            upgrade()
            self.api_key = create_api_key("bench")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = self._spawn(web_command(self.port), "api")
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
        if self.workers_wanted:
            # Deliveries have their own pool, as deployed; the job workers above do not read its queue.
            self.webhook_worker = self._spawn(
                worker_command("webhooks", self.concurrency, hostname=f"webhooks-{time.time_ns()}@%h"),
                "webhooks",
            )
        self._wait_ready()

    def __exit__(self, *exc: object) -> None:
        processes = [getattr(self, name, None) for name in ("api", "beat", "webhook_worker")]
        for process in [*processes, *self.workers]:
            if process is not None:
                _terminate(process)
        self.stack.close()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def _spawn(self, command: list[str], name: str) -> subprocess.Popen[bytes]:
        with open(self.data_dir / f"{name}.log", "ab") as log:  # the process keeps its own copy
            return subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _start_worker(self, index: int) -> subprocess.Popen[bytes]:
        return self._spawn(
            worker_command("jobs", self.concurrency, hostname=f"bench{index}-{time.time_ns()}@%h"),
            f"worker{index}",
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

    def restart_redis_empty(self, down_seconds: float = 0.0) -> None:
        """Stop Redis, keep it down ``down_seconds``, throw its data away, start it again on the same port."""
        self.redis.stop()
        time.sleep(down_seconds)
        shutil.rmtree(self.redis.data_dir, ignore_errors=True)
        self.redis.start()

    def pids(self) -> list[int | None]:
        """The PIDs of the workers and beat now (None for one that has exited): a restart changes them."""
        return [process.pid if process.poll() is None else None for process in [*self.workers, self.beat]]

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        """Run one statement on its own autocommit connection (so ALTER SYSTEM works too); its rows."""
        with contextlib.closing(psycopg2.connect(self.env["DATABASE_URL"])) as conn:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(statement)
                return cursor.fetchall() if cursor.description else []

    def processes(self) -> dict[str, list[int]]:
        """Root pids of the deployment's process trees by role, for CPU accounting."""
        postmaster = int((self.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        redis_pid = int(redis.Redis.from_url(self.env["REDIS_URL"]).info("server")["process_id"])
        return {
            "api": [self.api.pid],
            "workers": [worker.pid for worker in self.workers],
            # The webhook worker delivers what the job workers record: its CPU is the pipeline's too.
            **({"webhooks": [self.webhook_worker.pid]} if self.workers_wanted else {}),
            "beat": [self.beat.pid],
            "postgres": [postmaster],
            "redis": [redis_pid],
        }

    def stop_postgres(self) -> None:
        self.postgres.stop()

    def start_postgres(self) -> None:
        self.postgres.start()

    def _stop_servers(self) -> None:
        with contextlib.suppress(AttributeError):  # a server that never started has nothing to stop
            self.redis.stop()
        with contextlib.suppress(AttributeError):
            self.postgres.stop()


def one_row(cursor: psycopg2.extensions.cursor) -> tuple[Any, ...]:
    """The row of a statement that always has one (a count, a job by the id the API gave).

    psycopg2's fetchone() answers None when there is none: said here, with the statement, not as a
    TypeError on the caller's subscript.
    """
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError(f"no row from {cursor.query!r}")
    return row


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class CpuSeconds(dict[str, float]):
    """CPU seconds by group, with Counter's difference and ordering.

    Not a Counter: typeshed types a Counter's counts as int (python/typeshed#3438), and these are floats.
    """

    def __sub__(self, earlier: Mapping[str, float]) -> CpuSeconds:
        """What each group used since ``earlier``; groups that used none are left out, as Counter does."""
        spent = ((name, seconds - earlier.get(name, 0.0)) for name, seconds in self.items())
        return CpuSeconds((name, seconds) for name, seconds in spent if seconds > 0)

    def most_common(self) -> list[tuple[str, float]]:
        """The groups, the busiest first (ties in insertion order), as Counter.most_common()."""
        return sorted(self.items(), key=itemgetter(1), reverse=True)


def cpu_seconds(groups: dict[str, list[int]]) -> CpuSeconds:
    """CPU seconds (user + system) used so far by each named group of process trees, reaped children too."""
    used = CpuSeconds()
    for name, roots in groups.items():
        for root in roots:
            try:
                tree = [psutil.Process(root)]
                tree += tree[0].children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for process in tree:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    times = process.cpu_times()
                    spent = times.user + times.system + times.children_user + times.children_system
                    used[name] = used.get(name, 0.0) + spent
    return used
