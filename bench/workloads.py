"""Job definitions used by the benchmarks: real CPU work of a chosen length (no sleeping)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from pydantic import Field

from gpujobs.registry import JobContext, Params, RetryPolicy, job_definition


class WorkParams(Params):
    milliseconds: int = Field(default=200, ge=0, le=10_000)


@job_definition(
    "bench.work", 1, params_model=WorkParams, max_attempts=5, timeout_seconds=60, retry=RetryPolicy(0.5, 2.0),
    description="Hashes for the given time, then records one effect event (for duplicate accounting).",
)  # fmt: skip
def work(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Burn CPU for ``milliseconds``, checking for cancellation, then emit the job's one effect."""
    digest, rounds = hashlib.sha256(ctx.job_id.encode()).digest(), 0
    deadline = time.monotonic() + params["milliseconds"] / 1000
    while time.monotonic() < deadline:
        for _ in range(1000):
            digest = hashlib.sha256(digest).digest()
        rounds += 1
        ctx.raise_if_cancelled()
    ctx.emit_event("effect")
    return {"rounds": rounds, "digest": digest.hex()[:16]}
