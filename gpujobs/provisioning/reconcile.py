"""The reconcile sweep: make our instance rows and Novita's list of our instances agree.

- **leaked**: a Novita instance named our prefix plus a job id that no row wants and no live job owns
  (a create whose job was cancelled while retrying, a failed delete, a duplicate) is deleted once it is
  older than `GPUJOBS_LEAK_GRACE_SECONDS` (by Novita's `createdAt`, or, where Novita sends none, since a
  pass first saw it unwanted), and reported. Any other name is never touched
  (`records.job_id_of`), and neither is an instance gpujobs only watched (`external`). A row that never
  recorded the instance (its create answer was lost) is marked `deleting` with its id.
- **lost**: a row that says running or stopped whose instance Novita no longer has is marked `lost`.
- **settled**: a row left mid-change by a job that ended without settling it takes Novita's status.
- **mirrored**: every listed row gets Novita's status and `last_seen_at`.
- **reclaimed**: a running or stopped row whose spot instance Novita reclaims (`gpujobs.provisioning.spot`).
- **unread**: a row whose instance could not be read this pass (Novita busy, or an answer that proves
  nothing, such as a proxy's page): left as it is until a pass reads it; the other rows go on.

Novita is asked first and rows are written last, in one short transaction. A transaction-scoped
advisory lock makes a second concurrent run return at once (`{"skipped": true}`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

import redis
from flask import current_app
from sqlalchemy import or_, select, text, update

from gpujobs import jobs
from gpujobs.broker import redis_client
from gpujobs.exceptions import TransientError
from gpujobs.extensions import db
from gpujobs.models import Instance
from gpujobs.novita import Instance as NovitaInstance
from gpujobs.novita import NovitaClient, NovitaNotFoundError, NovitaTransientError, spec
from gpujobs.provisioning import records, snapshot, spot
from gpujobs.provisioning.novita_client import novita_client
from gpujobs.states import INSTANCE_ENDED, InstanceStatus

log = logging.getLogger(__name__)

LOCK_NAME = "gpujobs.sweep.reconcile"
STEADY = (InstanceStatus.RUNNING, InstanceStatus.STOPPED)
LOST_REASON = "Novita no longer has this instance"
# Novita id -> when a pass first saw it unwanted, for instances Novita sends no `createdAt` for.
UNWANTED_SINCE_KEY = "gpujobs:reconcile:unwanted-since"
SETTLE_REASON = "its job ended before the instance settled"


def sweep() -> dict[str, Any]:
    """Beat's pass: ``reconcile``, where Novita (or a proxy in front of it) failing the pass is expected
    weather, not a bug: a warning and a skipped pass, and the next one a minute later tries again."""
    try:
        return reconcile()
    except TransientError as exc:
        db.session.rollback()
        log.warning("reconcile: pass skipped, Novita did not answer (%s)", exc)
        return {"skipped": True, "error": str(exc)}


def reconcile() -> dict[str, Any]:
    """One reconciliation pass; returns what it found and did (also logged)."""
    if not db.session.scalar(text("SELECT pg_try_advisory_xact_lock(hashtext(:name))"), {"name": LOCK_NAME}):
        db.session.rollback()
        return {"skipped": True}
    with novita_client() as client:
        taken_at, listed = snapshot.refresh(client) or snapshot.list_ours(client)
        rows = db.session.scalars(
            select(Instance).where(
                or_(
                    Instance.status.notin_(INSTANCE_ENDED),
                    Instance.novita_id.in_(list(listed)),
                    Instance.name.in_([item.name for item in listed.values()]),
                )
            )
        ).all()
        owners = {row.job_id for row in rows} | {records.job_id_of(item.name) for item in listed.values()}
        live = records.live_jobs({job_id for job_id in owners if job_id})
        # Rows a job is working on, or that changed since the listing began, are not ours to judge now.
        quiet = [row for row in rows if row.job_id not in live and row.updated_at.timestamp() < taken_at]
        views = _views(client, quiet, listed)
        leaked, waiting, unrecorded = _leaks(client, rows, listed, taken_at, live)
    reclaims: list[spot.Reclaimed] = []
    read = [row for row in quiet if row.novita_id is None or row.id in views]
    report = _write(read, views, reclaims)
    _record_deleted(unrecorded)  # last: _write expects each row's Novita id to be one it has a view of
    unread = [str(row.id) for row in quiet if row not in read]
    report.update(skipped=False, listed=len(listed), leaked=leaked, waiting=waiting, unread=unread)
    db.session.commit()
    spot.announce(reclaims)
    if leaked or unread or report["lost"] or report["settled"] or report["reclaimed"]:
        log.info("reconcile: %s", report)
    return report


def _views(
    client: NovitaClient, rows: list[Instance], listed: dict[str, NovitaInstance]
) -> dict[uuid.UUID, NovitaInstance | None]:
    """Novita's view of each row that has an instance there; None when a GET confirms it is gone. A row
    whose instance could not be read has no view: it is left out of this pass, and the others go on."""
    views: dict[uuid.UUID, NovitaInstance | None] = {}
    for row in rows:
        if row.novita_id is None:
            continue
        if row.novita_id in listed:
            views[row.id] = listed[row.novita_id]
            continue
        # Not listed: make sure before calling it gone (a list can stop at its page cap). Only Novita's
        # envelope saying not-found is "gone"; a transient answer (a proxy's 404 or page) proves nothing.
        try:
            views[row.id] = client.get_instance(row.novita_id)
        except NovitaNotFoundError:
            views[row.id] = None
        except NovitaTransientError as exc:
            log.warning("reconcile: instance %s not read this pass (%s)", row.id, exc)
    return views


def _leaks(
    client: NovitaClient,
    rows: Sequence[Instance],
    listed: dict[str, NovitaInstance],
    taken_at: float,
    live: set[uuid.UUID],
) -> tuple[list[dict[str, Any]], list[str], list[tuple[Instance, str]]]:
    """Delete our Novita instances nobody wants once past the grace period; report them.

    Also returns the rows the deleted instances were matched to by name only (row, Novita id): rows
    that never learned of the instance, for `_record_deleted`.
    """
    by_novita_id = {row.novita_id: row for row in rows if row.novita_id}
    by_name = {row.name: row for row in rows if row.novita_id is None}
    grace_seconds = current_app.config["GPUJOBS_LEAK_GRACE_SECONDS"]
    leaked: list[dict[str, Any]] = []
    waiting: list[str] = []
    unrecorded: list[tuple[Instance, str]] = []
    row_of = {item.id: by_novita_id.get(item.id) or by_name.get(item.name) for item in listed.values()}
    unwanted = [
        item
        for item in listed.values()
        if not item.is_being_removed and not _wanted(item, row_of[item.id], live)
    ]
    since = _first_seen_unwanted([item.id for item in unwanted if item.created_at is None], taken_at)
    for item in unwanted:
        row = row_of[item.id]
        born = item.created_at.timestamp() if item.created_at else since.get(item.id, taken_at)
        age_seconds = taken_at - born
        # A row that never recorded this instance and has ended (its create's answer was lost, then its
        # job failed or was cancelled) has no run left to record it: no grace, its bill stops now.
        orphaned = row is not None and row.novita_id is None and row.status in INSTANCE_ENDED
        if age_seconds < grace_seconds and not orphaned:
            waiting.append(item.id)
            continue
        try:
            client.delete_instance(item.id)  # returns once a read shows it removing
        except NovitaNotFoundError:
            continue
        leaked.append(
            {
                "novitaInstanceId": item.id,
                "name": item.name,
                "instanceId": str(row.id) if row else None,
                "novitaStatus": item.status,
                "ageSeconds": round(age_seconds),
            }
        )
        log.warning("reconcile: leaked Novita instance %s (%s, %s) deleted", item.id, item.name, item.status)
        if row is not None and row.novita_id is None:
            unrecorded.append((row, item.id))
    return leaked, waiting, unrecorded


def _first_seen_unwanted(novita_ids: list[str], now: float) -> dict[str, float]:
    """When a pass first saw each of these unwanted instances, which Novita sends no `createdAt` for
    (undocumented, NOVITA_API.md §6): their grace counts from then. Kept in Redis, one hash; ids no longer
    among them are dropped. With Redis away or wiped the grace starts again: a later delete, never an
    earlier one."""
    try:
        store = redis_client()
        with store.pipeline(transaction=False) as pipe:
            for novita_id in novita_ids:
                pipe.hsetnx(UNWANTED_SINCE_KEY, novita_id, repr(now))
            pipe.hgetall(UNWANTED_SINCE_KEY)
            seen: dict[bytes, bytes] = pipe.execute()[-1]
        kept = {key.decode(): float(value) for key, value in seen.items()}
        if stale := [key for key in kept if key not in novita_ids]:
            store.hdel(UNWANTED_SINCE_KEY, *stale)
    except redis.RedisError as exc:
        log.warning(
            "reconcile: leak ages not read (%s); instances without createdAt wait", type(exc).__name__
        )
        return {}
    return {key: value for key, value in kept.items() if key in novita_ids}


def _wanted(item: NovitaInstance, row: Instance | None, live: set[uuid.UUID]) -> bool:
    """An instance is wanted by a row that recorded it and means to keep it, or by a live job that will
    record it.

    A row matched by name only never recorded this instance (its create answer was lost, then its job
    was cancelled or ran out of attempts, leaving it `failed` with no Novita id): its status speaks of
    no instance, so it cannot keep one; only its live job could still adopt it.
    """
    if row is None or row.novita_id != item.id:
        return records.job_id_of(item.name) in live
    if row.external:  # watched on request, not created by us: never ours to delete, whatever its name
        return True
    return row.job_id in live or row.status in records.WANTED


def _record_deleted(unrecorded: list[tuple[Instance, str]]) -> None:
    """Note the instance just deleted on each row that never recorded it, as `deleting`: the row then
    tells its owner that an instance existed and is going, and a later pass marks it `deleted` once
    Novita confirms.

    A compare-and-set on the row as read (status, job, no Novita id yet): a row a job took meanwhile
    is left as it is.
    """
    for row, novita_id in unrecorded:
        records.transition(
            row.id,
            (row.status,),
            records.owned_by(row.job_id),
            Instance.novita_id.is_(None),
            novita_id=novita_id,
            status=InstanceStatus.DELETING,
        )


def _write(
    rows: list[Instance], views: dict[uuid.UUID, NovitaInstance | None], reclaims: list[spot.Reclaimed]
) -> dict[str, Any]:
    """Mirror, settle, mark lost or reclaimed; each a compare-and-set on the status the row had when read."""
    report: dict[str, list[str]] = {"lost": [], "settled": [], "reclaimed": []}
    mirrored = []
    for row in rows:
        if row.novita_id is None:
            novita_status = None
        else:
            item = views[row.id]
            novita_status = item.status if item else spec.Status.REMOVED.value
            if item is not None:
                records.mirror(row.id, item)
                mirrored.append(row.id)
            if item is not None and row.status in STEADY and spot.reclaim_signal(item):
                reclaimed = spot.reclaim(row, item, (row.status,))
                if reclaimed is not None:
                    reclaims.append(reclaimed)
                    report["reclaimed"].append(str(row.id))
                continue
        outcome = _settle(row, novita_status)
        if outcome:
            report[outcome].append(str(row.id))
    if mirrored:
        db.session.execute(
            update(Instance).where(Instance.id.in_(mirrored)).values(last_seen_at=jobs.utcnow())
        )
    return report


def _settle(row: Instance, novita_status: str | None) -> str | None:
    """Bring one quiet row in line with Novita; returns "lost", "settled" or None (nothing to do)."""
    gone = novita_status in spec.GONE_STATUSES
    if row.status in STEADY:
        target = InstanceStatus.LOST if gone else records.settled_status(novita_status, row.status)
        if target not in (*STEADY, InstanceStatus.LOST) or target == row.status:
            return None  # mid-change at Novita (e.g. being removed): look again next time
        error = LOST_REASON if target == InstanceStatus.LOST else row.error
        if not records.transition(row.id, (row.status,), status=target, error=error):
            return None
        return "lost" if target == InstanceStatus.LOST else "settled"
    if row.status == InstanceStatus.DELETING:
        if gone and records.transition(row.id, (row.status,), status=InstanceStatus.DELETED):
            return "settled"
        return None
    return "settled" if records.settle(row, SETTLE_REASON, novita_status) else None
