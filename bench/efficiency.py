"""Issue 24's three ratios in one table: each benchmark runs in its own process, this one prints.

python -m bench.efficiency [--gpu-jobs 300] [--echo-jobs 500] [--requests 2000]

``bench.pipeline`` (GPU job CPU vs a raw 3-task Celery chain's, and commits per job), ``bench.echo`` (echo
job CPU vs a procrastinate one-step job's) and ``bench.api`` (``POST /v1/jobs`` vs ``GET /health`` req/s,
p99 at 100 req/s). Each prints its own figures as it goes; their JSON lines make the summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any


def run(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m module args``, echo its output, return the figures of its JSON line."""
    process = subprocess.run(
        [sys.executable, "-m", module, *args], stdout=subprocess.PIPE, text=True, check=True
    )
    print(process.stdout, end="", flush=True)
    line = next(line for line in reversed(process.stdout.splitlines()) if line.startswith('{"bench"'))
    return json.loads(line)


def main() -> None:
    """Run the three benchmarks, then print the ratios against their targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-jobs", type=int, default=300)
    parser.add_argument("--echo-jobs", type=int, default=500)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    gpu = run("bench.pipeline", "--jobs", str(args.gpu_jobs))
    echo = run("bench.echo", "--jobs", str(args.echo_jobs))
    api = run("bench.api", "--requests", str(args.requests))
    rows = [
        (
            f"GPU job ({args.gpu_jobs})",
            f"{gpu['cpu_ms_total']:.1f} ms CPU, {gpu['pg_commits_per_job']} commits",
            f"raw Celery 3-task chain {gpu['anchors']['raw_celery']['cpu_ms_total']:.1f} ms",
            f"{gpu['cpu_ratio']['raw_celery']:.1f}x",
            "<= 5x; commits <= 12",
        ),
        (
            f"echo job ({args.echo_jobs})",
            f"{echo['cpu_ms_total']:.1f} ms CPU",
            f"procrastinate one-step {echo['anchors']['procrastinate']['cpu_ms_total']:.1f} ms",
            f"{echo['cpu_ratio']['procrastinate']:.1f}x",
            "<= 2x",
        ),
        (
            "POST /v1/jobs vs GET /health",
            f"{api['submit']:.0f} vs {api['health']:.0f} req/s",
            f"p99 at 100 req/s {api.get('paced_p99_ms', 0):.0f} ms",
            f"{api['ratio']:.2f}",
            ">= 0.3; p99 < 50 ms",
        ),
    ]
    print("\nIssue 24, this run:")
    print(f"{'work':30} {'gpujobs':34} {'anchor':40} {'ratio':>7}  target")
    for work, figure, anchor, ratio, target in rows:
        print(f"{work:30} {figure:34} {anchor:40} {ratio:>7}  {target}")


if __name__ == "__main__":
    main()
