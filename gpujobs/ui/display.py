"""What the pages show of a row: secrets masked, times and prices made readable.

Every job, event, instance and delivery reaches a template through a function here, from its public
resource (``gpujobs.resources``), which has already masked params, errors, URLs, event data and webhook
headers with ``gpujobs.masking``; a job's result is masked here too, since the page shows it in full.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from gpujobs import resources
from gpujobs.masking import mask_secrets
from gpujobs.models import Instance, Job, JobEvent, WebhookDelivery
from gpujobs.novita.spec import REMOVAL_STATUSES
from gpujobs.states import DeliveryStatus, InstanceStatus
from gpujobs.ui import bp

# A row we finished deleting: if Novita still shows the instance, it has leaked. (Failed rows are
# kept on purpose when GPUJOBS_DELETE_ON_TIMEOUT=0, see records.WANTED, so they are not leaks.)
UNWANTED_INSTANCE_STATUSES = frozenset({InstanceStatus.DELETED})
PREVIEW_CHARS = 90


def job_view(job: Job) -> dict[str, Any]:
    """A job as the API shows it, with params, result, error and webhook URL masked."""
    view = resources.Job.json_of(job)
    view["result"] = mask_secrets(view["result"])
    view["paramsPreview"] = preview(view["params"])
    view["created"] = job.created_at
    view["finished"] = job.finished_at
    view["started"] = job.started_at
    return view


def event_view(event: JobEvent) -> dict[str, Any]:
    """One timeline entry, its data masked."""
    view = resources.JobEvent.json_of(event)
    view["at"] = event.created_at
    return view


def instance_view(instance: Instance, now: datetime) -> dict[str, Any]:
    """An instance with its age, flag and endpoints as display lines."""
    view = resources.Instance.json_of(instance)
    view["endpoints"] = endpoint_lines(view["endpoints"])
    view["age"] = duration(now - instance.created_at)
    view["flag"] = instance_flag(instance)
    view["created"] = instance.created_at
    view["timeLeft"] = time_left(instance, now)
    return view


def time_left(instance: Instance, now: datetime) -> str | None:
    """``1 h 5 m left (then delete)``, ``expired``, or None for an instance without a deadline."""
    if instance.expires_at is None:
        return None
    if instance.expires_at <= now:
        return f"expired ({instance.on_expiry})"
    return f"{duration(instance.expires_at - now)} left (then {instance.on_expiry})"


def instance_flag(instance: Instance) -> str | None:
    """``lost`` (we think it exists, Novita does not) or ``leaked`` (Novita has one we gave up on)."""
    if instance.status == InstanceStatus.LOST:
        return "lost"
    novita = instance.novita_status
    if instance.status in UNWANTED_INSTANCE_STATUSES and novita and novita not in REMOVAL_STATUSES:
        return "leaked"
    return None


def delivery_view(delivery: WebhookDelivery) -> dict[str, Any]:
    """A webhook delivery as the API shows it (no payload), the receiver's URL masked."""
    view = resources.Delivery.json_of(delivery)
    view["created"] = delivery.created_at
    view["nextAttempt"] = delivery.next_attempt_at if delivery.status == DeliveryStatus.PENDING else None
    return view


def endpoint_lines(endpoints: Any) -> list[str]:
    """An instance's endpoints as short lines: ``8888/http → https://...``, ``ssh: ssh -p ...``."""
    if isinstance(endpoints, dict) and "port" in endpoints:
        port = "/".join(str(endpoints[k]) for k in ("port", "type") if endpoints.get(k))
        return [f"{port} → {endpoints['endpoint']}" if endpoints.get("endpoint") else port]
    if isinstance(endpoints, dict):
        lines = []
        for key, value in endpoints.items():
            nested = isinstance(value, dict | list)
            lines.extend(
                endpoint_lines(value) if nested else [f"{key}: {value}"] if value not in (None, "") else []
            )
        return lines
    if isinstance(endpoints, list):
        return [line for item in endpoints for line in endpoint_lines(item)]
    return [] if endpoints in (None, "") else [str(endpoints)]


def preview(value: Any) -> str:
    """Compact JSON cut to one table cell."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def duration(delta: Any) -> str:
    """``3 d 4 h``, ``2 h 5 m``, ``4 m 10 s`` or ``850 ms``: the two largest units."""
    seconds = delta.total_seconds()
    if seconds < 1:
        return f"{max(seconds, 0) * 1000:.0f} ms"
    whole = int(seconds)
    days, hours, minutes, secs = whole // 86400, whole // 3600 % 24, whole // 60 % 60, whole % 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} m"
    return f"{minutes} m {secs} s" if minutes else f"{seconds:.1f} s"


@bp.app_template_filter("when")
def when(value: datetime | None) -> str:
    """A timestamp in UTC, to the second."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "—"


@bp.app_template_filter("ago")
def ago(value: datetime | None) -> str:
    """How long ago, e.g. ``4 m 10 s ago``."""
    return f"{duration(datetime.now(UTC) - value)} ago" if value else "—"


@bp.app_template_filter("compact_json")
def compact_json(value: Any) -> str:
    """One-line JSON (already masked by the view functions)."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), sort_keys=True, default=str)


@bp.app_template_filter("pretty_json")
def pretty_json(value: Any) -> str:
    """Indented JSON for a ``<pre>`` block (already masked by the view functions)."""
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True, default=str)
