"""Publish after commit: the one place a job id is handed to the broker.

A 202 is only sent after the job row is committed; the message goes out after that. If Redis is
down, or the process dies between commit and publish, the row stays unpublished and the dispatch
sweep sends it later. A message sent twice is harmless: the claim lets only one run.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

from flask import current_app

from gpujobs import jobs
from gpujobs.extensions import db
from gpujobs.models import Job

log = logging.getLogger(__name__)

RUN_JOB_TASK = "gpujobs.run_job"
QUEUE_BY_PRIORITY = ("low", "normal", "high", "critical")  # index = priority level
# Fail fast when the broker is away: the row is durable and the sweep re-publishes it.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


# Seconds between the soft time limit (the handler is told) and the hard one (the process is killed).
HARD_LIMIT_MARGIN_SECONDS = 30


class Dispatch(NamedTuple):
    """What publishing needs of a job, captured before commit expires the row."""

    job_id: uuid.UUID
    priority: int
    timeout_seconds: int


def dispatch_of(job: Job) -> Dispatch:
    """The publishing facts of a job row."""
    return Dispatch(job.id, job.priority, job.timeout_seconds)


def send_task(name: str, args: list[Any], queue: str, what: str, **options: Any) -> bool:
    """Hand a message to the broker; False (logged) when it cannot be reached.

    Every caller has a durable fallback (a sweep or a lease) for a message that did not go out, so
    a broker outage is a warning here, never an error for the request or task that tried.
    """
    try:
        current_app.extensions["celery"].send_task(
            name, args=args, queue=queue, retry=True, retry_policy=PUBLISH_RETRY_POLICY, **options
        )
    except Exception as exc:  # kombu raises many connection error types; all mean "not sent"
        log.warning("%s not published (%s); a sweep or lease will recover it", what, type(exc).__name__)
        return False
    return True


def publish(item: Dispatch) -> bool:
    """Send one job id to its priority queue."""
    return send_task(
        RUN_JOB_TASK,
        [str(item.job_id)],
        QUEUE_BY_PRIORITY[item.priority],
        f"job {item.job_id}",
        soft_time_limit=item.timeout_seconds,
        time_limit=item.timeout_seconds + HARD_LIMIT_MARGIN_SECONDS,
    )


def commit_and_publish(queued: Iterable[Dispatch]) -> None:
    """Mark the jobs published, commit, publish each; un-mark (for the dispatch sweep) what failed.

    If the process dies between commit and publish, the sweep finds the job queued with an empty
    queue in Redis and publishes it again.
    """
    queued = list(queued)
    jobs.mark_published([item.job_id for item in queued])
    db.session.commit()
    failed = [item.job_id for item in queued if not publish(item)]
    if failed:
        jobs.mark_published(failed, published=False)
        db.session.commit()
