"""Per-tenant limits: jobs running at once, the highest priority, cron schedules, and GPU quotas.

The operator sets defaults in the environment (``GPUJOBS_TENANT_MAX_*``) and overrides them per tenant
(``python -m gpujobs tenants set-limits``; a NULL column of ``tenant_limits`` takes the default). The
running-jobs limit is enforced when a worker claims a job (``gpujobs.jobs.claim``), so it holds across
the whole cluster; the priority limit at submit (422), the schedules limit when one is created (409),
the GPU quotas (instances, USD per hour; ``gpujobs.quotas``) when an instance is created or started (409).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from flask import current_app
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.dialects.postgresql import insert

from gpujobs import dispatch, enqueue, jobs, quotas
from gpujobs.exceptions import LimitReached
from gpujobs.extensions import db
from gpujobs.models import Job, Schedule, TenantLimits
from gpujobs.tenants import tenant_named

#: The columns ``set_limits`` may change, by the name the CLI and ``tenants show`` use.
COLUMNS = ("max_running_jobs", "max_priority", "max_schedules", "max_instances", "max_usd_per_hour")


@dataclass(frozen=True)
class Limits:
    """A tenant's limits in force: its own where set, else the operator's defaults."""

    max_running_jobs: int | None  # None: no limit
    max_priority: int  # a level of gpujobs.jobs.PRIORITY_NAMES
    max_schedules: int
    max_instances: int | None  # GPU instances provisioning or running at once; None: no limit
    max_usd_per_hour: Decimal | None  # what they may cost together; None: no limit


def defaults() -> Limits:
    """The operator's defaults, from the environment."""
    config = current_app.config
    return Limits(
        config["GPUJOBS_TENANT_MAX_RUNNING_JOBS"],
        jobs.PRIORITY_LEVELS[config["GPUJOBS_TENANT_MAX_PRIORITY"]],
        config["GPUJOBS_TENANT_MAX_SCHEDULES"],
        config["GPUJOBS_TENANT_MAX_INSTANCES"],
        config["GPUJOBS_TENANT_MAX_USD_PER_HOUR"],
    )


_LIMITS = TenantLimits.__table__
# Read on every submit (the GPU quotas): a Core statement built once, not an ORM load.
_OVERRIDES = select(*(_LIMITS.c[column] for column in COLUMNS)).where(
    _LIMITS.c.tenant_id == bindparam("tenant_id")
)


def overrides(tenant_id: uuid.UUID) -> dict[str, Any]:
    """The tenant's own values (None: the default applies)."""
    row = db.session.execute(_OVERRIDES, {"tenant_id": tenant_id}).one_or_none()
    return dict(zip(COLUMNS, row or (None,) * len(COLUMNS), strict=True))


def of(tenant_id: uuid.UUID) -> Limits:
    """The tenant's limits in force."""
    own = {column: value for column, value in overrides(tenant_id).items() if value is not None}
    return replace(defaults(), **own)


def set_limits(tenant_name: str, **values: int | Decimal | None) -> None:
    """Set some of the tenant's own limits (``max_running_jobs=4``); None puts one back to the default."""
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise TypeError(f"no such limit: {', '.join(sorted(unknown))}")
    tenant = tenant_named(tenant_name)
    db.session.execute(
        insert(TenantLimits)
        .values(tenant_id=tenant.id, **values)
        .on_conflict_do_update(index_elements=[TenantLimits.tenant_id], set_=values)
    )
    db.session.commit()


def allowed_priority(tenant_id: uuid.UUID, priority: str | int | None) -> int:
    """The priority level of ``priority``; InvalidField naming ``priority`` above the tenant's limit."""
    level, highest = jobs.priority_level(priority), of(tenant_id).max_priority
    if level > highest:
        raise enqueue.priority_above_limit(highest)
    return level


def reserve_schedule(tenant_id: uuid.UUID) -> None:
    """Make room for one more schedule in this transaction, or raise LimitReached (409).

    A lock per tenant serialises count-then-insert, so two requests cannot both take the last place;
    it is released when the caller's transaction ends.
    """
    db.session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:ref))"), {"ref": f"schedules:{tenant_id}"}
    )
    used, limit = schedule_count(tenant_id), of(tenant_id).max_schedules
    if used >= limit:
        db.session.rollback()
        raise LimitReached("schedules", limit, used)


def schedule_count(tenant_id: uuid.UUID) -> int:
    """The tenant's schedules, enabled or paused (a paused one may resume at any time)."""
    count = select(func.count()).select_from(Schedule).where(Schedule.tenant_id == tenant_id)
    return int(db.session.execute(count).scalar_one())


def running_count(tenant_id: uuid.UUID) -> int:
    """The tenant's jobs running now (an index of running jobs, not its history)."""
    return jobs.active_count(Job.tenant_id == tenant_id)


def usage(tenant_id: uuid.UUID) -> dict[str, Any]:
    """Each limit with its current use: the body of ``GET /v1/limits`` and the dashboard's panel."""
    limits = of(tenant_id)
    return {
        "runningJobs": {"limit": limits.max_running_jobs, "used": running_count(tenant_id)},
        "dispatchWindow": dispatch.window_of(tenant_id),
        "schedules": {"limit": limits.max_schedules, "used": schedule_count(tenant_id)},
        "priority": {"limit": jobs.PRIORITY_NAMES[limits.max_priority]},
        **quotas.usage(tenant_id, limits),
    }
