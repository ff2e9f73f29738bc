"""Cron schedules: each submits one job per tick of its cron expression, read in its own time zone.

Beat calls :func:`run_due_schedules` every few seconds. It takes the due rows ``FOR UPDATE SKIP LOCKED``
(a second beat skips them), moves each to its first tick strictly after now and queues one job, in one
transaction: a backlog of ticks missed while the service was down runs once, not once per missed tick.
The job's idempotency key names the schedule and the tick, and the jobs table keeps such keys unique per
tenant, so a tick is never submitted twice, even from a row rewound by a restore.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from pydantic import ValidationError
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError

from gpujobs import enqueue, jobs, limits, operations
from gpujobs.dispatch import Dispatch, commit_and_publish, dispatch_of
from gpujobs.exceptions import Conflict, InvalidField, LimitReached, NotFound
from gpujobs.extensions import db, rows_changed, violated_constraint
from gpujobs.models import Job, Schedule
from gpujobs.registry import get_definition

log = logging.getLogger(__name__)

SCHEDULE_BATCH_SIZE = 500
NAME_CONSTRAINT = "uq_schedules_tenant_name"
CRON_FIELDS = 5  # minute hour day-of-month month day-of-week; no seconds: beat ticks every few seconds
CRON_KEYWORDS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})


def _zone(name: str) -> ZoneInfo:
    """The IANA zone called ``name`` (``Europe/Berlin``), or InvalidField naming ``timezone``."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidField("timezone", f"unknown time zone {name!r}; use an IANA name such as UTC") from None


def next_run_after(cron: str, timezone: str, after: datetime) -> datetime:
    """The first tick strictly after ``after``, in UTC; raises InvalidField for a bad cron or zone.

    Ticks follow the zone's wall clock. As in Vixie cron, a wall time repeated when clocks go back runs
    once, unless the hour field is ``*`` (an hourly job still runs every real hour).
    """
    zone = _zone(timezone)
    if cron.strip() not in CRON_KEYWORDS and len(cron.split()) != CRON_FIELDS:
        raise InvalidField("cron", f"cron needs {CRON_FIELDS} fields (minute hour day month weekday)")
    try:
        ticks = croniter(cron.strip(), after.astimezone(zone))
        every_hour = ticks.expanded[1] == ["*"]
        while True:
            tick = ticks.get_next(datetime).astimezone(zone)
            if every_hour or not _repeated_wall_time(tick, zone):
                return tick.astimezone(UTC)
    except CroniterError as exc:
        raise InvalidField("cron", f"invalid cron expression {cron!r}: {exc}") from None


def _repeated_wall_time(tick: datetime, zone: ZoneInfo) -> bool:
    """True for the second pass through a wall time that clocks going back repeat."""
    first = tick.replace(tzinfo=None).replace(tzinfo=zone, fold=0)
    return tick.utcoffset() != first.utcoffset()


def create(
    tenant_id: uuid.UUID,
    *,
    name: str,
    cron: str,
    definition_key: str,
    definition_version: int,
    params: dict[str, Any],
    priority: str | int | None = None,
    timezone: str = "UTC",
    enabled: bool = True,
    now: datetime | None = None,
) -> Schedule:
    """Validate and store a schedule whose first run is its first tick after ``now``.

    Raises InvalidField (definition, params, cron, timezone, priority), Conflict (the name is taken) and
    LimitReached (the tenant has as many schedules as it may).
    """
    definition, valid_params = operations.validated(tenant_id, definition_key, definition_version, params)
    level = limits.allowed_priority(tenant_id, priority)
    schedule = Schedule(
        tenant_id=tenant_id,
        name=name,
        cron=cron.strip(),
        timezone=timezone,
        definition_key=definition.key,
        definition_version=definition.version,
        params=valid_params,
        priority=level,
        enabled=enabled,
        next_run_at=next_run_after(cron, timezone, now or jobs.utcnow()),
    )
    limits.reserve_schedule(tenant_id)
    db.session.add(schedule)
    try:
        db.session.commit()
    except IntegrityError as exc:
        db.session.rollback()
        if violated_constraint(exc) != NAME_CONSTRAINT:
            raise
        raise Conflict(f"a schedule named {name!r} already exists") from None
    return schedule


def get(schedule_id: uuid.UUID, tenant_id: uuid.UUID) -> Schedule:
    """The tenant's schedule; NotFound also for another tenant's."""
    schedule = db.session.scalar(
        select(Schedule).where(Schedule.id == schedule_id, Schedule.tenant_id == tenant_id)
    )
    if schedule is None:
        raise NotFound(f"no schedule {schedule_id}")
    return schedule


def remove(schedule_id: uuid.UUID, tenant_id: uuid.UUID) -> None:
    """Delete a schedule (jobs it already queued go on); NotFound when the tenant has no such schedule."""
    deleted = db.session.execute(
        delete(Schedule)
        .where(Schedule.id == schedule_id, Schedule.tenant_id == tenant_id)
        .returning(Schedule.id)
    ).first()
    db.session.commit()
    if deleted is None:
        raise NotFound(f"no schedule {schedule_id}")


