"""Fault injection with Jepsen-style accounting: submit jobs while breaking things, heal, count.

Faults, in one run: a worker SIGKILLed mid-job, Redis restarted empty, PostgreSQL stopped for a while
(the API must answer 503, never 500), a worker paused (SIGSTOP) past its lease and resumed (its late
writes must be refused). Afterwards every accepted job must reach a terminal status exactly once.

    python -m bench.faults --jobs 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg2
import requests

from bench.cluster import Cluster

LEASE_SECONDS = 3
HEAL_TIMEOUT_SECONDS = 180
SUBMIT_THREADS = 4


@dataclass
class Report:
    """What happened to every job we tried to submit."""

    submitted: int = 0
    accepted: int = 0
    refused_503: int = 0
    server_errors_5xx: int = 0
    lost: int = 0
    not_terminal: int = 0
    duplicate_completions: int = 0
    re_executions: int = 0
    rescued: int = 0
    late_writes_refused: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    heal_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """The targets: nothing lost, nothing completed twice, no 500s, everything terminal."""
        return not (self.lost or self.not_terminal or self.duplicate_completions or self.server_errors_5xx)


class Submitter:
    """Submits jobs from a few threads and remembers every answer."""

    def __init__(self, cluster: Cluster, work_ms: int) -> None:
        self.cluster, self.work_ms = cluster, work_ms
        self.accepted: list[str] = []
        self.codes: Counter[int] = Counter()
        self.lock = threading.Lock()

    def submit(self, count: int) -> None:
        with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
            list(pool.map(lambda _: self._one(), range(count)))

    def _one(self) -> None:
        body = {"definitionKey": "bench.work", "params": {"milliseconds": self.work_ms}}
        try:
            response = requests.post(
                f"{self.cluster.url}/v1/jobs", json=body, headers=self.cluster.headers, timeout=30
            )
            code = response.status_code
        except requests.RequestException:
            code = 0  # connection refused or reset: not accepted, and the client knows it
        with self.lock:
            self.codes[code] += 1
            if code == 202:
                self.accepted.append(response.json()["id"])


def run(jobs: int = 200, work_ms: int = 300, data_dir: Path | None = None) -> Report:
    """Run the scenario on a fresh cluster and return the accounting."""
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="gpujobs-faults-"))
    settings = {"GPUJOBS_LEASE_SECONDS": str(LEASE_SECONDS), "GPUJOBS_SWEEP_INTERVAL_SECONDS": "1"}
    with Cluster(data_dir, workers=2, concurrency=2, **settings) as cluster:
        submitter = Submitter(cluster, work_ms)
        quarter = max(1, jobs // 4)
        _with_fault(submitter, quarter, lambda: cluster.kill_worker(0), delay_seconds=1.0)
        _with_fault(submitter, quarter, cluster.restart_redis_empty, delay_seconds=0.5)
        _postgres_outage(cluster, submitter, quarter)
        _with_fault(submitter, jobs - 3 * quarter, lambda: cluster.pause_worker(1, LEASE_SECONDS * 2.5), 0.5)
        started = time.monotonic()
        report = _account(cluster, submitter, started)
    return report


def _with_fault(submitter: Submitter, count: int, fault, delay_seconds: float) -> None:
    """Submit ``count`` jobs while ``fault`` strikes ``delay_seconds`` into the burst."""
    thread = threading.Thread(target=submitter.submit, args=(count,))
    thread.start()
    time.sleep(delay_seconds)
    fault()
    thread.join()


def _postgres_outage(cluster: Cluster, submitter: Submitter, count: int) -> None:
    """Stop PostgreSQL for a few seconds while clients keep submitting; the API must answer 503."""
    cluster.stop_postgres()
    submitter.submit(max(1, count // 4))
    time.sleep(2)
    cluster.start_postgres()
    submitter.submit(count - max(1, count // 4))


def _account(cluster: Cluster, submitter: Submitter, started: float) -> Report:
    report = Report(
        submitted=sum(submitter.codes.values()),
        accepted=len(submitter.accepted),
        refused_503=submitter.codes[503],
        server_errors_5xx=sum(n for code, n in submitter.codes.items() if code >= 500 and code != 503),
    )
    ids = submitter.accepted
    deadline = time.monotonic() + HEAL_TIMEOUT_SECONDS
    while True:
        rows = _query(cluster, "SELECT id::text, status FROM jobs WHERE id::text = ANY(%s)", ids)
        statuses = dict(rows)
        pending = [i for i in ids if statuses.get(i) not in ("succeeded", "failed", "cancelled")]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(1)
    report.heal_seconds = round(time.monotonic() - started, 1)
    report.lost = sum(1 for i in ids if i not in statuses)
    report.not_terminal = len(pending) - report.lost
    report.statuses = dict(Counter(statuses.values()))
    events = _query(
        cluster,
        "SELECT job_id::text, type, count(*) FROM job_events WHERE job_id::text = ANY(%s)"
        " AND type IN ('job.succeeded', 'job.effect', 'job.rescued') GROUP BY 1, 2",
        ids,
    )
    by_type: dict[str, list[int]] = {}
    for _, event_type, count in events:
        by_type.setdefault(event_type, []).append(count)
    report.duplicate_completions = sum(1 for n in by_type.get("job.succeeded", []) if n > 1)
    report.re_executions = sum(n - 1 for n in by_type.get("job.effect", []) if n > 1)
    report.rescued = sum(by_type.get("job.rescued", []))
    report.late_writes_refused = sum(
        log.read_text(errors="replace").count("ended fenced out")
        for log in cluster.data_dir.glob("worker*.log")
    )
    return report


def _query(cluster: Cluster, sql: str, ids: list[str]) -> list[tuple]:
    with psycopg2.connect(cluster.env["DATABASE_URL"]) as conn, conn.cursor() as cursor:
        cursor.execute(sql, (ids,))
        return cursor.fetchall()


def main() -> None:
    """Run from the command line and print the figures as a table and as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--work-ms", type=int, default=300)
    args = parser.parse_args()
    report = run(args.jobs, args.work_ms)
    for name, value in asdict(report).items():
        print(f"{name:24} {value}")
    print(json.dumps({**asdict(report), "ok": report.ok}))
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
