"""A peer for the CPU figures: procrastinate, a durable PostgreSQL job queue, running no-op jobs.

python -m bench.peer_procrastinate --jobs 500 [--steps 1,3] [--count-sql]

On an embedded PostgreSQL like the cluster's (``gpujobs.dev.embedded``), in a database of its own: one
procrastinate worker process (``--concurrency`` async jobs at a time) and a publisher in this process
deferring one job per call, as an application would. A one-step job is one no-op task; a three-step job
is a task that defers the next one, three times (procrastinate has no chain primitive; this is how its
docs chain). Prints jobs/s, latency (the last step's ``succeeded`` event minus the first defer) and CPU per
job of the worker, the publisher (the thread that defers) and PostgreSQL, plus commits per job
(``pg_stat_database.xact_commit`` of its database). ``bench.pipeline`` and ``bench.echo`` call
``measure`` on their own cluster's PostgreSQL, beside the gpujobs run. Benchmark-only: the ``bench``
extra installs procrastinate; gpujobs never imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import procrastinate
import psycopg2

from bench.cluster import cpu_seconds
from bench.load import percentile
from bench.procrastinate_app import DSN_ENV, QUEUE, app, noop
from bench.sqllog import count_statements, log_statements
from gpujobs.dev.embedded import EmbeddedPostgres

DATABASE = "procrastinate_bench"
START_TIMEOUT_SECONDS = 60


def database_url(server_url: str) -> str:
    """The URL of this benchmark's own database on ``server_url``'s server, created if missing."""
    with contextlib.closing(psycopg2.connect(server_url)) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
    base, _, query = server_url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + DATABASE
    return f"{base}?{query}" if query else base


def _sql(url: str, statement: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(psycopg2.connect(url)) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall() if cursor.description else []


def _commits(url: str) -> int:
    return int(_sql(url, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")[0][0])


def measure(
    server_url: str,
    postgres: list[int],
    *,
    jobs: int,
    steps: int,
    concurrency: int,
    log_dir: Path,
    pg_log: Path | None = None,
) -> dict[str, Any]:
    """Run ``jobs`` jobs of ``steps`` no-op steps through a fresh worker; every figure per job.

    ``postgres`` are the server's root pids (its CPU is counted while the jobs run); with ``pg_log``, the
    server logs every statement meanwhile (the caller turned that on) and they are counted from it.
    """
    url = database_url(server_url)
    env = dict(os.environ, **{DSN_ENV: url})
    if not _sql(url, "SELECT 1 FROM pg_tables WHERE tablename = 'procrastinate_jobs'"):
        _sql(url, procrastinate.schema.SchemaManager.get_schema())  # once per database
    _sql(url, "TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_workers CASCADE")
    command = [
        sys.executable, "-m", "procrastinate", "--app=bench.procrastinate_app.app", "worker",
        "--queues", QUEUE, "--concurrency", str(concurrency), "--delete-jobs", "never",
    ]  # fmt: skip
    with open(log_dir / "procrastinate-worker.log", "wb") as log:
        worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_worker(url, worker)
        groups = {"workers": [worker.pid], "postgres": postgres}
        log_offset = pg_log.stat().st_size if pg_log and pg_log.exists() else 0
        commits, cpu = _commits(url), cpu_seconds(groups)
        started, publisher = time.time(), time.thread_time()
        with app.replace_connector(procrastinate.SyncPsycopgConnector(conninfo=url)), app.open():
            for _ in range(jobs):
                noop.defer(t0=time.time(), left=steps - 1)
        publisher = time.thread_time() - publisher
        done_sql = (
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded' AND args->>'left' = '0'"
        )
        polls = 1
        while _sql(url, done_sql)[0][0] < jobs:
            time.sleep(0.05)
            polls += 1
        seconds = time.time() - started
        cpu = cpu_seconds(groups) - cpu
        commits = _commits(url) - commits - polls - 1  # not this process's polls and its first count
        statements = (
            count_statements(pg_log.read_text(errors="replace")[log_offset:]) if pg_log is not None else None
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    latency_sql = """
        SELECT extract(epoch FROM e.at) - (j.args->>'t0')::float FROM procrastinate_jobs j
        JOIN procrastinate_events e ON e.job_id = j.id AND e.type = 'succeeded' WHERE j.args->>'left' = '0'
    """
    latencies = [float(row[0]) * 1000 for row in _sql(url, latency_sql)]
    cpu["publisher"] = publisher
    result: dict[str, Any] = {
        "jobs": jobs,
        "steps": steps,
        "per_second": round(jobs / seconds, 1),
        "p50_ms": round(percentile(latencies, 0.5), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "cpu_ms_per_job": {k: round(v * 1000 / jobs, 2) for k, v in cpu.most_common()},
        "cpu_ms_total": round(sum(cpu.values()) * 1000 / jobs, 2),
        "pg_commits_per_job": round(commits / jobs, 1),
    }
    if statements is not None:
        statements["SELECT procrastinate_jobs"] -= polls  # this process's polls, not the queue's
        statements["SELECT pg_stat_database"] = 0
        statements = +statements
        result["pg_statements_per_job"] = round(sum(statements.values()) / jobs, 1)
        result["pg_statements_top"] = {k: round(v / jobs, 2) for k, v in statements.most_common(8)}
    return result


def _wait_for_worker(url: str, worker: subprocess.Popen[bytes]) -> None:
    """Until the worker has registered itself (its first heartbeat row)."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError("the procrastinate worker exited at start")
        if _sql(url, "SELECT count(*) FROM procrastinate_workers")[0][0]:
            return
        time.sleep(0.1)
    raise RuntimeError("the procrastinate worker did not start")


def line(name: str, result: dict[str, Any]) -> str:
    """One printable row: throughput, latency, CPU per job by process, commits."""
    cpu = ", ".join(f"{k} {v}" for k, v in result["cpu_ms_per_job"].items())
    return (
        f"{name:34} {result['per_second']:8.1f} jobs/s  p50 {result['p50_ms']:7.1f} ms  "
        f"CPU {result['cpu_ms_total']:6.2f} ms/job ({cpu}); commits/job {result['pg_commits_per_job']}"
    )


def main() -> None:
    """Start an embedded PostgreSQL, run each step count, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--steps", default="1,3", help="comma-separated step counts")
    parser.add_argument("--concurrency", type=int, default=4, help="async jobs at a time in the worker")
    parser.add_argument("--count-sql", action="store_true", help="log and count every SQL statement")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="gpujobs-bench-procrastinate-"))
    postgres = EmbeddedPostgres(data_dir / "postgres")
    server_url = postgres.start()
    try:
        pids = [int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])]
        pg_log = data_dir / "postgres" / "log" if args.count_sql else None
        if pg_log is not None:
            log_statements(server_url, True)
        results: dict[str, Any] = {}
        for steps in (int(s) for s in args.steps.split(",")):
            results[f"{steps}-step"] = result = measure(
                server_url, pids, jobs=args.jobs, steps=steps, concurrency=args.concurrency,
                log_dir=data_dir, pg_log=pg_log,
            )  # fmt: skip
            print(line(f"procrastinate {steps}-step no-op job", result))
            if "pg_statements_per_job" in result:
                print(f"  statements/job {result['pg_statements_per_job']}: {result['pg_statements_top']}")
    finally:
        postgres.stop()
    print(json.dumps({"bench": "peer_procrastinate", **results}, separators=(",", ":")))


if __name__ == "__main__":
    main()
