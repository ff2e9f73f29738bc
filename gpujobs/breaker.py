"""Circuit breakers of webhook receivers: a failing receiver does not take the webhook pool's time.

One breaker per receiver (scheme://host:port, as Svix and Stripe do): after
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
_OPEN_UNTIL = select(_ENDPOINTS.c.open_until).where(_ENDPOINTS.c.endpoint == bindparam("endpoint"))


def gate(endpoint: str) -> datetime | None:
    """None when a delivery to ``endpoint`` may go now (circuit closed, or this one is the probe);
    else until when the open circuit holds it."""
    cooldown = timedelta(seconds=current_app.config["GPUJOBS_WEBHOOK_BREAKER_COOLDOWN_SECONDS"])
    open_until = db.session.scalar(_OPEN_UNTIL, {"endpoint": endpoint})
    if open_until is None:
        return None
    # Past the cool-down the first delivery to move ``open_until`` on is the probe; the rest stay held.
    probe = db.session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.endpoint == endpoint, WebhookEndpoint.open_until <= func.now())
        .values(open_until=func.now() + cooldown, updated_at=func.now())
        .returning(WebhookEndpoint.endpoint)
    ).scalar_one_or_none()
    db.session.commit()
    if probe is not None:
        return None
    return db.session.scalar(_OPEN_UNTIL, {"endpoint": endpoint})


def hold(delivery: Row[Any], attempt: int, endpoint: str, until: datetime) -> DeliveryStatus:
    """Give the claimed try back (no retry spent) and wait for the circuit; noted once on the timeline."""
    already_held = delivery.last_error == HELD_ERROR
    db.session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery.id, WebhookDelivery.attempts == attempt)
        .values(attempts=attempt - 1, next_attempt_at=until, last_error=HELD_ERROR)
    )
    if not already_held:
        data = {"endpoint": endpoint, "eventType": delivery.event_type, "until": until.isoformat()}
        jobs.add_event(delivery.job_id, "webhook.held", delivery.job_attempt, data)
    db.session.commit()
    log.info("delivery %s held: circuit of %s open until %s", delivery.id, endpoint, until)
    return DeliveryStatus.PENDING


def locked_after(write: Update) -> Select[Any]:
    """``write`` (the caller's statement, as a CTE), then the breaker's row of the receiver named by
    parameter ``receiver``, locked: what ``record_answer`` needs, in the write's own round trip. (Not
    ``endpoint``: an UPDATE takes a parameter named as one of its columns for its SET clause.)"""
    return (
        select(_ENDPOINTS.c.open_until, _ENDPOINTS.c.consecutive_failures)
        .add_cte(write.cte("answered"))
        .where(_ENDPOINTS.c.endpoint == bindparam("receiver"))
        .with_for_update()
    )


def record_answer(
    delivery: Row[Any], endpoint: str, before: Row[Any] | None, *, healthy: bool
) -> list[uuid.UUID]:
    """Count the answer in the endpoint's breaker (in the caller's transaction); returns the held
    deliveries a closing circuit releases. No answer, a timeout or a 5xx is a failure.

    ``before`` is the breaker's row as ``locked_after`` read and locked it (None: none yet), so that
    answers counted by other senders meanwhile are counted with this one, not overwritten.
    """
    config = current_app.config
    was_open = before is not None and before.open_until is not None
    if healthy:
        if before is None or (not was_open and before.consecutive_failures == 0):
            return []  # the usual case: nothing to write
        db.session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.endpoint == endpoint)
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
        .values(endpoint=endpoint, **values)
        .on_conflict_do_update(index_elements=[WebhookEndpoint.endpoint], set_=values)
    )
    return []
