"""The overview's figures, from the counters ``gpujobs.stats`` reads (never a scan of the jobs table).

Counts by status and webhook outcomes come from ``job_counters`` / ``webhook_delivery_counters``, the
24-hour throughput from ``job_hourly``: each costs a few rows however many jobs there are. This module
adds what only the page needs: the GPU jobs' failure rate and the geometry of the SVG bar chart. Every
figure is the tenant's own: the broker's queue depths are the whole cluster's load, so they are shown
to the operator only (``/metrics``), never on a tenant's page.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from gpujobs import grants, limits, stats
from gpujobs.extensions import db
from gpujobs.models import JobHourly
from gpujobs.states import DeliveryStatus, JobStatus

GPU_DEFINITION_PREFIX = "gpu.instance."
# Chart geometry in SVG user units; the template draws exactly what ``chart`` computes.
CHART_WIDTH, CHART_HEIGHT, CHART_TOP, CHART_BOTTOM = 720, 190, 22, 24
BAR_GAP = 4
LABEL_EVERY_HOURS = 6
# Stacked from the bottom in this order, named after job statuses (the CSS colours them so).
CHART_SERIES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class Rate:
    """``errors`` out of ``total``."""

    errors: int
    total: int

    @property
    def percent(self) -> float | None:
        """The error rate in percent, or None when there was nothing to count."""
        return 100.0 * self.errors / self.total if self.total else None


def overview(tenant_id: uuid.UUID) -> dict[str, Any]:
    """Everything the overview page shows, for one tenant."""
    counts = stats.stats(tenant_id)
    deliveries = counts["webhookDeliveries"]
    undelivered = deliveries[DeliveryStatus.FAILED] + deliveries[DeliveryStatus.DISABLED]
    finished_deliveries = deliveries[DeliveryStatus.SUCCEEDED] + undelivered
    hourly = stats.throughput(tenant_id, stats.WINDOW_HOURS)["data"]
    return {
        "counts": counts["byStatus"],
        "chart": chart(hourly),
        "gpu_rate": gpu_failure_rate(tenant_id),
        "webhook_rate": Rate(undelivered, finished_deliveries),
        "limits": limits.usage(tenant_id),
        "templates": grants.granted(tenant_id, grants.Kind.TEMPLATE),
        "registry_auths": grants.granted(tenant_id, grants.Kind.REGISTRY_AUTH),
    }


def gpu_failure_rate(tenant_id: uuid.UUID) -> Rate:
    """GPU instance jobs (``gpu.instance.*``) that failed, of those that finished, in the last 24 hours."""
    since = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(
        hours=stats.WINDOW_HOURS - 1
    )
    failed, finished = db.session.execute(
        select(
            func.coalesce(func.sum(JobHourly.failed), 0),
            func.coalesce(func.sum(JobHourly.succeeded + JobHourly.failed), 0),
        ).where(
            JobHourly.tenant_id == tenant_id,
            JobHourly.hour >= since,
            JobHourly.definition_key.startswith(GPU_DEFINITION_PREFIX, autoescape=True),
        )
    ).one()
    return Rate(int(failed), int(finished))


def chart(hourly: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacked bars for ``stats.throughput``'s hours (oldest first), the busiest hour filling the plot."""
    buckets = [
        dict(zip(CHART_SERIES, (h["completed"], h["failed"], h["cancelled"]), strict=True)) for h in hourly
    ]
    totals = [sum(bucket.values()) for bucket in buckets]
    scale = (CHART_HEIGHT - CHART_TOP - CHART_BOTTOM) / (max(totals, default=0) or 1)
    slot, baseline = CHART_WIDTH / max(len(buckets), 1), CHART_HEIGHT - CHART_BOTTOM
    bars, labels = [], []
    for index, (bucket, hour) in enumerate(zip(buckets, hourly, strict=True)):
        x, top, start = index * slot + BAR_GAP / 2, baseline, datetime.fromisoformat(hour["period"])
        segments = []
        for series in CHART_SERIES:
            if bucket[series]:
                top -= bucket[series] * scale
                segments.append(
                    {"series": series, "y": round(top, 2), "height": round(bucket[series] * scale, 2)}
                )
        title = f"{start:%H}:00 UTC: " + ", ".join(f"{bucket[s]} {s}" for s in CHART_SERIES)
        bars.append(
            {"x": round(x, 2), "width": round(slot - BAR_GAP, 2), "segments": segments, "title": title}
        )
        if index % LABEL_EVERY_HOURS == 0 or index == len(buckets) - 1:
            labels.append({"x": round(x + (slot - BAR_GAP) / 2, 2), "text": f"{start:%H}:00"})
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "baseline": baseline,
        "bars": bars,
        "labels": labels,
        "tallest": max(totals, default=0),
        "total": sum(totals),
        "series": CHART_SERIES,
    }
