"""Signed webhook deliveries (Standard Webhooks): recorded as rows, sent and retried by tasks.

An event is recorded in the same transaction as the transition that caused it, at most once per
job attempt and type (a unique constraint), so its ``webhook-id`` is stable however often tasks
run. Sending happens after commit; the job's own outcome never waits on the receiver.

Each attempt has a total deadline (``GPUJOBS_WEBHOOK_TIMEOUT_SECONDS``), and each tenant's receiver a
circuit breaker (``gpujobs.breaker``) that holds the tenant's deliveries to it while they keep failing.
Each tenant has a share of the webhook pool (``GPUJOBS_WEBHOOK_TENANT_CONCURRENCY`` sends at once across
the cluster): a delivery of a tenant at its share is deferred, not sent, so the process moves on at once
and one tenant's slow receivers never hold the processes other tenants' deliveries need.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

from flask import current_app
from pydantic import AfterValidator, Field
from sqlalchemy import (
    Boolean,
    Column,
    Row,
    ScalarSelect,
    Text,
    bindparam,
    case,
    func,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import insert

from gpujobs import breaker, encryption, jobs, resources
from gpujobs import webhook_share as share
from gpujobs.dispatch import send_batch, send_task
from gpujobs.exceptions import GpuJobsError, NotFound
from gpujobs.extensions import db, rows_changed
from gpujobs.models import Instance, InstanceRow, Job, JobRow, Tenant, WebhookDelivery, WebhookEndpoint
from gpujobs.outbound import endpoint_of, send
from gpujobs.signing import webhook_headers
from gpujobs.states import DeliveryStatus, JobStatus

log = logging.getLogger(__name__)

DELIVER_TASK = "gpujobs.webhooks.deliver"
# Its own queue (gpujobs.celery_settings routes the task there), so a backlog of jobs never delays a delivery.
WEBHOOKS_QUEUE = "webhooks"
# Delay before each retry (after the first try), after the Standard Webhooks / Svix schedule:
# about 27 hours in all, so a receiver that is down overnight still gets its events.
RETRY_SCHEDULE_SECONDS = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
RETRY_JITTER_FRACTION = 0.1
# A claimed delivery is re-offered by the sweep if its sender vanished for this long.
SEND_LEASE_SECONDS = 60
CONNECT_TIMEOUT_SECONDS = 5.0
# A job's own headers on its deliveries (``webhookHeaders``, a ``webhook.send`` job's ``headers``).
MAX_HEADERS = 20
MAX_HEADER_VALUE_CHARS = 1024
MAX_HEADERS_TOTAL_BYTES = 8 * 1024
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")  # visible ASCII: no CR/LF (header injection), no NUL
# Hop-by-hop headers (RFC 9110 section 7.6.1) and those the sender owns: the target, framing and body type.
# ``webhook-*`` are the signature's: a job's own header may never stand in for them.
_REFUSED_HEADERS = frozenset(
    {
        *("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection"),
        *("te", "trailer", "transfer-encoding", "upgrade"),
        *("host", "content-length", "content-type", "content-encoding", "expect"),
    }
)
# The event type of a ``webhook.send`` job's delivery: the client's payload, not one of ours.
MESSAGE_EVENT = "webhook.send"
EVENT_BY_STATUS: dict[str, str] = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}


def check_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers a tenant wants on its deliveries, or ValueError naming the one refused (never its value).

    At most ``MAX_HEADERS`` of them, each name a plain token said once, each value visible ASCII of at
    most ``MAX_HEADER_VALUE_CHARS``, ``MAX_HEADERS_TOTAL_BYTES`` in all; never ``webhook-*``, hop-by-hop or
    the ones the sender sets itself. Values may be tokens: they are sent, stored, and masked everywhere.
    """
    if len(headers) > MAX_HEADERS:
        raise ValueError(f"at most {MAX_HEADERS} headers")
    seen: set[str] = set()
    for name, value in headers.items():
        lower = name.lower()
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(
                "a header name is 1-64 letters, digits, '-' and '_', starting with a letter or digit"
            )
        if lower.startswith("webhook-") or lower in _REFUSED_HEADERS:
            raise ValueError(
                f"header {name} is set by the sender (webhook-*, hop-by-hop, framing) and refused"
            )
        if lower in seen:
            raise ValueError(f"header {name} is given twice")
        seen.add(lower)
        if len(value) > MAX_HEADER_VALUE_CHARS or not _HEADER_VALUE.fullmatch(value):
            raise ValueError(
                f"header {name}: its value must be at most {MAX_HEADER_VALUE_CHARS} visible ASCII characters"
            )
    if sum(len(name) + len(value) + 4 for name, value in headers.items()) > MAX_HEADERS_TOTAL_BYTES:
        raise ValueError(f"the headers take more than {MAX_HEADERS_TOTAL_BYTES} bytes in all")
    return dict(headers)


