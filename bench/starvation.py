"""Webhook starvation: does a tenant whose receiver holds every request slow another tenant's job?

python -m bench.starvation --flood 500 --schedules 50 --samples 5 --tenant-max-running 2

Tenant A floods echo jobs whose receiver holds every request for the whole webhook timeout, plus
every-minute schedules; tenant B's single echo job is timed submit -> succeeded, on an idle cluster,
during the flood (while A's backlog drains) and after it. Every tenant has a running-jobs limit
(``GPUJOBS_TENANT_MAX_RUNNING_JOBS``), which is also its fairness window: only that many of A's jobs
stand in the Redis queue at once. Prints the figures; asserts nothing on time (machines differ).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2
import requests

from bench.cluster import Cluster, one_row
from bench.load import run_load
from bench.receiver import LoopbackReceiver

POLL_SECONDS = 0.02
TIMEOUT_SECONDS = 10.0
SAMPLE_GAP_SECONDS = 5.0


def main() -> None:
    """Time tenant B's echo idle, then under tenant A's flood; print both."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=500)
    parser.add_argument("--schedules", type=int, default=50)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument(
        "--tenant-max-running", type=int, default=2, help="every tenant's running-jobs limit (0: none)"
    )
    args = parser.parse_args()
    release = threading.Event()
    holding = LoopbackReceiver(lambda headers, body: (release.wait(TIMEOUT_SECONDS + 1), 204)[1])
    data_dir = Path(tempfile.mkdtemp(prefix="gpujobs-bench-starve-"))
    try:
        with Cluster(
            data_dir,
            workers=1,
            concurrency=2,
            GPUJOBS_WEBHOOK_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS),
            GPUJOBS_TENANT_MAX_SCHEDULES=str(args.schedules),
            GPUJOBS_TENANT_MAX_RUNNING_JOBS=str(args.tenant_max_running or ""),  # empty: no limit
        ) as cluster:
            other = {"Authorization": f"Bearer {_new_key(cluster, 'tenant-b')}"}
            idle = [_latency(cluster, other) for _ in range(args.samples)]
            _flood(cluster, holding.url, args.flood, args.schedules)
            backlog: list[float] = []  # while A's jobs are queued: the job queues, not webhooks
            waiting: list[int] = []
            while (left := _unfinished(cluster)) > 0 and len(backlog) < args.samples:
                waiting.append(left)
                backlog.append(_latency(cluster, other))
            _wait_for_jobs_done(cluster)
            loaded = []  # A's jobs done, its deliveries held or queued: webhooks alone
            for _ in range(args.samples):
                loaded.append(_latency(cluster, other))
                time.sleep(SAMPLE_GAP_SECONDS)
            held = _deliveries(cluster)
    finally:
        release.set()
        holding.close()
    hold = f"holding each request {TIMEOUT_SECONDS:.0f} s (the timeout)"
    print(f"tenant A: {args.flood} jobs to a receiver {hold},")
    print(f"  plus {args.schedules} every-minute schedules; 1 job worker x 2 + 1 webhook worker x 2")
    print(f"  running-jobs limit (fairness window) of every tenant: {args.tenant_max_running or 'none'}")
    print(f"tenant B echo submit -> succeeded, idle:  {_ms(idle)}")
    print(f"tenant B echo submit -> succeeded, during the flood ({waiting} of A's jobs left): {_ms(backlog)}")
    print(f"tenant B echo submit -> succeeded, A's jobs done, its webhooks pending: {_ms(loaded)}")
    for name, figures in (("during the flood", backlog), ("webhooks pending", loaded)):
        if figures:  # none during the flood when A's backlog drained before the first sample
            print(f"median ratio {name}/idle: {statistics.median(figures) / statistics.median(idle):.2f}")
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"tenant A deliveries at the end: {held}")


def _new_key(cluster: Cluster, tenant: str) -> str:
    command = [sys.executable, "-m", "gpujobs", "keys", "create", "--tenant", tenant]
    return subprocess.run(command, env=cluster.env, capture_output=True, text=True, check=True).stdout.strip()


def _flood(cluster: Cluster, url: str, jobs: int, schedules: int) -> None:
    body: dict[str, Any] = {"definitionKey": "echo", "params": {"message": "flood"}, "webhookUrl": url}
    run_load(
        lambda s: s.post(f"{cluster.url}/v1/jobs", json=body, headers=cluster.headers, timeout=30),
        concurrency=8,
        total=jobs,
        ok=lambda r: r.status_code == 202,
    )
    for index in range(schedules):
        schedule = {"name": f"every-minute-{index}", "cron": "* * * * *", "definitionKey": "echo"}
        requests.post(f"{cluster.url}/v1/schedules", json=schedule, headers=cluster.headers, timeout=30)


def _unfinished(cluster: Cluster) -> int:
    with psycopg2.connect(cluster.env["DATABASE_URL"]) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM jobs WHERE status NOT IN ('succeeded', 'failed', 'cancelled')")
        return int(one_row(cursor)[0])


def _wait_for_jobs_done(cluster: Cluster) -> None:
    while _unfinished(cluster) > 0:
        time.sleep(0.5)


def _latency(cluster: Cluster, headers: dict[str, str]) -> float:
    started = time.monotonic()
    body: dict[str, Any] = {"definitionKey": "echo", "params": {"message": "tenant b"}}
    job_id = requests.post(f"{cluster.url}/v1/jobs", json=body, headers=headers, timeout=30).json()["id"]
    with psycopg2.connect(cluster.env["DATABASE_URL"]) as conn, conn.cursor() as cursor:
        while True:
            cursor.execute("SELECT status FROM jobs WHERE id = %s", (job_id,))
            status = one_row(cursor)[0]
            conn.commit()
            if status == "succeeded":
                return time.monotonic() - started
            time.sleep(POLL_SECONDS)


def _deliveries(cluster: Cluster) -> str:
    with psycopg2.connect(cluster.env["DATABASE_URL"]) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE last_error LIKE 'held:%%'), count(*) FILTER (WHERE attempts > 0),"
            " count(*) FROM webhook_deliveries"
        )
        held, tried, total = one_row(cursor)
        cursor.execute("SELECT count(*) FROM webhook_endpoints WHERE open_until IS NOT NULL")
        open_circuits = one_row(cursor)[0]
    return f"{total} recorded, {tried} tried, {held} held; open circuits: {open_circuits}"


def _ms(seconds: list[float]) -> str:
    if not seconds:
        return "no sample"
    values = ", ".join(f"{s * 1000:.0f}" for s in seconds)
    return f"{values} ms (median {statistics.median(seconds) * 1000:.0f} ms)"


if __name__ == "__main__":
    main()
