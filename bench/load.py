"""A small closed-loop HTTP load generator: N threads, each with its own keep-alive session."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class LoadResult:
    """Throughput and latency of one load run."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def line(self, name: str) -> str:
        """One printable row."""
        return (
            f"{name:28} {self.per_second:9.1f} req/s   p50 {self.p50_ms:7.1f} ms   p99 {self.p99_ms:7.1f} ms"
            f"   errors {self.errors}/{self.requests}"
        )


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of the sorted values fall (nearest rank)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_load(
    call: Callable[[requests.Session], requests.Response],
    *,
    concurrency: int,
    total: int,
    ok: Callable[[requests.Response], bool] = lambda r: r.ok,
) -> LoadResult:
    """Issue ``total`` calls from ``concurrency`` threads as fast as answers come back."""
    return _run(call, total, concurrency, ok, rate=None)


def run_paced(
    call: Callable[[requests.Session], requests.Response],
    *,
    rate: float,
    total: int,
    concurrency: int = 32,
    ok: Callable[[requests.Response], bool] = lambda r: r.ok,
) -> LoadResult:
    """Issue ``total`` calls at ``rate`` per second (open loop): call i is due at start + i / rate.

    Latency runs from the time a call was due, not from when a thread got to send it, so a server that
    falls behind shows its queueing in p99 instead of slowing the load down (coordinated omission).
    """
    return _run(call, total, concurrency, ok, rate=rate)


def _run(
    call: Callable[[requests.Session], requests.Response],
    total: int,
    concurrency: int,
    ok: Callable[[requests.Response], bool],
    rate: float | None,
) -> LoadResult:
    """``total`` calls from ``concurrency`` threads, each call sent when due (``rate``) or at once (None)."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    remaining = iter(range(total))
    started = time.perf_counter()

    def worker() -> None:
        nonlocal errors
        session = requests.Session()
        while True:
            with lock:
                index = next(remaining, None)
            if index is None:
                return
            if rate is None:
                since = time.perf_counter()
            else:
                since = started + index / rate
                time.sleep(max(0.0, since - time.perf_counter()))
            try:
                good = ok(call(session))
            except requests.RequestException:
                good = False
            elapsed = (time.perf_counter() - since) * 1000
            with lock:
                latencies.append(elapsed)
                errors += 0 if good else 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return LoadResult(
        total,
        errors,
        seconds,
        statistics.median(latencies) if latencies else 0.0,
        percentile(latencies, 0.99),
    )