#: The request field of a job's (or a ``webhook.send`` job's) own headers, checked as above.
WebhookHeaders = Annotated[
    dict[str, str],
    AfterValidator(check_headers),
    Field(
        description=f"extra headers on each delivery (at most {MAX_HEADERS}; no webhook-*, hop-by-hop, "
        "Host, Content-Type or Content-Length); values are masked in every answer and display"
    ),
]


_DELIVERIES = WebhookDelivery.__table__
_ENDPOINTS = WebhookEndpoint.__table__
_TENANTS = Tenant.__table__
# Built once, on the table rather than the mapped class: Core statements skip the ORM's bulk-write
# bookkeeping and the cache key of a statement rebuilt per call (a third of the webhook worker's CPU).
#: A new delivery, due now; once per job, event and attempt (or slot).
_RECORD_DELIVERY = (
    insert(_DELIVERIES)
    .values(status=DeliveryStatus.PENDING, next_attempt_at=func.now())
    .on_conflict_do_nothing(constraint="uq_webhook_event")
)
#: An attempt's outcome, fenced by the attempt that claimed it (parameter names other than the columns').
_OUTCOME = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id == bindparam("delivery_id"), _DELIVERIES.c.attempts == bindparam("attempt"))
    .values(
        status=bindparam("new_status"),
        last_status_code=bindparam("status_code"),
        last_error=bindparam("error"),
        next_attempt_at=bindparam("next_at"),
        delivered_at=case((bindparam("delivered", type_=Boolean), func.now())),
    )
)
#: The outcome, then the tenant's breaker row of the receiver locked, in one round trip (parameters
#: ``receiver_tenant``, ``receiver``).
_OUTCOME_AND_BREAKER = breaker.locked_after(_OUTCOME)


def record_event(
    job: JobRow, event_type: str, instance: InstanceRow | None = None, *, slot: int | None = None
) -> None:
    """Record ``event_type`` for the job's receiver, once per job attempt (in the caller's transaction).

    An ``instance.*`` event also carries ``instanceId`` and ``status`` (the instance's) beside ``type``,
    ``timestamp`` and ``data`` at the top of its body, where the GPU queue's receivers read them. An
    event that may recur within one attempt (``instance.expiring`` after an extension) gives its own
    ``slot``, a negative number, recorded in place of the attempt: once per slot instead.
    """
    record_events(job, (event_type,), instance, slot=slot)


