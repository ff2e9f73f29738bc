"""Instance lifetimes: warn before an instance's deadline, stop or delete it at the deadline, extend it.

A create request may give `maxRuntimeSeconds` (else the deployment's
`GPUJOBS_INSTANCE_MAX_RUNTIME_SECONDS` applies); the row then holds `expires_at`, counted from the
request (`records.ensure_row` says why), and `on_expiry`. The beat sweep here does two steps, each a
compare-and-set in PostgreSQL, so a restart, a rerun or two beats at once still give one warning, one
action and one `instance.expired` per deadline:

- **warn**: `GPUJOBS_INSTANCE_EXPIRY_WARNING_SECONDS` before the deadline, `expiry_warned_at` goes from
  NULL to now, and `instance.expiring` is recorded in the same transaction.
- **expire**: at the deadline, the stop or delete action is queued through `actions.request`, the same
  path as `POST /v1/instances/{id}/stop|delete`, whose own compare-and-set on the row's status lets only
  one request act; `instance.expired` commits with it. An instance that is being created, started or
  stopped is acted on at the first sweep after its job settles it.

An instance never runs past its deadline: one stopped at it and started again is stopped at the next
sweep, until an extension gives it a new deadline. Events go to the instance's latest job's receiver,
like its other `instance.*` events (none once that job is past retention).
"""

from __future__ import annotations

import logging
import uuid

from flask import current_app
from sqlalchemy import Float, and_, bindparam, func, or_, select, update

from gpujobs import limits, webhooks
from gpujobs.exceptions import Conflict, GpuJobsError, NotFound
from gpujobs.extensions import among, db, interval_seconds
from gpujobs.jobs import PRIORITY_NAMES
from gpujobs.models import Instance, Job
from gpujobs.operations import JobOptions
from gpujobs.provisioning import actions, records
from gpujobs.provisioning.monitor import DELETE, STOP
from gpujobs.states import InstanceStatus

log = logging.getLogger(__name__)

EXPIRING_EVENT = "instance.expiring"
EXPIRED_EVENT = "instance.expired"
SWEEP_BATCH_SIZE = 200
# An extension answers 409 for these: the instance is gone or going, there is nothing left to run.
GONE = (InstanceStatus.DELETING, InstanceStatus.DELETED, InstanceStatus.LOST)


def sweep() -> dict[str, int]:
    """One pass: warn the instances whose deadline is near, then act on those whose deadline passed."""
    report = {"warned": warn_due(), "expired": expire_due()}
    if any(report.values()):
        log.info("lifetimes sweep: %s", report)
    return report


# The sweep's reads, built once on the table's columns: it runs every few seconds, busy or idle.
_INSTANCES = Instance.__table__
# The rows `on_expiry` can act on now: a running instance to stop, or any instance delete allows.
_ACTS_AT_DEADLINE = or_(
    and_(_INSTANCES.c.on_expiry == STOP, among(_INSTANCES.c.status, actions.ALLOWED_FROM[STOP])),
    and_(_INSTANCES.c.on_expiry == DELETE, among(_INSTANCES.c.status, actions.ALLOWED_FROM[DELETE])),
)
_WARN_DUE = (
    update(_INSTANCES)
    .where(
        _INSTANCES.c.id.in_(
            select(_INSTANCES.c.id)
            .where(
                _INSTANCES.c.expires_at
                <= func.now() + interval_seconds(bindparam("lead_seconds", type_=Float)),
                _INSTANCES.c.expires_at > func.now(),
                _INSTANCES.c.expiry_warned_at.is_(None),
                among(_INSTANCES.c.status, records.WANTED),
                ~and_(_INSTANCES.c.on_expiry == STOP, _INSTANCES.c.status == InstanceStatus.STOPPED),
            )
            .limit(SWEEP_BATCH_SIZE)
            .with_for_update(skip_locked=True)
        ),
        _INSTANCES.c.expiry_warned_at.is_(None),
    )
    .values(expiry_warned_at=func.now(), expiry_warnings=_INSTANCES.c.expiry_warnings + 1)
    .returning(_INSTANCES.c.id, _INSTANCES.c.job_id, _INSTANCES.c.expiry_warnings)
)
_EXPIRED = (
    select(_INSTANCES.c.id)
    .where(_INSTANCES.c.expires_at <= func.now(), _INSTANCES.c.external.is_(False), _ACTS_AT_DEADLINE)
    .order_by(_INSTANCES.c.expires_at)
    .limit(SWEEP_BATCH_SIZE)
)


