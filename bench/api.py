"""API throughput: ``POST /v1/jobs`` at fixed concurrency against gunicorn, next to ``GET /health``.

python -m bench.api --requests 2000 --concurrency 16 [--rounds 3] [--rate 100 --paced 1000]

Closed loop first: ``--concurrency`` clients, each sending as soon as its answer came back, for req/s,
and CPU per POST of the API, PostgreSQL and Redis processes (which other load on the machine does not
change, unlike req/s). ``--rounds`` alternates the two endpoints' runs and takes each one's median: a
``GET /health`` run lasts about a second, so one hiccup of the machine moved a single run's figure by
a third. Then open loop: ``--paced`` submissions due at ``--rate`` per second, for p99 at
that rate (latency from the time each call was due). Issue 24's targets: POST >= 0.3x health req/s,
p99 < 50 ms at 100 req/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import requests

from bench.cluster import Cluster, CpuSeconds, cpu_seconds
from bench.load import LoadResult, run_load, run_paced

TARGET_RATIO, TARGET_P99_MS = 0.3, 50.0
BODY: dict[str, Any] = {"definitionKey": "echo", "params": {"message": "bench"}}


def median_run(runs: list[LoadResult]) -> LoadResult:
    """The run of median throughput."""
    return sorted(runs, key=lambda run: run.per_second)[len(runs) // 2]


def main() -> None:
    """Print requests/s, p50/p99 and errors for both endpoints, their ratio, and p99 at a fixed rate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each endpoint")
    parser.add_argument("--rate", type=float, default=100.0, help="submissions per second, open loop")
    parser.add_argument("--paced", type=int, default=1000, help="submissions sent at --rate (0: none)")
    args = parser.parse_args()
    with Cluster(Path(tempfile.mkdtemp(prefix="gpujobs-bench-api-")), workers=0) as cluster:

        def get_health(session: requests.Session) -> requests.Response:
            return session.get(f"{cluster.url}/health", timeout=30)

        def post(session: requests.Session) -> requests.Response:
            return session.post(f"{cluster.url}/v1/jobs", json=BODY, headers=cluster.headers, timeout=30)

        def accepted(response: requests.Response) -> bool:
            return response.status_code == 202

        groups = cluster.processes()
        cpu = CpuSeconds()  # the POST runs' only
        healths, submits = [], []
        for _ in range(args.rounds):
            healths.append(run_load(get_health, concurrency=args.concurrency, total=args.requests))
            before = cpu_seconds(groups)
            submits.append(run_load(post, concurrency=args.concurrency, total=args.requests, ok=accepted))
            for name, seconds in (cpu_seconds(groups) - before).items():
                cpu[name] = cpu.get(name, 0.0) + seconds
        paced = run_paced(post, rate=args.rate, total=args.paced, ok=accepted) if args.paced else None
    health, submit = median_run(healths), median_run(submits)
    ratio = submit.per_second / health.per_second
    print(
        f"gunicorn: 2 processes x 8 threads; {args.concurrency} client threads; {args.requests} requests"
        f" each, {args.rounds} rounds (the median run of each endpoint)"
    )
    print(f"{'rounds, req/s':28} GET /health {', '.join(f'{r.per_second:.0f}' for r in healths)};"
          f" POST {', '.join(f'{r.per_second:.0f}' for r in submits)}")  # fmt: skip
    print(health.line("GET /health"))
    print(submit.line("POST /v1/jobs (durable)"))
    met = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(f"{'ratio POST/health':28} {ratio:9.2f}   (target >= {TARGET_RATIO}: {met})")
    per_post = {k: round(v * 1000 / (args.requests * args.rounds), 2) for k, v in cpu.most_common() if v}
    parts = ", ".join(f"{k} {v}" for k, v in per_post.items())
    print(f"{'CPU ms per POST':28} {sum(per_post.values()):9.2f}   ({parts})")
    figures = {
        "health": health.per_second,
        "submit": submit.per_second,
        "ratio": round(ratio, 3),
        "cpu_ms_per_post": per_post,
    }
    if paced is not None:
        met = "met" if paced.p99_ms < TARGET_P99_MS else "NOT met"
        print(paced.line(f"POST at {args.rate:g} req/s") + f"   (p99 target < {TARGET_P99_MS:g} ms: {met})")
        figures.update(paced_p50_ms=round(paced.p50_ms, 1), paced_p99_ms=round(paced.p99_ms, 1))
    print(json.dumps({"bench": "api", **figures}, separators=(",", ":")))


if __name__ == "__main__":
    main()
