"""GPU quotas per tenant: instances provisioning or running at once, and the USD per hour they cost together.

Which instances count is what bills a GPU, or soon will: `requested`, `creating` and `starting` (a GPU is
being taken), `running` and `stopping` (billed until Novita says exited), and `deleting` (billed until
Novita confirms it gone: a delete whose answer proved nothing must not free a place). A `stopped` instance
keeps only its disk (Novita bills storage, not the GPU), so it does not count; starting it again is
checked like a create. `deleted`, `lost` and `failed` are history, and instances gpujobs only watches
(`external`) were created elsewhere, so neither counts.

An instance's USD per hour is its price once a product is chosen (`price_per_hour_units`); before that,
under a USD quota, the most it may be placed at, reserved on its row when its job is queued
(`reserved_price_units`): the request's `maxPricePerHour`, else the dearest product in stock that matches
it where it may be placed, else, when Novita cannot say, all the room the quota has left. The create step
never places an instance above its reservation (`price_cap`), so no placement passes the quota.

A create or a start takes a lock per tenant (a PostgreSQL advisory lock, held until its transaction
ends), then counts, checks and writes the row in that same transaction, so concurrent requests never
share the last place.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from flask import current_app
from sqlalchemy import func, select, text

from gpujobs import limits
from gpujobs.exceptions import GpuJobsError, LimitReached
from gpujobs.extensions import among, db
from gpujobs.models import Instance, InstanceRow
from gpujobs.novita import spec
from gpujobs.provisioning.catalogue import Catalogue
from gpujobs.provisioning.novita_client import novita_client
from gpujobs.provisioning.params import CreateInstanceParams
from gpujobs.provisioning.selection import Search, regions_in_order
from gpujobs.states import InstanceStatus

log = logging.getLogger(__name__)

#: The statuses in which an instance counts against its tenant's quotas (see the module's docstring).
COUNTED = (
    InstanceStatus.REQUESTED,
    InstanceStatus.CREATING,
    InstanceStatus.RUNNING,
    InstanceStatus.STOPPING,
    InstanceStatus.STARTING,
    InstanceStatus.DELETING,
)

# What one instance costs an hour, in Novita units: its price, else what its row reserves.
_CHARGE = func.coalesce(Instance.price_per_hour_units, Instance.reserved_price_units, 0)


@dataclass(frozen=True)
class Use:
    """How much of its quotas a tenant uses now."""

    instances: int
    units_per_hour: int  # Novita units, 1/100,000 USD


def use(tenant_id: uuid.UUID) -> Use:
    """The tenant's counted instances and their USD per hour (in units)."""
    row = db.session.execute(
        select(func.count(), func.coalesce(func.sum(_CHARGE), 0)).where(
            Instance.tenant_id == tenant_id, among(Instance.status, COUNTED), Instance.external.is_(False)
        )
    ).one()
    return Use(int(row[0]), int(row[1]))


def units_of(usd: Decimal | float) -> int:
    """Novita units for an amount of USD (exact for a Decimal, as quotas are stored)."""
    return round(Decimal(str(usd)) * spec.PRICE_UNITS_PER_USD)


def usd_of(units: int) -> float:
    """USD for an amount in Novita units."""
    return units / spec.PRICE_UNITS_PER_USD


def usage(tenant_id: uuid.UUID, in_force: limits.Limits) -> dict[str, Any]:
    """Both quotas with their use, as ``GET /v1/limits`` answers them (``limit`` None: no quota)."""
    used = use(tenant_id)
    usd_limit = in_force.max_usd_per_hour
    return {
        "instances": {"limit": in_force.max_instances, "used": used.instances},
        "usdPerHour": {
            "limit": None if usd_limit is None else float(usd_limit),
            "used": usd_of(used.units_per_hour),
        },
    }


def reserve_create(tenant_id: uuid.UUID, params: CreateInstanceParams) -> int | None:
    """Make room for one more instance in this transaction, or raise LimitReached (409); the caller
    inserts its row before the transaction ends. Returns the units per hour to reserve on the row
    (None without a USD quota: nothing to hold)."""
    in_force = limits.of(tenant_id)
    if in_force.max_usd_per_hour is None:
        if in_force.max_instances is not None:  # no quota at all: nothing to lock or count
            _check(in_force, _locked_use(tenant_id), 0)
        return None
    price = None if params.maxPricePerHour is None else units_of(params.maxPricePerHour)
    if price is None:
        price = highest_listed(params)  # before the lock: it may ask Novita
    used = _locked_use(tenant_id)
    if price is None:
        price = max(units_of(in_force.max_usd_per_hour) - used.units_per_hour, 0)
    _check(in_force, used, price)  # so what is reserved is at most the quota
    return price


def reserve_start(tenant_id: uuid.UUID, instance: Instance) -> None:
    """Make room for a stopped instance to run again in this transaction, or raise LimitReached (409).

    Only a stopped instance gpujobs made needs room: in any other status it already counts or cannot
    start, and an external instance is not held to the quotas."""
    if instance.status != InstanceStatus.STOPPED or instance.external:
        return
    units = instance.price_per_hour_units or instance.reserved_price_units or 0
    _check(limits.of(tenant_id), _locked_use(tenant_id), units)


def price_cap(instance: InstanceRow, params: CreateInstanceParams) -> float | None:
    """The most the create step may place the instance at, in USD per hour: the request's cap, or lower,
    what the instance reserved of its tenant's USD quota (None: no cap)."""
    caps = [params.maxPricePerHour]
    if instance.reserved_price_units is not None:
        caps.append(usd_of(instance.reserved_price_units))
    return min((cap for cap in caps if cap is not None), default=None)


def highest_listed(params: CreateInstanceParams) -> int | None:
    """Units per hour of the dearest product in stock that the create step could choose for ``params``
    (None when Novita lists none, or cannot be asked now)."""
    search = Search(params.productName, params.gpuNum, rootfs_gb=0)
    try:
        with novita_client(max_attempts=1) as client:  # a request waits on it: no retries
            catalogue = Catalogue(client)
            fallback = current_app.config["GPUJOBS_REGION_FALLBACK"]
            clusters = regions_in_order(params.region, fallback, catalogue.list_clusters())
            prices = [candidate.price_units for candidate in search.candidates(catalogue, clusters)]
    except GpuJobsError as exc:
        log.warning("no price listed for %s now (%s): the quota's room is reserved", params.productName, exc)
        return None
    return max(prices, default=None)


def _locked_use(tenant_id: uuid.UUID) -> Use:
    """The tenant's use, read under its quota lock (held until the caller's transaction ends)."""
    db.session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:ref))"), {"ref": f"instances:{tenant_id}"}
    )
    return use(tenant_id)


def _check(in_force: limits.Limits, used: Use, units: int) -> None:
    """LimitReached unless one more instance costing ``units`` an hour fits both quotas."""
    if in_force.max_instances is not None and used.instances >= in_force.max_instances:
        raise LimitReached("instances", in_force.max_instances, used.instances)
    if in_force.max_usd_per_hour is None:
        return
    limit_units = units_of(in_force.max_usd_per_hour)
    if used.units_per_hour >= limit_units or used.units_per_hour + units > limit_units:
        limit, spent = float(in_force.max_usd_per_hour), usd_of(used.units_per_hour)
        raise LimitReached(
            "usdPerHour",
            limit,
            spent,
            f"the tenant's usdPerHour limit is reached: ${spent:.2f} of ${limit:.2f} an hour in use, "
            f"and this instance may cost up to ${usd_of(units):.2f} an hour",
        )
