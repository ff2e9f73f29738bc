"""Novita calls per instance with 1, 100 and 1,000 instances monitored at once, against naive polling.

python -m bench.novita_calls [--sizes 1,100,1000] [--interval 2] [--startup 20] [--max-seconds 600]

For each size, a fresh deployment (``bench.cluster``) and a fresh simulator whose instances take
``--startup`` seconds from create to running (pending, toCreate, creating, pulling in proportion 1:2:5:12,
a scaled-down real start), polled every ``--interval`` seconds. N ``POST /v1/instances`` are submitted;
the run ends when every job has succeeded (its instance runs). The simulator's ledger gives every call by
endpoint; ``GET /gpu/instances`` is split by its ``name`` filter into the create step's adopt lookup (one
job's name) and the shared status list (our prefix, see ``gpujobs.provisioning.snapshot``). The naive
figure is the same create path plus one ``GET /gpu/instance`` per instance per poll until it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from bench.cluster import Cluster
from bench.load import percentile, run_load
from bench.pipeline import CLUSTER_ID, PRODUCT_ID, REQUEST
from gpujobs.novita.simulator import NovitaSimulator, SimulatorConfig

SIM_KEY = "sk_bench_novita_calls"
# A real start, scaled down: queueing, placement, container creation, then the image pull dominates.
PHASE_SHARES = {"pending": 1, "toCreate": 2, "creating": 5, "pulling": 12}
LEASE_SECONDS = 300  # a look may lag far behind its interval at 1,000 instances on 2 cores
STATUS_LIST, ADOPT_LOOKUP = "GET /gpu/instances (status list)", "GET /gpu/instances (adopt lookup)"
# An adopt lookup filters by one instance's full name (prefix + job id); the status list by the prefix.
JOB_ID_AT_END = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PROGRESS_SQL = """
SELECT count(*), count(*) FILTER (WHERE j.status = 'succeeded'),
       count(*) FILTER (WHERE j.status IN ('failed', 'cancelled')),
       count(i.novita_id), count(*) FILTER (WHERE j.attempt > 1)
FROM jobs j JOIN instances i ON i.job_id = j.id WHERE j.definition_key = 'gpu.instance.create'
"""
READY_SQL = "SELECT novita_id, extract(epoch FROM ready_at) FROM instances WHERE ready_at IS NOT NULL"


def phases(startup: float) -> dict[str, float]:
    """Seconds per create phase summing to ``startup``; other actions take one second a phase."""
    total = sum(PHASE_SHARES.values())
    return {"default": 1.0, **{name: startup * share / total for name, share in PHASE_SHARES.items()}}


def classify_lists(simulator: NovitaSimulator) -> list[tuple[float, str]]:
    """Tag each ``GET /gpu/instances`` by its name filter (the ledger keeps no query), via WSGI middleware."""
    tagged: list[tuple[float, str]] = []
    lock = threading.Lock()
    inner = simulator.app.wsgi_app

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").endswith("/gpu/instances"):
            name = parse_qs(environ.get("QUERY_STRING", "")).get("name", [""])[0]
            with lock:
                tagged.append((time.time(), ADOPT_LOOKUP if JOB_ID_AT_END.search(name) else STATUS_LIST))
        return inner(environ, start_response)

    simulator.app.wsgi_app = app  # type: ignore[method-assign]
    return tagged


def progress(cluster: Cluster) -> dict[str, int]:
    """Jobs accepted, succeeded, ended otherwise, instances created at Novita, jobs run more than once."""
    names = ("accepted", "succeeded", "ended_otherwise", "created", "retried")
    return dict(zip(names, cluster.sql(PROGRESS_SQL)[0], strict=True))


def measure(size: int, args: argparse.Namespace) -> dict[str, Any]:
    """One size in a fresh deployment: submit, wait until every instance runs, count Novita's calls."""
    simulator = NovitaSimulator(SimulatorConfig(api_key=SIM_KEY, phase_seconds=phases(args.startup)))
    tagged = classify_lists(simulator)
    data_dir = Path(tempfile.mkdtemp(prefix=f"gpujobs-bench-calls-{size}-"))
    with Cluster(
        data_dir,
        workers=args.workers,
        concurrency=args.concurrency,
        simulator=simulator,
        GPUJOBS_MONITOR_INTERVAL_SECONDS=str(args.interval),
        GPUJOBS_LEASE_SECONDS=str(LEASE_SECONDS),
        GPUJOBS_LOG_LEVEL="WARNING",
    ) as cluster:
        simulator.set_capacity(PRODUCT_ID, CLUSTER_ID, size)
        body: dict[str, Any] = {**REQUEST, "timeoutSeconds": 3600}
        started = time.time()
        load = run_load(
            lambda s: s.post(f"{cluster.url}/v1/instances", json=body, headers=cluster.headers, timeout=60),
            concurrency=min(8, size),
            total=size,
            ok=lambda r: r.status_code == 202,
        )
        deadline = started + args.max_seconds
        state = progress(cluster)
        while state["succeeded"] + state["ended_otherwise"] < state["accepted"] and time.time() < deadline:
            time.sleep(1.0)
            state = progress(cluster)
        ended = time.time()
        ready = {novita_id: float(at) for novita_id, at in cluster.sql(READY_SQL)}
    created_at = {item["id"]: item["createdAt"] for item in simulator.instances()}
    calls = Counter(
        f"{c['method']} {c['endpoint']}" for c in simulator.ledger() if started <= c["at"] <= ended
    )
    lists = Counter(kind for at, kind in tagged if started <= at <= ended)
    calls.pop("GET /gpu/instances", None)
    calls.update(lists)
    return summarize(size, args, calls, state, started, ended, created_at, ready, load.errors)


