"""The tables. PostgreSQL is the source of truth: every job, event, instance and delivery is a row.

Models hold columns and indexes only; they never commit. The rules that change rows live in
``gpujobs.jobs`` (the job state machine) and the other domain modules. Indexes follow the hot
queries: a tenant's jobs by time/status/definition (keyset pagination), and partial indexes on the
few rows each sweep must act on, so a sweep's cost follows the due rows, not the table size.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.engine import Row
from sqlalchemy.orm import Mapped, mapped_column

from gpujobs.encryption import EncryptedText
from gpujobs.extensions import Model
from gpujobs.sealing import SealedHeaders, SealedJSON
from gpujobs.states import (
    INSTANCE_ENDED,
    JOB_ACTIVE,
    JOB_TERMINAL,
    DeliveryStatus,
    InstanceStatus,
    JobStatus,
    sql_list,
)


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)


def _created_at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class Deployment(Model):
    """This deployment's identity, one row written by migration ``n14_deployment_prefix``.

    Its instance prefix tells this deployment's Novita instances apart from those of any other deployment
    on the same Novita account (``gpujobs.deployment``).
    """

    __tablename__ = "deployment"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    instance_prefix: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (CheckConstraint("id = 1", name="ck_deployment_one_row"),)


class Tenant(Model):
    """A customer. Everything else belongs to exactly one tenant and is invisible to the others."""

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(String(100), unique=True, nullable=False)
    # HMAC keys must be usable to sign, so they are stored encrypted (gpujobs.encryption), not hashed.
    webhook_secret: Mapped[str] = mapped_column(EncryptedText, nullable=False)
    previous_webhook_secret: Mapped[str | None] = mapped_column(EncryptedText)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created_at()


class ApiKey(Model):
    """An API key, stored as a SHA-256 digest: a database leak does not leak usable keys."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False)
    key_digest: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)  # shown to operators to tell keys apart
    created_at: Mapped[datetime] = _created_at()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # to the minute


class DashboardSession(Model):
    """A signed-in ``/ui`` session: the cookie names a row, so signing out or revoking the key ends it."""

    __tablename__ = "dashboard_sessions"

    id: Mapped[uuid.UUID] = _uuid_pk()
    api_key_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False, index=True
    )
    created_at: Mapped[datetime] = _created_at()


class TenantLimits(Model):
    """A tenant's own limits; a NULL column takes the operator's default (``GPUJOBS_TENANT_MAX_*``)."""

    __tablename__ = "tenant_limits"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    max_running_jobs: Mapped[int | None] = mapped_column(Integer)
    max_priority: Mapped[int | None] = mapped_column(SmallInteger)  # a level, 0 (low) to 3 (critical)
    max_schedules: Mapped[int | None] = mapped_column(Integer)
    # GPU quotas (``gpujobs.quotas``): instances provisioning or running at once, their USD per hour.
    max_instances: Mapped[int | None] = mapped_column(Integer)
    max_usd_per_hour: Mapped[Decimal | None] = mapped_column(Numeric(12, 5))


class NovitaGrant(Model):
    """A Novita template or registry auth of the operator's account that one tenant may name."""

    __tablename__ = "novita_grants"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # gpujobs.grants.Kind
    resource_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    created_at: Mapped[datetime] = _created_at()


