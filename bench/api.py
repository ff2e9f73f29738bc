"""API throughput: ``POST /v1/jobs`` at fixed concurrency against gunicorn, next to ``GET /health``.

python -m bench.api --requests 2000 --concurrency 16
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.cluster import Cluster
from bench.load import run_load


def main() -> None:
    """Print requests/s, p50/p99 and errors for both endpoints, and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with Cluster(Path(tempfile.mkdtemp(prefix="gpujobs-bench-api-")), workers=0) as cluster:
        health = run_load(
            lambda s: s.get(f"{cluster.url}/health", timeout=30),
            concurrency=args.concurrency,
            total=args.requests,
        )
        body = {"definitionKey": "echo", "params": {"message": "bench"}}
        submit = run_load(
            lambda s: s.post(f"{cluster.url}/v1/jobs", json=body, headers=cluster.headers, timeout=30),
            concurrency=args.concurrency,
            total=args.requests,
            ok=lambda r: r.status_code == 202,
        )
    print(
        f"gunicorn: 2 processes x 8 threads; {args.concurrency} client threads; {args.requests} requests each"
    )
    print(health.line("GET /health"))
    print(submit.line("POST /v1/jobs (durable)"))
    print(f"{'ratio POST/health':28} {submit.per_second / health.per_second:9.2f}")


if __name__ == "__main__":
    main()
