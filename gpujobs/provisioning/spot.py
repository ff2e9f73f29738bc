"""Spot instances, run safely: notice Novita's reclaim, say so, and (on request) provision a replacement.

Novita reclaims a spot instance with notice: its `spotStatus` goes `notified` -> `reclaiming` ->
`terminated`, and then it is `exited` (docs/novita-api.md §6, §8). Whoever reads that first (the
reconcile sweep, for a row no job is working on) calls `reclaim`: one compare-and-set moves the row to
`reclaimed`, and in the same transaction the `instance.reclaimed` event is recorded on the instance's
create job and, with `onReclaim: recreate`, a replacement create job and its row are queued. Two readers at
once yield one replacement: only one wins the compare-and-set, and `replaces_instance_id` is unique.

The replacement's create step first tries Novita's `POST /gpu/instance/migrate` on the reclaimed instance,
as the original TypeScript system did on exited spot instances (`migrate_or_none`); where that does not
apply (the instance is still in its notice period, or Novita refuses) it creates anew through the usual
selection: regions in fallback order, spot again, on demand with `fallbackToOnDemand`. Replacements are
bounded by `GPUJOBS_SPOT_MAX_RECREATES` over the whole chain.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy import update

from gpujobs import operations, webhooks
from gpujobs.dispatch import Dispatch, commit_and_publish, dispatch_of
from gpujobs.exceptions import InvalidField, LimitReached
from gpujobs.extensions import db
from gpujobs.models import Instance, InstanceRow, Job
from gpujobs.novita import Instance as NovitaInstance
from gpujobs.novita import NovitaClient, NovitaNotFoundError, NovitaPermanentError
from gpujobs.provisioning import billing, records
from gpujobs.registry import JobContext
from gpujobs.states import InstanceStatus

log = logging.getLogger(__name__)

RECLAIMED_EVENT = "instance.reclaimed"
RECREATE = "recreate"
# Novita's spotStatus words for a reclaim under way (§6); `running` and "" mean none.
RECLAIM_SIGNALS = frozenset({"notified", "reclaiming"})
# A reclaim done: it counts once the instance has exited (a migrated one that runs again may keep it).
TERMINATED = "terminated"


@dataclass(frozen=True)
class Reclaimed:
    """One reclaim recorded in the caller's transaction; `announce` it after commit."""

    instance_id: uuid.UUID
    create_job_id: uuid.UUID | None
    replacement: Dispatch | None


def reclaim_signal(seen: NovitaInstance | None) -> bool:
    """Whether Novita says it is reclaiming (or has reclaimed) this spot instance."""
    if seen is None:
        return False
    return seen.spot_status in RECLAIM_SIGNALS or (seen.spot_status == TERMINATED and seen.is_exited)


def create_job_of(row: InstanceRow) -> Job | None:
    """The job that created the row: its name ends with the job id (`records.instance_name`)."""
    try:
        job_id = uuid.UUID(row.name[-36:])
    except ValueError:
        return None
    if records.instance_id_for(job_id) != row.id:
        return None
    return db.session.get(Job, job_id)


def reclaim(row: InstanceRow, seen: NovitaInstance, from_statuses: tuple[str, ...]) -> Reclaimed | None:
    """Mark the row reclaimed (a compare-and-set from `from_statuses`), record the webhook event and,
    with `recreate` and the bound not reached, queue the replacement; None if someone else moved the row.

    Nothing is committed: the caller commits, then calls `announce`.
    """
    reason = f"Novita reclaimed this spot instance (spotStatus {seen.spot_status})"
    if not records.transition(
        row.id,
        from_statuses,
        records.owned_by(row.job_id),
        status=InstanceStatus.RECLAIMED,
        novita_status=seen.status,
        error=reason,
    ):
        return None
    create_job = create_job_of(row)
    replacement = None
    if row.on_reclaim == RECREATE:
        replacement, why_not = _replace(row, create_job)
        if why_not:
            not_recreated = f"{reason}; not recreated: {why_not}"
            records.transition(row.id, (InstanceStatus.RECLAIMED,), error=not_recreated)
    if create_job is not None:
        reclaimed = db.session.get_one(Instance, row.id, populate_existing=True)
        webhooks.record_event(create_job, RECLAIMED_EVENT, reclaimed)
    log.warning("instance %s: %s (recreate: %s)", row.id, reason, replacement is not None)
    return Reclaimed(row.id, create_job.id if create_job else None, replacement)