class Job(Model):
    """One unit of work and its whole state; ``attempt`` doubles as the fencing token."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False)
    definition_key: Mapped[str] = mapped_column(String(100), nullable=False)
    definition_version: Mapped[int] = mapped_column(Integer, nullable=False)
    # Secrets in it (an instance's HF_TOKEN, call.api's headers) are sealed at rest (gpujobs.sealing).
    params: Mapped[dict[str, Any]] = mapped_column(SealedJSON, nullable=False, default=dict)
    priority: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    # The 0-10 number a client sent, answered back as sent; null when it sent a name (or none).
    priority_number: Mapped[int | None] = mapped_column(SmallInteger)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, nullable=False)
    timeout_seconds: Mapped[int] = mapped_column(Integer, nullable=False)
    progress: Mapped[float | None] = mapped_column()
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # Extra headers on each of the job's deliveries (the tenant's own, possibly tokens: every display masks
    # their values, and they are sealed at rest; migration f6).
    webhook_headers: Mapped[dict[str, str] | None] = mapped_column(SealedHeaders)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    dead_lettered: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = _created_at()
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    next_retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), onupdate=func.now()
    )

    __table_args__ = (
        Index("ix_jobs_tenant_created", "tenant_id", text("created_at DESC"), text("id DESC")),
        Index(
            "ix_jobs_tenant_status_created", "tenant_id", "status", text("created_at DESC"), text("id DESC")
        ),
        Index(
            "ix_jobs_tenant_definition_created",
            "tenant_id",
            "definition_key",
            text("created_at DESC"),
            text("id DESC"),
        ),
        # The dispatch sweep: queued jobs never published, or published before the oldest message
        # still waiting in their priority's queue (their message was lost; migration e5).
        Index(
            "ix_jobs_queued_published",
            "priority",
            "published_at",
            postgresql_where=text(f"status = '{JobStatus.QUEUED}'"),
        ),
        Index(
            "ix_jobs_retry_due", "next_retry_at", postgresql_where=text(f"status = '{JobStatus.RETRYING}'")
        ),
        Index(
            "ix_jobs_lease",
            "lease_expires_at",
            postgresql_where=text(f"status IN ({sql_list(JOB_ACTIVE)})"),
        ),
        # Cluster-wide concurrency limits count the running jobs of one definition.
        Index(
            "ix_jobs_running_definition",
            "definition_key",
            "definition_version",
            postgresql_where=text(f"status IN ({sql_list(JOB_ACTIVE)})"),
        ),
        # ... and of one tenant (its running-jobs limit; migration f6).
        Index(
            "ix_jobs_running_tenant",
            "tenant_id",
            postgresql_where=text(f"status IN ({sql_list(JOB_ACTIVE)})"),
        ),
        # The fair dispatch: a tenant's next unpublished jobs, and its published ones counted against its
        # window (gpujobs.dispatch; migration l12).
        Index(
            "ix_jobs_unpublished_tenant",
            "tenant_id",
            text("priority DESC"),
            "queued_at",
            postgresql_where=text(f"status = '{JobStatus.QUEUED}' AND published_at IS NULL"),
        ),
        Index(
            "ix_jobs_published_tenant",
            "tenant_id",
            postgresql_where=text(f"status = '{JobStatus.QUEUED}' AND published_at IS NOT NULL"),
        ),
        Index(
            "ix_jobs_finished",
            "finished_at",
            postgresql_where=text(f"status IN ({sql_list(JOB_TERMINAL)})"),
        ),
        # Cleanup: finished jobs it may delete (dead letters stay until redriven; migration d4).
        Index(
            "ix_jobs_expirable",
            "finished_at",
            postgresql_where=text(f"status IN ({sql_list(JOB_TERMINAL)}) AND dead_lettered IS FALSE"),
        ),
        Index(
            "uq_jobs_tenant_idempotency",
            "tenant_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )


class JobEvent(Model):
    """One line of a job's timeline: every transition and every event its handler emits."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    type: Mapped[str] = mapped_column(String(64), nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (Index("ix_job_events_job", "job_id", "id"),)


class DeadLetter(Model):
    """A job that exhausted its attempts, kept for inspection until an operator redrives it."""

    __tablename__ = "dead_letters"

    id: Mapped[uuid.UUID] = _uuid_pk()
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False)
    definition_key: Mapped[str] = mapped_column(String(100), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()
    redriven_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_dead_letters_tenant_created", "tenant_id", text("created_at DESC"), text("id DESC")),
        Index("ix_dead_letters_job", "job_id"),
    )


