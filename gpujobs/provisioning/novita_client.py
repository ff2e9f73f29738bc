"""The Novita client of the workflow, built from `NOVITA_API_KEY` and `NOVITA_BASE_URL`, and the tally
of its calls.

Every HTTP attempt is counted in one Redis hash shared by all processes (`gpujobs_novita_calls_total`
in `/metrics`): per-process counters would each hold a slice, and a Redis restart only resets a
counter, which Prometheus handles.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from flask import current_app

from gpujobs.broker import redis_client
from gpujobs.exceptions import PermanentError
from gpujobs.novita import NovitaClient

# Short on purpose: a worker slot waits on these, and the engine retries a failed step with backoff.
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 20.0
# Retries inside one call, for blips; longer outages are the engine's (create) or the monitor's business.
MAX_ATTEMPTS_PER_CALL = 3
CALLS_KEY = "gpujobs:novita:calls"
TALLY_PAUSE_SECONDS = 30.0

_tally_paused_until = 0.0


_local = threading.local()


@contextmanager
def novita_client(max_attempts: int = MAX_ATTEMPTS_PER_CALL) -> Iterator[NovitaClient]:
    """The calling thread's client, kept between task runs so its HTTP connections (and TLS sessions)
    are reused: a worker process runs one task at a time, and a client is not thread-safe.

    A changed key or base URL (a reconfigured app) replaces the client.
    """
    api_key = current_app.config.get("NOVITA_API_KEY")
    if not api_key:
        raise PermanentError("NOVITA_API_KEY is not set: this worker cannot reach Novita")
    base_url = current_app.config["NOVITA_BASE_URL"]
    clients: dict[int, tuple[tuple[int, str, str], NovitaClient]] = _local.__dict__.setdefault("clients", {})
    identity = (os.getpid(), base_url, api_key)
    kept = clients.get(max_attempts)
    if kept is None or kept[0] != identity:
        if kept is not None:
            kept[1].close()
        client = NovitaClient(
            base_url,
            api_key,
            connect_timeout_seconds=CONNECT_TIMEOUT_SECONDS,
            read_timeout_seconds=READ_TIMEOUT_SECONDS,
            max_attempts=max_attempts,
            on_call=count_call,
        )
        kept = clients[max_attempts] = (identity, client)
    yield kept[1]


def count_call(method: str, path: str, outcome: str) -> None:
    """One more Novita call in the shared tally; while Redis is away, calls go uncounted.

    After a failure the tally pauses for ``TALLY_PAUSE_SECONDS``, so an unreachable Redis costs one
    timeout, not one per Novita call.
    """
    global _tally_paused_until
    if time.monotonic() < _tally_paused_until:
        return
    try:
        redis_client().hincrby(CALLS_KEY, f"{method} {path} {outcome}", 1)
    except redis.RedisError:
        _tally_paused_until = time.monotonic() + TALLY_PAUSE_SECONDS


def call_counts() -> dict[tuple[str, str, str], int] | None:
    """Novita calls so far by (method, path, outcome), or None if Redis does not answer."""
    try:
        raw = redis_client().hgetall(CALLS_KEY)
    except redis.RedisError:
        return None
    counts: dict[tuple[str, str, str], int] = {}
    for field, value in raw.items():
        name = field if isinstance(field, str) else field.decode()  # bytes unless decode_responses
        method, path, outcome = name.split(" ", 2)
        counts[(method, path, outcome)] = int(value)
    return counts
