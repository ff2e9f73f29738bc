"""Fault injection with Jepsen-style accounting: submit jobs while breaking things, heal, count.

Faults, in one run: a worker SIGKILLed mid-job; Redis stopped for 10 s while jobs run and started
again empty (the workers and beat must keep their PIDs); a message lost from a busy queue (published
again within ``GPUJOBS_REPUBLISH_AFTER_SECONDS`` plus one sweep); PostgreSQL stopped for a while (the
API must answer 503, never 500); a worker paused (SIGSTOP) past its lease and resumed (its late writes
must be refused). Then, on a second deployment whose Redis is a primary, a replica and three Sentinels:
the primary SIGKILLed mid-run. After each fault the run waits for every accepted job to be terminal
(its recovery time); at the end every accepted job must have reached a terminal status exactly once.

    python -m bench.faults --jobs 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import psycopg2
import redis
import requests

from bench.cluster import Cluster, one_row
from gpujobs.broker import job_id_of_message
from gpujobs.dev.faults import SentinelDeployment, lose_message
from gpujobs.dev.polling import wait_for

LEASE_SECONDS = 3
SWEEP_SECONDS = 1
REPUBLISH_AFTER_SECONDS = 3
# Beat's sweep is a task like any other: with every pool process busy it waits for a free one (up to
# one busy job), and the run is timed on a loaded machine. What a re-publish may take beyond the bound.
SWEEP_LATENCY_ALLOWANCE_SECONDS = 2.0
REDIS_DOWN_SECONDS = 10.0
# The busy queue: this many jobs of this length on 2 workers x 2 processes keep it busy ~10 s.
BUSY_JOBS = 40
BUSY_WORK_MS = 1000
BUSY_QUEUE = "normal"
HEAL_TIMEOUT_SECONDS = 180
SUBMIT_THREADS = 4
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Report:
    """What happened to every job we tried to submit, and how long each fault took to heal."""

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
    # Seconds from the end of each fault (process killed, Redis back, ...) until every job accepted
    # so far was terminal.
    recovery_seconds: dict[str, float] = field(default_factory=dict)
    # Workers and beat whose PID changed (or that exited) across the Redis outage or the failover.
    pids_changed: int = 0
    # The lost message: from its first publish to its second, and the messages still queued ahead then.
    lost_message_republished_after: float | None = None
    lost_message_queue_at_republish: int | None = None
    failover_seconds: float | None = None  # primary SIGKILLed -> the Sentinels name the replica

    @property
    def ok(self) -> bool:
        """The targets: nothing lost or completed twice, no 500s, all terminal, no process restarted,
        a lost message re-sent within its bound."""
        bound = REPUBLISH_AFTER_SECONDS + SWEEP_SECONDS + SWEEP_LATENCY_ALLOWANCE_SECONDS
        late = self.lost_message_republished_after is not None and self.lost_message_republished_after > bound
        failures = (self.lost, self.not_terminal, self.duplicate_completions, self.server_errors_5xx)
        return not (any(failures) or self.pids_changed or late)


class Submitter:
    """Submits jobs from a few threads and remembers every answer."""

    def __init__(self, cluster: Cluster, work_ms: int) -> None:
        self.cluster, self.work_ms = cluster, work_ms
        self.accepted: list[str] = []
        self.codes: Counter[int] = Counter()
        self.lock = threading.Lock()

    def submit(self, count: int, work_ms: int | None = None) -> None:
        """Submit ``count`` jobs of ``work_ms`` (default: the submitter's) and wait for every answer."""
        with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
            list(pool.map(lambda _: self._one(work_ms or self.work_ms), range(count)))

    def _one(self, work_ms: int) -> None:
        body: dict[str, Any] = {"definitionKey": "bench.work", "params": {"milliseconds": work_ms}}
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


def run(
    jobs: int = 200,
    work_ms: int = 300,
    data_dir: Path | None = None,
    redis_down_seconds: float = REDIS_DOWN_SECONDS,
) -> Report:
    """Run the scenario on a fresh cluster and return the accounting."""
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="gpujobs-faults-"))
    with _cluster(data_dir) as cluster:
        submitter = Submitter(cluster, work_ms)
        recovery: dict[str, float] = {}
        quarter = max(1, jobs // 4)
        _with_fault(submitter, quarter, lambda: cluster.kill_worker(0), delay_seconds=1.0)
        recovery["worker SIGKILLed"] = _settle(cluster, submitter.accepted, time.monotonic())
        before = cluster.pids()
        _redis_outage(cluster, submitter, quarter, redis_down_seconds)
        recovery[f"Redis down {redis_down_seconds:g} s, back empty"] = _settle(
            cluster, submitter.accepted, time.monotonic()
        )
        pids_changed = _replaced(before, cluster)
        republished_after, queued = _lose_a_message(cluster, submitter)
        recovery["message lost from a busy queue"] = _settle(cluster, submitter.accepted, time.monotonic())
        _postgres_outage(cluster, submitter, quarter)
        recovery["PostgreSQL down 2 s"] = _settle(cluster, submitter.accepted, time.monotonic())
        _with_fault(submitter, jobs - 3 * quarter, lambda: cluster.pause_worker(1, LEASE_SECONDS * 2.5), 0.5)
        recovery["worker paused 2.5 leases"] = _settle(cluster, submitter.accepted, time.monotonic())
        report = _account(cluster, submitter)
    report.recovery_seconds, report.pids_changed = recovery, pids_changed
    report.lost_message_republished_after, report.lost_message_queue_at_republish = republished_after, queued
    return report


def run_failover(jobs: int = 100, work_ms: int = 300, data_dir: Path | None = None) -> Report:
    """Jobs submitted before, during and after a Sentinel failover (the primary SIGKILLed mid-run)."""
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="gpujobs-failover-"))
    deployment = SentinelDeployment(data_dir / "sentinel")
    deployment.base.mkdir(parents=True)
    try:
        deployment.start()
        with _cluster(data_dir, deployment.env) as cluster:
            submitter = Submitter(cluster, work_ms)
            before = cluster.pids()
            half = max(1, jobs // 2)
            submitter.submit(half)  # queued and running when the primary dies
            killed = time.monotonic()
            deployment.processes["primary"].kill()
            promoted: list[float] = []
            watch = threading.Thread(target=_watch_promotion, args=(deployment, killed, promoted))
            watch.start()
            submitter.submit(jobs - half)  # while the Sentinels notice, agree and promote
            watch.join()
            recovery = {"Sentinel failover": _settle(cluster, submitter.accepted, killed)}
            pids_changed = _replaced(before, cluster)
            report = _account(cluster, submitter)
    finally:
        deployment.stop()
    report.recovery_seconds, report.pids_changed, [report.failover_seconds] = recovery, pids_changed, promoted
    return report


def _watch_promotion(deployment: SentinelDeployment, killed: float, promoted: list[float]) -> None:
    """Append the seconds from the primary's death until the Sentinels name the replica master."""
    replica = deployment.ports["replica"]
    wait_for(lambda: deployment.master_port() == replica, timeout=HEAL_TIMEOUT_SECONDS)
    promoted.append(round(time.monotonic() - killed, 1))


def _replaced(before: list[int | None], cluster: Cluster) -> int:
    """How many of the workers and beat have another PID (or none) than ``before``."""
    return sum(1 for old, new in zip(before, cluster.pids(), strict=True) if old != new)


def _cluster(data_dir: Path, redis_env: Mapping[str, str] | None = None) -> Cluster:
    """The deployment every scenario faults: two workers; leases and sweeps short enough to heal in a run."""
    return Cluster(
        data_dir,
        workers=2,
        concurrency=2,
        redis_env=redis_env,
        GPUJOBS_LEASE_SECONDS=str(LEASE_SECONDS),
        GPUJOBS_SWEEP_INTERVAL_SECONDS=str(SWEEP_SECONDS),
        GPUJOBS_REPUBLISH_AFTER_SECONDS=str(REPUBLISH_AFTER_SECONDS),
    )


def _with_fault(submitter: Submitter, count: int, fault: Callable[[], object], delay_seconds: float) -> None:
    """Submit ``count`` jobs while ``fault`` strikes ``delay_seconds`` into the burst."""
    thread = threading.Thread(target=submitter.submit, args=(count,))
    thread.start()
    time.sleep(delay_seconds)
    fault()
    thread.join()


def _redis_outage(cluster: Cluster, submitter: Submitter, count: int, down_seconds: float) -> None:
    """Stop Redis while jobs run and clients keep submitting (202: durable, or 503); start it empty."""
    submitter.submit(count // 2)  # queued and running when Redis goes
    outage = threading.Thread(target=cluster.restart_redis_empty, args=(down_seconds,))
    outage.start()
    time.sleep(min(1.0, down_seconds / 2))
    submitter.submit(count - count // 2)
    outage.join()


def _lose_a_message(cluster: Cluster, submitter: Submitter) -> tuple[float, int]:
    """Delete the next message of a busy queue; wait for the dispatch sweep to publish its job again.

    Returns seconds from its first publish to its second, and the messages still waiting then."""
    submitter.submit(BUSY_JOBS, BUSY_WORK_MS)
    store = redis.Redis.from_url(cluster.env["REDIS_URL"])
    job_id = job_id_of_message(cast(bytes, store.lindex(BUSY_QUEUE, -1)))  # the oldest: the next to be taken
    assert job_id is not None, "the busy queue drained before a message could be lost"
    [[first]] = _query(cluster, "SELECT published_at FROM jobs WHERE id::text = ANY(%s)", [str(job_id)])
    lose_message(cluster.env["REDIS_URL"], job_id, BUSY_QUEUE)
    sql = "SELECT published_at FROM jobs WHERE id::text = ANY(%s) AND published_at > %s"

    def republished() -> tuple[datetime, int] | None:
        with psycopg2.connect(cluster.env["DATABASE_URL"]) as conn, conn.cursor() as cursor:
            cursor.execute(sql, ([str(job_id)], first))
            row = cursor.fetchone()
        return (row[0], store.llen(BUSY_QUEUE)) if row else None

    again, queued = cast(tuple[datetime, int], wait_for(republished, HEAL_TIMEOUT_SECONDS, interval=0.05))
    return round((again - first).total_seconds(), 1), queued


def _postgres_outage(cluster: Cluster, submitter: Submitter, count: int) -> None:
    """Stop PostgreSQL for a few seconds while clients keep submitting; the API must answer 503."""
    cluster.stop_postgres()
    submitter.submit(max(1, count // 4))
    time.sleep(2)
    cluster.start_postgres()
    submitter.submit(count - max(1, count // 4))


def _settle(cluster: Cluster, ids: list[str], since: float) -> float:
    """Wait until every job in ``ids`` is terminal (or the heal timeout passes); seconds since ``since``."""
    deadline = time.monotonic() + HEAL_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        sql = "SELECT count(*) FROM jobs WHERE id::text = ANY(%s) AND status = ANY(%s)"
        with psycopg2.connect(cluster.env["DATABASE_URL"]) as conn, conn.cursor() as cursor:
            cursor.execute(sql, (ids, list(TERMINAL)))
            [terminal] = one_row(cursor)
        if terminal == len(ids):
            break
        time.sleep(0.2)
    return round(time.monotonic() - since, 1)


def _account(cluster: Cluster, submitter: Submitter) -> Report:
    report = Report(
        submitted=sum(submitter.codes.values()),
        accepted=len(submitter.accepted),
        refused_503=submitter.codes[503],
        server_errors_5xx=sum(n for code, n in submitter.codes.items() if code >= 500 and code != 503),
    )
    ids = submitter.accepted
    statuses = dict(_query(cluster, "SELECT id::text, status FROM jobs WHERE id::text = ANY(%s)", ids))
    report.lost = sum(1 for i in ids if i not in statuses)
    report.not_terminal = sum(1 for i in ids if i in statuses and statuses[i] not in TERMINAL)
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
    parser.add_argument("--redis-down-seconds", type=float, default=REDIS_DOWN_SECONDS)
    args = parser.parse_args()
    reports = {
        "faults": run(args.jobs, args.work_ms, redis_down_seconds=args.redis_down_seconds),
        "failover": run_failover(args.jobs // 2, args.work_ms),
    }
    for title, report in reports.items():
        print(f"-- {title}")
        for name, value in asdict(report).items():
            print(f"{name:32} {value}")
    print(json.dumps({title: {**asdict(report), "ok": report.ok} for title, report in reports.items()}))
    raise SystemExit(0 if all(report.ok for report in reports.values()) else 1)


if __name__ == "__main__":
    main()