def summarize(
    size: int,
    args: argparse.Namespace,
    calls: Counter[str],
    state: dict[str, int],
    started: float,
    ended: float,
    created_at: dict[str, float],
    ready: dict[str, float],
    submit_errors: int,
) -> dict[str, Any]:
    """Calls per instance, status lists per poll interval, and the naive one-call-per-poll figure."""
    total = sum(calls.values())
    status_reads = calls[STATUS_LIST]
    create_path = total - status_reads - calls["GET /gpu/instance"]
    polls_per_instance = math.ceil(args.startup / args.interval)
    naive = create_path + size * polls_per_instance
    # Monitoring lasts from the first create until the last instance was seen running.
    window = (max(ready.values()) - min(created_at.values())) if ready else 0.0
    # How long after it really ran the service saw each instance running: the monitor's lag at this size.
    lags = [at - created_at[novita_id] - args.startup for novita_id, at in ready.items()]
    return {
        "instances": size,
        "complete": state["succeeded"] == size,
        "progress": state,
        "submit_errors": submit_errors,
        "seconds": round(ended - started, 1),
        "monitor_window_s": round(window, 1),
        "calls": dict(sorted(calls.items())),
        "total_calls": total,
        "status_reads": status_reads,
        "naive_status_reads": size * polls_per_instance,
        "calls_per_instance": round(total / size, 2),
        "status_lists_per_poll_interval": round(status_reads / (window / args.interval), 2)
        if window
        else 0.0,
        "naive_calls": naive,
        "naive_calls_per_instance": round(naive / size, 2),
        "saving": round(1 - total / naive, 3) if naive else 0.0,
        "ready_lag_p50_s": round(statistics.median(lags), 1) if lags else 0.0,
        "ready_lag_p99_s": round(percentile(lags, 0.99), 1),
    }


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    """Print one table over the sizes, the calls by endpoint, then the JSON line."""
    print(
        f"startup {args.startup:g} s (phases {PHASE_SHARES}), poll interval {args.interval:g} s, "
        f"{args.workers} worker x {args.concurrency} processes; naive = create path + "
        f"{math.ceil(args.startup / args.interval)} GET /gpu/instance per instance; status = list calls"
    )
    head = ("instances", "done", "seconds", "calls", "per inst", "status", "naive", "naive/inst", "saving",
            "lists/int")  # fmt: skip
    print(" ".join(f"{h:>10}" for h in head))
    for r in results:
        row = (r["instances"], "yes" if r["complete"] else "NO", r["seconds"], r["total_calls"],
               r["calls_per_instance"], r["status_reads"], r["naive_calls"], r["naive_calls_per_instance"],
               f"{r['saving']:.1%}", r["status_lists_per_poll_interval"])  # fmt: skip
        print(" ".join(f"{v!s:>10}" for v in row))
    for r in results:
        calls = ", ".join(f"{k} {v}" for k, v in r["calls"].items())
        print(f"{r['instances']:>5} instances: {calls}")
        print(
            f"      monitored {r['monitor_window_s']} s; seen running after startup + "
            f"p50 {r['ready_lag_p50_s']} s, p99 {r['ready_lag_p99_s']} s; progress {r['progress']}"
        )
    print(json.dumps({"bench": "novita_calls", "results": results}, separators=(",", ":")))


def main() -> None:
    """Parse options, measure each size in turn, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,100,1000", help="comma-separated instance counts")
    parser.add_argument("--interval", type=float, default=2.0, help="GPUJOBS_MONITOR_INTERVAL_SECONDS")
    parser.add_argument("--startup", type=float, default=20.0, help="seconds from create to running")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=600, help="give up on a size after this long")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the deployment cleanly when killed
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        results.append(measure(size, args))
        print(
            f"{size} instances: {results[-1]['total_calls']} calls in {results[-1]['seconds']} s", flush=True
        )
    report(args, results)


if __name__ == "__main__":
    main()
