"""Stats and metrics: read from counters kept by triggers, and cached per tenant with the caller's ``ttl``.

Why counters rather than cached aggregates of ``jobs``: a cached ``GROUP BY`` still scans every job of
the tenant on each miss, so its cost grows with history; the counters (``job_counters``,
``job_hourly``, ``webhook_delivery_counters``, see ``models`` and migration ``b2_api``) are exact at
every commit and cost a few rows per read. ``job_hourly`` also keeps finished-job history beyond the
jobs' retention, so ``lastWeek`` is real. The one figure counters cannot give, duration percentiles,
reads the tenant's most recent finished jobs through ``ix_jobs_tenant_finished`` (at most
``SAMPLE_LIMIT`` rows of the last 24 hours). On top, ``cached`` keeps each answer in Redis and serves
it while younger than the caller's ``ttl`` (the Job Server contract: default 30 s, 0 = fresh).

``tenant_id=None`` means every tenant (the Prometheus scrape).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import extract, func, select, text, true
from sqlalchemy.dialects.postgresql import array

from gpujobs.broker import redis_client
from gpujobs.extensions import db, rows_changed
from gpujobs.models import DeliveryCounter, Job, JobCounter, JobHourly
from gpujobs.states import DeliveryStatus, JobStatus

log = logging.getLogger(__name__)

WINDOW_HOURS = 24  # rates and mean durations cover the last 24 hourly buckets, the current included
MAX_THROUGHPUT_HOURS = 168
SAMPLE_LIMIT = 2_000  # most recent finished jobs read for percentiles: p99 rests on 20 of them
MAX_TTL_SECONDS = 3600
QUANTILES = (0.5, 0.95, 0.99)
CACHE_PREFIX = "gpujobs:metrics"


def cached(name: str, tenant_id: uuid.UUID | None, ttl: int, compute: Callable[[], Any]) -> tuple[Any, int]:
    """``compute()``'s answer, or a cached one younger than ``ttl`` seconds; returns (answer, age).

    Redis trouble only costs the cache: the answer is computed afresh.
    """
    if ttl <= 0:
        return compute(), 0
    key = f"{CACHE_PREFIX}:{tenant_id or 'all'}:{name}"
    client = redis_client()
    try:
        raw = client.get(key)
    except redis.RedisError as exc:
        log.warning("metrics cache unavailable (%s)", type(exc).__name__)
        return compute(), 0
    now = time.time()
    if raw:
        entry = json.loads(raw)
        if 0 <= now - entry["at"] < ttl:
            return entry["body"], int(now - entry["at"])
    body = compute()
    try:
        client.set(key, json.dumps({"at": now, "body": body}), ex=MAX_TTL_SECONDS)
    except redis.RedisError as exc:
        log.warning("metrics cache not written (%s)", type(exc).__name__)
    return body, 0


def _scope(column: Any, tenant_id: uuid.UUID | None) -> Any:
    return column == tenant_id if tenant_id is not None else true()


def job_counts(tenant_id: uuid.UUID | None) -> dict[tuple[str, int], dict[str, int]]:
    """Jobs that exist now, per (definition key, version) and status (every status present)."""
    columns = (JobCounter.definition_key, JobCounter.definition_version, JobCounter.status)
    rows = db.session.execute(
        select(*columns, func.sum(JobCounter.count))
        .where(_scope(JobCounter.tenant_id, tenant_id))
        .group_by(*columns)
    )
    counts: dict[tuple[str, int], dict[str, int]] = {}
    for key, version, status, count in rows:
        if count:
            counts.setdefault((key, version), dict.fromkeys(JobStatus, 0))[status] = int(count)
    return counts


def delivery_counts(tenant_id: uuid.UUID | None) -> dict[str, int]:
    """Webhook deliveries that exist now, per status."""
    rows = db.session.execute(
        select(DeliveryCounter.status, func.sum(DeliveryCounter.count))
        .where(_scope(DeliveryCounter.tenant_id, tenant_id))
        .group_by(DeliveryCounter.status)
    )
    counts: dict[str, int] = dict.fromkeys(DeliveryStatus, 0)
    counts.update({status: int(count) for status, count in rows if status in counts})
    return counts


def _summary(per_definition: dict[tuple[str, int], dict[str, int]]) -> dict[str, Any]:
    by_status = {status: sum(c[status] for c in per_definition.values()) for status in JobStatus}
    return {"total": sum(by_status.values()), "byStatus": by_status}


def stats(tenant_id: uuid.UUID | None) -> dict[str, Any]:
    """``/v1/stats``: exact counts by status, by definition, and of webhook deliveries."""
    per_definition = job_counts(tenant_id)
    return {
        **_summary(per_definition),
        "byDefinition": [
            {"definitionKey": key, "definitionVersion": version, **_summary({(key, version): counts})}
            for (key, version), counts in sorted(per_definition.items())
        ],
        "webhookDeliveries": delivery_counts(tenant_id),
    }


def _hour_start(hours_back: int) -> datetime:
    """The start (UTC) of the clock hour ``hours_back`` hours before the current one."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours_back)