#: ``change``'s default for ``priority``, where None means the tenant's default priority.
KEEP: Any = object()


def change(
    schedule_id: uuid.UUID,
    tenant_id: uuid.UUID,
    *,
    enabled: bool | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    params: dict[str, Any] | None = None,
    priority: str | int | None = KEEP,
    now: datetime | None = None,
) -> Schedule:
    """Change what a schedule runs and when (what is None, or ``KEEP``, is kept); NotFound when the
    tenant has no such schedule.

    Params are validated by the schedule's definition, a priority against the tenant's limit, a cron and
    a zone as at creation (InvalidField naming each). A new cron or zone, or resuming, moves the next run
    to the first tick after now: ticks missed while paused are not made up. The row is locked for the
    change, so the tick sweep (``SKIP LOCKED``) neither runs it half-changed nor overwrites it.
    """
    schedule = db.session.scalar(
        select(Schedule)
        .where(Schedule.id == schedule_id, Schedule.tenant_id == tenant_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if schedule is None:
        raise NotFound(f"no schedule {schedule_id}")
    values: dict[str, Any] = {}
    if params is not None:
        key, version = schedule.definition_key, schedule.definition_version
        values["params"] = operations.validated(tenant_id, key, version, params)[1]
    if priority is not KEEP:
        values["priority"] = limits.allowed_priority(tenant_id, priority)
    if cron is not None:
        values["cron"] = cron.strip()
    if timezone is not None:
        values["timezone"] = timezone
    if enabled is not None:
        values["enabled"] = enabled
    if cron is not None or timezone is not None or (enabled and not schedule.enabled):
        when = values.get("cron", schedule.cron), values.get("timezone", schedule.timezone)
        values["next_run_at"] = next_run_after(*when, now or jobs.utcnow())
    for name, value in values.items():
        setattr(schedule, name, value)
    db.session.commit()
    return schedule


# Built once: the sweep runs every few seconds, busy or idle (loaded as objects: a due tick moves them).
_DUE = (
    select(Schedule)
    .where(Schedule.enabled, Schedule.next_run_at <= bindparam("now"))
    .order_by(Schedule.next_run_at)
    .limit(SCHEDULE_BATCH_SIZE)
    .with_for_update(skip_locked=True)
    .execution_options(populate_existing=True)
)


def run_due_schedules(now: datetime | None = None) -> int:
    """Queue one job for each due schedule and move it to its next tick; returns the jobs queued."""
    now = now or jobs.utcnow()
    due = db.session.scalars(_DUE, {"now": now}).all()
    if not due:
        db.session.rollback()  # read only: nothing to commit or publish
        return 0
    queued: list[Dispatch] = []
    for schedule in due:
        job = _run_tick(schedule, now)
        if job is not None:
            queued.append(dispatch_of(job))
    commit_and_publish(queued)
    log.info("schedules: %d due, %d jobs queued", len(due), len(queued))
    return len(queued)


def _run_tick(schedule: Schedule, now: datetime) -> Job | None:
    """Advance one locked schedule past ``now`` and queue the job of its due tick (None if none can be)."""
    tick = schedule.next_run_at
    try:
        following = next_run_after(schedule.cron, schedule.timezone, now)
    except InvalidField as exc:  # stored valid, unreadable now (a library change): stop, do not spin
        log.error("schedule %s: disabled, %s", schedule.id, exc)
        _advance(schedule, tick, enabled=False)
        return None
    if not _advance(schedule, tick, next_run_at=following, last_run_at=now):
        return None
    definition = get_definition(schedule.definition_key, schedule.definition_version)
    if definition is None:
        ref = f"{schedule.definition_key}@{schedule.definition_version}"
        log.warning("schedule %s: no definition %s here, tick skipped", schedule.id, ref)
        return None
    try:
        params = definition.validate_params(schedule.params)
    except ValidationError as exc:
        log.warning("schedule %s: params no longer valid, tick skipped: %s", schedule.id, exc)
        return None
    key = f"schedule:{schedule.id}:{tick.astimezone(UTC).isoformat()}"
    try:
        with db.session.begin_nested():
            return enqueue.new_job(
                tenant_id=schedule.tenant_id,
                definition=definition,
                params=params,
                priority=schedule.priority,
                idempotency_key=key,
            )
    except IntegrityError:  # the unique (tenant, idempotency key): this tick was queued before
        log.warning("schedule %s: tick %s was already queued, not queued again", schedule.id, tick)
        return None
    except LimitReached as exc:  # a GPU quota (gpujobs.quotas) refused it, as it would refuse the API
        log.warning("schedule %s: tick %s skipped: %s", schedule.id, tick, exc)
        return None


def _advance(schedule: Schedule, tick: datetime, **values: Any) -> bool:
    """Compare-and-set the schedule past ``tick``; False if something else moved it first."""
    moved = db.session.execute(
        update(Schedule)
        .where(Schedule.id == schedule.id, Schedule.next_run_at == tick, Schedule.enabled)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return rows_changed(moved) == 1