class Instance(Model):
    """A Novita GPU instance as we know it; ``name`` is derived from the job so retries adopt it."""

    __tablename__ = "instances"

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(100), unique=True, nullable=False)
    novita_id: Mapped[str | None] = mapped_column(String(100), unique=True)
    # The caller's own name for the instance (Novita's name is derived from the job, see ``name``).
    label: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32), nullable=False, default=InstanceStatus.REQUESTED)
    novita_status: Mapped[str | None] = mapped_column(String(32))
    product_name: Mapped[str | None] = mapped_column(String(200))
    product_id: Mapped[str | None] = mapped_column(String(200))
    region: Mapped[str | None] = mapped_column(String(64))
    cluster_id: Mapped[str | None] = mapped_column(String(64))
    gpu_num: Mapped[int | None] = mapped_column(SmallInteger)
    # For the whole instance (every GPU), in Novita's 1/100,000 USD per hour.
    price_per_hour_units: Mapped[int | None] = mapped_column(Integer)
    # Until a product is chosen, the most it may cost (same units): what the tenant's USD quota holds.
    reserved_price_units: Mapped[int | None] = mapped_column(Integer)
    endpoints: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    # Watched on request (``POST /v1/instances/monitor``), not created by gpujobs: never deleted by it.
    external: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )
    # Cost accrued while Novita billed it (gpujobs.provisioning.costs), in 1/100,000 USD; it only grows.
    cost_units: Mapped[Decimal] = mapped_column(
        Numeric(24, 6), nullable=False, default=Decimal(0), server_default=text("0")
    )
    # Cost is accrued up to here: the row's creation, a new Novita instance's create, or the cost sweep's
    # last look. The next look charges the time since, if Novita is billing the instance then.
    cost_accrued_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    # Novita's last start and stop of it, as last mirrored (None: Novita never said): the cost sweep
    # charges billed time up to the stop and from the start, not to or from when it looked (migration q17).
    novita_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    novita_stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # How Novita bills it (``onDemand`` or ``spot``; the mode it was created with, after any fallback),
    # what to do when Novita reclaims a spot instance (``fail`` or ``recreate``), the instance this one
    # replaces after such a reclaim, and how many replacements its chain has had (migration p16).
    billing_mode: Mapped[str | None] = mapped_column(String(16))
    on_reclaim: Mapped[str | None] = mapped_column(String(16))
    replaces_instance_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("instances.id", ondelete="SET NULL"), unique=True
    )
    recreations: Mapped[int] = mapped_column(
        SmallInteger, nullable=False, default=0, server_default=text("0")
    )
    created_at: Mapped[datetime] = _created_at()
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), onupdate=func.now()
    )
    # Its lifetime (gpujobs.provisioning.lifetimes): counted from the create request, since billing starts
    # when Novita accepts it; ``on_expiry`` is ``stop`` or ``delete``. None: the instance runs until asked.
    max_runtime_seconds: Mapped[int | None] = mapped_column(Integer)
    on_expiry: Mapped[str | None] = mapped_column(String(16))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When ``instance.expiring`` went out for the current ``expires_at`` (an extension clears it), and
    # how many went out in all (each one's delivery slot, so a warning after an extension is a new event).
    expiry_warned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expiry_warnings: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default=text("0"))

    __table_args__ = (
        Index("ix_instances_tenant_created", "tenant_id", text("created_at DESC"), text("id DESC")),
        # The lifetimes sweep reads only instances with a deadline.
        Index("ix_instances_expires", "expires_at", postgresql_where=text("expires_at IS NOT NULL")),
        # A finished job's webhook looks up its instance by job.
        Index("ix_instances_job", "job_id"),
        # The reconcile sweep reads the instances that should exist at Novita, not the history.
        Index(
            "ix_instances_live",
            "status",
            postgresql_where=text(f"status NOT IN ({sql_list(INSTANCE_ENDED)})"),
        ),
    )


#: A job row as the ORM loaded it, or as a Core ``UPDATE ... RETURNING`` gave it back
#: (``gpujobs.jobs.succeed``): both are read by attribute, with the same names.
JobRow = Job | Row[Any]
#: An instance row as the ORM loaded it, or as a Core ``UPDATE ... RETURNING`` gave it back
#: (``gpujobs.provisioning.records.transitioned``): both are read by attribute, with the same names.
InstanceRow = Instance | Row[Any]


class InstanceCostHour(Model):
    """Cost an instance accrued in one clock hour (UTC), in 1/100,000 USD: the tenant's spend by hour."""

    __tablename__ = "instance_cost_hours"

    instance_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False)
    units: Mapped[Decimal] = mapped_column(Numeric(24, 6), nullable=False)

    __table_args__ = (Index("ix_instance_cost_hours_tenant_hour", "tenant_id", "hour"),)


