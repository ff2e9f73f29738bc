"""Instance rows: their statuses, their derived names, and compare-and-set transitions.

A row's `status` says what we intend and observe (`requested` … `running`, `stopped`, `deleted`);
`novita_status` mirrors Novita's word for it. Every change is one `UPDATE ... WHERE status IN (...)`, so
two writers (a monitor, the reconcile sweep, an API request) can never both win. Functions here never
commit: callers own the transaction, as in `gpujobs.jobs`.
"""

from __future__ import annotations

import functools
import logging
import uuid
from typing import Any

from flask import current_app
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Integer,
    Row,
    bindparam,
    cast,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert

from gpujobs import deployment, jobs
from gpujobs.exceptions import PermanentError
from gpujobs.extensions import among, db, interval_seconds, rows_changed
from gpujobs.models import Instance, InstanceRow, Job
from gpujobs.novita import Instance as NovitaInstance
from gpujobs.novita import spec
from gpujobs.states import JOB_ACTIVE, JOB_LIVE, JOB_TERMINAL, InstanceStatus

log = logging.getLogger(__name__)

# An instance in these is ours to keep at Novita; any other Novita instance with our prefix is a leak.
WANTED = (
    InstanceStatus.REQUESTED,
    InstanceStatus.CREATING,
    InstanceStatus.RUNNING,
    InstanceStatus.STOPPING,
    InstanceStatus.STOPPED,
    InstanceStatus.STARTING,
    InstanceStatus.FAILED,
)
# Someone (a job) is changing the instance; when no live job does, the reconcile sweep settles it.
IN_FLIGHT = (
    InstanceStatus.REQUESTED,
    InstanceStatus.CREATING,
    InstanceStatus.STARTING,
    InstanceStatus.STOPPING,
)
# A create step may (re)claim its row from these: a first run, a rerun, or a redrive of a failed job.
CREATABLE = (
    InstanceStatus.REQUESTED,
    InstanceStatus.CREATING,
    InstanceStatus.FAILED,
    InstanceStatus.DELETING,
    InstanceStatus.DELETED,
    InstanceStatus.LOST,
)

_INSTANCES = Instance.__table__
_JOBS = Job.__table__

# Instance ids are derived from job ids, so the API can answer with one before a worker ran.
_INSTANCE_ID_NAMESPACE = uuid.UUID("2f6f0c55-6f5e-4d36-9d0a-8f3c1b7e4a10")


def name_prefix() -> str:
    """The prefix of every Novita instance this deployment creates (``gpujobs.deployment``)."""
    return deployment.instance_prefix()


def instance_name(job_id: uuid.UUID) -> str:
    """The Novita name of a create job's instance; a retry finds the same name and adopts the instance."""
    return f"{name_prefix()}{job_id}"


def job_id_of(name: str, prefix: str | None = None) -> uuid.UUID | None:
    """The create job an instance name was derived from, or None for a name that is not ours.

    Ours means exactly our prefix and a job id in canonical form, so another deployment's instances on
    the same Novita account (another prefix, even one that starts with ours) are never taken for ours,
    and never deleted as leaks. A caller reading a whole listing passes ``name_prefix()`` once.
    """
    prefix = prefix or name_prefix()
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    try:
        job_id = uuid.UUID(rest)
    except ValueError:
        return None
    return job_id if str(job_id) == rest else None


def instance_id_for(job_id: uuid.UUID) -> uuid.UUID:
    """Our instance id for a create job, the same every time it is computed."""
    return uuid.uuid5(_INSTANCE_ID_NAMESPACE, str(job_id))


# A create job's row, inserted unless it exists: built once, so a submit only binds its values (named
# apart from the columns, which an INSERT reserves for its VALUES clause).
_NEW_ROW_COLUMNS = (
    "id", "tenant_id", "job_id", "name", "label", "product_name", "region", "gpu_num",
    "reserved_price_units", "max_runtime_seconds", "on_expiry", "billing_mode", "on_reclaim",
)  # fmt: skip
_NEW = {column: bindparam(f"new_{column}", type_=_INSTANCES.c[column].type) for column in _NEW_ROW_COLUMNS}
_ENSURE_ROW = (
    insert(_INSTANCES)
    .values(
        {
            **_NEW,
            "status": InstanceStatus.REQUESTED,
            "endpoints": {},
            # Counted from the create request, not from running: Novita bills from the create it accepts,
            # so only a deadline that runs from then bounds what the instance can cost (None: no deadline).
            # (Cast: PostgreSQL must deduce one type for the parameter, prepared, in both places.)
            "expires_at": func.now() + interval_seconds(cast(_NEW["max_runtime_seconds"], Integer)),
        }
    )
    .on_conflict_do_nothing()
    .returning(*_INSTANCES.c)
)


