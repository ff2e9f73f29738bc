"""How the service reaches Redis: the app's own client, Celery's broker settings, the queues' depths.

Celery keeps its own connections for messages; everything else the service asks of Redis goes through
one client per app, so a process holds one small pool instead of a client per call. ``REDIS_URL`` names
one server (``redis://``, ``rediss://``) or a Sentinel deployment the way Celery users write it
(``sentinel://h1:26379;sentinel://h2:26379``); both the client and Celery are built from it here.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import redis
import redis.sentinel
from flask import current_app
from kombu.transport.redis import PRIORITY_STEPS, Channel
from redis.commands.core import Script

log = logging.getLogger(__name__)

# Redis answers in well under a millisecond; a second means it is away, and every caller has a
# fallback (compute afresh, let the request through, skip the sweep step) better than waiting.
REDIS_TIMEOUT_SECONDS = 1.0

SENTINEL_SCHEME = "sentinel"
SENTINEL_DEFAULT_PORT = 26379

_client_lock = threading.Lock()


def is_sentinel(url: str) -> bool:
    """Whether ``url`` lists Sentinel nodes rather than naming one Redis server."""
    return urlsplit(url.split(";", 1)[0].strip()).scheme == SENTINEL_SCHEME


def connect_redis(config: Mapping[str, Any], timeout_seconds: float) -> redis.Redis:
    """A Redis client for ``config["REDIS_URL"]``: the one server it names, or the Sentinels' master.

    With Sentinel the client asks the Sentinels where the master is and asks again after a connection
    error, so after a failover it follows the promoted replica without a restart. A password in the
    URL wins over ``GPUJOBS_REDIS_PASSWORD``, as in Celery.
    """
    url = config["REDIS_URL"]
    timeouts = {"socket_timeout": timeout_seconds, "socket_connect_timeout": timeout_seconds}
    password = config["GPUJOBS_REDIS_PASSWORD"]
    if not is_sentinel(url):
        return redis.Redis.from_url(url, password=password, **timeouts)
    nodes = [urlsplit(part.strip()) for part in url.split(";") if part.strip()]
    first = nodes[0]  # like kombu: the first node's URL carries the master's credentials and database
    sentinel_kwargs: dict[str, Any] = dict(timeouts)
    if config["GPUJOBS_REDIS_SENTINEL_PASSWORD"]:
        sentinel_kwargs["password"] = config["GPUJOBS_REDIS_SENTINEL_PASSWORD"]
    sentinels = redis.sentinel.Sentinel(
        [(node.hostname or "127.0.0.1", node.port or SENTINEL_DEFAULT_PORT) for node in nodes],
        sentinel_kwargs=sentinel_kwargs,
    )
    return sentinels.master_for(
        config["GPUJOBS_REDIS_SENTINEL_MASTER"],
        db=int(first.path.strip("/") or 0),
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else password,
        **timeouts,
    )


def celery_broker_settings(config: Mapping[str, Any], transport_options: Mapping[str, Any]) -> dict[str, Any]:
    """Celery settings that point the broker (workers, beat, Flower) at ``config["REDIS_URL"]``, with
    ``transport_options`` (the settings' own) extended for a Sentinel deployment.

    kombu's Sentinel transport reads the same ``sentinel://a;sentinel://b`` URL, the master's name
    and the Sentinels' own password from the transport options, and the master's password from the
    URL (kombu.transport.redis.SentinelChannel). There is no result backend to point anywhere
    (``celery_settings.result_backend``).
    """
    options = dict(transport_options)
    if is_sentinel(config["REDIS_URL"]):
        options["master_name"] = config["GPUJOBS_REDIS_SENTINEL_MASTER"]
        if config["GPUJOBS_REDIS_SENTINEL_PASSWORD"]:
            options["sentinel_kwargs"] = {"password": config["GPUJOBS_REDIS_SENTINEL_PASSWORD"]}
    return {
        "broker_url": _with_password(config["REDIS_URL"], config["GPUJOBS_REDIS_PASSWORD"]),
        "broker_transport_options": options,
    }


def _with_password(url: str, password: str | None) -> str:
    """``url`` with ``password`` in each of its ``;``-separated nodes that holds none.

    Not Celery's ``broker_password``: when kombu moves on to the next Sentinel in the list it keeps
    only what that node's URL says, and the master then refuses the connection for want of a password.
    """
    if not password:
        return url
    nodes = []
    for node in url.split(";"):
        parts = urlsplit(node.strip())
        if parts.password is None:
            user, _, host = parts.netloc.rpartition("@")
            parts = parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}")
        nodes.append(urlunsplit(parts))
    return ";".join(nodes)


def redis_client() -> redis.Redis:
    """The app's Redis client: short timeouts, one pool.

    Created once under a lock: two threads racing here would each build one, and the discarded
    client's pool would close connections the other is using.
    """
    extensions = current_app.extensions
    with _client_lock:
        if "gpujobs_redis" not in extensions:
            extensions["gpujobs_redis"] = connect_redis(current_app.config, REDIS_TIMEOUT_SECONDS)
        return extensions["gpujobs_redis"]


def run_script(source: str, keys: list[str], args: list[Any]) -> Any:
    """Run a Lua script on the app's Redis client. The script is registered once per app: redis-py then
    sends EVALSHA (loading it on NOSCRIPT) instead of hashing the source again on every call (the rate
    limit on every request, the webhook share on every send)."""
    scripts: dict[str, Script] = current_app.extensions.setdefault("gpujobs_redis_scripts", {})
    client = redis_client()
    if source not in scripts:
        scripts[source] = client.register_script(source)
    return scripts[source](keys=keys, args=args, client=client)


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


def oldest_waiting_jobs(queues: tuple[str, ...]) -> dict[str, uuid.UUID | None] | None:
    """Per job queue, the job id in its oldest waiting message (None: the queue is empty), or None if
    Redis does not answer. A queue whose oldest message is not a job's is left out.

    kombu pushes on the left and workers pop on the right, so the oldest message is the list's last
    item; job messages carry no message priority, so they all sit in the queue's base list.
    """
    try:
        with redis_client().pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.lindex(queue, -1)
            oldest = pipe.execute()
    except redis.RedisError as exc:
        log.warning("queue heads unavailable (%s)", type(exc).__name__)
        return None
    heads: dict[str, uuid.UUID | None] = {}
    for queue, raw in zip(queues, oldest, strict=True):
        job_id = None if raw is None else job_id_of_message(raw)
        if raw is None or job_id is not None:
            heads[queue] = job_id
    return heads


def job_id_of_message(raw: bytes) -> uuid.UUID | None:
    """The job id a ``run_job`` message in a Redis queue carries, or None if it carries none."""
    try:
        payload = json.loads(raw)
        body = payload["body"]
        if payload["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return uuid.UUID(args[0])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
