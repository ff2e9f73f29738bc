"""The app's own Redis client (caches, rate limits, the instance snapshot) and the queues' depths.

Celery keeps its own connections for messages; everything else the service asks of Redis goes through
one client per app, so a process holds one small pool instead of a client per call.
"""

from __future__ import annotations

import logging
import threading

import redis
from flask import current_app
from kombu.transport.redis import PRIORITY_STEPS, Channel

log = logging.getLogger(__name__)

# Redis answers in well under a millisecond; a second means it is away, and every caller has a
# fallback (compute afresh, let the request through, skip the sweep step) better than waiting.
REDIS_TIMEOUT_SECONDS = 1.0

_client_lock = threading.Lock()


def redis_client() -> redis.Redis:
    """The app's Redis client: short timeouts, one pool.

    Created once under a lock: two threads racing here would each build one, and the discarded
    client's pool would close connections the other is using.
    """
    extensions = current_app.extensions
    with _client_lock:
        if "gpujobs_redis" not in extensions:
            extensions["gpujobs_redis"] = redis.Redis.from_url(
                current_app.config["REDIS_URL"],
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )
        return extensions["gpujobs_redis"]


def queue_depths() -> dict[str, int] | None:
    """Messages waiting in each declared Celery queue (every priority sub-list), in the order workers
    read them; None if Redis does not answer."""
    queues = [queue.name for queue in current_app.extensions["celery"].conf.task_queues]
    try:
        with redis_client().pipeline(transaction=False) as pipe:
            for queue in queues:
                for step in PRIORITY_STEPS:
                    pipe.llen(f"{queue}{Channel.sep}{step}" if step else queue)
            lengths = pipe.execute()
    except redis.RedisError as exc:
        log.warning("queue depths unavailable (%s)", type(exc).__name__)
        return None
    steps = len(PRIORITY_STEPS)
    return {queue: sum(lengths[i * steps : (i + 1) * steps]) for i, queue in enumerate(queues)}
