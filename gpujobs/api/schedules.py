"""``/v1/schedules``: cron schedules that queue a job at each tick (beat runs them: gpujobs.schedules)."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, g, url_for
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator
from sqlalchemy import select

from gpujobs import resources, schedules
from gpujobs.api import schemas
from gpujobs.api.auth import require_api_key
from gpujobs.api.fields import Priority
from gpujobs.api.openapi import operation
from gpujobs.api.pagination import PageQuery, after_cursor, page
from gpujobs.api.validation import parse_body, parse_query
from gpujobs.extensions import db
from gpujobs.models import Schedule

bp = Blueprint("schedules", __name__, url_prefix="/v1/schedules")

TAG = "schedules"


class CreateSchedule(BaseModel):
    """Body of ``POST /v1/schedules``; ``params`` are validated by the definition's own model."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "nightly-sum",
                    "cron": "0 3 * * *",
                    "timezone": "Europe/Berlin",
                    "definitionKey": "compute.math",
                    "params": {"operation": "sum", "numbers": [1, 2, 3]},
                    "priority": "low",
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=100, description="unique per tenant")
    cron: str = Field(
        min_length=1, max_length=100, description="5 fields (m h dom mon dow) or @hourly, @daily..."
    )
    definitionKey: str = Field(min_length=1, max_length=100)
    definitionVersion: int = Field(default=1, ge=1, le=1000)
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = None
    timezone: str = Field(
        default="UTC", min_length=1, max_length=64, description="IANA zone the cron reads in"
    )
    enabled: StrictBool = True


class UpdateSchedule(BaseModel):
    """Body of ``PATCH /v1/schedules/{id}``: what to change, the rest is kept. ``enabled: false`` pauses,
    ``true`` resumes from the next tick; a new ``cron`` or ``timezone`` runs from its first tick after
    now; ``priority: null`` goes back to the default."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"enabled": False},
                {"cron": "30 4 * * 1-5", "timezone": "Europe/Berlin"},
                {"params": {"operation": "sum", "numbers": [4, 5, 6]}, "priority": "high"},
            ]
        },
    )

    enabled: StrictBool | None = None
    cron: str | None = Field(
        None, min_length=1, max_length=100, description="5 fields (m h dom mon dow) or @hourly, @daily..."
    )
    timezone: str | None = Field(None, min_length=1, max_length=64, description="IANA zone the cron reads in")
    params: dict[str, Any] | None = Field(None, description="validated by the schedule's definition")
    priority: Priority = None

    @model_validator(mode="after")
    def _changes_something(self) -> UpdateSchedule:
        if not self.model_fields_set:
            raise ValueError("send at least one of enabled, cron, timezone, params, priority")
        return self


class SchedulePage(schemas.Out):
    """One page of schedules, newest first; pass ``nextCursor`` as ``cursor`` for the next."""

    items: list[resources.Schedule]
    nextCursor: str | None


@bp.post("")
@operation(
    summary="Create a cron schedule",
    tag=TAG,
    request=CreateSchedule,
    responses={
        201: resources.Schedule,
        409: "A schedule of this name exists, or the schedules limit is reached (limitName, limit, used)",
    },
)
@require_api_key
def create_schedule() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Store a schedule; beat queues its job at every tick from the next one on."""
    body = parse_body(CreateSchedule)
    schedule = schedules.create(
        g.tenant.id,
        name=body.name,
        cron=body.cron,
        definition_key=body.definitionKey,
        definition_version=body.definitionVersion,
        params=body.params,
        priority=body.priority,
        timezone=body.timezone,
        enabled=body.enabled,
    )
    location = url_for("schedules.get_schedule", schedule_id=schedule.id)
    return resources.Schedule.json_of(schedule), 201, {"Location": location}


@bp.get("")
@operation(summary="List schedules, newest first", tag=TAG, query=PageQuery, responses={200: SchedulePage})
@require_api_key
def list_schedules() -> dict[str, Any]:
    """The caller's schedules, cursor-paginated."""
    args = parse_query(PageQuery)
    query = select(Schedule).where(Schedule.tenant_id == g.tenant.id)
    query = after_cursor(query, Schedule, args.cursor).limit(args.limit + 1)
    return page(list(db.session.scalars(query)), args.limit, resources.Schedule.json_of)


@bp.get("/<uuid:schedule_id>")
@operation(summary="Get a schedule", tag=TAG, responses={200: resources.Schedule})
@require_api_key
def get_schedule(schedule_id: uuid.UUID) -> dict[str, Any]:
    """One schedule with its next and last run."""
    return resources.Schedule.json_of(schedules.get(schedule_id, g.tenant.id))


@bp.patch("/<uuid:schedule_id>")
@operation(
    summary="Change, pause or resume a schedule",
    tag=TAG,
    request=UpdateSchedule,
    responses={200: resources.Schedule},
)
@require_api_key
def update_schedule(schedule_id: uuid.UUID) -> dict[str, Any]:
    """Resuming, or a new cron or zone, starts from the next tick: ticks missed are not made up."""
    body = parse_body(UpdateSchedule)
    changed = schedules.change(
        schedule_id,
        g.tenant.id,
        enabled=body.enabled,
        cron=body.cron,
        timezone=body.timezone,
        params=body.params,
        priority=body.priority if "priority" in body.model_fields_set else schedules.KEEP,
    )
    return resources.Schedule.json_of(changed)


@bp.delete("/<uuid:schedule_id>")
@operation(summary="Delete a schedule", tag=TAG, responses={204: "Deleted"})
@require_api_key
def delete_schedule(schedule_id: uuid.UUID) -> tuple[str, int]:
    """Remove a schedule; the jobs it already queued are not touched."""
    schedules.remove(schedule_id, g.tenant.id)
    return "", 204
