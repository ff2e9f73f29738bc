"""Echo pipeline: CPU per job of ``POST /v1/jobs`` (echo) until ``succeeded``, beside its anchors.

python -m bench.echo --jobs 500 [--count-sql]

N echo jobs submitted over HTTP from ``--threads`` clients (the production gunicorn, one worker with
``--concurrency`` pool processes), timed until every row is ``succeeded`` (this process polls the count
every 0.1 s; its polls are taken out of the commit figures). CPU of every process of the deployment (API,
workers, beat, PostgreSQL, Redis), then, on the same servers and with the same concurrency
(``bench.anchors``), a raw Celery one-task chain and a procrastinate one-step job deferred from Python.
Prints CPU per job of each, the ratios (issue 24's target: echo <= 2x procrastinate), jobs/s, PostgreSQL
commits per job and, with ``--count-sql``, statements per job by kind (the server logs every statement:
slower, so CPU figures come from runs without it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import anchors
from bench.cluster import Cluster, cpu_seconds
from bench.load import run_load
from bench.options import job_bench_parser, run_once
from bench.sqllog import count_statements, log_statements, server_cpu

TARGET_CPU_RATIO = 2.0  # echo job CPU over a procrastinate one-step job's (issue 24)
BODY: dict[str, Any] = {"definitionKey": "echo", "params": {"message": "bench"}}
DONE_SQL = "SELECT count(*) FROM jobs WHERE status = 'succeeded'"
LATENCY_SQL = "SELECT extract(epoch FROM finished_at - queued_at) * 1000 FROM jobs WHERE status = 'succeeded'"


def _commits(cluster: Cluster) -> int:
    sql = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    return int(cluster.sql(sql)[0][0])


def run_echo(args: argparse.Namespace, cluster: Cluster) -> dict[str, Any]:
    """Submit, wait until every job succeeded; every figure per job."""
    pg_log = cluster.data_dir / "postgres" / "log"
    log_offset = pg_log.stat().st_size if pg_log.exists() else 0
    groups = cluster.processes()
    commits, cpu = _commits(cluster), cpu_seconds(groups)
    started = time.time()
    load = run_load(
        lambda s: s.post(f"{cluster.url}/v1/jobs", json=BODY, headers=cluster.headers, timeout=30),
        concurrency=args.threads,
        total=args.jobs,
        ok=lambda r: r.status_code == 202,
    )
    polls = 1
    deadline = time.monotonic() + args.timeout
    while cluster.sql(DONE_SQL)[0][0] < args.jobs - load.errors and time.monotonic() < deadline:
        time.sleep(0.1)
        polls += 1
    seconds = time.time() - started
    cpu = cpu_seconds(groups) - cpu
    commits = _commits(cluster) - commits - polls - 1  # not this process's own polls and counts
    n = args.jobs
    latencies = sorted(float(row[0]) for row in cluster.sql(LATENCY_SQL))
    result: dict[str, Any] = {
        "jobs": n,
        "accepted": n - load.errors,
        "succeeded": len(latencies),
        "per_second": round(len(latencies) / seconds, 1) if seconds else 0.0,
        "p50_ms": round(latencies[len(latencies) // 2], 1) if latencies else 0.0,
        "submit": {"per_second": round(load.per_second, 1), "p50_ms": round(load.p50_ms, 1)},
        "cpu_ms_per_job": {k: round(v * 1000 / n, 2) for k, v in cpu.most_common()},
        "cpu_ms_total": round(sum(cpu.values()) * 1000 / n, 2),
        "pg_commits_per_job": round(commits / n, 1),
    }
    if args.count_sql:
        log_text = pg_log.read_text(errors="replace")[log_offset:]
        kinds = count_statements(log_text)
        result["pg_cpu_ms_top"] = {k: round(v * 1000 / n, 3) for k, v in server_cpu(log_text)[:10]}
        kinds["SELECT jobs"] -= polls  # this process's polls
        kinds["SELECT pg_stat_database"] = 0
        kinds = +kinds
        result["pg_statements_per_job"] = round(sum(kinds.values()) / n, 1)
        result["pg_statements_top"] = {k: round(v / n, 2) for k, v in kinds.most_common(16)}
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The echo run, then both anchors on the same servers."""
    data_dir = Path(tempfile.mkdtemp(prefix="gpujobs-bench-echo-"))
    with Cluster(data_dir, workers=1, concurrency=args.concurrency, GPUJOBS_LOG_LEVEL="WARNING") as cluster:
        if args.count_sql:
            log_statements(cluster.env["DATABASE_URL"], True)
        result = run_echo(args, cluster)
        result["anchors"] = anchors.measure(
            cluster, jobs=args.jobs, steps=1, concurrency=args.concurrency, count_sql=args.count_sql
        )
        if args.count_sql:
            log_statements(cluster.env["DATABASE_URL"], False)
    result["cpu_ratio"] = anchors.ratios(result["cpu_ms_total"], result["anchors"])
    return result


def report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Print the table, then the JSON line."""
    print(
        f"{args.jobs} echo jobs over HTTP ({args.threads} client threads); 1 worker x {args.concurrency} "
        f"processes; {result['succeeded']} succeeded, {result['per_second']} jobs/s, "
        f"queued -> finished p50 {result['p50_ms']} ms; POST /v1/jobs {result['submit']['per_second']} req/s"
    )
    anchors.report("echo job", result, 1, ("procrastinate", TARGET_CPU_RATIO))
    print(f"PostgreSQL commits per echo job {result['pg_commits_per_job']}")
    if "pg_statements_per_job" in result:
        print(f"PostgreSQL statements per echo job {result['pg_statements_per_job']}, by kind:")
        for kind, count in result["pg_statements_top"].items():
            print(f"  {kind:34} {count:6.2f}")
        print("PostgreSQL CPU per echo job by statement kind, ms (parse, plan and run; the log inflates it):")
        for kind, ms in result["pg_cpu_ms_top"].items():
            print(f"  {kind:34} {ms:6.3f}")
    print(json.dumps({"bench": "echo", **result}, separators=(",", ":")))


def main() -> None:
    """Parse options, run once, print."""
    parser = job_bench_parser(__doc__, jobs=500, waits_for="every job")
    parser.add_argument("--concurrency", type=int, default=4, help="pool processes of the one worker")
    run_once(parser.parse_args(), run, report)


if __name__ == "__main__":
    main()
