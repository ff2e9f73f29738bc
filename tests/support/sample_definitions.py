"""Definitions only the tests use, loaded as GPUJOBS_DEFINITION_MODULES=support.sample_definitions by the
test process and by its workers."""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from gpujobs.registry import Params, RetryPolicy, job_definition


class SleepParams(Params):
    seconds: float = Field(default=2.0, ge=0, le=60)


@job_definition("test.sleep", 1, params_model=SleepParams, max_attempts=3, timeout_seconds=60)
def sleep(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Waits in small steps (a stand-in for slow work), checking for cancellation at each one."""
    deadline = time.monotonic() + params["seconds"]
    while time.monotonic() < deadline:
        ctx.raise_if_cancelled()
        time.sleep(0.05)
    ctx.emit_event("effect", {"attempt": ctx.attempt})
    return {"slept": params["seconds"]}


@job_definition("test.limited", 1, params_model=SleepParams, concurrency_limit=1, retry=RetryPolicy(0.1, 0.2))
def limited(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Like test.sleep, but at most one runs at a time across the whole cluster."""
    return sleep(ctx, params)


@job_definition("test.flaky", 1, params_model=SleepParams, max_attempts=4, retry=RetryPolicy(0.5, 1.0))
def flaky(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Fails its first two attempts with a transient error, then succeeds."""
    from gpujobs.exceptions import TransientError

    if ctx.attempt < 3:
        raise TransientError(f"transient failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@job_definition("test.nul", 1, max_attempts=1)
def nul(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Returns what PostgreSQL cannot store (U+0000), as a remote body or a tool's output might."""
    return {"body": "before\x00after"}


@job_definition("test.db_error", 1, max_attempts=1)
def db_error(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Fails on a database error, whose message carries the SQL and its parameters."""
    from sqlalchemy import text

    from gpujobs.extensions import db

    db.session.execute(text("SELECT * FROM no_such_table WHERE secret = :value"), {"value": "hunter2"})
    return {}


@job_definition("test.stubborn", 1, params_model=SleepParams, max_attempts=1, timeout_seconds=60)
def stubborn(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Sleeps in one go and never looks at the cancel flag: only the grace watchdog can stop it."""
    time.sleep(params["seconds"])
    ctx.emit_event("effect", {"attempt": ctx.attempt})
    return {"slept": params["seconds"]}