def record_events(
    job: JobRow, event_types: Sequence[str], instance: InstanceRow | None = None, *, slot: int | None = None
) -> None:
    """``record_event`` for several events of one moment, in the order given: the job's and the
    instance's bodies are built once for all of them."""
    if not job.webhook_url:
        return
    data = {
        "job": resources.Job.json_of(job),
        "instance": resources.Instance.json_of(instance) if instance else None,
    }
    endpoint = endpoint_of(job.webhook_url)
    for event_type in event_types:
        payload: dict[str, Any] = {"type": event_type, "timestamp": jobs.utcnow().isoformat(), "data": data}
        if instance is not None and event_type.startswith("instance."):
            payload |= {"instanceId": str(instance.id), "status": instance.status}
        _add_delivery(
            tenant_id=job.tenant_id,
            job_id=job.id,
            job_attempt=job.attempt if slot is None else slot,
            event_type=event_type,
            url=job.webhook_url,
            endpoint=endpoint,
            payload=payload,
            headers=job.webhook_headers,
        )


def _add_delivery(
    *,
    tenant_id: uuid.UUID | None,
    job_id: uuid.UUID,
    job_attempt: int,
    event_type: str,
    url: str,
    endpoint: str | None,
    payload: dict[str, Any],
    headers: dict[str, str] | None,
) -> None:
    """Insert one delivery, due now, unless the job has it already (``uq_webhook_event``). Every caller
    binds the same columns, so the statement is compiled, and prepared, once."""
    row = {
        "id": uuid.uuid4(),
        "tenant_id": tenant_id,
        "job_id": job_id,
        "job_attempt": job_attempt,
        "event_type": event_type,
        "url": url,
        "endpoint": endpoint,
        "payload": payload,
        "headers": headers,
    }
    db.session.execute(_RECORD_DELIVERY, row)


def record_message(
    job_id: uuid.UUID, url: str, payload: dict[str, Any], headers: dict[str, str]
) -> uuid.UUID:
    """Record a client's own message as the job's one ``webhook.send`` delivery; returns its id.

    Once per job, not per attempt: a rerun finds the delivery it recorded (and sent) before.
    """
    tenant_id = db.session.scalar(select(Job.tenant_id).where(Job.id == job_id))
    _add_delivery(
        tenant_id=tenant_id,
        job_id=job_id,
        job_attempt=0,
        event_type=MESSAGE_EVENT,
        url=url,
        endpoint=None,
        payload=payload,
        headers=headers or None,
    )
    return db.session.execute(
        select(WebhookDelivery.id).where(
            WebhookDelivery.job_id == job_id,
            WebhookDelivery.event_type == MESSAGE_EVENT,
            WebhookDelivery.job_attempt == 0,
        )
    ).scalar_one()


def record_job_event(
    job_id: uuid.UUID,
    job: JobRow | None = None,
    instance: InstanceRow | None = None,
    *,
    preceded_by: Sequence[str] = (),
) -> None:
    """Record the ``job.<outcome>`` event of a job that just reached a terminal status (after the
    instance events of the same moment in ``preceded_by``, such as the ``instance.running`` that ended it).

    A caller that has the job's row as it is now (and its instance's) passes them: they are not read again.
    """
    job = job or db.session.get(Job, job_id, populate_existing=True)
    if job is not None and job.status in EVENT_BY_STATUS and job.webhook_url:  # no receiver: no instance read
        instance = instance or db.session.scalar(select(Instance).where(Instance.job_id == job.id))
        record_events(job, (*preceded_by, EVENT_BY_STATUS[job.status]), instance)


def publish_pending(job_id: uuid.UUID) -> None:
    """After commit, hand the job's new deliveries to the webhook queue as one message."""
    publish(job_id, pending(job_id))


def pending(job_id: uuid.UUID) -> list[uuid.UUID]:
    """The job's deliveries never tried yet, oldest event first; read before the commit that records
    them, so publishing them after it takes no transaction of its own."""
    return _untried([job_id]).get(job_id, [])


def publish(job_id: uuid.UUID, due: list[uuid.UUID]) -> None:
    """After commit, hand ``due`` (from ``pending``) to the webhook queue as one message.

    One task sends them in the order they happened, so a receiver sees ``instance.running`` before
    the ``job.succeeded`` that follows it; the webhook sweep covers a message that did not go out.
    """
    if due:
        ids = [str(item) for item in due]
        send_task(DELIVER_TASK, ids, f"deliveries of job {job_id}", **_deliver_limits(len(ids)))


