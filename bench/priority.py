"""Priority under backlog: how long a critical job waits behind thousands of queued low ones.

python -m bench.priority --backlog 2000 --critical 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2
import requests

from bench.cluster import Cluster, one_row
from bench.load import run_load

POLL_SECONDS = 0.05


def main() -> None:
    """Queue the backlog, then critical jobs one by one; print each one's queue wait."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=2000)
    parser.add_argument("--critical", type=int, default=5)
    parser.add_argument("--work-ms", type=int, default=50)
    args = parser.parse_args()
    with Cluster(Path(tempfile.mkdtemp(prefix="gpujobs-bench-prio-")), workers=1, concurrency=2) as cluster:
        low: dict[str, Any] = {
            "definitionKey": "bench.work",
            "params": {"milliseconds": args.work_ms},
            "priority": "low",
        }
        run_load(
            lambda s: s.post(f"{cluster.url}/v1/jobs", json=low, headers=cluster.headers, timeout=30),
            concurrency=8,
            total=args.backlog,
            ok=lambda r: r.status_code == 202,
        )
        waits = [_critical_wait(cluster, args.work_ms) for _ in range(args.critical)]
        remaining = _count_queued_low(cluster)
    print(f"backlog {args.backlog} low jobs of {args.work_ms} ms; 1 worker x 2 processes")
    print(f"critical job wait (queued -> started): {', '.join(f'{w * 1000:.0f} ms' for w in waits)}")
    print(f"median {statistics.median(waits) * 1000:.0f} ms; low jobs still waiting at the end: {remaining}")


def _critical_wait(cluster: Cluster, work_ms: int) -> float:
    body: dict[str, Any] = {
        "definitionKey": "bench.work",
        "params": {"milliseconds": work_ms},
        "priority": "critical",
    }
    job_id = requests.post(f"{cluster.url}/v1/jobs", json=body, headers=cluster.headers, timeout=30).json()[
        "id"
    ]
    with psycopg2.connect(cluster.env["DATABASE_URL"]) as conn, conn.cursor() as cursor:
        while True:
            cursor.execute(
                "SELECT extract(epoch FROM started_at - queued_at) FROM jobs WHERE id = %s", (job_id,)
            )
            wait = one_row(cursor)[0]
            conn.commit()
            if wait is not None:
                return float(wait)
            time.sleep(POLL_SECONDS)


def _count_queued_low(cluster: Cluster) -> int:
    with psycopg2.connect(cluster.env["DATABASE_URL"]) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM jobs WHERE status = 'queued' AND priority = 0")
        return int(one_row(cursor)[0])


if __name__ == "__main__":
    main()
