"""Each tenant's share of the webhook pool: at most ``GPUJOBS_WEBHOOK_TENANT_CONCURRENCY`` sends in flight
across the cluster, so one tenant's slow or silent receivers never hold the processes other tenants'
deliveries need. A delivery of a tenant at its share is deferred (``defer``), not sent, and the process
moves on at once; the webhook sweep sends it again when it is due.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import redis
from flask import current_app
from sqlalchemy import Row

from gpujobs import breaker, jobs
from gpujobs.broker import redis_client, run_script
from gpujobs.states import DeliveryStatus

log = logging.getLogger(__name__)

# Each tenant's share of the webhook pool: its sends in flight across the cluster, a Redis sorted set
# per tenant of delivery ids scored by when their slot expires. A slot outlives its send's total
# deadline by the margin, so only a sender killed mid-send leaves one behind, and only until then.
SHARE_KEY = "gpujobs:webhook-share:{}"
SHARE_SLOT_MARGIN_SECONDS = 30.0
# A delivery of a tenant at its share is due again after a pause in this range (jittered, so a flood's
# deliveries do not all come back at once); the webhook sweep's next tick then sends it.
DEFER_SECONDS = (1.0, 3.0)
# What ``last_error`` says of a deferred delivery (its try did not happen; no retry spent).
DEFERRED_ERROR = "deferred: its tenant's share of the webhook pool is in use"
# Take a slot (1) or find them all in use (0); KEYS: the tenant's set; ARGV: share, slot lifetime in
# seconds, delivery id. Redis's clock, so workers' clocks need not agree.
_TAKE_SLOT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return 1
"""


def take_slot(tenant_id: uuid.UUID | None, sender: uuid.UUID | str) -> bool:
    """Take one of the tenant's ``GPUJOBS_WEBHOOK_TENANT_CONCURRENCY`` slots for ``sender``; False when
    all are in use (the sender's own slot, taken again, is renewed). The slot expires by itself past
    the send's total deadline (plus a margin), so a sender killed mid-send does not keep it.

    Redis away: True (fail open). The share is fairness between tenants, not a safety limit: refusing
    every send while Redis is away would stop all webhooks, which the PostgreSQL claim does not need.
    """
    config = current_app.config
    lifetime = config["GPUJOBS_WEBHOOK_TIMEOUT_SECONDS"] + SHARE_SLOT_MARGIN_SECONDS
    share = config["GPUJOBS_WEBHOOK_TENANT_CONCURRENCY"]
    try:
        taken = run_script(_TAKE_SLOT, [SHARE_KEY.format(tenant_id)], [share, lifetime, str(sender)])
        return bool(taken)
    except redis.RedisError as exc:
        log.warning("sender %s goes without its tenant's share: Redis away (%s)", sender, exc)
        return True


def give_back_slot(tenant_id: uuid.UUID | None, sender: uuid.UUID | str) -> None:
    """Free the sender's slot; if Redis is away, it expires by itself."""
    try:
        redis_client().zrem(SHARE_KEY.format(tenant_id), str(sender))
    except redis.RedisError as exc:
        log.warning("sender %s: its share slot is left to expire (Redis away: %s)", sender, exc)


class Slot:
    """One sender's slot in its tenant's share, kept across the deliveries of one message.

    A message's deliveries go out one after the other, so its sender is one send in flight however many
    it sends: the slot is taken at its first send and given back after its last (``give_back``), one
    Redis round trip each, not two per delivery. Before a send it is taken again (which renews its
    expiry) once it was last taken ``SHARE_SLOT_MARGIN_SECONDS`` ago, so every send starts with at least
    its total deadline left on the slot; a delivery of another tenant swaps it for one of that tenant's.
    """

    def __init__(self) -> None:
        self._member = str(uuid.uuid4())
        self._tenant_id: uuid.UUID | None = None
        self._taken_at: float | None = None  # monotonic; None while no slot is held

    def take(self, tenant_id: uuid.UUID | None) -> bool:
        """Hold one of the tenant's slots for the next send; False when all are in use."""
        now = time.monotonic()
        if self._taken_at is not None:
            if self._tenant_id == tenant_id and now - self._taken_at < SHARE_SLOT_MARGIN_SECONDS:
                return True
            if self._tenant_id != tenant_id:
                self.give_back()
        self._taken_at = None
        if not take_slot(tenant_id, self._member):
            return False
        self._tenant_id, self._taken_at = tenant_id, now
        return True

    def give_back(self) -> None:
        """Free the slot held, if any."""
        if self._taken_at is not None:
            self._taken_at = None
            give_back_slot(self._tenant_id, self._member)


def deferred_until() -> datetime:
    return jobs.utcnow() + timedelta(seconds=random.uniform(*DEFER_SECONDS))


def defer(delivery: Row[Any], attempt: int) -> DeliveryStatus:
    """Give the claimed try back (``breaker.set_aside``): the tenant's share of the webhook pool is in
    use. Due again in a few seconds, when the webhook sweep sends it."""
    until = deferred_until()
    data = {"eventType": delivery.event_type, "until": until.isoformat()}
    breaker.set_aside(delivery, attempt, until, DEFERRED_ERROR, "webhook.deferred", data)
    log.info("delivery %s deferred: its tenant's share of the webhook pool is in use", delivery.id)
    return DeliveryStatus.PENDING
