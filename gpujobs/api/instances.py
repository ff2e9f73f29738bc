"""``/v1/instances``: GPU instances, provisioned and managed through jobs.

Every change is a job (`gpu.instance.create|stop|start|delete@1`), so it is durable, retried, visible in
`/v1/jobs` and announced by webhook; these views answer 202 with the job and the instance at once.
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, current_app, g, url_for
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from gpujobs import resources, webhooks
from gpujobs.api import schemas
from gpujobs.api.auth import require_api_key
from gpujobs.api.fields import Priority, WebhookUrl
from gpujobs.api.idempotency import KEY_PATTERN, current_key, idempotent, job_key_conflicts
from gpujobs.api.openapi import operation
from gpujobs.api.pagination import PageQuery, after_cursor, page
from gpujobs.api.validation import parse_body, parse_query
from gpujobs.exceptions import NotFound
from gpujobs.extensions import db
from gpujobs.models import Instance, InstanceRow, Job
from gpujobs.operations import JobOptions
from gpujobs.provisioning import actions, create, external, lifetimes, records
from gpujobs.provisioning.monitor import DELETE, START, STOP
from gpujobs.provisioning.params import (
    MAX_RUNTIME_SECONDS,
    CreateInstanceParams,
    MonitorInstanceParams,
    monitoring_defaults,
)
from gpujobs.registry import get_definition
from gpujobs.states import InstanceStatus

bp = Blueprint("instances", __name__, url_prefix="/v1/instances")

TAG = "instances"
JOB_FIELDS = {"webhookUrl", "webhookHeaders", "priority", "idempotencyKey"}


class JobOptionFields(BaseModel):
    """How to run the job a body queues: the receiver of its webhooks and its priority."""

    webhookUrl: WebhookUrl = None
    webhookHeaders: webhooks.WebhookHeaders | None = None
    priority: Priority = None


class CreateInstance(CreateInstanceParams, JobOptionFields):
    """Body of ``POST /v1/instances``: the params of `gpu.instance.create@1`, plus how to run its job."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "productName": "RTX 4090 24GB",
                    "region": "CN-HK-01",
                    "imageUrl": "pytorch/pytorch:latest",
                    "ports": [{"port": 8888, "type": "http"}],
                    "maxPricePerHour": 0.5,
                    "timeoutSeconds": 600,
                    "webhookUrl": "https://example.com/hooks",
                }
            ]
        }
    )

    idempotencyKey: str | None = Field(default=None, pattern=KEY_PATTERN, description="as the header")


class MonitorInstance(MonitorInstanceParams, JobOptionFields):
    """Body of ``POST /v1/instances/monitor``: `gpu.instance.monitor@1`'s params, and how to run its job."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "novitaInstanceId": "0d7c3b2c8b3a4f1e",
                    "webhookUrl": "https://example.com/hooks",
                    "maxWaitTimeMs": 600000,
                    "pollIntervalMs": 10000,
                }
            ]
        },
    )


class InstanceAction(JobOptionFields):
    """Optional body of stop, start and delete; without `webhookUrl`, the instance's last one (and its
    headers) is used."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"webhookUrl": "https://example.com/hooks", "priority": "high"}]},
    )


class ExtendInstance(BaseModel):
    """Body of ``POST /v1/instances/{id}/extend``: how many seconds later its deadline comes."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"seconds": 3600}]})

    seconds: int = Field(
        strict=True,
        ge=1,
        le=MAX_RUNTIME_SECONDS,
        description="added to the deadline (to now, if the deadline already passed)",
    )


class InstanceQuery(PageQuery):
    """Filters of ``GET /v1/instances``."""

    status: InstanceStatus | None = None


class Accepted(schemas.Out):
    """A queued job and the instance it acts on; `status` is the instance's."""

    jobId: str
    instanceId: str
    status: InstanceStatus


class InstancePage(schemas.Out):
    """One page of instances, newest first."""

    items: list[resources.Instance]
    nextCursor: str | None


class MonitoringConfig(schemas.Out):
    """The service's monitoring defaults, in the seed's names; a request's `monitoring` overrides them."""

    pollIntervalMs: int
    maxWaitTimeMs: int
    maxRetryAttempts: int
    instancePrefix: str = Field(
        description="the name prefix of this deployment's Novita instances: the reconcile sweep only "
        "ever deletes unowned instances whose names start with it"
    )


def _accepted(job: Job, instance: InstanceRow) -> tuple[dict[str, Any], int, dict[str, str]]:
    body = Accepted(
        jobId=str(job.id), instanceId=str(instance.id), status=InstanceStatus(instance.status)
    ).model_dump()
    return body, 202, {"Location": url_for("instances.get_instance", instance_id=instance.id)}


def tenant_instance(instance_id: uuid.UUID) -> Instance:
    """The caller's instance; NotFound also for another tenant's, which must not be told apart."""
    instance = db.session.scalar(
        select(Instance).where(Instance.id == instance_id, Instance.tenant_id == g.tenant.id)
    )
    if instance is None:
        raise NotFound(f"no instance {instance_id}")
    return instance


