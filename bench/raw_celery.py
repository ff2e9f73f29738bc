"""The baseline of the pipeline benchmarks: a bare Celery chain of no-op tasks (three, or one).

Same Redis, same worker concurrency as gpujobs, but no database, no claims, no leases, no webhooks:
what Celery alone costs per three-step chain on this machine. The worker runs this module as its app:
``celery -A bench.raw_celery worker``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery, chain

from bench.cluster import cpu_seconds
from bench.load import percentile

QUEUE = "rawbench"
DONE_KEY = "rawbench:done"

app = Celery("rawbench", broker=os.environ.get("RAW_CELERY_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
)


@app.task(name="rawbench.step")
def step(submitted_at: float) -> float:
    """Pass the submission time along the chain."""
    return submitted_at


@app.task(name="rawbench.finish")
def finish(submitted_at: float) -> None:
    """Record the chain's end-to-end latency."""
    redis.Redis.from_url(app.conf.broker_url).rpush(DONE_KEY, time.time() - submitted_at)


def measure(
    broker_url: str,
    chains: int,
    concurrency: int,
    log_dir: Path,
    *,
    steps: int = 3,
    servers: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """Run ``chains`` chains of ``steps`` tasks through a fresh worker: chains/s, latency, CPU per chain.

    CPU is the worker's process tree and each of ``servers`` (pids by name) from the first publish to the
    last chain's end, plus the publishing thread's own (``time.thread_time``).
    """
    client = redis.Redis.from_url(broker_url)
    client.delete(DONE_KEY)
    env = dict(os.environ, RAW_CELERY_BROKER=broker_url)
    command = [
        sys.executable, "-m", "celery", "-A", "bench.raw_celery", "worker",
        "-Q", QUEUE, "-c", str(concurrency),
        "--loglevel", "INFO", "--without-gossip", "--without-mingle", "-n", f"raw{time.time_ns()}@%h",
    ]  # fmt: skip
    with open(log_dir / "raw-worker.log", "wb") as log:
        worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_ready(log_dir / "raw-worker.log")
            app.conf["broker_url"] = broker_url
            groups = {"worker": [worker.pid], **(servers or {})}
            cpu = cpu_seconds(groups)
            started, publisher = time.time(), time.thread_time()
            signatures = [*(step.s() for _ in range(steps - 1)), finish.s()]
            for _ in range(chains):
                chain(*signatures).apply_async(args=(time.time(),))
            publisher = time.thread_time() - publisher
            while client.llen(DONE_KEY) < chains:
                time.sleep(0.05)
            seconds = time.time() - started
            cpu = cpu_seconds(groups) - cpu
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    cpu["publisher"] = publisher
    latencies = [float(v) * 1000 for v in client.lrange(DONE_KEY, 0, -1)]
    return {
        "per_second": chains / seconds,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "cpu_ms_per_chain": {k: round(v * 1000 / chains, 2) for k, v in cpu.most_common()},
        "cpu_ms_total": round(sum(cpu.values()) * 1000 / chains, 2),
    }


def _wait_for_ready(log_path: Path, timeout_seconds: float = 60) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if b" ready." in log_path.read_bytes():
            return
        time.sleep(0.1)
    raise RuntimeError("raw Celery worker did not start")