class WebhookDelivery(Model):
    """One event for one receiver; its id is the stable ``webhook-id`` across retries."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    job_attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    # scheme://host:port of ``url``, the circuit breaker's key (None on rows older than the breaker).
    endpoint: Mapped[str | None] = mapped_column(Text)
    # The body (a webhook.send message's secret-named entries sealed at rest, as in params).
    payload: Mapped[dict[str, Any]] = mapped_column(SealedJSON, nullable=False)
    # Extra headers it is sent with, beside the signature's (its job's ``webhook_headers``, sealed at rest
    # as there; migration f6).
    headers: Mapped[dict[str, str] | None] = mapped_column(SealedHeaders)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        # One event per job transition, however often the task that records it runs.
        UniqueConstraint("job_id", "event_type", "job_attempt", name="uq_webhook_event"),
        Index(
            "ix_webhook_due", "next_attempt_at", postgresql_where=text(f"status = '{DeliveryStatus.PENDING}'")
        ),
    )


class WebhookEndpoint(Model):
    """The circuit breaker of one tenant's receiver (scheme://host:port): a tenant whose deliveries to
    a shared receiver fail opens only its own circuit, never another tenant's (migration r18).

    Closed while ``open_until`` is None; open (deliveries held) until ``open_until``; past it, the one
    delivery that moves ``open_until`` on is the probe, whose answer closes or reopens the circuit.
    """

    __tablename__ = "webhook_endpoints"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    endpoint: Mapped[str] = mapped_column(Text, primary_key=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    open_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = _created_at()


class IdempotencyRecord(Model):
    """The first answer to an ``Idempotency-Key``, replayed to repeats of the same request."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_digest: Mapped[str] = mapped_column(String(64), nullable=False)
    response_status: Mapped[int | None] = mapped_column(Integer)  # None while the first is in flight
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (Index("ix_idempotency_created", "created_at"),)


class Schedule(Model):
    """A cron schedule that submits a job at each tick."""

    __tablename__ = "schedules"

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    cron: Mapped[str] = mapped_column(String(100), nullable=False)
    timezone: Mapped[str] = mapped_column(String(64), nullable=False, default="UTC")
    definition_key: Mapped[str] = mapped_column(String(100), nullable=False)
    definition_version: Mapped[int] = mapped_column(Integer, nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(SealedJSON, nullable=False, default=dict)  # as a job's
    priority: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    next_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (
        UniqueConstraint("tenant_id", "name", name="uq_schedules_tenant_name"),
        Index("ix_schedules_due", "next_run_at", postgresql_where=text("enabled")),
    )


# Counters for stats and metrics, kept by triggers (migration b2_api) so no request counts the jobs
# table. Each key is spread over COUNTER_SHARDS rows, chosen by the row's id, so concurrent
# transitions of one tenant's jobs rarely wait on the same row lock; readers sum the shards.
COUNTER_SHARDS = 8


class JobCounter(Model):
    """How many jobs exist per tenant, definition and status (one shard of the count)."""

    __tablename__ = "job_counters"

    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    definition_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    definition_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))


class JobHourly(Model):
    """Jobs that finished per tenant, clock hour (UTC) and definition, with summed durations.

    History, not state: cleanup of old jobs does not subtract from it. ``timed`` counts the finished
    jobs that ran (a job cancelled while queued has no run time); the sums are over those.
    """

    __tablename__ = "job_hourly"

    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    definition_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    definition_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    succeeded: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    failed: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    cancelled: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    retried: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    timed: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    processing_seconds: Mapped[float] = mapped_column(nullable=False, server_default=text("0"))
    queue_seconds: Mapped[float] = mapped_column(nullable=False, server_default=text("0"))

    __table_args__ = (Index("ix_job_hourly_hour", "hour"),)


class DeliveryCounter(Model):
    """How many webhook deliveries exist per tenant and status (one shard of the count)."""

    __tablename__ = "webhook_delivery_counters"

    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))


class JobFinishedCounter(Model):
    """Jobs that ever finished per definition and status, and how many of them needed a retry.

    For Prometheus counters (``gpujobs.metrics``); history, kept by a trigger (migration h8_job_histograms).
    """

    __tablename__ = "job_finished_counters"

    definition_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    definition_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    finished: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    retried: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))


class JobDurationBucket(Model):
    """One bucket of a job-duration histogram (``run`` or ``queue`` seconds), not cumulative.

    ``le`` is the bucket's upper bound (``job_duration_bounds()`` in SQL, or infinity); ``seconds`` sums
    the observations that fell in it. Kept by the same trigger as ``JobFinishedCounter``.
    """

    __tablename__ = "job_duration_buckets"

    histogram: Mapped[str] = mapped_column(String(8), primary_key=True)
    definition_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    definition_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    le: Mapped[float] = mapped_column(primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    seconds: Mapped[float] = mapped_column(nullable=False, server_default=text("0"))


# Duration percentiles read a tenant's most recent finished jobs (``gpujobs.stats``).
Index(
    "ix_jobs_tenant_finished",
    Job.tenant_id,
    Job.finished_at,
    postgresql_where=text(f"status IN ({sql_list(JOB_TERMINAL)})"),
)
