"""Keep a worker alive when its Redis broker connection drops with messages unacknowledged (issue 19).

Celery 5.7 handles a lost broker connection in ``Consumer.on_connection_error_after_connected``: it
``collect()``s the connection, which detaches kombu's transport (``transport.client = None``) but leaves
the default channel open when closing it failed on the dead socket, and then ``close()``s the
connection. That second close restores the channel's unacknowledged messages (every running task's,
with ``task_acks_late``), and kombu's Redis channel builds a new connection pool from
``transport.client``: ``AttributeError("'NoneType' object has no attribute 'hostname'")`` in
``QoS.restore_unacked_once -> Channel._connparams``. That is not a connection error, so it escapes
Celery's ``ignore_errors`` and the worker exits ("Unrecoverable error"). A late ack or reject of a
message of the old channel fails the same way. Issue 19 files this under celery#9250 and celery#7185
(crashes on reconnection around ``worker_cancel_long_running_tasks_on_connection_loss``); the same
AttributeError from a channel closed after its transport was detached is kombu#582. celery and kombu
main (August 2026) still collect, then close, and restore through ``transport.client``.

The patch makes a channel whose transport was detached raise what the situation is, a Redis
``ConnectionError``, which every caller already tolerates: the close goes on, the consumer reconnects,
a late ack is logged as failed. Those messages are then not put back at once: Redis keeps them in its
unacked set until the visibility timeout (or lost them, if it came back empty). The jobs do not depend
on them: a running attempt records its outcome in PostgreSQL, one that died is re-run by the lease
rescue, and a redelivery after the visibility timeout is a no-op at the claim.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

_PATCHED = "_gpujobs_detached_is_connection_error"


def _guard(connparams: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    @wraps(connparams)
    def guarded(channel: kombu_redis.Channel, asynchronous: bool = False) -> dict[str, Any]:
        transport = channel.connection
        if transport is None or transport.client is None:
            raise redis.ConnectionError("broker connection already closed (see gpujobs.reconnect)")
        return connparams(channel, asynchronous=asynchronous)

    setattr(guarded, _PATCHED, True)
    return guarded


def patch_redis_transport() -> None:
    """Make kombu's Redis channel raise ConnectionError once its connection is gone (idempotent)."""
    channel = kombu_redis.Channel
    # ``_connparams`` is private, so kombu's stubs (celery-types) do not declare it.
    if not getattr(channel._connparams, _PATCHED, False):  # type: ignore[attr-defined]
        channel._connparams = _guard(channel._connparams)  # type: ignore[attr-defined]