def publish_pending_of(job_ids: list[uuid.UUID]) -> None:
    """``publish_pending`` for many jobs in one query and one Redis round trip (the webhook sweep: a
    receiver's held deliveries, hundreds of jobs' worth, come due at once when its circuit's cool-down
    ends; one message each cost the job workers, which run the sweeps, seconds per tick)."""
    due = _untried(job_ids) if job_ids else {}
    messages = [
        (DELIVER_TASK, [str(item) for item in ids], WEBHOOKS_QUEUE, _deliver_limits(len(ids)))
        for ids in due.values()
    ]
    if messages:
        send_batch(messages, f"deliveries of {len(messages)} jobs")


# The hot statements of a delivery, built once (their parameters come with each call).
_UNTRIED = (
    select(_DELIVERIES.c.job_id, _DELIVERIES.c.id)
    .where(
        _DELIVERIES.c.job_id.in_(bindparam("job_ids", expanding=True)),
        _DELIVERIES.c.status == DeliveryStatus.PENDING,
        _DELIVERIES.c.attempts == 0,
    )
    .order_by(_DELIVERIES.c.job_id, _DELIVERIES.c.payload["timestamp"].astext, _DELIVERIES.c.id)
)


def _of_tenant(column: Column[Any]) -> ScalarSelect[Any]:
    """``column`` of the claimed delivery's tenant."""
    return select(column).where(_TENANTS.c.id == _DELIVERIES.c.tenant_id).scalar_subquery()


#: A due delivery taken for one attempt, with its tenant's circuit of its receiver as the claim sees it
#: (no row: closed) as ``open_until``, and its tenant's signing secrets.
_CLAIM = (
    update(_DELIVERIES)
    .where(
        _DELIVERIES.c.id == bindparam("delivery_id"),
        _DELIVERIES.c.status == DeliveryStatus.PENDING,
        _DELIVERIES.c.next_attempt_at <= func.now(),
    )
    .values(
        attempts=_DELIVERIES.c.attempts + 1,
        next_attempt_at=func.now() + timedelta(seconds=SEND_LEASE_SECONDS),
    )
    .returning(
        *_DELIVERIES.c,
        select(_ENDPOINTS.c.open_until)
        .where(
            _ENDPOINTS.c.tenant_id == _DELIVERIES.c.tenant_id,
            _ENDPOINTS.c.endpoint == _DELIVERIES.c.endpoint,
        )
        .scalar_subquery()
        .label("open_until"),
        # The tenant's signing secrets, no read of its own per delivery. Still encrypted (read as Text):
        # the claimed row travels through the send and the breaker, and a row's repr shows its values.
        *(
            type_coerce(_of_tenant(column), Text).label(column.key)
            for column in (_TENANTS.c.webhook_secret, _TENANTS.c.previous_webhook_secret)
        ),
        _of_tenant(_TENANTS.c.previous_secret_expires_at).label("previous_secret_expires_at"),
    )
)


def _untried(job_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[uuid.UUID]]:
    """Each job's pending deliveries never tried, in the order they happened."""
    rows = db.session.execute(_UNTRIED, {"job_ids": job_ids}).all()
    due: dict[uuid.UUID, list[uuid.UUID]] = {}
    for job_id, delivery_id in rows:
        due.setdefault(job_id, []).append(delivery_id)
    return due


def _deliver_limits(deliveries: int) -> dict[str, float]:
    """The time limits of one message: its default fits one delivery; each one more may take the whole
    send timeout."""
    limit = deliveries * (current_app.config["GPUJOBS_WEBHOOK_TIMEOUT_SECONDS"] + 5) + 30
    return {"soft_time_limit": limit, "time_limit": limit + 30}