@bp.post("")
@operation(
    summary="Provision a GPU instance",
    tag=TAG,
    request=CreateInstance,
    responses={
        202: Accepted,
        409: "the tenant's GPU quota (`instances` or `usdPerHour`, see `GET /v1/limits`) has no room: "
        "`limitName`, `limit` and `used` say which and how much",
        422: "invalid field",
    },
)
@require_api_key
@idempotent
def create_instance() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Queue `gpu.instance.create@1`: 202 with the job and the instance once both are durable.

    An idempotency key whose stored answer expired while its job remains answers 409 naming the job,
    as `POST /v1/jobs` does.
    """
    body = parse_body(CreateInstance)
    with job_key_conflicts():
        options = JobOptions(
            priority=body.priority,
            max_attempts=body.monitoring.maxRetryAttempts if body.monitoring else None,
            webhook_url=body.webhookUrl,
            webhook_headers=body.webhookHeaders,
            idempotency_key=current_key(),
        )
        job, instance = create.submit(g.tenant.id, body.model_dump(mode="json", exclude=JOB_FIELDS), options)
    return _accepted(job, instance)


@bp.post("/monitor")
@operation(
    summary="Watch an instance gpujobs did not create",
    tag=TAG,
    request=MonitorInstance,
    responses={
        202: Accepted,
        409: "gpujobs created that instance, or a job is acting on it now",
        422: "invalid field, or no such Novita instance on the account (also another tenant's)",
    },
)
@require_api_key
@idempotent
def monitor_instance() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Queue `gpu.instance.monitor@1`: watch the instance until it runs, fails or times out, with the
    usual webhooks. gpujobs never deletes it (a delete request answers 409), and a stop or start needs the
    operator's grant of the instance to the tenant (409 without)."""
    body = parse_body(MonitorInstance)
    with job_key_conflicts():
        options = JobOptions(
            priority=body.priority,
            webhook_url=body.webhookUrl,
            webhook_headers=body.webhookHeaders,
            idempotency_key=current_key(),
        )
        job, instance = external.submit(
            g.tenant.id, body.model_dump(mode="json", exclude=JOB_FIELDS), options
        )
    return _accepted(job, instance)


@bp.get("")
@operation(summary="List instances", tag=TAG, query=InstanceQuery, responses={200: InstancePage})
@require_api_key
def list_instances() -> dict[str, Any]:
    """The caller's instances, newest first, optionally of one ``status``, cursor-paginated."""
    args = parse_query(InstanceQuery)
    query = select(Instance).where(Instance.tenant_id == g.tenant.id)
    if args.status is not None:
        query = query.where(Instance.status == args.status)
    query = after_cursor(query, Instance, args.cursor).limit(args.limit + 1)
    return page(list(db.session.scalars(query)), args.limit, resources.Instance.json_of)


@bp.get("/monitoring")
@operation(summary="Monitoring defaults", tag=TAG, responses={200: MonitoringConfig})
@require_api_key
def monitoring_config() -> dict[str, Any]:
    """pollIntervalMs, maxWaitTimeMs and maxRetryAttempts as a create request gets them by default, and
    the prefix this deployment names its instances with."""
    definition = get_definition(create.CREATE_KEY, 1)
    assert definition is not None  # registered when gpujobs.provisioning.create is imported, as it is here
    defaults = monitoring_defaults(current_app.config, definition.max_attempts)
    return {**defaults, "instancePrefix": records.name_prefix()}


@bp.get("/<uuid:instance_id>")
@operation(summary="Get an instance", tag=TAG, responses={200: resources.Instance, 404: "no such instance"})
@require_api_key
def get_instance(instance_id: uuid.UUID) -> dict[str, Any]:
    """One instance: status, Novita's status, product, region, price, endpoints, timestamps."""
    return resources.Instance.json_of(tenant_instance(instance_id))


def _act(instance_id: uuid.UUID, action: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    body = parse_body(InstanceAction, optional=True)
    options = JobOptions(
        priority=body.priority, webhook_url=body.webhookUrl, webhook_headers=body.webhookHeaders
    )
    queued = actions.request(g.tenant.id, instance_id, action, options)
    return _accepted(*queued)


ACTION_RESPONSES: dict[int, type[BaseModel] | str] = {
    202: Accepted,
    404: "no such instance",
    409: "the instance is not in a state this action can start from",
}


@bp.post("/<uuid:instance_id>/stop")
@operation(summary="Stop an instance", tag=TAG, request=InstanceAction, responses=ACTION_RESPONSES)
@require_api_key
def stop_instance(instance_id: uuid.UUID) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Queue `gpu.instance.stop@1` for a running instance."""
    return _act(instance_id, STOP)


@bp.post("/<uuid:instance_id>/start")
@operation(
    summary="Start an instance",
    tag=TAG,
    request=InstanceAction,
    responses={
        **ACTION_RESPONSES,
        409: "the instance is not stopped, or the tenant's GPU quotas have no room for it to run "
        "(`limitName`, `limit`, `used`)",
    },
)
@require_api_key
def start_instance(instance_id: uuid.UUID) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Queue `gpu.instance.start@1` for a stopped instance."""
    return _act(instance_id, START)


@bp.delete("/<uuid:instance_id>")
@operation(summary="Delete an instance", tag=TAG, request=InstanceAction, responses=ACTION_RESPONSES)
@require_api_key
def delete_instance(instance_id: uuid.UUID) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Queue `gpu.instance.delete@1`; an instance still being provisioned answers 409 (cancel its job)."""
    return _act(instance_id, DELETE)


@bp.post("/<uuid:instance_id>/extend")
@operation(
    summary="Extend an instance's lifetime",
    tag=TAG,
    request=ExtendInstance,
    responses={
        200: resources.Instance,
        404: "no such instance",
        409: "the instance has no deadline, or is deleted, being deleted or lost",
        422: "invalid field",
    },
)
@require_api_key
def extend_instance(instance_id: uuid.UUID) -> dict[str, Any]:
    """Push the deadline `seconds` later; a new `instance.expiring` will come before the new one."""
    body = parse_body(ExtendInstance)
    return resources.Instance.json_of(lifetimes.extend(g.tenant.id, instance_id, body.seconds))
