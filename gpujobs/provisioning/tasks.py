"""Celery tasks of the provisioning chain (monitor, reconcile, costs): thin entry points over the domain
code."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from gpujobs.provisioning import costs, lifetimes, monitor, reconcile

# A sweep beat runs (gpujobs.celery_settings schedules and routes it with the others in gpujobs.tasks).
SWEEP_RECONCILE_TASK = "gpujobs.sweep.reconcile"
SWEEP_COSTS_TASK = "gpujobs.sweep.costs"
SWEEP_LIFETIMES_TASK = "gpujobs.sweep.lifetimes"


@shared_task(name=monitor.MONITOR_TASK, soft_time_limit=60, time_limit=90)
def monitor_instance(job_id: str, attempt: int, *args: Any) -> None:
    """One look at a provisioning (or action) job's instance; re-publishes itself until the job ends."""
    monitor.poll(monitor.Watch.from_args(job_id, attempt, *args))


@shared_task(name=SWEEP_RECONCILE_TASK, soft_time_limit=300, time_limit=330)
def sweep_reconcile() -> dict[str, Any]:
    """Delete leaked Novita instances, mark lost ones, settle stranded rows (safe to run twice at once)."""
    return reconcile.sweep()


@shared_task(name=SWEEP_COSTS_TASK, soft_time_limit=120, time_limit=150)
def sweep_costs() -> dict[str, Any]:
    """Charge billed instances the time since the last look (safe to run twice at once)."""
    return costs.accrue()


@shared_task(name=SWEEP_LIFETIMES_TASK, soft_time_limit=60, time_limit=90)
def sweep_lifetimes() -> dict[str, int]:
    """Warn instances near their deadline, stop or delete those past it (safe to run twice at once)."""
    return lifetimes.sweep()
