"""The anchors of the CPU-per-job figures (issue 24), run on a benchmark's own cluster after it.

Raw Celery (``bench.raw_celery``: a chain of no-op tasks on the cluster's Redis) and procrastinate
(``bench.peer_procrastinate``: no-op jobs on the cluster's PostgreSQL, in a database of its own), each
with the same step count and worker concurrency as the gpujobs run beside them. Every figure counts the
CPU of the workers, the publisher and the servers the anchor uses, as the gpujobs figure counts its API,
workers, beat, PostgreSQL and Redis (not the Novita simulator, webhook receiver or load clients).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import peer_procrastinate, raw_celery
from bench.cluster import Cluster


def measure(cluster: Cluster, *, jobs: int, steps: int, concurrency: int, count_sql: bool) -> dict[str, Any]:
    """Both anchors' figures per job; with ``count_sql`` the server already logs every statement."""
    servers = cluster.processes()
    data_dir: Path = cluster.data_dir
    raw = raw_celery.measure(
        cluster.env["REDIS_URL"],
        jobs,
        concurrency,
        data_dir,
        steps=steps,
        servers={"redis": servers["redis"]},
    )
    peer = peer_procrastinate.measure(
        cluster.env["DATABASE_URL"], servers["postgres"], jobs=jobs, steps=steps, concurrency=concurrency,
        log_dir=data_dir, pg_log=data_dir / "postgres" / "log" if count_sql else None,
    )  # fmt: skip
    return {"raw_celery": raw, "procrastinate": peer}


def ratios(cpu_ms_per_job: float, anchors: dict[str, Any]) -> dict[str, float]:
    """gpujobs CPU per job over each anchor's, same run."""
    raw, peer = anchors["raw_celery"]["cpu_ms_total"], anchors["procrastinate"]["cpu_ms_total"]
    return {
        "raw_celery": round(cpu_ms_per_job / raw, 2) if raw else 0.0,
        "procrastinate": round(cpu_ms_per_job / peer, 2) if peer else 0.0,
    }


def report(name: str, result: dict[str, Any], steps: int, target: tuple[str, float]) -> None:
    """Print the CPU table: gpujobs, each anchor, the ratios and the target the issue sets."""
    anchors, ratio = result["anchors"], result["cpu_ratio"]
    raw, peer = anchors["raw_celery"], anchors["procrastinate"]
    plural = "s" if steps > 1 else ""
    print(f"CPU per job, every process but the simulator, receiver and clients ({name}):")
    counted = {k: v for k, v in result["cpu_ms_per_job"].items() if k != "bench"}
    uncounted = (
        f"; not counted: bench process {result['cpu_ms_per_job']['bench']}"
        if "bench" in result["cpu_ms_per_job"]
        else ""
    )
    print(f"  {name:38} {result['cpu_ms_total']:7.1f} ms   {_pairs(counted)}{uncounted}")
    print(f"  {f'raw Celery, {steps} no-op task{plural}':38} {raw['cpu_ms_total']:7.1f} ms   "
          f"{_pairs(raw['cpu_ms_per_chain'])}")  # fmt: skip
    print(f"  {f'procrastinate, {steps}-step no-op job':38} {peer['cpu_ms_total']:7.1f} ms   "
          f"{_pairs(peer['cpu_ms_per_job'])}; commits/job {peer['pg_commits_per_job']}")  # fmt: skip
    anchor, limit = target
    met = "met" if ratio[anchor] <= limit else "NOT met"
    verdict = f"target <= {limit:g}x {anchor.replace('_', ' ')}: {met}"
    print(f"  ratio {name} / raw Celery {ratio['raw_celery']:.1f}x, "
          f"/ procrastinate {ratio['procrastinate']:.1f}x   ({verdict})")  # fmt: skip
    if "pg_statements_per_job" in peer:
        print(f"  procrastinate PostgreSQL statements per job {peer['pg_statements_per_job']}: "
              f"{_pairs(peer['pg_statements_top'])}")  # fmt: skip


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in values.items())