def ensure_row(
    job_id: uuid.UUID,
    tenant_id: uuid.UUID,
    params: dict[str, Any],
    reserved_price_units: int | None = None,
) -> Row[Any]:
    """The create job's instance row, inserted if missing (API and worker may race; both get one row);
    a new row holds ``reserved_price_units`` of its tenant's USD quota (``gpujobs.quotas``).

    A read-only Core row: a change goes through `transition`, never through the returned row.
    """
    instance_id = instance_id_for(job_id)
    # The deadline: from the request, else the deployment's default (None: none).
    seconds = params.get("maxRuntimeSeconds") or current_app.config["GPUJOBS_INSTANCE_MAX_RUNTIME_SECONDS"]
    values = {
        "id": instance_id,
        "tenant_id": tenant_id,
        "job_id": job_id,
        "name": instance_name(job_id),
        "label": params.get("name"),
        "product_name": params["productName"],
        "region": params.get("region"),
        "gpu_num": params.get("gpuNum"),
        "reserved_price_units": reserved_price_units,
        "max_runtime_seconds": seconds,
        "on_expiry": (params.get("onExpiry") or "delete") if seconds is not None else None,
        "billing_mode": params.get("billingMode"),
        "on_reclaim": params.get("onReclaim"),
    }
    new_values = {f"new_{column}": value for column, value in values.items()}
    inserted = db.session.execute(_ENSURE_ROW, new_values).one_or_none()  # the new row, or none: it existed
    return inserted or db.session.execute(_INSTANCE_ROW, {"instance_id": instance_id}).one()


_INSTANCE_ROW = select(_INSTANCES).where(_INSTANCES.c.id == bindparam("instance_id"))


def instance_row(instance_id: uuid.UUID) -> Row[Any] | None:
    """The instance's row as it is now, read-only (a Core row: no ORM object to load, track or expunge)."""
    return db.session.execute(_INSTANCE_ROW, {"instance_id": instance_id}).one_or_none()


def novita_id_of(instance: InstanceRow) -> str:
    """The id Novita gave the instance; PermanentError for one never created there (nothing to act on)."""
    if instance.novita_id is None:
        raise PermanentError(f"instance {instance.id} was never created at Novita")
    return instance.novita_id


def transition(
    instance_id: uuid.UUID, from_statuses: tuple[str, ...], *conditions: ColumnElement[bool], **values: Any
) -> bool:
    """Change a row only if it is still in one of `from_statuses` (and meets `conditions`, such as
    `owned_by(job_id)`); False when someone else moved it. Through the ORM, so copies of the row loaded
    in the session see the change (a reconcile pass acts twice on one loaded row)."""
    statement = update(Instance).where(
        Instance.id == instance_id, Instance.status.in_(from_statuses), *conditions
    )
    done = db.session.execute(statement.values(**values))
    if rows_changed(done) != 1:
        _left(instance_id, from_statuses)
    return rows_changed(done) == 1


def transitioned(
    instance_id: uuid.UUID,
    from_statuses: tuple[str, ...],
    job_id: uuid.UUID,
    attempt: int | None = None,
    **values: Any,
) -> Row[Any] | None:
    """Change a row only while it is in one of `from_statuses` and marked with `job_id` (`owned_by`),
    and with an `attempt`, only while that job still runs that attempt (a run paused past its lease and
    rescued must not claim the row and create a second instance); returns the row as it is now
    (``UPDATE ... RETURNING``: no re-read), or None when someone else moved it.

    The hot writes of a GPU job (the create step's claim and record, the monitor's end) take this path:
    a Core statement built once per shape and reused, about a quarter of an ORM bulk update's CPU.
    Copies of the row loaded in the session are left as they were: for callers that hold none (or an
    expunged one); `transition` keeps them in step.
    """
    statement = _transitioned_statement(from_statuses, attempt is not None, tuple(values))
    params = {"instance_id": instance_id, "holder": job_id, "attempt": attempt}
    result = db.session.execute(statement, params | {f"new_{key}": value for key, value in values.items()})
    changed = result.one_or_none()
    if changed is None:
        _left(instance_id, from_statuses)
    return changed


