"""Public resources: one pydantic model per resource, shared by the API, the dashboard and webhook bodies.

Fields are snake_case in Python and camelCase on the wire (by alias). Each model is at once the
serializer (``json_of(row)``) and the OpenAPI component, so the two cannot drift. Times are written
with ``datetime.isoformat()`` (``+00:00``, not pydantic's ``Z``) so answers keep their exact form. Params,
errors, URLs and event data pass through ``gpujobs.masking`` here, so no surface shows a secret.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, Self, cast

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pydantic.alias_generators import to_camel

from gpujobs import models
from gpujobs.jobs import PRIORITY_NAMES, PriorityName
from gpujobs.masking import mask_headers, mask_secrets, mask_text, mask_url
from gpujobs.registry import Definition as RegisteredDefinition
from gpujobs.states import DeliveryStatus, InstanceStatus, JobStatus

Timestamp = Annotated[
    datetime,
    PlainSerializer(datetime.isoformat, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]

#: What an instance's ``onExpiry`` may be (``gpujobs.provisioning.lifetimes``).
OnExpiry = Literal["stop", "delete"]


#: What every display shows instead of a secret value (a job's webhook header values, on the dashboard
#: any secret-looking field).
class Resource(BaseModel):
    """Base of the public resources: exactly these fields, camelCase on the wire.

    ``from_row`` validates (pydantic-core, in Rust): measured against ``model_construct``, which loops in
    Python, it costs no more on the webhook and worker paths, and it checks the row against the schema.
    """

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    @classmethod
    def json_of(cls, row: Any) -> dict[str, Any]:
        """The JSON object of ``row`` (what the API answers, the dashboard shows and webhooks carry)."""
        return cls.from_row(row).model_dump(mode="json")

    @classmethod
    def from_row(cls, row: Any) -> Self:
        """The resource of ``row``."""
        raise NotImplementedError


class Job(Resource):
    """A job and its whole state; ``jobId`` repeats ``id`` for clients of the seed Job Server."""

    id: uuid.UUID
    job_id: uuid.UUID
    definition_key: str
    definition_version: int
    status: JobStatus
    priority: PriorityName | int = Field(description="as submitted: a level name, or the 0-10 number sent")
    priority_level: PriorityName = Field(description="the level the job is queued at")
    params: dict[str, Any]
    attempt: int
    max_attempts: int
    timeout_seconds: int
    progress: float | None
    result: dict[str, Any] | None
    error: str | None
    cancel_requested: bool
    dead_lettered: bool
    idempotency_key: str | None
    webhook_url: str | None
    webhook_headers: dict[str, str] | None = Field(description="their names; every value shows as ••••")
    created_at: Timestamp
    queued_at: Timestamp | None
    started_at: Timestamp | None
    finished_at: Timestamp | None
    next_retry_at: Timestamp | None

    @classmethod
    def from_row(cls, row: models.JobRow) -> Self:
        return cls(
            id=row.id,
            job_id=row.id,
            definition_key=row.definition_key,
            definition_version=row.definition_version,
            status=JobStatus(row.status),
            priority=PRIORITY_NAMES[row.priority] if row.priority_number is None else row.priority_number,
            priority_level=PRIORITY_NAMES[row.priority],
            params=mask_secrets(row.params),
            attempt=row.attempt,
            max_attempts=row.max_attempts,
            timeout_seconds=row.timeout_seconds,
            progress=row.progress,
            result=row.result,
            error=mask_text(row.error),
            cancel_requested=row.cancel_requested,
            dead_lettered=row.dead_lettered,
            idempotency_key=row.idempotency_key,
            webhook_url=mask_url(row.webhook_url),
            webhook_headers=mask_headers(row.webhook_headers),
            created_at=row.created_at,
            queued_at=row.queued_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            next_retry_at=row.next_retry_at,
        )


class JobEvent(Resource):
    """One line of a job's timeline."""

    id: int
    type: str
    attempt: int
    data: dict[str, Any]
    created_at: Timestamp

    @classmethod
    def from_row(cls, row: models.JobEvent) -> Self:
        data = mask_secrets(row.data)
        return cls(id=row.id, type=row.type, attempt=row.attempt, data=data, created_at=row.created_at)


