"""One shared read of our instances' statuses at Novita, so polling cost does not grow with instances.

Every monitor needs its instance's status every few seconds. Instead of one `GET /gpu/instance` per
instance per poll, the first monitor that finds the shared snapshot older than its poll interval lists
all our instances (`GET /gpu/instances`, paged) and stores them in a Redis hash; every other monitor reads
its one field. A Redis lock (`SET NX PX`) lets one process refresh at a time; the others use the previous
snapshot meanwhile. Novita calls per poll interval are therefore the number of list pages.

The snapshot is a cache, never a source of truth: losing it costs one extra list call.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from redis.typing import EncodableT, FieldT

from gpujobs.broker import redis_client
from gpujobs.novita import Instance, NovitaClient, PortMapping, StatusError
from gpujobs.provisioning import records

KEY = "gpujobs:novita:instances"
LOCK_KEY = f"{KEY}:refresh"
TAKEN_AT_FIELD = "_taken_at"
# A snapshot stays readable this long, as the fallback while another process refreshes.
KEEP_SECONDS = 600
# Longer than one paged list can take with its retries; a refresher that died frees the lock after it.
REFRESH_LOCK_SECONDS = 60
# The largest page Novita is known to serve (docs/novita-api.md §7); the client pages on when there are more
# instances.
PAGE_SIZE = 200

# Delete the lock only if it is still ours (it may have expired and been taken by another refresher).
_RELEASE_SCRIPT = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)

Listing = tuple[float, dict[str, Instance]]


def list_ours(client: NovitaClient) -> Listing:
    """Every instance named with our prefix, by Novita id, and the time the listing began."""
    taken_at = time.time()
    # Novita's name filter is fuzzy (§7): keep only names that are exactly ours.
    prefix = records.name_prefix()
    listed = client.list_instances(name=prefix, page_size=PAGE_SIZE)
    return taken_at, {item.id: item for item in listed if records.job_id_of(item.name, prefix) is not None}


def refresh(client: NovitaClient) -> Listing | None:
    """List and publish a new snapshot; None when another process is refreshing right now."""
    store = redis_client()
    token = uuid.uuid4().hex
    if not store.set(LOCK_KEY, token, nx=True, px=REFRESH_LOCK_SECONDS * 1000):
        return None
    try:
        taken_at, instances = list_ours(client)
        staging = f"{KEY}:{token}"
        fields: dict[FieldT, EncodableT] = {
            TAKEN_AT_FIELD: repr(taken_at),
            **{key: _encode(item) for key, item in instances.items()},
        }
        # Build aside, then RENAME: readers see the old snapshot or the new one, never half of one.
        with store.pipeline(transaction=True) as pipe:
            pipe.hset(staging, mapping=fields)
            pipe.expire(staging, KEEP_SECONDS)
            pipe.rename(staging, KEY)
            pipe.execute()
        return taken_at, instances
    finally:
        store.eval(_RELEASE_SCRIPT, 1, LOCK_KEY, token)


def read(
    client: NovitaClient, novita_id: str, max_age_seconds: float
) -> tuple[float, Instance | None] | None:
    """Novita's latest word on one instance: (when it was read, the instance or None if not listed).

    Refreshes when the snapshot is older than `max_age_seconds` and nobody else is refreshing; returns
    None only when there is no snapshot at all yet (the caller simply looks again later).
    """
    taken_raw, item_raw = redis_client().hmget(KEY, [TAKEN_AT_FIELD, novita_id])
    if taken_raw is None or time.time() - float(taken_raw) >= max_age_seconds:
        fresh = refresh(client)
        if fresh is not None:
            return fresh[0], fresh[1].get(novita_id)
        if taken_raw is None:
            return None
    return float(taken_raw), _decode(item_raw) if item_raw else None


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value else None


def _encode(item: Instance) -> str:
    """The fields the workflow reads, as JSON; list answers carry no passwords to leave out (§6)."""
    error = item.status_error
    return json.dumps(
        {
            "id": item.id,
            "name": item.name,
            "status": item.status,
            "error": [error.state, error.message] if error else None,
            "clusterId": item.cluster_id,
            "productId": item.product_id,
            "ports": [[m.port, m.type, m.endpoint] for m in item.port_mappings],
            "ssh": item.ssh_command,
            "createdAt": _epoch(item.created_at),
            "startedAt": _epoch(item.started_at),
            "stoppedAt": _epoch(item.stopped_at),
            "spotStatus": item.spot_status,  # a monitor reading the snapshot must see a reclaim coming
        },
        separators=(",", ":"),
    )


def _decode(raw: bytes | str) -> Instance:
    data: dict[str, Any] = json.loads(raw)

    def when(seconds: float | None) -> datetime | None:
        return datetime.fromtimestamp(seconds, tz=UTC) if seconds else None

    error = data["error"]
    return Instance(
        id=data["id"],
        name=data["name"],
        status=data["status"],
        status_error=StatusError(state=error[0], message=error[1]) if error else None,
        cluster_id=data["clusterId"],
        product_id=data["productId"],
        port_mappings=tuple(PortMapping(port, kind, endpoint) for port, kind, endpoint in data["ports"]),
        ssh_command=data["ssh"],
        created_at=when(data["createdAt"]),
        started_at=when(data["startedAt"]),
        stopped_at=when(data.get("stoppedAt")),  # absent from snapshots taken before it was kept
        spot_status=data.get("spotStatus"),
    )