def publish_delivery(delivery_id: uuid.UUID) -> None:
    """Hand one delivery to the webhook queue; if the broker is away, the webhook sweep sends it later."""
    send_task(DELIVER_TASK, [str(delivery_id)], f"delivery {delivery_id}")


def signing_secrets(claimed: Row[Any]) -> list[str]:
    """The tenant's current secret, plus the previous one while a rotation overlaps, decrypted from the
    ciphertexts a claimed delivery carries."""
    box = encryption.app_cipher()
    secrets = [encryption.decrypt(claimed.webhook_secret, box)]
    expires = claimed.previous_secret_expires_at
    if claimed.previous_webhook_secret and expires and expires > jobs.utcnow():
        secrets.append(encryption.decrypt(claimed.previous_webhook_secret, box))
    return secrets


def deliver(delivery_id: uuid.UUID) -> DeliveryStatus | None:
    """Try one delivery now; returns its new status, or None when another sender holds it."""
    return deliver_in_order([delivery_id])[0]


def deliver_in_order(delivery_ids: list[uuid.UUID]) -> list[DeliveryStatus | None]:
    """Try each delivery now, one after the other (a job's events, oldest first); returns their statuses.

    Each claim commits before its send, so no other sender takes it meanwhile and no transaction stays
    open while the receiver answers. A delivery's outcome commits with the next delivery's claim (one
    transaction), the last one's at the end. Once one is deferred (its tenant's share in use, now or
    before), the ones after it are deferred with it, unsent, so none overtakes it.
    """
    released: list[uuid.UUID] = []
    deferred: list[uuid.UUID] = []
    statuses: list[DeliveryStatus | None] = []
    slot = share.Slot()
    try:
        for position, delivery_id in enumerate(delivery_ids):
            statuses.append(_try(delivery_id, slot, released, deferred))
            if deferred:
                rest = delivery_ids[position + 1 :]
                if rest:
                    db.session.execute(_DEFER_REST, {"delivery_ids": rest, "until": share.deferred_until()})
                statuses += [DeliveryStatus.PENDING] * len(rest)
                break
    finally:
        slot.give_back()
    db.session.commit()
    _release(released)
    return statuses


#: The due deliveries after a deferred one in the same message, deferred with it (not claimed: no try).
_DEFER_REST = (
    update(_DELIVERIES)
    .where(
        _DELIVERIES.c.id.in_(bindparam("delivery_ids", expanding=True)),
        _DELIVERIES.c.status == DeliveryStatus.PENDING,
        _DELIVERIES.c.next_attempt_at <= func.now(),
    )
    .values(next_attempt_at=bindparam("until"), last_error=share.DEFERRED_ERROR)
)
#: Whether a delivery the claim could not take is one waiting for its tenant's share.
_IS_DEFERRED = select(_DELIVERIES.c.id).where(
    _DELIVERIES.c.id == bindparam("delivery_id"),
    _DELIVERIES.c.status == DeliveryStatus.PENDING,
    _DELIVERIES.c.last_error == share.DEFERRED_ERROR,
)