def warn_due() -> int:
    """Record `instance.expiring` once per deadline for instances within the warning lead time."""
    lead_seconds = current_app.config["GPUJOBS_INSTANCE_EXPIRY_WARNING_SECONDS"]
    if not lead_seconds:
        return 0
    warned = db.session.execute(_WARN_DUE, {"lead_seconds": lead_seconds}).all()
    if not warned:
        db.session.rollback()  # nothing near its deadline: nothing to commit or publish
        return 0
    notified = []
    for instance_id, job_id, count in warned:
        job = db.session.get(Job, job_id) if job_id else None
        if job is not None:
            instance = db.session.get_one(Instance, instance_id, populate_existing=True)
            webhooks.record_event(job, EXPIRING_EVENT, instance, slot=-count)
            notified.append(job.id)
    db.session.commit()
    for job_id in notified:
        webhooks.publish_pending(job_id)
    return len(warned)


def expire_due() -> int:
    """Queue `on_expiry` for each instance past its deadline, one row per transaction."""
    due = db.session.scalars(_EXPIRED).all()
    db.session.rollback()
    return sum(_expire(instance_id) for instance_id in due)


def _expire(instance_id: uuid.UUID) -> bool:
    """Act on one instance if it is still due and no other sweep holds it; True if this run acted."""
    instance = db.session.scalar(
        select(Instance)
        .where(Instance.id == instance_id, Instance.expires_at <= func.now(), _ACTS_AT_DEADLINE)
        .with_for_update(skip_locked=True)
    )
    if instance is None:
        db.session.rollback()
        return False
    action = instance.on_expiry or DELETE
    # The most urgent priority the tenant may use: the instance is billing past its deadline.
    options = JobOptions(priority=PRIORITY_NAMES[limits.of(instance.tenant_id).max_priority])
    try:
        job, _ = actions.request(
            instance.tenant_id, instance.id, action, options, before_commit=_record_expired
        )
    except (Conflict, NotFound):
        return False  # moved meanwhile (request rolled back): the next sweep looks again
    except GpuJobsError:
        db.session.rollback()
        log.exception("lifetimes: instance %s could not be expired; the next sweep retries", instance_id)
        return False
    log.info("instance %s: deadline passed, %s queued as job %s", instance_id, action, job.id)
    webhooks.publish_pending(job.id)
    return True


def _record_expired(job: Job, instance: Instance) -> None:
    webhooks.record_event(job, EXPIRED_EVENT, instance)


def extend(tenant_id: uuid.UUID, instance_id: uuid.UUID, seconds: int) -> Instance:
    """Push a tenant's instance's deadline `seconds` later (from now if it already passed).

    The warning is armed again, so a new `instance.expiring` comes before the new deadline. NotFound for
    another tenant's instance; Conflict for one without a deadline, or deleted, being deleted or lost.
    """
    instance = db.session.scalar(
        select(Instance).where(Instance.id == instance_id, Instance.tenant_id == tenant_id)
    )
    if instance is None:
        raise NotFound(f"no instance {instance_id}")
    extended = db.session.execute(
        update(Instance)
        .where(
            Instance.id == instance_id,
            Instance.expires_at.is_not(None),
            Instance.status.notin_(GONE),
        )
        .values(
            expires_at=func.greatest(Instance.expires_at, func.now()) + interval_seconds(seconds),
            expiry_warned_at=None,
        )
        .returning(Instance.id)
    ).first()
    if extended is None:
        db.session.rollback()
        raise Conflict(_refusal(db.session.get_one(Instance, instance_id, populate_existing=True)))
    db.session.commit()
    return db.session.get_one(Instance, instance_id, populate_existing=True)


def _refusal(instance: Instance) -> str:
    if instance.expires_at is None:
        return (
            f"instance {instance.id} has no deadline to extend (it was created without maxRuntimeSeconds "
            "and the deployment sets no default)"
        )
    return f"instance {instance.id} is {instance.status}: there is no lifetime left to extend"
