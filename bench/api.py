"""API throughput: ``POST /v1/jobs`` at fixed concurrency against gunicorn, next to ``GET /health``.

python -m bench.api --requests 2000 --concurrency 16 [--rate 100 --paced 1000]

Closed loop first: ``--concurrency`` clients, each sending as soon as its answer came back, for req/s,
and CPU per POST of the API, PostgreSQL and Redis processes (which other load on the machine does not
change, unlike req/s). Then open loop: ``--paced`` submissions due at ``--rate`` per second, for p99 at
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

from bench.cluster import Cluster, cpu_seconds
from bench.load import run_load, run_paced

TARGET_RATIO, TARGET_P99_MS = 0.3, 50.0
BODY: dict[str, Any] = {"definitionKey": "echo", "params": {"message": "bench"}}


def main() -> None:
    """Print requests/s, p50/p99 and errors for both endpoints, their ratio, and p99 at a fixed rate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, default=100.0, help="submissions per second, open loop")
    parser.add_argument("--paced", type=int, default=1000, help="submissions sent at --rate (0: none)")
    args = parser.parse_args()
    with Cluster(Path(tempfile.mkdtemp(prefix="gpujobs-bench-api-")), workers=0) as cluster:
        health = run_load(
            lambda s: s.get(f"{cluster.url}/health", timeout=30),
            concurrency=args.concurrency,
            total=args.requests,
        )

        def post(session: requests.Session) -> requests.Response:
            return session.post(f"{cluster.url}/v1/jobs", json=BODY, headers=cluster.headers, timeout=30)

        def accepted(response: requests.Response) -> bool:
            return response.status_code == 202

        groups = cluster.processes()
        cpu = cpu_seconds(groups)
        submit = run_load(post, concurrency=args.concurrency, total=args.requests, ok=accepted)
        cpu = cpu_seconds(groups) - cpu
        paced = run_paced(post, rate=args.rate, total=args.paced, ok=accepted) if args.paced else None
    ratio = submit.per_second / health.per_second
    print(
        f"gunicorn: 2 processes x 8 threads; {args.concurrency} client threads; {args.requests} requests each"
    )
    print(health.line("GET /health"))
    print(submit.line("POST /v1/jobs (durable)"))
    met = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(f"{'ratio POST/health':28} {ratio:9.2f}   (target >= {TARGET_RATIO}: {met})")
    per_post = {k: round(v * 1000 / args.requests, 2) for k, v in cpu.most_common() if v}
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
