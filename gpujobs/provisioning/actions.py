"""Instance actions as jobs: `gpu.instance.stop@1`, `start@1` and `delete@1`.

A request moves the row into the action's in-flight status with a compare-and-set (so two requests
cannot both act, and an instance still being provisioned refuses) and marks it with the job it queues,
committing both before the job is published. The handler makes the same check itself, because a job
may also come through `POST /v1/jobs`: it acts only on its tenant's instance, and only from a status the
action may start from or on a row already marked with this job. It asks Novita and hands the job to the
monitor chain, which ends it when Novita reaches the goal.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from flask import current_app
from sqlalchemy import select

from gpujobs import grants, operations, quotas, resources
from gpujobs.dispatch import commit_and_publish, dispatch_of
from gpujobs.exceptions import Conflict, InvalidField, LimitReached, NotFound, PermanentError
from gpujobs.extensions import db
from gpujobs.models import Instance, Job
from gpujobs.novita import (
    InsufficientResourceError,
    InvalidStateError,
    NovitaClient,
    NovitaNotFoundError,
    spec,
)
from gpujobs.operations import DEFAULT_OPTIONS, JobOptions
from gpujobs.provisioning import records
from gpujobs.provisioning.monitor import DELETE, GOALS, START, STOP, Watch
from gpujobs.provisioning.novita_client import novita_client
from gpujobs.provisioning.params import (
    JOB_TIMEOUT_SECONDS,
    MAX_TIMEOUT_SECONDS,
    NOVITA_RETRY,
    InstanceActionParams,
)
from gpujobs.registry import Handoff, JobContext, job_definition
from gpujobs.states import InstanceStatus

log = logging.getLogger(__name__)

# The row statuses each action may start from.
ALLOWED_FROM = {
    STOP: (InstanceStatus.RUNNING,),
    START: (InstanceStatus.STOPPED,),
    DELETE: (
        InstanceStatus.RUNNING,
        InstanceStatus.STOPPED,
        InstanceStatus.STARTING,
        InstanceStatus.STOPPING,
        InstanceStatus.FAILED,
        InstanceStatus.LOST,
        InstanceStatus.RECLAIMED,
    ),
}
KEYS = {STOP: "gpu.instance.stop", START: "gpu.instance.start", DELETE: "gpu.instance.delete"}


def request(
    tenant_id: uuid.UUID,
    instance_id: uuid.UUID,
    action: str,
    options: JobOptions = DEFAULT_OPTIONS,
    before_commit: Callable[[Job, Instance], None] | None = None,
) -> tuple[Job, Instance]:
    """Queue an action on a tenant's instance (NotFound if it has none, Conflict if its status forbids,
    LimitReached if a start finds the tenant's GPU quotas full).

    The row's new status, its new job and the job commit together before the job is published, so the
    handler always finds the row marked with its job. Without a webhook URL, the action notifies the
    one the instance's previous job used, with its headers. ``before_commit`` adds to that transaction
    (the lifetimes sweep records ``instance.expired`` with the action it takes).
    """
    instance = db.session.scalar(
        select(Instance).where(Instance.id == instance_id, Instance.tenant_id == tenant_id).with_for_update()
    )
    if instance is None:
        db.session.rollback()
        raise NotFound(f"no instance {instance_id}")
    if (refused := _refused_external(instance, action)) is not None:
        db.session.rollback()
        raise Conflict(refused)
    if action == START:
        try:  # running again, it bills a GPU again: it needs a place in the tenant's quotas
            quotas.reserve_start(tenant_id, instance)
        except LimitReached:
            db.session.rollback()
            raise
    in_flight = GOALS[action].in_flight
    if not records.transition(instance.id, ALLOWED_FROM[action], status=in_flight):
        db.session.rollback()
        raise Conflict(_refusal(action, instance))
    previous = db.session.get(Job, instance.job_id) if instance.job_id else None
    try:
        job = _prepare(tenant_id, action, instance.id, options, previous)
    except Exception:
        db.session.rollback()
        raise
    if not records.transition(instance.id, (in_flight,), job_id=job.id):  # held FOR UPDATE: cannot miss
        db.session.rollback()
        raise Conflict(_refusal(action, instance))
    if before_commit is not None:
        before_commit(job, db.session.get_one(Instance, instance.id, populate_existing=True))
    commit_and_publish([dispatch_of(job)])
    return job, db.session.get_one(Instance, instance.id, populate_existing=True)


def _prepare(
    tenant_id: uuid.UUID, action: str, instance_id: uuid.UUID, options: JobOptions, previous: Job | None
) -> Job:
    """The action's job; without a webhook URL of its own it notifies the previous job's receiver.

    An inherited receiver refused now (the SSRF rules or its DNS changed since) does not stop the action:
    a stop or delete that cannot be queued keeps a GPU billing, so it runs without a receiver instead.
    """
    params = {"instanceId": str(instance_id)}
    if options.webhook_url or previous is None or not previous.webhook_url:
        return operations.prepare(tenant_id, KEYS[action], 1, params, options)
    inherited = replace(options, webhook_url=previous.webhook_url, webhook_headers=previous.webhook_headers)
    try:
        return operations.prepare(tenant_id, KEYS[action], 1, params, inherited)
    except InvalidField as exc:
        if exc.field not in ("webhookUrl", "webhookHeaders"):
            raise
        log.warning(
            "instance %s: the previous job's receiver is refused now (%s); %s runs without one",
            instance_id,
            exc.field,
            action,
        )
        return operations.prepare(tenant_id, KEYS[action], 1, params, options)


def _refused_external(instance: Instance, action: str) -> str | None:
    """Why an instance gpujobs only watches may not take ``action``: never a delete; a stop or a
    start only once the operator granted it to the tenant (it is the account's, not the tenant's: one
    tenant must not stop what another deployment or the operator runs). None when it may."""
    if not instance.external:
        return None
    watched = f"instance {instance.id} was not created by gpujobs (it only watched it)"
    if action == DELETE:
        return f"{watched}, so gpujobs never deletes it"
    novita_id = instance.novita_id
    if novita_id is not None and grants.allows(instance.tenant_id, grants.Kind.INSTANCE, novita_id):
        return None
    return f"{watched}: the operator must grant it to this tenant before it may {action} it"


def _refusal(action: str, instance: Instance) -> str:
    if instance.status in (InstanceStatus.REQUESTED, InstanceStatus.CREATING):
        return (
            f"instance {instance.id} is still being provisioned by job {instance.job_id}; "
            "wait for that job, or cancel it to delete the instance"
        )
    allowed = " or ".join(ALLOWED_FROM[action])
    return f"cannot {action} instance {instance.id}: it is {instance.status}, and {action} needs {allowed}"


def on_end(ctx: JobContext, params: dict[str, Any]) -> None:
    """When the handler itself ended the job (failed, cancelled), settle the instance's status.

    Only if the job took the instance: one refused by `_take` is another tenant's or another job's.
    """
    records.settle_after_job(uuid.UUID(ctx.job_id), uuid.UUID(params["instanceId"]))
    db.session.commit()


# What the three action definitions share; each settles its instance if its handler ends the job.
ACTION_OPTIONS: dict[str, Any] = {
    "params_model": InstanceActionParams,
    "max_attempts": 3,
    "timeout_seconds": JOB_TIMEOUT_SECONDS,
    "retry": NOVITA_RETRY,
    "on_end": on_end,
}


@job_definition(KEYS[STOP], 1, description="Stop an instance; wait until it exited.", **ACTION_OPTIONS)
def stop(ctx: JobContext, params: dict[str, Any]) -> Handoff:
    """Stop a running instance (GPU billing stops once Novita reports it exited)."""
    instance = _take(ctx, params, STOP)
    with novita_client() as client:
        try:
            client.stop_instance(records.novita_id_of(instance))
        except InvalidStateError:
            _require(client, instance, spec.STOPPED_STATUSES | _phases(spec.STOP_PHASES), "stop")
    return _watch(ctx, instance, STOP)


def _room_to_start(job_id: uuid.UUID, tenant_id: uuid.UUID, params: dict[str, Any]) -> None:
    """A start queued through ``POST /v1/jobs`` is refused at submit (LimitReached, 409) while the
    tenant's GPU quotas have no room for its stopped instance, as ``POST /v1/instances/{id}/start`` is.
    Nothing is held until the row moves to `starting`, so the handler checks again when it runs; a start
    queued by ``request`` finds its row `starting` already, its room taken there."""
    instance = db.session.get(Instance, uuid.UUID(params["instanceId"]), populate_existing=True)
    if instance is not None and instance.tenant_id == tenant_id:
        quotas.reserve_start(tenant_id, instance)


@job_definition(
    KEYS[START],
    1,
    description="Start an instance; wait until it runs (its GPU may be gone).",
    on_queued=_room_to_start,
    **ACTION_OPTIONS,
)
def start(ctx: JobContext, params: dict[str, Any]) -> Handoff:
    """Start a stopped instance; its GPU may have been taken meanwhile, which fails the job clearly."""
    instance = _take(ctx, params, START)
    with novita_client() as client:
        try:
            client.start_instance(records.novita_id_of(instance))
        except InsufficientResourceError as exc:
            raise PermanentError(
                f"cannot start instance {instance.id}: Novita has no free {instance.product_name} GPU in "
                f"{instance.region or instance.cluster_id} right now (INSUFFICIENT_RESOURCE; the GPU was "
                "taken while it was stopped). Try again later, or delete it and create a new one."
            ) from exc
        except InvalidStateError:
            _require(client, instance, spec.READY_STATUSES | _phases(spec.START_PHASES), "start")
    return _watch(ctx, instance, START)


@job_definition(KEYS[DELETE], 1, description="Delete an instance; wait until it is gone.", **ACTION_OPTIONS)
def delete(ctx: JobContext, params: dict[str, Any]) -> Handoff | dict[str, Any]:
    """Delete an instance in any state; one that never reached Novita is simply marked deleted."""
    instance = _take(ctx, params, DELETE)
    if instance.novita_id is None:
        records.transition(instance.id, (InstanceStatus.DELETING,), status=InstanceStatus.DELETED)
        deleted = db.session.get(Instance, instance.id, populate_existing=True)
        return {"instance": resources.Instance.json_of(deleted)}
    # Already gone is fine: the monitor confirms it and ends the job.
    with novita_client() as client, contextlib.suppress(NovitaNotFoundError):
        client.delete_instance(instance.novita_id)
    return _watch(ctx, instance, DELETE)


def _take(ctx: JobContext, params: dict[str, Any], action: str) -> Instance:
    """The tenant's instance, now marked with this action and job; refused as `request` refuses.

    The handler cannot trust that `request` ran: a job submitted through `POST /v1/jobs` names any
    instance id. So it takes the row only from a status the action may start from, or when the row is
    already in the action's in-flight status under this very job (the API marked it, or an earlier
    attempt did); never a row another job is provisioning or acting on. Another tenant's instance is
    "no instance", as in the API.
    """
    job_id = uuid.UUID(ctx.job_id)
    instance = db.session.get(Instance, uuid.UUID(params["instanceId"]), populate_existing=True)
    if instance is None or str(instance.tenant_id) != ctx.tenant:
        raise PermanentError(f"no instance {params['instanceId']}")
    if (refused := _refused_external(instance, action)) is not None:
        raise PermanentError(refused)
    if action == START:
        try:  # a start from `POST /v1/jobs`: `request` did not check the quotas; held until the commit below
            quotas.reserve_start(instance.tenant_id, instance)
        except LimitReached as exc:
            db.session.rollback()
            raise PermanentError(f"cannot start instance {instance.id}: {exc}") from None
    in_flight = GOALS[action].in_flight
    taken = records.transition(
        instance.id, ALLOWED_FROM[action], status=in_flight, job_id=job_id
    ) or records.transition(instance.id, (in_flight,), records.owned_by(job_id), status=in_flight)
    if not taken:
        db.session.rollback()
        raise PermanentError(
            _refusal(action, db.session.get_one(Instance, instance.id, populate_existing=True))
        )
    db.session.commit()
    if instance.novita_id is None and action != DELETE:
        raise PermanentError(f"instance {instance.id} was never created at Novita; nothing to {action}")
    return db.session.get_one(Instance, instance.id, populate_existing=True)


def _phases(phases: tuple[spec.Status, ...]) -> frozenset[str]:
    return frozenset(phase.value for phase in phases)


def _require(client: NovitaClient, instance: Instance, acceptable: frozenset[str], action: str) -> None:
    """After "invalid state change": fine if Novita is already where the action leads, else a clear error."""
    status = client.get_instance(records.novita_id_of(instance)).status
    if status not in acceptable:
        raise PermanentError(f"cannot {action} instance {instance.id}: Novita says it is {status}")


def _watch(ctx: JobContext, instance: Instance, action: str) -> Handoff:
    config = current_app.config
    now = time.time()
    timeout = min(config["GPUJOBS_MONITOR_TIMEOUT_SECONDS"], MAX_TIMEOUT_SECONDS)
    interval = config["GPUJOBS_MONITOR_INTERVAL_SECONDS"]
    return Watch(
        uuid.UUID(ctx.job_id), ctx.attempt, instance.id, action, now, now, timeout, interval
    ).handoff()
