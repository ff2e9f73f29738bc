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
# One queue per priority, named after it (index = priority level): the only queue chosen at publish.
QUEUE_BY_PRIORITY = jobs.PRIORITY_NAMES
# Fail fast when the broker is away: the row is durable and the sweep re-publishes it.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
# Messages go to a queue by name (Redis's anonymous exchange: the list is the queue), so there is
# nothing to declare per message; workers declare their queues at start. Skipping kombu's per-message
# "maybe declare" check halves the cost of a batch publish.
NO_DECLARE = ()


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


def send_task(name: str, args: list[Any], what: str, **options: Any) -> bool:
    """Hand a message to the broker; False (logged) when it cannot be reached.

    The queue comes from ``task_routes`` (Celery routes ``send_task`` too), unless ``options`` names
    one: only a job's priority queue is chosen here. Every caller has a durable fallback (a sweep or
    a lease) for a message that did not go out, so a broker outage is a warning here, never an error
    for the request or task that tried.
    """
    try:
        current_app.extensions["celery"].send_task(
            name,
            args=args,
            declare=NO_DECLARE,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
            **options,
        )
    except Exception as exc:  # kombu raises many connection error types; all mean "not sent"
        log.warning("%s not published (%s); a sweep or lease will recover it", what, type(exc).__name__)
        return False
    return True


def _job_message(item: Dispatch) -> tuple[str, list[str], str, dict[str, Any]]:
    """The task, args, queue and options of one job's message."""
    limits = {
        "soft_time_limit": item.timeout_seconds,
        "time_limit": item.timeout_seconds + HARD_LIMIT_MARGIN_SECONDS,
    }
    return RUN_JOB_TASK, [str(item.job_id)], QUEUE_BY_PRIORITY[item.priority], limits


def publish(item: Dispatch) -> bool:
    """Send one job id to its priority queue."""
    name, args, queue, options = _job_message(item)
    return send_task(name, args, f"job {item.job_id}", queue=queue, **options)


def publish_batch(items: list[Dispatch]) -> bool:
    """Send many job ids in one Redis round trip (kombu's publish batch); False (logged) if not sent.

    Sweeps publish hundreds of jobs at once. ``send_task`` one by one costs ~0.7 ms a message here (a
    Redis client and a round trip each, routing and option merging each); building each message with
    Celery's own ``amqp.create_task_message`` and buffering them in one pipeline costs ~0.2 ms
    (bench/README.md, "Scale"). The batch is not retried: if it fails, every job in it counts as
    unsent and the dispatch sweep sends it again (a message that did go out twice is harmless).
    """
    amqp = current_app.extensions["celery"].amqp
    try:
        with current_app.extensions["celery"].producer_or_acquire() as producer, producer.batch():
            for item in items:
                name, args, queue, options = _job_message(item)
                message = amqp.create_task_message(
                    str(uuid.uuid4()), name, args, {}, argsrepr=repr(args), kwargsrepr="{}", **options
                )
                amqp.send_task_message(producer, name, message, queue=queue, declare=NO_DECLARE, retry=False)
    except Exception as exc:  # kombu raises many connection error types; all mean "not sent"
        log.warning(
            "%d jobs not published (%s); the dispatch sweep will recover them", len(items), type(exc).__name__
        )
        return False
    return True


def commit_and_publish(queued: Iterable[Dispatch]) -> None:
    """Mark the jobs published, commit, publish them; un-mark (for the dispatch sweep) what failed.

    If the process dies between commit and publish, the sweep finds the job queued with an empty
    queue in Redis and publishes it again. One job goes out on its own, with the broker retry policy
    (an API request); several go out as one batch (a sweep).
    """
    queued = list(queued)
    jobs.mark_published([item.job_id for item in queued])
    db.session.commit()
    if len(queued) > 1:
        failed = [] if publish_batch(queued) else [item.job_id for item in queued]
    else:
        failed = [item.job_id for item in queued if not publish(item)]
    if failed:
        jobs.mark_published(failed, published=False)
        db.session.commit()
