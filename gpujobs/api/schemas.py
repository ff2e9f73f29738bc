"""Response models of the API beyond the resources: pages, problems, statistics and probes.

The resources themselves (job, event, delivery, ...) are the models of ``gpujobs.resources``, which also
serialize them. ``gpujobs.stats`` builds the statistics bodies; the models here describe them, and the
tests validate real responses against them (schemathesis does too), so docs and answers cannot drift.
Extra fields are forbidden so a field added to a body but not here fails those tests.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gpujobs.resources import DeadLetter, Definition, Delivery, Job, JobEvent


class Out(BaseModel):
    """Base of response models: exactly these fields."""

    model_config = ConfigDict(extra="forbid")


class FieldError(BaseModel):
    """One invalid field of a request."""

    field: str
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``); some carry extra members."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None
    limitName: str | None = Field(default=None, description="409 over a tenant limit: which one")
    limit: int | None = Field(default=None, description="409 over a tenant limit: its value")
    used: int | None = Field(default=None, description="409 over a tenant limit: the current use")


class JobPage(Out):
    """One page of jobs, newest first; pass ``nextCursor`` as ``cursor`` for the next (null: last page)."""

    items: list[Job]
    nextCursor: str | None


class JobEvents(Out):
    """A job's timeline, oldest first (at most 1000 events; continue with ``after``)."""

    jobId: uuid.UUID
    events: list[JobEvent]


class DeliveryList(Out):
    """A job's webhook deliveries, oldest first."""

    jobId: uuid.UUID
    items: list[Delivery]


class DeadLetterDetail(DeadLetter):
    """A dead letter with its job."""

    job: Job


class DeadLetterPage(Out):
    """One page of dead letters, newest first."""

    items: list[DeadLetter]
    nextCursor: str | None


class DefinitionList(Out):
    """Every registered job definition."""

    definitions: list[Definition]


class StatusCounts(Out):
    """Jobs per status."""

    queued: int
    running: int
    retrying: int
    succeeded: int
    failed: int
    cancelling: int
    cancelled: int


class DeliveryCounts(Out):
    """Webhook deliveries per status."""

    pending: int
    succeeded: int
    failed: int
    disabled: int


class DefinitionCounts(Out):
    """Jobs of one definition per status."""

    definitionKey: str
    definitionVersion: int
    total: int
    byStatus: StatusCounts


class Stats(Out):
    """Exact counts of the caller's jobs (by status and by definition) and webhook deliveries."""

    total: int
    byStatus: StatusCounts
    byDefinition: list[DefinitionCounts]
    webhookDeliveries: DeliveryCounts


class Summary(Out):
    """Jobs that exist now, by status."""

    total: int
    byStatus: StatusCounts


class PerformanceSummary(Out):
    """Rates and mean durations (seconds) of jobs finished in the last 24 hourly buckets."""

    successRate: float | None
    avgProcessingTime: float | None
    avgQueueTime: float | None
    retryRate: float | None


class Percentiles(Out):
    """Percentiles in seconds (null without samples)."""

    p50: float | None
    p95: float | None
    p99: float | None


class Performance(PerformanceSummary):
    """Performance plus duration percentiles over the most recent finished jobs (``sampleSize`` of them)."""

    windowHours: int
    sampleSize: int
    processingTime: Percentiles
    queueTime: Percentiles


class ThroughputSummary(Out):
    """Jobs finished (succeeded or failed) in the 1, 24 and 168 hours ending now (the partial oldest hour
    interpolated from its hourly count)."""

    lastHour: int
    lastDay: int
    lastWeek: int


class MetricsOverview(Out):
    """Summary, performance and throughput in one answer."""

    summary: Summary
    performance: PerformanceSummary
    throughput: ThroughputSummary


class DefinitionMetrics(Out):
    """Counts, success rate and mean durations of one definition."""

    definitionKey: str
    definitionVersion: int
    total: int
    byStatus: StatusCounts
    successRate: float | None
    avgProcessingTime: float | None
    avgQueueTime: float | None


class DefinitionMetricsList(Out):
    """Metrics per definition."""

    definitions: list[DefinitionMetrics]


class ThroughputPoint(Out):
    """Jobs that finished during one clock hour (``period`` is its start, UTC)."""

    period: datetime
    completed: int
    failed: int
    cancelled: int


class Throughput(Out):
    """Hourly finished jobs over the last ``hours`` hours, oldest first, the current hour last."""

    hours: int
    data: list[ThroughputPoint]


class Health(Out):
    """The process answers."""

    status: Literal["ok"]


class Readiness(Out):
    """Whether PostgreSQL and Redis answer; each check is ``ok`` or ``error: <kind>``."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, str]
