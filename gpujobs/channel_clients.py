"""One Redis client per kombu channel, instead of a new one for every broker operation (issue 24).

kombu's Redis channel (5.7) builds a ``redis.Redis`` object for each operation outside its event loop:
every publish (``LPUSH``), every late ack (``MULTI``/``ZREM``/``HDEL``/``EXEC``) and every hold of a
delivered message (``MULTI``/``ZADD``/``HSET``/``EXEC``). Building one copies redis-py's ~200 response
callbacks into a new case-insensitive dict and drops it again: about 3 % of the CPU of the API, the job
worker and the webhook worker under load (bench/README.md). The object holds no connection of its own (it
checks one out of the channel's pool for each command, and is safe to share between threads), so the
patch keeps one per channel and builds a new one only when the channel's pool changed (kombu drops its
pools on a reconnect, and ``gpujobs.reconnect`` still refuses to build one for a closed channel).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

_PATCHED = "_gpujobs_one_client_per_channel"
_CLIENT = "_gpujobs_client"


def _reuse(create_client: Callable[..., redis.Redis]) -> Callable[..., redis.Redis]:
    @wraps(create_client)
    def reused(channel: kombu_redis.Channel, asynchronous: bool = False) -> redis.Redis:
        if asynchronous:  # the event loop's client, built once by kombu itself
            return create_client(channel, asynchronous=True)
        pool = channel.pool  # a new pool after a reconnect, or ConnectionError if the channel is closed
        client: redis.Redis | None = channel.__dict__.get(_CLIENT)
        if client is None or client.connection_pool is not pool:
            client = create_client(channel)
            channel.__dict__[_CLIENT] = client
        return client

    setattr(reused, _PATCHED, True)
    return reused


def reuse_channel_clients() -> None:
    """Make kombu's Redis channels keep one synchronous Redis client each (idempotent)."""
    channel: Any = kombu_redis.Channel  # ``_create_client`` is private: kombu's stubs do not declare it
    if not getattr(channel._create_client, _PATCHED, False):
        channel._create_client = _reuse(channel._create_client)