class Instance(Resource):
    """A GPU instance; ``pricePerHour`` is USD for all its GPUs (Novita counts 1/100,000 USD)."""

    id: uuid.UUID
    job_id: uuid.UUID | None
    name: str
    label: str | None
    novita_instance_id: str | None
    status: InstanceStatus
    novita_status: str | None
    product_name: str | None
    product_id: str | None
    region: str | None
    cluster_id: str | None
    gpu_num: int | None
    price_per_hour: float | None
    cost_usd: float = Field(description="accrued while Novita billed it, by the cost sweep (every minute)")
    endpoints: dict[str, Any]
    error: str | None
    external: bool = Field(description="watched on request, not created by gpujobs: never deleted by it")
    billing_mode: str | None = Field(default=None, description="onDemand or spot, as Novita bills it")
    on_reclaim: str | None = Field(
        default=None, description="when Novita reclaims it (spot): fail or recreate"
    )
    replaces_instance_id: uuid.UUID | None = Field(
        default=None, description="the reclaimed spot instance this one replaces"
    )
    created_at: Timestamp | None
    ready_at: Timestamp | None
    last_seen_at: Timestamp | None
    max_runtime_seconds: int | None = Field(description="its lifetime from the create request (null: none)")
    on_expiry: OnExpiry | None = Field(description="what happens at `expiresAt`")
    expires_at: Timestamp | None = Field(description="its deadline; `POST .../extend` pushes it")

    @classmethod
    def from_row(cls, row: models.InstanceRow) -> Self:
        price = row.price_per_hour_units
        return cls(
            id=row.id,
            job_id=row.job_id,
            name=row.name,
            label=row.label,
            novita_instance_id=row.novita_id,
            status=InstanceStatus(row.status),
            novita_status=row.novita_status,
            product_name=row.product_name,
            product_id=row.product_id,
            region=row.region,
            cluster_id=row.cluster_id,
            gpu_num=row.gpu_num,
            price_per_hour=price / 100_000 if price is not None else None,
            cost_usd=round(float(row.cost_units or 0) / 100_000, 6),  # None on a row not flushed yet
            endpoints=mask_secrets(row.endpoints),
            error=mask_text(row.error),
            external=bool(row.external),  # None on a row not flushed yet
            billing_mode=row.billing_mode,
            on_reclaim=row.on_reclaim,
            replaces_instance_id=row.replaces_instance_id,
            created_at=row.created_at,
            ready_at=row.ready_at,
            last_seen_at=row.last_seen_at,
            max_runtime_seconds=row.max_runtime_seconds,
            on_expiry=cast(OnExpiry | None, row.on_expiry),  # the column holds only these
            expires_at=row.expires_at,
        )


class DeadLetter(Resource):
    """A job that exhausted its attempts."""

    id: uuid.UUID
    job_id: uuid.UUID
    definition_key: str
    attempts: int
    error: str | None
    created_at: Timestamp
    redriven_at: Timestamp | None

    @classmethod
    def from_row(cls, row: models.DeadLetter) -> Self:
        return cls(
            id=row.id,
            job_id=row.job_id,
            definition_key=row.definition_key,
            attempts=row.attempts,
            error=mask_text(row.error),
            created_at=row.created_at,
            redriven_at=row.redriven_at,
        )


class Delivery(Resource):
    """One webhook event for the job's receiver; ``id`` is its ``webhook-id``, stable across retries.

    Its outcome and schedule only: never the payload, never a secret.
    """

    id: uuid.UUID
    job_id: uuid.UUID
    event_type: str
    url: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: Timestamp | None
    created_at: Timestamp
    delivered_at: Timestamp | None

    @classmethod
    def from_row(cls, row: models.WebhookDelivery) -> Self:
        return cls(
            id=row.id,
            job_id=row.job_id,
            event_type=row.event_type,
            url=mask_url(row.url) or "",
            status=DeliveryStatus(row.status),
            attempts=row.attempts,
            last_status_code=row.last_status_code,
            last_error=mask_text(row.last_error),
            next_attempt_at=row.next_attempt_at,
            created_at=row.created_at,
            delivered_at=row.delivered_at,
        )


class Definition(Resource):
    """A registered job definition and its defaults."""

    key: str
    version: int
    description: str
    default_max_attempts: int
    timeout_seconds: int
    concurrency_limit: int | None
    params_schema: dict[str, Any] = Field(description="JSON Schema of the definition's params")

    @classmethod
    def from_row(cls, row: RegisteredDefinition) -> Self:
        """The resource of a registered definition (from the registry, not a table)."""
        return cls(
            key=row.key,
            version=row.version,
            description=row.description,
            default_max_attempts=row.max_attempts,
            timeout_seconds=row.timeout_seconds,
            concurrency_limit=row.concurrency_limit,
            params_schema=row.params_model.model_json_schema(),
        )


class Schedule(Resource):
    """A cron schedule and when it runs next."""

    id: uuid.UUID
    name: str
    cron: str
    timezone: str
    definition_key: str
    definition_version: int
    params: dict[str, Any]
    priority: PriorityName
    enabled: bool
    next_run_at: Timestamp
    last_run_at: Timestamp | None
    created_at: Timestamp

    @classmethod
    def from_row(cls, row: models.Schedule) -> Self:
        return cls(
            id=row.id,
            name=row.name,
            cron=row.cron,
            timezone=row.timezone,
            definition_key=row.definition_key,
            definition_version=row.definition_version,
            params=mask_secrets(row.params),
            priority=PRIORITY_NAMES[row.priority],
            enabled=row.enabled,
            next_run_at=row.next_run_at,
            last_run_at=row.last_run_at,
            created_at=row.created_at,
        )
