"""``/v1/limits``: the caller's limits and how much of each it uses now."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g
from pydantic import Field

from gpujobs import limits
from gpujobs.api import schemas
from gpujobs.api.auth import require_api_key
from gpujobs.api.openapi import operation
from gpujobs.jobs import PriorityName

bp = Blueprint("limits", __name__, url_prefix="/v1")


class CountLimit(schemas.Out):
    """A limit on a count: ``limit`` (null: none) and the current ``used``."""

    limit: int | None
    used: int


class PriorityLimit(schemas.Out):
    """The highest priority a job or schedule may ask for (a higher one answers 422)."""

    limit: PriorityName


class UsdLimit(schemas.Out):
    """A quota on USD per hour: ``limit`` (null: none) and the current ``used``."""

    limit: float | None
    used: float


class TenantLimits(schemas.Out):
    """Each of the caller's limits, one object per limit."""

    runningJobs: CountLimit
    dispatchWindow: CountLimit = Field(
        description="fairness between tenants: jobs handed to the workers (published, up to the window, or "
        "running) at once; beyond it jobs wait queued and go out as these end (your running-jobs limit "
        "when one is set, else the operator's window)"
    )
    schedules: CountLimit
    priority: PriorityLimit
    instances: CountLimit = Field(
        description="GPU instances provisioning or running at once (requested, creating, starting, "
        "running, stopping, deleting; not stopped); a create or start over it answers 409"
    )
    usdPerHour: UsdLimit = Field(
        description="USD per hour of those instances together: each one's price, or until it is placed "
        "the most it may cost (its maxPricePerHour, else the dearest matching product); 409 over it"
    )


@bp.get("/limits")
@operation(summary="Your limits and their use", tag="metrics", responses={200: TenantLimits})
@require_api_key
def get_limits() -> dict[str, Any]:
    """Jobs running at once (over it, jobs wait queued), cron schedules (409 over it), highest priority,
    and the GPU quotas: instances at once and their USD per hour (409 over either)."""
    return limits.usage(g.tenant.id)