@functools.lru_cache(maxsize=64)
def _transitioned_statement(from_statuses: tuple[str, ...], fenced: bool, columns: tuple[str, ...]) -> Any:
    """`transitioned`'s statement for one shape; the parameters are named apart from the columns (an
    UPDATE reserves those for its SET clause)."""
    holder = bindparam("holder", type_=_INSTANCES.c.job_id.type)
    conditions = [
        _INSTANCES.c.id == bindparam("instance_id"),
        among(_INSTANCES.c.status, from_statuses),
        owned_by(holder),
    ]
    if fenced:
        active = among(_JOBS.c.status, JOB_ACTIVE)
        conditions.append(
            exists().where(_JOBS.c.id == holder, _JOBS.c.attempt == bindparam("attempt"), active)
        )
    new = {column: bindparam(f"new_{column}", type_=_INSTANCES.c[column].type) for column in columns}
    return update(_INSTANCES).where(*conditions).values(new).returning(*_INSTANCES.c)


def _left(instance_id: uuid.UUID, from_statuses: tuple[str, ...]) -> None:
    log.info("instance %s: not in %s any more, left as it is", instance_id, "/".join(from_statuses))


def owned_by(job_id: uuid.UUID | BindParameter[uuid.UUID] | None) -> ColumnElement[bool]:
    """A `transition` condition: the row is still marked with this job (None: with no job any more; a
    parameter: `transitioned`'s job).

    A status says what is happening to a row, not which job is doing it: a job must never end or settle
    a row another job has taken since (a delete that took a `stopping` row, a redriven create).
    """
    return _INSTANCES.c.job_id.is_not_distinct_from(job_id)


def novita_view(seen: NovitaInstance) -> dict[str, Any]:
    """What a row mirrors of Novita's answer: its status, and its last start and stop where Novita gives
    them (the cost sweep charges billed time between them; an answer without them keeps the ones known)."""
    times = {"novita_started_at": seen.started_at, "novita_stopped_at": seen.stopped_at}
    return {"novita_status": seen.status, **{key: when for key, when in times.items() if when is not None}}


def mirror(instance_id: uuid.UUID, seen: NovitaInstance) -> None:
    """Note Novita's latest status and times for a row (only on a change, so polls do not churn rows)."""
    values = novita_view(seen)
    db.session.execute(
        update(Instance)
        .where(
            Instance.id == instance_id,
            or_(*(getattr(Instance, key).is_distinct_from(value) for key, value in values.items())),
        )
        .values(**values, last_seen_at=jobs.utcnow())
    )


def settled_status(novita_status: str | None, fallback: str) -> str:
    """The row status a Novita status amounts to, or `fallback` while Novita is mid-change."""
    if novita_status in spec.READY_STATUSES:
        return InstanceStatus.RUNNING
    if novita_status in spec.STOPPED_STATUSES:
        return InstanceStatus.STOPPED
    if novita_status in spec.GONE_STATUSES:
        return InstanceStatus.DELETED
    if novita_status in spec.REMOVAL_STATUSES:
        return InstanceStatus.DELETING
    return fallback


def settle(instance: Instance, reason: str | None, novita_status: str | None) -> bool:
    """End an in-flight row whose job ended without doing so (a handler failure, a cancelled queued job).

    An instance that was never created fails; one whose creation never finished is marked for deletion
    (the reconcile sweep deletes it); one caught mid stop or start takes Novita's steady status, and
    stays as it is while Novita is still changing it (the next reconcile looks again).
    """
    if instance.status not in IN_FLIGHT:
        return False
    status: str
    if instance.status in (InstanceStatus.REQUESTED, InstanceStatus.CREATING):
        status = InstanceStatus.DELETING if instance.novita_id else InstanceStatus.FAILED
    else:
        status = settled_status(novita_status, instance.status if novita_status else InstanceStatus.FAILED)
    if status == instance.status:
        return False
    return transition(instance.id, (instance.status,), owned_by(instance.job_id), status=status, error=reason)


def settle_after_job(job_id: uuid.UUID, instance_id: uuid.UUID) -> None:
    """Settle the instance a job acted on if the job ended without settling it (a definition's on_end).

    Only a row this job owns: its tenant's, and marked with this job (a create job's own row, or one an
    action job took). A job refused before it took the row (another tenant's instance id, an instance
    still being provisioned, one another job is acting on) ended without touching it, so it must leave
    it alone: settling would move a row that belongs to someone else.
    """
    job = db.session.get(Job, job_id, populate_existing=True)
    instance = db.session.get(Instance, instance_id, populate_existing=True)
    if job is None or instance is None or job.status not in JOB_TERMINAL:
        return
    if instance.job_id != job.id or instance.tenant_id != job.tenant_id:
        return
    settle(instance, job.error or f"its job was {job.status}", instance.novita_status)


def live_jobs(job_ids: set[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these jobs are still queued, running, retrying or cancelling."""
    if not job_ids:
        return set()
    return set(db.session.scalars(select(Job.id).where(Job.id.in_(job_ids), among(Job.status, JOB_LIVE))))