_SUMS = (
    func.sum(JobHourly.succeeded),
    func.sum(JobHourly.failed),
    func.sum(JobHourly.cancelled),
    func.sum(JobHourly.retried),
    func.sum(JobHourly.timed),
    func.sum(JobHourly.processing_seconds),
    func.sum(JobHourly.queue_seconds),
)


def _rates(row: Any) -> dict[str, float | None]:
    """Success and retry rates and mean durations from summed hourly counters."""
    succeeded, failed, cancelled, retried, timed, processing, queue = (float(v or 0) for v in row)
    finished = succeeded + failed + cancelled
    return {
        "successRate": succeeded / (succeeded + failed) if succeeded + failed else None,
        "avgProcessingTime": processing / timed if timed else None,
        "avgQueueTime": queue / timed if timed else None,
        "retryRate": retried / finished if finished else None,
    }


def _window(tenant_id: uuid.UUID | None) -> Any:
    return (_scope(JobHourly.tenant_id, tenant_id), JobHourly.hour >= _hour_start(WINDOW_HOURS - 1))


def performance_summary(tenant_id: uuid.UUID | None) -> dict[str, float | None]:
    """Rates and mean durations over the last ``WINDOW_HOURS`` hourly buckets."""
    return _rates(db.session.execute(select(*_SUMS).where(*_window(tenant_id))).one())


def throughput(tenant_id: uuid.UUID | None, hours: int) -> dict[str, Any]:
    """``/v1/metrics/throughput``: jobs finished per clock hour, oldest first, every hour present."""
    first = _hour_start(hours - 1)
    rows = db.session.execute(
        select(JobHourly.hour, *_SUMS[:3])
        .where(_scope(JobHourly.tenant_id, tenant_id), JobHourly.hour >= first)
        .group_by(JobHourly.hour)
    )
    by_hour = {hour: (int(s), int(f), int(c)) for hour, s, f, c in rows}
    data = []
    for index in range(hours):
        hour = first + timedelta(hours=index)
        succeeded, failed, cancelled = by_hour.get(hour, (0, 0, 0))
        data.append(
            {"period": hour.isoformat(), "completed": succeeded, "failed": failed, "cancelled": cancelled}
        )
    return {"hours": hours, "data": data}


ROLLING_WINDOWS_HOURS = {"lastHour": 1, "lastDay": 24, "lastWeek": MAX_THROUGHPUT_HOURS}


def throughput_summary(tenant_id: uuid.UUID | None, now: datetime | None = None) -> dict[str, int]:
    """Jobs finished (succeeded or failed) in the 1, 24 and 168 hours ending ``now`` (default: now).

    Read from the ``job_hourly`` counters, interpolating the partial oldest hour: a window of N hours
    ending at minute m of the current clock hour holds the current hour so far, the N - 1 whole hours
    before it, and the last (60 - m)/60 of the hour before those, counted as if its jobs finished
    evenly through it. A finer counter (per minute) would be exact, but it would add a row write to every
    job's finish and ~60x the rows to read; the error of the even spread is bounded by that one oldest
    hour's count, and shrinks relative to longer windows.
    """
    now = now or datetime.now(UTC)
    current = now.replace(minute=0, second=0, microsecond=0)
    elapsed = (now - current) / timedelta(hours=1)
    oldest = current - timedelta(hours=MAX_THROUGHPUT_HOURS)
    rows = db.session.execute(
        select(JobHourly.hour, func.sum(JobHourly.succeeded) + func.sum(JobHourly.failed))
        .where(_scope(JobHourly.tenant_id, tenant_id), JobHourly.hour >= oldest, JobHourly.hour <= current)
        .group_by(JobHourly.hour)
    )
    finished = {round((current - hour) / timedelta(hours=1)): int(count) for hour, count in rows}
    return {
        name: round(
            sum(finished.get(back, 0) for back in range(hours)) + finished.get(hours, 0) * (1 - elapsed)
        )
        for name, hours in ROLLING_WINDOWS_HOURS.items()
    }


def overview(tenant_id: uuid.UUID | None) -> dict[str, Any]:
    """``/v1/metrics``: summary, performance and throughput."""
    return {
        "summary": _summary(job_counts(tenant_id)),
        "performance": performance_summary(tenant_id),
        "throughput": throughput_summary(tenant_id),
    }


