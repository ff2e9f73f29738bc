"""The create step of `gpu.instance.create@1`: adopt or create the job's one Novita instance, then hand off.

Idempotent by construction: the instance's Novita name is derived from the job id and looked up before
anything is created, so a rerun after a lost create answer, a crash or a rescue adopts the instance it
finds instead of creating a second one. Transient Novita errors (and a create whose answer was lost)
propagate, so the engine retries with backoff; placement refusals move on to the next candidate;
everything else fails the job with a clear reason.

The registry password of a private template is fetched here, at run time, and goes nowhere but into the
create request sent to Novita: not into params, rows, events, logs or task messages.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict

from flask import current_app

from gpujobs import grants, jobs, operations, quotas, webhooks
from gpujobs.exceptions import PermanentError, TransientError
from gpujobs.extensions import db
from gpujobs.models import InstanceRow, Job
from gpujobs.novita import CreateInstanceRequest, EnvVar, NovitaClient, PlacementError, PortSpec, Template
from gpujobs.novita import Instance as NovitaInstance
from gpujobs.operations import DEFAULT_OPTIONS, JobOptions
from gpujobs.provisioning import billing, records, spot
from gpujobs.provisioning.catalogue import Catalogue
from gpujobs.provisioning.monitor import CREATE, Watch
from gpujobs.provisioning.novita_client import novita_client
from gpujobs.provisioning.params import (
    DEFAULT_ROOTFS_GB,
    JOB_TIMEOUT_SECONDS,
    NOVITA_RETRY,
    CreateInstanceParams,
)
from gpujobs.provisioning.selection import Candidate, Search, regions_in_order
from gpujobs.registry import Handoff, JobContext, job_definition
from gpujobs.states import INSTANCE_ENDED, InstanceStatus

log = logging.getLogger(__name__)

CREATE_KEY = "gpu.instance.create"
# Sent once Novita accepted the create (the GPU queue notified right after creation too).
CREATED_EVENT = "instance.created"


@dataclass(frozen=True)
class Image:
    """What the instance runs, resolved once per create step; `credential` is the registry `user:pass`."""

    template: Template | None
    image_url: str | None
    image_auth_id: str | None
    rootfs_gb: int
    credential: str | None = field(default=None, repr=False)


def submit(
    tenant_id: uuid.UUID, params: dict[str, Any], options: JobOptions = DEFAULT_OPTIONS
) -> tuple[Job, InstanceRow]:
    """Queue a create job and its instance row (the API's `POST /v1/instances`).

    Both commit in one transaction before the job is published (`on_queued`), so the instance exists
    whenever its job does. Raises LimitReached over the tenant's GPU quotas.
    """
    grants.authorize(tenant_id, params)  # named as the body names them (prepare says params.templateId)
    try:
        job = operations.prepare(tenant_id, CREATE_KEY, 1, params, options, admit=True)
    except Exception:
        db.session.rollback()  # a refused quota: the job was added, and the quota lock is held till here
        raise
    instance: InstanceRow = db.session.info.pop((_QUEUED_INSTANCE, job.id))  # on_queued's row
    operations.commit_admitted(job)
    return job, instance


# The key under which `on_queued` leaves its row in the session's ``info`` for `submit`.
_QUEUED_INSTANCE = "gpujobs.queued_instance"


def on_queued(job_id: uuid.UUID, tenant_id: uuid.UUID, params: dict[str, Any]) -> None:
    """However a create job is queued (API, `POST /v1/jobs`, a schedule), hold its place in the tenant's
    GPU quotas (LimitReached if there is none) and insert its instance row, in the job's transaction: a
    worker never runs a job whose row is not there yet, and the API's 202 names an instance that exists."""
    reserved = quotas.reserve_create(tenant_id, CreateInstanceParams.model_validate(params))
    instance = records.ensure_row(job_id, tenant_id, params, reserved_price_units=reserved)
    if instance.status in INSTANCE_ENDED:  # a redriven create: its row counts again from now
        held = records.owned_by(job_id)  # not if another job (a delete) took the row since
        records.transition(
            instance.id, INSTANCE_ENDED, held, status=InstanceStatus.CREATING, reserved_price_units=reserved
        )
        instance = records.instance_row(instance.id) or instance
    # For `submit`, which answers with it: no need to read the row again.
    db.session.info[(_QUEUED_INSTANCE, job_id)] = instance


def on_end(ctx: JobContext, params: dict[str, Any]) -> None:
    """When the create step itself ended the job (refused, failed, cancelled), say so on the instance."""
    job_id = uuid.UUID(ctx.job_id)
    records.settle_after_job(job_id, records.instance_id_for(job_id))
    db.session.commit()


@job_definition(
    CREATE_KEY,
    1,
    params_model=CreateInstanceParams,
    max_attempts=3,
    timeout_seconds=JOB_TIMEOUT_SECONDS,
    retry=NOVITA_RETRY,
    on_end=on_end,
    authorize=grants.authorize,
    on_queued=on_queued,
    description="Provision a Novita GPU instance: select, create or adopt, wait until running, notify.",
)
def provision(ctx: JobContext, raw: dict[str, Any]) -> Handoff:
    """Adopt the job's instance if it exists, else select a product and create it; then watch it."""
    params = CreateInstanceParams.model_validate(raw)
    job_id = uuid.UUID(ctx.job_id)
    # The API inserted the row with the job; a job queued some other way inserts it here.
    # A read-only copy (its id and name never change), so each commit below does not re-read the row.
    # Not committed here: the row's transaction ends with the first claim of the row below (a read, or
    # an insert no one else can see yet, so it holds nothing another transaction waits for).
    instance = records.instance_row(records.instance_id_for(job_id)) or records.ensure_row(
        job_id, uuid.UUID(ctx.tenant), raw
    )
    config = current_app.config
    timeout = params.timeout_seconds(config["GPUJOBS_MONITOR_TIMEOUT_SECONDS"])
    ctx.raise_if_cancelled()
    # Granted at submit, perhaps revoked since: asked again before any Novita call, and refused alike.
    refused = grants.refusal(uuid.UUID(ctx.tenant), raw)
    if refused is not None:
        raise PermanentError(str(refused))
    # A row still `requested` was never claimed, so no create was ever sent for it: nothing to adopt.
    # Else an earlier run's create may have happened: its lookup outlasts a proxy's blip (ADOPT_ATTEMPTS).
    if instance.status == InstanceStatus.REQUESTED:
        found = None
    else:
        with novita_client(max_attempts=ADOPT_ATTEMPTS) as patient:
            found = _adoptable(patient, instance)
    with novita_client() as client:
        migrated = None if found is not None else spot.migrate_or_none(ctx, client, instance, _claim)
        if found is not None:
            _claim(ctx, instance, novita_id=found.id, novita_status=found.status)
            ctx.emit_event("instance_adopted", {"novitaInstanceId": found.id, "novitaStatus": found.status})
            started = found.created_at.timestamp() if found.created_at else time.time()
        elif migrated is not None:
            started = time.time()
        else:
            _create(ctx, client, instance, params, config["GPUJOBS_REGION_FALLBACK"])
            started = time.time()
    interval = params.poll_interval_seconds(config["GPUJOBS_MONITOR_INTERVAL_SECONDS"])
    return Watch(job_id, ctx.attempt, instance.id, CREATE, time.time(), started, timeout, interval).handoff()


# Tries of the lookup by name that tells whether an earlier create happened (about 45 s of backoff):
# while it cannot be answered the step can neither adopt nor create, and giving up spends an attempt of
# the job, whose last one leaves a running instance to the reconcile sweep.
ADOPT_ATTEMPTS = 10


def _adoptable(client: NovitaClient, instance: InstanceRow) -> NovitaInstance | None:
    """The instance an earlier run created under this row's name, if Novita has one.

    Not knowing is not "none": the step is retried, and the message says what is at stake. If the job
    runs out of attempts first, its row ends without a Novita id and the reconcile sweep deletes such
    an instance at its next pass, without the leak grace (nothing can record it any more)."""
    name = instance.name
    try:
        listed = client.find_instances_by_name(name)
    except TransientError as exc:
        raise TransientError(
            f"could not learn whether an earlier create of {name} happened ({exc}); if it did and this "
            "job ends first, the reconcile sweep deletes that instance",
            retry_after_seconds=exc.retry_after_seconds,
        ) from exc
    found = [item for item in listed if not item.is_being_removed]
    if len(found) > 1:
        # Should never happen; the reconcile sweep deletes the ones no row points at.
        log.error("%d Novita instances are named %s; adopting the oldest", len(found), name)
    return min(found, key=lambda item: item.created_at.timestamp() if item.created_at else 0.0, default=None)


def _claim(ctx: JobContext, instance: InstanceRow, **values: Any) -> None:
    """Take the row for this create step; a row another actor owns now stops the step for good.

    Only while the row is still this job's (a delete job may have taken it since) and this run still
    holds the job (a run paused past its lease and rescued must not start another create).
    """
    job_id = uuid.UUID(ctx.job_id)
    claimed = records.transitioned(
        instance.id,
        records.CREATABLE,
        job_id,
        ctx.attempt,
        status=InstanceStatus.CREATING,
        error=None,
        **values,
    )
    if claimed is None:
        raise PermanentError(f"instance {instance.id} is no longer being created")
    db.session.commit()


def _create(
    ctx: JobContext,
    client: NovitaClient,
    instance: InstanceRow,
    params: CreateInstanceParams,
    fallback: list[str],
) -> str:
    image = _resolve_image(client, params)
    # A price cap is a promise about money: it is checked against lists Novita gives now.
    catalogue = Catalogue(client, fresh=params.maxPricePerHour is not None)
    failures: list[str] = []
    for mode in _billing_modes(params):
        if failures:
            ctx.emit_event("billing_fallback", {"billingMode": mode, "reason": failures[-1]})
        novita_id, search = _place(ctx, client, instance, params, image, catalogue, fallback, mode=mode)
        if novita_id is None and catalogue.remembered:
            # Nothing fitted the remembered product lists; stock may have arrived since. Ask Novita before
            # giving up, without trying again the places it has just refused.
            refused = frozenset((c.product.id, c.cluster.id) for c in search.refused)
            fresh = Catalogue(client, fresh=True)
            novita_id, search = _place(
                ctx, client, instance, params, image, fresh, fallback, refused, mode=mode
            )
        if novita_id is not None:
            return novita_id
        failures.append(str(search.failure()))
    raise PermanentError("; then ".join(failures))


def _billing_modes(params: CreateInstanceParams) -> list[str]:
    """The billing modes to try in order: spot, then on demand if the caller allows the fallback."""
    if params.billingMode == billing.SPOT and params.fallbackToOnDemand:
        return [billing.SPOT, billing.ON_DEMAND]
    return [params.billingMode]


def _place(
    ctx: JobContext,
    client: NovitaClient,
    instance: InstanceRow,
    params: CreateInstanceParams,
    image: Image,
    catalogue: Catalogue,
    fallback: list[str],
    refused_before: frozenset[tuple[str, str]] = frozenset(),
    *,
    mode: str = billing.ON_DEMAND,
) -> tuple[str | None, Search]:
    """Try the candidates in order until Novita creates one; None (and the search) if none was placed."""
    search = Search(
        params.productName,
        params.gpuNum,
        image.rootfs_gb,
        quotas.price_cap(instance, params),
        refused_before=refused_before,
        billing_mode=mode,
    )
    clusters = regions_in_order(params.region, fallback, catalogue.list_clusters())
    for candidate in search.candidates(catalogue, clusters):
        ctx.raise_if_cancelled()
        _claim(
            ctx,
            instance,
            novita_id=None,
            novita_status=None,
            product_id=candidate.product.id,
            product_name=candidate.product.name,
            cluster_id=candidate.cluster.id,
            region=candidate.region,
            price_per_hour_units=candidate.price_units,
            endpoints={},
            ready_at=None,
            cost_accrued_at=jobs.utcnow(),  # a new instance is charged from its create, not the row's past
            billing_mode=candidate.billing_mode,
        )
        request = replace(
            _request(image, params, instance.name, candidate), billing_mode=candidate.billing_mode
        )
        try:
            novita_id = client.create_instance(request)
        except PlacementError as exc:
            search.refuse(candidate)
            catalogue.forget_products(candidate.cluster.id)
            ctx.emit_event("placement_refused", _placement(candidate) | {"reason": exc.reason})
            continue
        _record_created(ctx, instance, novita_id)
        data = _placement(candidate) | {"novitaInstanceId": novita_id}
        # Left for the runner, which commits the row, this event and the webhook event with the hand-off's
        # lease renewal (one transaction), then sends the delivery.
        jobs.add_event(uuid.UUID(ctx.job_id), "job.instance_created", ctx.attempt, data)
        return novita_id, search
    return None, search


def _record_created(ctx: JobContext, instance: InstanceRow, novita_id: str) -> None:
    """Note the new instance on the row (and record ``instance.created``), if this run still holds the
    job and the row.

    A run paused between its claim and here may find the job rescued and rerun meanwhile. The row
    keeps what the rerun recorded: this very instance if the rerun adopted it by name, or one the
    rerun created, in which case this one is a duplicate that the reconcile sweep deletes once the
    job has ended.
    """
    job_id = uuid.UUID(ctx.job_id)
    created = records.transitioned(
        instance.id, (InstanceStatus.CREATING,), job_id, ctx.attempt, novita_id=novita_id
    )
    if created is None:
        db.session.rollback()
        log.warning("job %s: attempt %s lost the job while creating %s", job_id, ctx.attempt, novita_id)
        raise PermanentError(f"attempt {ctx.attempt} no longer holds job {job_id} (it created {novita_id})")
    webhooks.record_event(jobs.job_row(job_id), CREATED_EVENT, created)


def _placement(candidate: Candidate) -> dict[str, Any]:
    return {
        "productId": candidate.product.id,
        "region": candidate.region,
        "clusterId": candidate.cluster.id,
        "pricePerHour": candidate.price_per_hour,
        "billingMode": candidate.billing_mode,
    }


def _resolve_image(client: NovitaClient, params: CreateInstanceParams) -> Image:
    """The image to run; a template's registry auth id becomes `username:password` here, at run time."""
    if params.templateId is None:
        rootfs = params.rootfsSize or DEFAULT_ROOTFS_GB
        return Image(None, params.imageUrl, params.imageAuthId, rootfs)
    template = client.get_template(params.templateId)
    credential = (
        client.get_registry_auth_credential(template.image_auth_id) if template.image_auth_id else None
    )
    rootfs = params.rootfsSize or template.rootfs_size_gb or DEFAULT_ROOTFS_GB
    return Image(template, None, None, rootfs, credential)


class _Placement(TypedDict):
    """Where and as what the instance is created, the same for a plain image and a template."""

    name: str
    product_id: str
    cluster_id: str


def _request(
    image: Image, params: CreateInstanceParams, name: str, candidate: Candidate
) -> CreateInstanceRequest:
    """The create request for one candidate; the caller's ports, envs and command add to a template's."""
    rootfs = max(image.rootfs_gb, candidate.product.min_rootfs_gb or 0)
    placement: _Placement = {
        "name": name,
        "product_id": candidate.product.id,
        "cluster_id": candidate.cluster.id,
    }
    ports = tuple(PortSpec(port.port, port.type) for port in params.ports)
    envs = tuple(EnvVar(env.key, env.value) for env in params.envs)
    if image.template is None:
        return CreateInstanceRequest(
            **placement,
            image_url=image.image_url or "",
            rootfs_size_gb=rootfs,
            gpu_num=params.gpuNum,
            image_auth_id=image.image_auth_id,
            ports=ports,
            envs=envs,
            command=params.command,
        )
    request = CreateInstanceRequest.from_template(
        image.template, **placement, gpu_num=params.gpuNum, rootfs_size_gb=rootfs, image_auth=image.credential
    )
    overridden = {env.key for env in envs}
    return replace(
        request,
        ports=tuple(dict.fromkeys((*request.ports, *ports))),
        envs=(*(env for env in request.envs if env.key not in overridden), *envs),
        command=params.command or request.command,
    )
