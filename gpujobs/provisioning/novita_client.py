"""The Novita client of the workflow, built from `NOVITA_API_KEY` and `NOVITA_BASE_URL`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import current_app

from gpujobs.exceptions import PermanentError
from gpujobs.novita import NovitaClient

# Short on purpose: a worker slot waits on these, and the engine retries a failed step with backoff.
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 20.0
# Retries inside one call, for blips; longer outages are the engine's (create) or the monitor's business.
MAX_ATTEMPTS_PER_CALL = 3


@contextmanager
def novita_client(max_attempts: int = MAX_ATTEMPTS_PER_CALL) -> Iterator[NovitaClient]:
    """A client for one task run (the client is not thread-safe, so never shared), closed afterwards."""
    api_key = current_app.config.get("NOVITA_API_KEY")
    if not api_key:
        raise PermanentError("NOVITA_API_KEY is not set: this worker cannot reach Novita")
    client = NovitaClient(
        current_app.config["NOVITA_BASE_URL"],
        api_key,
        connect_timeout_seconds=CONNECT_TIMEOUT_SECONDS,
        read_timeout_seconds=READ_TIMEOUT_SECONDS,
        max_attempts=max_attempts,
    )
    try:
        yield client
    finally:
        client.close()
