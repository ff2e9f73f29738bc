"""`gpu.instance.monitor@1`: watch a Novita instance gpujobs did not create until it runs, fails or times out.

The GPU queue's `MONITOR_INSTANCE` for an instance made elsewhere on the same Novita account. The instance
gets a row marked `external` under the tenant that first watched it; no other tenant can watch it (their
request is answered as for an unknown instance), and an instance gpujobs created is followed through its
own row instead. Once the operator granted the instance to tenants (`instances grant`), only they may
watch it, and a grantee takes the row over from a tenant that watched it without the grant. The
monitor chain watches it as it watches a start (action `monitor`), with the same `instance.*` and
`job.*` webhooks; giving up (deadline, failure, cancel) never deletes it, a delete request is refused
(`actions`), and the reconcile sweep never takes it for a leak.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from flask import current_app
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from gpujobs import grants, operations
from gpujobs.dispatch import commit_and_publish, dispatch_of
from gpujobs.exceptions import Conflict, InvalidField, PermanentError, TransientError
from gpujobs.extensions import db
from gpujobs.models import Instance, Job
from gpujobs.novita import Instance as NovitaInstance
from gpujobs.novita import NovitaNotFoundError
from gpujobs.operations import DEFAULT_OPTIONS, JobOptions
from gpujobs.provisioning import records
from gpujobs.provisioning.monitor import GOALS, MONITOR, Watch
from gpujobs.provisioning.novita_client import novita_client
from gpujobs.provisioning.params import JOB_TIMEOUT_SECONDS, NOVITA_RETRY, MonitorInstanceParams
from gpujobs.registry import Handoff, JobContext, job_definition
from gpujobs.states import InstanceStatus

log = logging.getLogger(__name__)

MONITOR_KEY = "gpu.instance.monitor"
# A row may be watched again from these; `starting` or `stopping` means a job is acting on it now.
WATCHABLE = (
    InstanceStatus.RUNNING,
    InstanceStatus.STOPPED,
    InstanceStatus.FAILED,
    InstanceStatus.LOST,
    InstanceStatus.DELETED,
)


def submit(
    tenant_id: uuid.UUID, params: dict[str, Any], options: JobOptions = DEFAULT_OPTIONS
) -> tuple[Job, Instance]:
    """Queue a monitor job and take the instance's row for it (`POST /v1/instances/monitor`).

    Raises InvalidField naming `novitaInstanceId` when Novita has no such instance or another tenant
    watches it (the same answer: one tenant must not learn of another's instances), Conflict when gpujobs
    created it or a job is acting on it now. When Novita cannot be asked right now, the job is queued all
    the same and its handler asks (with retries), failing the job if there is no such instance: the API
    stays up while Novita is down. The row and the job commit together before the job is published.
    """
    job = operations.prepare(tenant_id, MONITOR_KEY, 1, params, options)
    novita_id = job.params["novitaInstanceId"]
    try:
        try:
            seen = _novita_view(novita_id)
        except (TransientError, PermanentError) as exc:  # not "no such instance": that is InvalidField
            log.warning(
                "job %s: Novita instance %s not checked now (%s); the job will", job.id, novita_id, exc
            )
            seen = None
        instance = take(tenant_id, novita_id, job.id, seen)
    except Exception:
        db.session.rollback()
        raise
    commit_and_publish([dispatch_of(job)])
    return job, instance


def _novita_view(novita_id: str) -> NovitaInstance:
    with novita_client() as client:
        try:
            return client.get_instance(novita_id)
        except NovitaNotFoundError:
            raise _unknown(novita_id) from None


def _unknown(novita_id: str) -> InvalidField:
    return InvalidField("novitaInstanceId", f"no Novita instance {novita_id} on this account")


def take(tenant_id: uuid.UUID, novita_id: str, job_id: uuid.UUID, seen: NovitaInstance | None) -> Instance:
    """The instance's row, marked `external`, `starting` and with this job (inserted on first watch, with
    what Novita said of it when `seen`).

    Also succeeds when the row is already `starting` under this very job (the API took it, the handler
    runs). Locks the row until the caller's transaction ends. An instance the operator granted is the
    grantees' alone: another tenant is answered as for an unknown instance, and a grantee takes over
    the row of a tenant that watched it first without the grant (once no job acts on it).
    """
    granted_to = grants.holders(grants.Kind.INSTANCE, novita_id)
    if granted_to and tenant_id not in granted_to:
        raise _unknown(novita_id)
    db.session.execute(
        insert(Instance)
        .values(
            id=records.instance_id_for(job_id),
            tenant_id=tenant_id,
            job_id=job_id,
            name=f"external-{novita_id}",
            novita_id=novita_id,
            external=True,
            status=InstanceStatus.STARTING,
            novita_status=seen.status if seen else None,
            label=(seen.name or None) if seen else None,
            product_name=seen.product_name if seen else None,
            product_id=seen.product_id if seen else None,
            cluster_id=seen.cluster_id if seen else None,
            gpu_num=seen.gpu_num if seen else None,
            endpoints={},
        )
        .on_conflict_do_nothing()
    )
    row = db.session.scalar(
        select(Instance)
        .where(Instance.novita_id == novita_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    handover = row is not None and row.tenant_id != tenant_id
    if row is None or (handover and tenant_id not in granted_to):
        raise _unknown(novita_id)
    if handover and row.tenant_id in granted_to:  # both granted it: the first to watch keeps it
        raise Conflict(f"Novita instance {novita_id} is watched by another tenant it was granted to")
    if not row.external:
        raise Conflict(f"instance {row.id} was created by gpujobs: follow it at /v1/instances/{row.id}")
    if seen is not None and records.job_id_of(seen.name) is not None:
        # Named as a create job names its instance, which has not recorded it yet (or the reconcile sweep
        # will delete it): not one to watch, and no one else's business, so answered as unknown.
        raise _unknown(novita_id)
    in_flight = GOALS[MONITOR].in_flight
    taken = records.transition(
        row.id, WATCHABLE, status=in_flight, job_id=job_id, error=None, tenant_id=tenant_id
    ) or (records.transition(row.id, (in_flight,), records.owned_by(job_id), status=in_flight))
    if not taken and handover:  # the other tenant's job is not the grantee's business
        raise Conflict(f"Novita instance {novita_id} is being watched by another job; try again once it ends")
    if not taken:
        raise Conflict(f"instance {row.id} is {row.status} under job {row.job_id}; wait for that job")
    return db.session.get_one(Instance, row.id, populate_existing=True)


def on_end(ctx: JobContext, params: dict[str, Any]) -> None:
    """When the handler itself ended the job (refused, failed, cancelled), settle the row it took."""
    row_id = db.session.scalar(
        select(Instance.id).where(Instance.novita_id == params["novitaInstanceId"], Instance.external)
    )
    if row_id is not None:
        records.settle_after_job(uuid.UUID(ctx.job_id), row_id)
    db.session.commit()


@job_definition(
    MONITOR_KEY,
    1,
    params_model=MonitorInstanceParams,
    max_attempts=3,
    timeout_seconds=JOB_TIMEOUT_SECONDS,
    retry=NOVITA_RETRY,
    on_end=on_end,
    description="Watch a Novita instance gpujobs did not create until it runs; never deletes it.",
)
def watch(ctx: JobContext, raw: dict[str, Any]) -> Handoff:
    """Check the instance exists, take its row (the API may have already), and hand off to the monitor."""
    params = MonitorInstanceParams.model_validate(raw)
    job_id = uuid.UUID(ctx.job_id)
    try:
        instance = take(
            uuid.UUID(ctx.tenant), params.novitaInstanceId, job_id, _novita_view(params.novitaInstanceId)
        )
    except (InvalidField, Conflict) as exc:
        db.session.rollback()
        raise PermanentError(str(exc)) from None
    db.session.commit()
    config = current_app.config
    timeout = params.timeout_seconds(config["GPUJOBS_MONITOR_TIMEOUT_SECONDS"])
    interval = params.poll_interval_seconds(config["GPUJOBS_MONITOR_INTERVAL_SECONDS"])
    now = time.time()
    return Watch(job_id, ctx.attempt, instance.id, MONITOR, now, now, timeout, interval).handoff()
