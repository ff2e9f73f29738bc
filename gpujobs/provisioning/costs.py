"""What GPU instances cost: accrued by a sweep from each instance's price and Novita's status.

An instance's price (``price_per_hour_units``, 1/100,000 USD per hour for the whole instance) is what it
costs while Novita bills it. Novita bills from the image pull (`pulling`) on, through running and any
change of state, and stops billing the GPU when the instance has `exited` (disk above the free 60 GB is
still charged; not counted here) or is `removed` (docs/novita-api.md §8). Before the pull (`pending`,
`toCreate`, `creating`) nothing is billed. Any other status, including ones Novita adds later, counts
as billed: a guard rail had better count too much than too little.

The cost sweep (beat, every ``GPUJOBS_COST_ACCRUAL_SECONDS``) looks at every instance that may exist
at Novita and charges the billed part of the time since its last look (``cost_accrued_at``) to
``instances.cost_units`` and to the clock hours in ``instance_cost_hours``. Which part was billed comes
from the mirrored Novita status and, where Novita gives them, its last start and stop times
(``novita_started_at``, ``novita_stopped_at``; see ``billed_spans``): a stop is charged up to Novita's
``stoppedAt`` however late it is seen, a restart from its ``startedAt``. Without times a change of state
is charged to within one sweep interval (plus the monitor's or the reconcile sweep's delay in seeing it).
Only time after the last look is ever charged, so nothing is charged twice, and amounts only ever grow
(time a sweep charged before a stop was seen stays charged): ``gpujobs_gpu_cost_usd_total`` is their
sum per tenant, a true counter, whichever process answers the scrape. An advisory lock lets one sweep
run at a time; a second returns at once.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert

from gpujobs import jobs
from gpujobs.extensions import db, rows_changed
from gpujobs.models import Instance, InstanceCostHour, Tenant
from gpujobs.novita import spec
from gpujobs.states import InstanceStatus

log = logging.getLogger(__name__)

LOCK_NAME = "gpujobs.sweep.costs"
# Novita statuses of an instance it does not bill (§8): before the image pull, exited, removed.
UNBILLED_STATUSES = frozenset(
    {
        spec.Status.PENDING.value,
        spec.Status.TO_CREATE.value,
        spec.Status.CREATING.value,
        spec.Status.EXITED.value,
        spec.Status.REMOVED.value,
    }
)
# Rows whose instance Novita no longer has: nothing left to bill, whatever Novita last said.
GONE_ROWS = (InstanceStatus.DELETED, InstanceStatus.LOST)
MAX_COST_HOURS = 720  # the longest window GET /v1/metrics/cost answers (30 days)
_HOUR = timedelta(hours=1)
_SECONDS_PER_HOUR = Decimal(3600)
_UNITS_PER_USD = Decimal(spec.PRICE_UNITS_PER_USD)


def is_billed(novita_status: str | None) -> bool:
    """Whether Novita bills an instance in this status (None: never seen there, so not billed)."""
    return bool(novita_status) and novita_status not in UNBILLED_STATUSES


def billed_spans(
    since: datetime,
    now: datetime,
    novita_status: str | None,
    started: datetime | None,
    stopped: datetime | None,
) -> list[tuple[datetime, datetime]]:
    """The parts of ``[since, now)`` Novita billed, as far as its status and last start and stop tell.

    Without times: all of it while the status is billed, none otherwise (a stop then counts from the
    look that saw it). Not billed now, with a stop after ``since``: billed up to that stop. A start after
    the last stop: the time between them was not billed. A first start (no stop) leaves the start alone,
    as Novita bills the image pull before it. Times before ``since`` change nothing.
    """
    end = now if is_billed(novita_status) else min(stopped or since, now)
    if started is not None and stopped is not None and stopped < started:
        spans = [(since, min(stopped, end)), (max(since, started), end)]
    else:
        spans = [(since, end)]
    return [(start, stop) for start, stop in spans if start < stop]


def accrue(now: datetime | None = None) -> dict[str, Any]:
    """One cost sweep: charge each instance the billed part of the time since its last look; returns
    what it did."""
    if not db.session.scalar(text("SELECT pg_try_advisory_xact_lock(hashtext(:name))"), {"name": LOCK_NAME}):
        db.session.rollback()
        return {"skipped": True}
    now = now or jobs.utcnow()
    rows = db.session.execute(
        select(
            Instance.id,
            Instance.tenant_id,
            Instance.price_per_hour_units,
            Instance.novita_status,
            Instance.cost_accrued_at,
            Instance.novita_started_at,
            Instance.novita_stopped_at,
        ).where(
            Instance.status.notin_(GONE_ROWS),
            Instance.novita_id.is_not(None),
            Instance.price_per_hour_units.is_not(None),
        )
    ).all()
    spans = {
        row.id: billed_spans(
            row.cost_accrued_at, now, row.novita_status, row.novita_started_at, row.novita_stopped_at
        )
        for row in rows
    }
    charged = sum(
        _charge(row.id, row.tenant_id, row.price_per_hour_units or 0, row.cost_accrued_at, spans[row.id], now)
        for row in rows
        if spans[row.id]
    )
    # Nothing billed since: the mark moves on, so a later start is charged from about when it happened.
    db.session.execute(
        update(Instance)
        .where(
            Instance.id.in_([row.id for row in rows if not spans[row.id]]),
            Instance.cost_accrued_at < now,
        )
        .values(cost_accrued_at=now, updated_at=Instance.updated_at)
    )
    db.session.commit()
    return {"skipped": False, "looked": len(rows), "charged": charged}


def _charge(
    instance_id: uuid.UUID,
    tenant_id: uuid.UUID,
    price_units: int,
    since: datetime,
    spans: list[tuple[datetime, datetime]],
    now: datetime,
) -> bool:
    """Add the billed ``spans`` of ``[since, now)`` at the instance's price to its total and its clock
    hours, and move its mark to ``now``; False when the row's mark moved meanwhile (a new create on the
    row): it is charged from the new mark next time."""
    by_hour: dict[datetime, Decimal] = {}
    for start, stop in spans:
        hour = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        while hour < stop:
            seconds = (min(hour + _HOUR, stop) - max(hour, start)).total_seconds()
            by_hour[hour] = (
                by_hour.get(hour, Decimal(0)) + price_units * Decimal(str(seconds)) / _SECONDS_PER_HOUR
            )
            hour += _HOUR
    units = sum(by_hour.values(), Decimal(0))
    moved = db.session.execute(
        update(Instance)
        .where(Instance.id == instance_id, Instance.cost_accrued_at == since)
        # updated_at keeps meaning "the status changed": the reconcile sweep reads it so
        .values(cost_units=Instance.cost_units + units, cost_accrued_at=now, updated_at=Instance.updated_at)
    )
    if rows_changed(moved) != 1:
        return False
    statement = insert(InstanceCostHour).values(
        [
            {"instance_id": instance_id, "tenant_id": tenant_id, "hour": hour, "units": amount}
            for hour, amount in by_hour.items()
        ]
    )
    db.session.execute(
        statement.on_conflict_do_update(
            index_elements=[InstanceCostHour.instance_id, InstanceCostHour.hour],
            set_={"units": InstanceCostHour.units + statement.excluded.units},
        )
    )
    return True


def _usd(units: Decimal | int | None) -> float:
    return round(float(Decimal(units or 0) / _UNITS_PER_USD), 6)


def spend(tenant_id: uuid.UUID, hours: int) -> dict[str, Any]:
    """``GET /v1/metrics/cost``: the tenant's spend in the last ``hours`` clock hours (the current one
    included), in total, per hour (oldest first, every hour present), per instance and per GPU product."""
    first = jobs.utcnow().replace(minute=0, second=0, microsecond=0) - (hours - 1) * _HOUR
    in_window = (InstanceCostHour.tenant_id == tenant_id, InstanceCostHour.hour >= first)
    per_hour = dict(
        db.session.execute(
            select(InstanceCostHour.hour, func.sum(InstanceCostHour.units))
            .where(*in_window)
            .group_by(InstanceCostHour.hour)
        ).all()
    )
    per_instance = db.session.execute(
        select(
            Instance.id,
            Instance.label,
            Instance.product_name,
            Instance.gpu_num,
            func.sum(InstanceCostHour.units),
        )
        .join(Instance, Instance.id == InstanceCostHour.instance_id)
        .where(*in_window)
        .group_by(Instance.id)
        .order_by(func.sum(InstanceCostHour.units).desc(), Instance.id)
    ).all()
    per_product: dict[str, Decimal] = {}
    for *_, product_name, _gpu_num, units in per_instance:
        per_product[product_name or ""] = per_product.get(product_name or "", Decimal(0)) + units
    return {
        "hours": hours,
        "since": first.isoformat(),
        "totalUsd": _usd(sum(per_hour.values(), Decimal(0))),
        "byHour": [
            {"period": hour.isoformat(), "usd": _usd(per_hour.get(hour))}
            for hour in (first + index * _HOUR for index in range(hours))
        ],
        "byInstance": [
            {
                "instanceId": str(instance_id),
                "label": label,
                "productName": product,
                "gpuNum": gpus,
                "usd": _usd(units),
            }
            for instance_id, label, product, gpus, units in per_instance
        ],
        "byProduct": [
            {"productName": product, "usd": _usd(units)}
            for product, units in sorted(per_product.items(), key=lambda item: (-item[1], item[0]))
        ],
    }


def totals_by_tenant() -> dict[str, float]:
    """USD every tenant's instances have accrued so far, by tenant name (only ever grows)."""
    rows = db.session.execute(
        select(Tenant.name, func.sum(Instance.cost_units))
        .join(Instance, Instance.tenant_id == Tenant.id)
        .group_by(Tenant.name)
        .order_by(Tenant.name)
    )
    return {name: float(Decimal(units) / _UNITS_PER_USD) for name, units in rows}