def _try(
    delivery_id: uuid.UUID, slot: share.Slot, released: list[uuid.UUID], deferred: list[uuid.UUID]
) -> DeliveryStatus | None:
    """One attempt of one delivery, sent under the message's ``slot`` of its tenant's share; its outcome
    is left for the caller's next commit. ``released`` (held deliveries a closing circuit lets go) is
    sent once that commit is made; ``deferred`` gets the delivery if it waits for its tenant's share
    (deferred now, or not yet due again)."""
    delivery = db.session.execute(_CLAIM, {"delivery_id": delivery_id}).one_or_none()
    if delivery is None:
        # Not due (or another sender has it): if it waits for its tenant's share, the message's later
        # deliveries wait too (a false positive, one being sent right now, costs them a few seconds).
        if db.session.scalar(_IS_DEFERRED, {"delivery_id": delivery_id}) is not None:
            deferred.append(delivery_id)
        return None
    attempt = delivery.attempts
    # The claim read the tenant's circuit of the receiver with the row (rows older than the breaker have
    # no endpoint): a closed one needs no second look before the send.
    closed = delivery.endpoint is not None and delivery.open_until is None
    endpoint = delivery.endpoint or endpoint_of(delivery.url)
    held_until = None if closed else breaker.gate(delivery.tenant_id, endpoint)
    if held_until is not None:
        return breaker.hold(delivery, attempt, endpoint, held_until)
    if not slot.take(delivery.tenant_id):
        deferred.append(delivery.id)
        return share.defer(delivery, attempt)
    db.session.commit()  # the claim (and the previous delivery's outcome)
    _release(released)
    released.clear()
    body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
    signed = webhook_headers(signing_secrets(delivery), str(delivery.id), int(time.time()), body)
    headers = {**(delivery.headers or {}), **signed}
    status_code, error = _send(delivery.url, body, headers)
    new_status, next_at = _outcome(status_code, attempt)
    outcome = {
        "delivery_id": delivery_id,
        "attempt": attempt,
        "new_status": new_status,
        "status_code": status_code,
        "error": error,
        "next_at": next_at,
        "delivered": new_status == DeliveryStatus.SUCCEEDED,
    }
    receiver = {"receiver_tenant": delivery.tenant_id, "receiver": endpoint}
    before = db.session.execute(_OUTCOME_AND_BREAKER, outcome | receiver).one_or_none()
    healthy = status_code is not None and status_code < 500
    released += breaker.record_answer(delivery, endpoint, before, healthy=healthy)
    log.info("delivery %s attempt %s: %s (%s)", delivery_id, attempt, new_status, status_code or error)
    return new_status


def _release(released: list[uuid.UUID]) -> None:
    for held in released:
        publish_delivery(held)


def _send(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
    config = current_app.config
    total = config["GPUJOBS_WEBHOOK_TIMEOUT_SECONDS"]
    try:
        response = send(
            "POST",
            url,
            data=body,
            headers=headers,
            allow_private=config["GPUJOBS_WEBHOOK_ALLOW_PRIVATE"],
            connect_timeout_seconds=min(CONNECT_TIMEOUT_SECONDS, total),
            total_timeout_seconds=total,
        )
    except GpuJobsError as exc:
        return None, str(exc)[:500]
    error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
    return response.status_code, error


def _outcome(status_code: int | None, attempt: int) -> tuple[DeliveryStatus, datetime | None]:
    """2xx succeeds, 410 disables, anything else (redirects included) retries on the schedule."""
    if status_code is not None and 200 <= status_code < 300:
        return DeliveryStatus.SUCCEEDED, None
    if status_code == 410:
        return DeliveryStatus.DISABLED, None
    if attempt > len(RETRY_SCHEDULE_SECONDS):
        return DeliveryStatus.FAILED, None
    jitter = 1 + random.uniform(-RETRY_JITTER_FRACTION, RETRY_JITTER_FRACTION)
    delay = RETRY_SCHEDULE_SECONDS[attempt - 1] * jitter
    return DeliveryStatus.PENDING, jobs.utcnow() + timedelta(seconds=delay)


def redeliver(delivery_id: uuid.UUID, job_id: uuid.UUID, tenant_id: uuid.UUID) -> None:
    """Send a job's delivery again now (operator action), keeping its ``webhook-id``.

    NotFound unless the delivery is the tenant's and belongs to that job.
    """
    done = db.session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.job_id == job_id,
            WebhookDelivery.tenant_id == tenant_id,
        )
        .values(status=DeliveryStatus.PENDING, next_attempt_at=func.now())
    )
    db.session.commit()
    if rows_changed(done) != 1:
        raise NotFound(f"job {job_id} has no delivery {delivery_id}")
    publish_delivery(delivery_id)
