"""Celery tasks: thin entry points over the domain modules. Each is safe to run twice."""

from __future__ import annotations

import uuid
from typing import Any

from celery import shared_task
from celery.signals import worker_process_init, worker_ready

from gpujobs import runner, schedules, stats, sweeps, videos, webhooks
from gpujobs.dispatch import RUN_JOB_TASK

# The sweeps beat runs (gpujobs.celery_settings schedules them and routes them to MAINTENANCE_QUEUE, so a
# backlog of jobs never delays them); the reconcile sweep is in gpujobs.provisioning.tasks.
MAINTENANCE_QUEUE = "maintenance"
SWEEP_DISPATCH_TASK = "gpujobs.sweep.dispatch"
SWEEP_RESCUE_TASK = "gpujobs.sweep.rescue"
SWEEP_WEBHOOKS_TASK = "gpujobs.sweep.webhooks"
SWEEP_CLEANUP_TASK = "gpujobs.sweep.cleanup"
SWEEP_SCHEDULES_TASK = "gpujobs.sweep.schedules"
SWEEP_VIDEOS_TASK = "gpujobs.sweep.videos"


@shared_task(name=RUN_JOB_TASK)
def run_job(job_id: str) -> None:
    """Run one job (queue, time limits chosen per job when it is published)."""
    runner.run_job(uuid.UUID(job_id))


@shared_task(name=webhooks.DELIVER_TASK, soft_time_limit=60, time_limit=90)
def deliver_webhook(*delivery_ids: str) -> None:
    """Send one attempt of each delivery, in the given order (a job's events, oldest first)."""
    webhooks.deliver_in_order([uuid.UUID(delivery_id) for delivery_id in delivery_ids])


@shared_task(name=SWEEP_DISPATCH_TASK, soft_time_limit=60, time_limit=90)
def sweep_dispatch() -> None:
    """Publish jobs whose message never went out or was lost, and retries whose time came."""
    sweeps.dispatch_due()


@shared_task(name=SWEEP_RESCUE_TASK, soft_time_limit=60, time_limit=90)
def sweep_rescue() -> None:
    """Rescue jobs whose lease expired and time out jobs that overran."""
    sweeps.rescue_stuck()


@shared_task(name=SWEEP_WEBHOOKS_TASK, soft_time_limit=60, time_limit=90)
def sweep_webhooks() -> None:
    """Publish webhook deliveries whose next attempt is due."""
    sweeps.publish_due_webhooks()


@shared_task(name=SWEEP_CLEANUP_TASK, soft_time_limit=600, time_limit=660)
def sweep_cleanup() -> None:
    """Delete finished jobs past retention (events and deliveries go too); fold past hours' counters."""
    sweeps.clean_up()
    stats.compact_hours()


@shared_task(name=SWEEP_SCHEDULES_TASK, soft_time_limit=60, time_limit=90)
def sweep_schedules() -> None:
    """Queue the jobs of due cron schedules (once per tick, even with two beats)."""
    schedules.run_due_schedules()


@shared_task(name=SWEEP_VIDEOS_TASK, soft_time_limit=600, time_limit=660)
def sweep_videos() -> None:
    """Delete uploads and encoded videos past retention."""
    videos.clean_up_videos()


@worker_ready.connect
def recover_orphans(sender: Any, **_: Any) -> None:
    """At worker start, rescue jobs left by dead workers without waiting for beat."""
    sender.app.send_task(SWEEP_RESCUE_TASK)


@worker_process_init.connect
def allow_ending_process(**_: Any) -> None:
    """Sent in prefork pool processes only: there a handler that ignores its cancel request may be stopped."""
    runner.allow_ending_process()