def _replace(row: InstanceRow, create_job: Job | None) -> tuple[Dispatch | None, str | None]:
    """Queue a create job like the row's own, and its row linked to this one; or say why not."""
    from gpujobs.provisioning.create import CREATE_KEY  # create imports this module

    limit = current_app.config["GPUJOBS_SPOT_MAX_RECREATES"]
    if row.recreations >= limit:
        return None, f"GPUJOBS_SPOT_MAX_RECREATES ({limit}) replacements already made"
    if create_job is None:
        return None, "its create job is gone"
    options = operations.JobOptions(
        priority=create_job.priority_number,
        webhook_url=create_job.webhook_url,
        webhook_headers=create_job.webhook_headers,
    )
    try:  # a savepoint: a refused replacement leaves nothing half-added to the reclaim's transaction
        with db.session.begin_nested():
            job = operations.prepare(row.tenant_id, CREATE_KEY, 1, dict(create_job.params), options)
    except (InvalidField, LimitReached) as exc:  # a template grant revoked since, the tenant's GPU quotas
        return None, str(exc)
    replacement = records.ensure_row(job.id, row.tenant_id, job.params)
    chain: dict[str, Any] = {"replaces_instance_id": row.id, "recreations": row.recreations + 1}
    if row.expires_at is not None:  # the chain keeps its deadline: a reclaim never lengthens the bill
        chain |= {"expires_at": row.expires_at, "expiry_warned_at": row.expiry_warned_at}
    db.session.execute(update(Instance).where(Instance.id == replacement.id).values(chain))
    return dispatch_of(job), None


def announce(reclaims: Iterable[Reclaimed]) -> None:
    """After the reclaims committed: publish the replacement jobs and the `instance.reclaimed` deliveries."""
    reclaims = list(reclaims)
    replacements = [item.replacement for item in reclaims if item.replacement is not None]
    if replacements:
        commit_and_publish(replacements)
    for item in reclaims:
        if item.create_job_id is not None:
            webhooks.publish_pending(item.create_job_id)


def migrate_or_none(
    ctx: JobContext,
    client: NovitaClient,
    instance: InstanceRow,
    claim: Callable[..., None],
) -> NovitaInstance | None:
    """For a replacement: Novita's migrate of the reclaimed instance, when it applies; else None.

    It applies when the reclaimed instance is `exited` with spotStatus `terminated` (as the TypeScript
    system did). The Novita id moves from the reclaimed row to this one before migrate is sent, in one
    commit (`claim`), so a rerun finds it here and sends migrate again, or adopts the instance migrating
    or running; a refusal gives the id back and the create path takes over.
    """
    if instance.replaces_instance_id is None:
        return None
    old = db.session.get(Instance, instance.replaces_instance_id, populate_existing=True)
    current = db.session.get(Instance, instance.id, populate_existing=True)
    if old is None or current is None:
        return None
    if old.novita_id is not None and current.novita_id is None:
        target, moved = old.novita_id, False
    elif old.novita_id is None and current.novita_id is not None:
        target, moved = current.novita_id, True
    else:
        return None
    try:
        seen = client.get_instance(target)
    except NovitaNotFoundError:
        return None
    terminated = seen.is_exited and seen.spot_status == TERMINATED
    if seen.is_being_removed or not (terminated or moved):
        return None  # still in its notice period, or going: a new instance is the replacement
    if not moved:
        records.transition(old.id, (InstanceStatus.RECLAIMED,), Instance.novita_id == target, novita_id=None)
        claim(ctx, instance, **_migrated_values(old, seen))
    if terminated:
        try:
            client.migrate_instance(target)
        except NovitaPermanentError as exc:
            _give_back(instance.id, old.id, target)
            ctx.emit_event("migrate_refused", {"novitaInstanceId": target, "reason": str(exc)})
            return None
    ctx.emit_event("instance_migrated", {"novitaInstanceId": target, "replacesInstanceId": str(old.id)})
    return seen


def _migrated_values(old: InstanceRow, seen: NovitaInstance) -> dict[str, Any]:
    return {
        "novita_id": seen.id,
        "novita_status": seen.status,
        "billing_mode": billing.SPOT,
        "product_id": old.product_id,
        "product_name": old.product_name,
        "cluster_id": old.cluster_id,
        "region": old.region,
        "price_per_hour_units": old.price_per_hour_units,
        "endpoints": {},
        "ready_at": None,
    }


def _give_back(instance_id: uuid.UUID, old_id: uuid.UUID, novita_id: str) -> None:
    """Novita refused the migrate: the reclaimed row keeps its instance, the replacement creates anew."""
    records.transition(
        instance_id, (InstanceStatus.CREATING,), Instance.novita_id == novita_id, novita_id=None
    )
    records.transition(old_id, (InstanceStatus.RECLAIMED,), Instance.novita_id.is_(None), novita_id=novita_id)
    db.session.commit()
