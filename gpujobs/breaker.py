"""Circuit breakers of webhook receivers: a failing receiver does not take the webhook pool's time.

One breaker per tenant and receiver (scheme://host:port, as Svix and Stripe do; per tenant, so tenants
that share a receiver, a gateway or Zapier, never open or close each other's circuit): after
``GPUJOBS_WEBHOOK_BREAKER_FAILURES`` consecutive failures or timeouts its circuit opens and its
deliveries are held (not tried, no retry spent) for a cool-down; then one delivery is the probe, whose
success closes the circuit and releases the held deliveries at once. Opening, holding and closing are
lines on the job's timeline. The breaker's state is a PostgreSQL row (``webhook_endpoints``), not
Redis: it is read with the deliveries it holds (``gpujobs.webhooks``' claim reads ``open_until``), and
survives a Redis that restarts empty.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import Row, Select, Update, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert

from gpujobs import jobs
from gpujobs.extensions import db
from gpujobs.models import WebhookDelivery, WebhookEndpoint
from gpujobs.states import DeliveryStatus

log = logging.getLogger(__name__)

# What ``last_error`` says of a delivery the breaker holds (its try did not happen).
HELD_ERROR = "held: the receiver's circuit is open"
_ENDPOINTS = WebhookEndpoint.__table__
_OPEN_UNTIL = select(_ENDPOINTS.c.open_until).where(
    _ENDPOINTS.c.tenant_id == bindparam("tenant_id"), _ENDPOINTS.c.endpoint == bindparam("endpoint")
)


def gate(tenant_id: uuid.UUID, endpoint: str) -> datetime | None:
    """None when the tenant's delivery to ``endpoint`` may go now (its circuit closed, or this one is
    the probe); else until when the open circuit holds it."""
    cooldown = timedelta(seconds=current_app.config["GPUJOBS_WEBHOOK_BREAKER_COOLDOWN_SECONDS"])
    key = {"tenant_id": tenant_id, "endpoint": endpoint}
    open_until = db.session.scalar(_OPEN_UNTIL, key)
    if open_until is None:
        return None
    # Past the cool-down the first delivery to move ``open_until`` on is the probe; the rest stay held.
    probe = db.session.execute(
        update(WebhookEndpoint)
        .where(
            WebhookEndpoint.tenant_id == tenant_id,
            WebhookEndpoint.endpoint == endpoint,
            WebhookEndpoint.open_until <= func.now(),
        )
        .values(open_until=func.now() + cooldown, updated_at=func.now())
        .returning(WebhookEndpoint.endpoint)
    ).scalar_one_or_none()
    db.session.commit()
    if probe is not None:
        return None
    return db.session.scalar(_OPEN_UNTIL, key)


def hold(delivery: Row[Any], attempt: int, endpoint: str, until: datetime) -> DeliveryStatus:
    """Give the claimed try back and wait for the circuit (``set_aside``)."""
    data = {"endpoint": endpoint, "eventType": delivery.event_type, "until": until.isoformat()}
    set_aside(delivery, attempt, until, HELD_ERROR, "webhook.held", data)
    log.info("delivery %s held: circuit of %s open until %s", delivery.id, endpoint, until)
    return DeliveryStatus.PENDING


def set_aside(
    delivery: Row[Any], attempt: int, until: datetime, reason: str, event: str, data: dict[str, Any]
) -> None:
    """Give a claimed try back (no retry spent), due again at ``until`` with ``reason`` as its last
    error, and commit; ``event`` goes on the job's timeline once, not again while the reason stays."""
    db.session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery.id, WebhookDelivery.attempts == attempt)
        .values(attempts=attempt - 1, next_attempt_at=until, last_error=reason)
    )
    if delivery.last_error != reason:
        jobs.add_event(delivery.job_id, event, delivery.job_attempt, data)
    db.session.commit()


def locked_after(write: Update) -> Select[Any]:
    """``write`` (the caller's statement, as a CTE), then the breaker's row of the tenant's receiver
    named by parameters ``receiver_tenant`` and ``receiver``, locked: what ``record_answer`` needs, in
    the write's own round trip. (Not ``tenant_id``, ``endpoint``: an UPDATE takes a parameter named as
    one of its columns for its SET clause.)"""
    return (
        select(_ENDPOINTS.c.open_until, _ENDPOINTS.c.consecutive_failures)
        .add_cte(write.cte("answered"))
        .where(
            _ENDPOINTS.c.tenant_id == bindparam("receiver_tenant"),
            _ENDPOINTS.c.endpoint == bindparam("receiver"),
        )
        .with_for_update()
    )


def record_answer(
    delivery: Row[Any], endpoint: str, before: Row[Any] | None, *, healthy: bool
) -> list[uuid.UUID]:
    """Count the answer in the breaker of the delivery's tenant and ``endpoint`` (in the caller's
    transaction); returns the tenant's held deliveries a closing circuit releases. No answer, a timeout
    or a 5xx is a failure.

    ``before`` is the breaker's row as ``locked_after`` read and locked it (None: none yet), so that
    answers counted by other senders meanwhile are counted with this one, not overwritten.
    """
    config = current_app.config
    tenant_id = delivery.tenant_id
    was_open = before is not None and before.open_until is not None
    if healthy:
        if before is None or (not was_open and before.consecutive_failures == 0):
            return []  # the usual case: nothing to write
        db.session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.endpoint == endpoint)
            .values(consecutive_failures=0, open_until=None, updated_at=func.now())
        )
        if not was_open:
            return []
        jobs.add_event(
            delivery.job_id, "webhook.circuit_closed", delivery.job_attempt, {"endpoint": endpoint}
        )
        return list(
            db.session.scalars(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.tenant_id == tenant_id,
                    WebhookDelivery.endpoint == endpoint,
                    WebhookDelivery.status == DeliveryStatus.PENDING,
                    WebhookDelivery.last_error == HELD_ERROR,
                )
                .values(next_attempt_at=func.now())
                .returning(WebhookDelivery.id)
            )
        )
    failures = (before.consecutive_failures if before else 0) + 1
    opens = was_open or failures >= config["GPUJOBS_WEBHOOK_BREAKER_FAILURES"]  # a failed probe reopens
    cooldown = timedelta(seconds=config["GPUJOBS_WEBHOOK_BREAKER_COOLDOWN_SECONDS"])
    values = {"consecutive_failures": failures, "updated_at": func.now()}
    if opens:
        values["open_until"] = func.now() + cooldown
        data = {
            "endpoint": endpoint,
            "consecutiveFailures": failures,
            "coolDownSeconds": cooldown.total_seconds(),
        }
        jobs.add_event(delivery.job_id, "webhook.circuit_opened", delivery.job_attempt, data)
    db.session.execute(
        insert(WebhookEndpoint)
        .values(tenant_id=tenant_id, endpoint=endpoint, **values)
        .on_conflict_do_update(
            index_elements=[WebhookEndpoint.tenant_id, WebhookEndpoint.endpoint], set_=values
        )
    )
    return []
