"""Publish after commit: the one place a job id is handed to the broker.

A 202 is only sent after the job row is committed; the message goes out after that. If Redis is
down, or the process dies between commit and publish, the row stays unpublished and the dispatch
sweep sends it later. A message sent twice is harmless: the claim lets only one run.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import NamedTuple

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


def publish(item: Dispatch) -> bool:
    """Send one job id to its priority queue; False (logged) when the broker cannot be reached."""
    celery = current_app.extensions["celery"]
    job_id = item.job_id
    try:
        celery.send_task(
            RUN_JOB_TASK,
            args=[str(job_id)],
            queue=QUEUE_BY_PRIORITY[item.priority],
            soft_time_limit=item.timeout_seconds,
            time_limit=item.timeout_seconds + HARD_LIMIT_MARGIN_SECONDS,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )
    except Exception as exc:  # kombu raises many connection error types; all mean "not sent"
        log.warning("job %s not published (%s); the dispatch sweep will retry", job_id, type(exc).__name__)
        return False
    return True


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