def definition_metrics(tenant_id: uuid.UUID | None) -> dict[str, Any]:
    """``/v1/metrics/definitions``: counts, success rate and mean durations per definition."""
    per_definition = job_counts(tenant_id)
    rates = {
        (key, version): _rates(sums)
        for key, version, *sums in db.session.execute(
            select(JobHourly.definition_key, JobHourly.definition_version, *_SUMS)
            .where(*_window(tenant_id))
            .group_by(JobHourly.definition_key, JobHourly.definition_version)
        )
    }
    definitions = []
    for key, version in sorted(per_definition.keys() | rates.keys()):
        counts = per_definition.get((key, version), dict.fromkeys(JobStatus, 0))
        rate = rates.get((key, version)) or _rates((0,) * len(_SUMS))
        definitions.append(
            {
                "definitionKey": key,
                "definitionVersion": version,
                **_summary({(key, version): counts}),
                "successRate": rate["successRate"],
                "avgProcessingTime": rate["avgProcessingTime"],
                "avgQueueTime": rate["avgQueueTime"],
            }
        )
    return {"definitions": definitions}


def duration_percentiles(tenant_id: uuid.UUID | None) -> dict[str, Any]:
    """p50/p95/p99 of run and queue time over the most recent finished jobs that ran (bounded sample)."""
    recent = (
        select(
            extract("epoch", Job.finished_at - Job.started_at).label("run"),
            extract("epoch", Job.started_at - Job.queued_at).label("wait"),
        )
        .where(
            _scope(Job.tenant_id, tenant_id),
            Job.status.in_((JobStatus.SUCCEEDED, JobStatus.FAILED)),
            Job.finished_at >= func.now() - timedelta(hours=WINDOW_HOURS),
            Job.started_at.is_not(None),
        )
        .order_by(Job.finished_at.desc())
        .limit(SAMPLE_LIMIT)
        .subquery()
    )
    quantiles = array(QUANTILES)
    count, run, wait = db.session.execute(
        select(
            func.count(),
            func.percentile_cont(quantiles).within_group(recent.c.run),
            func.percentile_cont(quantiles).within_group(recent.c.wait),
        )
    ).one()

    def named(values: list[float | None] | None) -> dict[str, float | None]:
        values = values or [None] * len(QUANTILES)
        return {f"p{round(q * 100)}": v for q, v in zip(QUANTILES, values, strict=True)}

    return {"sampleSize": count, "processingTime": named(run), "queueTime": named(wait)}


def performance(tenant_id: uuid.UUID | None) -> dict[str, Any]:
    """``/v1/metrics/performance``: rates and means (24 h) plus duration percentiles."""
    return {**performance_summary(tenant_id), "windowHours": WINDOW_HOURS, **duration_percentiles(tenant_id)}


# Hours this far back are no longer written by the counter triggers (they write the hour a job ends
# in; one more hour covers a transaction that started before the hour turned and committed after).
COMPACT_AFTER_HOURS = 2
_COMPACT_SQL = text(
    """
WITH moved AS (
    DELETE FROM job_hourly WHERE shard <> 0 AND hour < :before
    RETURNING tenant_id, hour, definition_key, definition_version, succeeded, failed, cancelled, retried,
              timed, processing_seconds, queue_seconds
)
INSERT INTO job_hourly AS h (tenant_id, hour, definition_key, definition_version, shard, succeeded, failed,
                             cancelled, retried, timed, processing_seconds, queue_seconds)
SELECT tenant_id, hour, definition_key, definition_version, 0, sum(succeeded), sum(failed), sum(cancelled),
       sum(retried), sum(timed), sum(processing_seconds), sum(queue_seconds)
FROM moved GROUP BY tenant_id, hour, definition_key, definition_version
ORDER BY tenant_id, hour, definition_key, definition_version
ON CONFLICT (tenant_id, hour, definition_key, definition_version, shard) DO UPDATE SET
    succeeded = h.succeeded + EXCLUDED.succeeded, failed = h.failed + EXCLUDED.failed,
    cancelled = h.cancelled + EXCLUDED.cancelled, retried = h.retried + EXCLUDED.retried,
    timed = h.timed + EXCLUDED.timed, processing_seconds = h.processing_seconds + EXCLUDED.processing_seconds,
    queue_seconds = h.queue_seconds + EXCLUDED.queue_seconds
"""
)


def compact_hours() -> int:
    """Fold the shards of past hours into shard 0; returns how many shard-0 rows it wrote.

    Shards spread the counter updates of one busy hour over 8 rows so concurrent job ends do not
    queue on one row lock; once an hour is over they only multiply what every metrics read scans
    (a week of history was 5,376 rows per tenant at 4 definitions, 672 once folded). Sums are
    unchanged, so reads need not know which hours are folded. Run by the cleanup sweep.
    """
    before = _hour_start(COMPACT_AFTER_HOURS - 1)
    folded = rows_changed(db.session.execute(_COMPACT_SQL, {"before": before}))
    db.session.commit()
    return folded
