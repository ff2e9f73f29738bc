"""Publish after commit: the one place a job id is handed to the broker.

A 202 is only sent after the job row is committed; the message goes out after that. If Redis is
down, or the process dies between commit and publish, the row stays unpublished and the dispatch
sweep sends it later. A message sent twice is harmless: the claim lets only one run.

Fairness between tenants: a tenant's jobs go to the broker only while it has fewer than its window
of jobs published or running (its own running-jobs limit, else the default one capped by
``GPUJOBS_TENANT_MAX_PUBLISHED``). The rest wait unpublished in PostgreSQL; the dispatch sweep publishes
them tenant by tenant in turn, and a job that ends tops its tenant up at once. So one tenant's flood
never stands in the Redis queues ahead of another tenant's job: at most a window of it does (as River,
Oban and Sidekiq Enterprise do). Nor above it: workers read the queues in priority order, so neither a
new job, the top-up nor the sweep publishes a tenant's job while, at a lower priority, another tenant's
job waits published and that tenant has had no job start since (``_PASSED_OVER_BELOW``); the freed slot
takes it.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

from flask import current_app
from sqlalchemy import bindparam, select, text

from gpujobs import enqueue, jobs
from gpujobs.extensions import db
from gpujobs.models import Job
from gpujobs.states import JOB_ACTIVE, JobStatus, sql_list

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


# The most jobs one top-up publishes (a job's end frees one slot; a lowered limit or a lost message
# may leave a few more).
TOP_UP_BATCH = 20
# Seconds between the soft time limit (the handler is told) and the hard one (the process is killed).
HARD_LIMIT_MARGIN_SECONDS = 30


class Dispatch(NamedTuple):
    """What publishing needs of a job, captured before commit expires the row."""

    job_id: uuid.UUID
    priority: int
    timeout_seconds: int
    tenant_id: uuid.UUID


#: The columns of a Dispatch, in order, for the queries that read them.
DISPATCH_COLUMNS = (Job.id, Job.priority, Job.timeout_seconds, Job.tenant_id)


def dispatch_of(job: Job) -> Dispatch:
    """The publishing facts of a job row."""
    return Dispatch(job.id, job.priority, job.timeout_seconds, job.tenant_id)


def send_task(name: str, args: list[Any], what: str, **options: Any) -> bool:
    """Hand a message to the broker, with its retry policy; False (logged) when it cannot be reached.

    The queue is the task's in ``task_routes`` (the default queue for a task not routed there). Built
    as ``send_batch`` builds a job's message: Celery's ``send_task`` routed and merged options again for
    every hand-off, look and delivery (~5 % of a job worker's CPU in bench.pipeline). Every caller has
    a durable fallback (a sweep or a lease) for a message that did not go out, so a broker outage is a
    warning here, never an error for the request or task that tried.
    """
    conf = current_app.extensions["celery"].conf
    queue = conf.task_routes.get(name, {}).get("queue", conf.task_default_queue)
    return send_batch([(name, args, queue, options)], what, retry_policy=PUBLISH_RETRY_POLICY)


def _job_message(item: Dispatch) -> tuple[str, list[str], str, dict[str, Any]]:
    """The task, args, queue and options of one job's message."""
    limits = {
        "soft_time_limit": item.timeout_seconds,
        "time_limit": item.timeout_seconds + HARD_LIMIT_MARGIN_SECONDS,
    }
    return RUN_JOB_TASK, [str(item.job_id)], QUEUE_BY_PRIORITY[item.priority], limits


def publish(item: Dispatch) -> bool:
    """Send one job id to its priority queue, with the broker retry policy; False (logged) if not sent.

    Built as the sweeps' batches are (``send_batch``): ``send_task``'s routing and option merging cost
    ~0.2 ms of the API's CPU per submit (of ~0.6 ms for the whole publish), for a queue chosen here anyway.
    """
    return send_batch([_job_message(item)], f"job {item.job_id}", retry_policy=PUBLISH_RETRY_POLICY)


def publish_batch(items: list[Dispatch]) -> bool:
    """Send many job ids in one Redis round trip; False (logged) if not sent (``send_batch``)."""
    return send_batch([_job_message(item) for item in items], f"{len(items)} jobs")


def send_batch(
    messages: list[tuple[str, list[Any], str, dict[str, Any]]],
    what: str,
    *,
    retry_policy: dict[str, Any] | None = None,
) -> bool:
    """Send many task messages (task, args, queue, options) in one Redis round trip (kombu's publish
    batch); False (logged) if not sent.

    Sweeps publish hundreds of messages at once. ``send_task`` one by one costs ~0.7 ms a message here (a
    Redis client and a round trip each, routing and option merging each); building each message with
    Celery's own ``amqp.create_task_message`` and buffering them in one pipeline costs ~0.2 ms
    (bench/README.md, "Scale"). The batch is not retried: if it fails, every message in it counts as
    unsent and a sweep sends it again (a message that did go out twice is harmless). ``retry_policy``:
    each message goes out on its own with the broker's retries instead (a request's one job).
    """
    celery = current_app.extensions["celery"]
    amqp = celery.amqp
    try:
        with (
            celery.producer_or_acquire() as producer,
            contextlib.nullcontext() if retry_policy else producer.batch(),
        ):
            for name, args, queue, options in messages:
                message = amqp.create_task_message(
                    str(uuid.uuid4()), name, args, {}, argsrepr=repr(args), kwargsrepr="{}", **options
                )
                amqp.send_task_message(
                    producer,
                    name,
                    message,
                    queue=queue,
                    declare=NO_DECLARE,
                    retry=retry_policy is not None,
                    retry_policy=retry_policy,
                )
    except Exception as exc:  # kombu raises many connection error types; all mean "not sent"
        log.warning("%s not published (%s); a sweep will send again", what, type(exc).__name__)
        return False
    return True


def commit_and_publish(
    queued: Iterable[Dispatch], *, within_window: bool = True, marked: bool = False
) -> None:
    """Mark the jobs published, commit, publish them; un-mark (for the dispatch sweep) what failed.

    New jobs (``within_window``) are published only while their tenant has room in its window; the
    others are committed unpublished, for the dispatch sweep or the next top-up. ``marked``: the jobs
    were marked published in this transaction already (a new job ``admission`` let out as it was
    inserted, or a ``top_up``), so they are only committed and sent. If the process dies between commit
    and publish, the sweep finds the job queued with an empty queue in Redis and publishes it again. One
    job goes out on its own, with the broker retry policy (an API request); several go out as one batch
    (a sweep).
    """
    queued = list(queued)
    if not marked:
        queued = _admitted(queued) if within_window else queued
        jobs.mark_published([item.job_id for item in queued])
    db.session.commit()
    if len(queued) > 1:
        failed = [] if publish_batch(queued) else [item.job_id for item in queued]
    else:
        failed = [item.job_id for item in queued if not publish(item)]
    if failed:
        jobs.mark_published(failed, published=False)
        db.session.commit()


# A tenant's window: its own running-jobs limit when the operator set one (a tenant granted 200 running
# jobs may have 200 in flight), else the default running-jobs limit capped by GPUJOBS_TENANT_MAX_PUBLISHED;
# NULL when none is set (no window). Its free slots: the window less the jobs it has published (queued,
# message sent) or running. PostgreSQL's LEAST ignores NULLs.
# Counting stops at the window, on the two partial indexes of a tenant's in-flight jobs (migration l12).
_WINDOW = (
    "COALESCE(l.max_running_jobs, LEAST(CAST(:default_running AS integer), CAST(:max_published AS integer)))"
)
_IN_WINDOW = f"""(
    (SELECT count(*) FROM (SELECT 1 FROM jobs f
        WHERE f.tenant_id = t.id AND f.status = '{JobStatus.QUEUED}' AND f.published_at IS NOT NULL
        LIMIT {_WINDOW}) AS published)
    + (SELECT count(*) FROM jobs r WHERE r.tenant_id = t.id AND r.status IN ({sql_list(JOB_ACTIVE)})))"""
_FREE_SLOTS = f"CASE WHEN {_WINDOW} IS NULL THEN NULL ELSE {_WINDOW} - {_IN_WINDOW} END"
_WINDOW_OF = text(
    f"""SELECT {_WINDOW} AS size, {_IN_WINDOW} AS used FROM tenants t
    LEFT JOIN tenant_limits l ON l.tenant_id = t.id WHERE t.id = :tenant_id"""
)
# Whether a tenant's window has room for one more job (no window: always).
_ROOM_FOR_ONE = f"COALESCE(({_FREE_SLOTS}) > 0, true)"
_FREE_SLOTS_OF = text(
    f"""SELECT t.id, {_FREE_SLOTS} AS free FROM tenants t
    LEFT JOIN tenant_limits l ON l.tenant_id = t.id WHERE t.id IN :tenant_ids"""
).bindparams(bindparam("tenant_ids", expanding=True))
# Whether tenant ``t``'s next job, of priority ``{priority}``, yields its turn: at a lower priority, the
# oldest job of another tenant waiting in its queue (published, still queued) belongs to a tenant that has
# had no job start since it was published (none of its running jobs started later). Workers read the
# queues in priority order, so one more job of ``t`` at its higher priority would take the slot that job
# waits for, and ``t``'s window would do so again and again; held back, the slot goes to the waiting job.
# A lower-priority flood never holds the others back for long: as soon as one of its jobs runs, it has
# been served. Per lower level, one read of ix_jobs_queued_published in publish order (past ``t``'s own
# published jobs of that level: at most its window) and one of that tenant's running jobs
# (ix_jobs_running_tenant; ``>= ALL`` stays a subplan probed by tenant, where ``NOT EXISTS`` would become
# an anti-join over every running job).
_PASSED_OVER_BELOW = f"""EXISTS (
    SELECT 1 FROM generate_series(0, {{priority}} - 1) AS below(level)
    CROSS JOIN LATERAL (
        SELECT w.tenant_id, w.published_at FROM jobs w
        WHERE w.status = '{JobStatus.QUEUED}' AND w.published_at IS NOT NULL AND w.priority = below.level
            AND w.tenant_id <> t.id
        ORDER BY w.published_at
        LIMIT 1
    ) AS waiting
    WHERE waiting.published_at >= ALL (
        SELECT r.started_at FROM jobs r
        WHERE r.tenant_id = waiting.tenant_id AND r.status IN ({sql_list(JOB_ACTIVE)})))"""
# The priority of tenant ``t``'s next unpublished job (NULL: none), on ix_jobs_unpublished_tenant.
_BEST_WAITING = f"""(SELECT b.priority FROM jobs b
        WHERE b.tenant_id = t.id AND b.status = '{JobStatus.QUEUED}' AND b.published_at IS NULL
        ORDER BY b.priority DESC LIMIT 1)"""
# Each tenant's next jobs up to its free slots (best priority, then oldest first), numbered by turn, so
# that a batch takes every tenant's first job, then every tenant's second, and so on. None of a tenant
# whose next job yields its turn (``_PASSED_OVER_BELOW``): the next sweep after the waiting job starts
# publishes them.
_NEXT_JOBS = f"""
    SELECT next.id, next.priority, next.timeout_seconds, next.tenant_id FROM tenants t
    LEFT JOIN tenant_limits l ON l.tenant_id = t.id
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.timeout_seconds, j.tenant_id,
            row_number() OVER (ORDER BY j.priority DESC, j.queued_at) AS turn
        FROM jobs j
        WHERE j.tenant_id = t.id AND j.status = '{JobStatus.QUEUED}' AND j.published_at IS NULL
        ORDER BY j.priority DESC, j.queued_at
        LIMIT CASE WHEN {_PASSED_OVER_BELOW.format(priority=_BEST_WAITING)} THEN 0
            ELSE GREATEST(0, LEAST({_FREE_SLOTS}, :batch)) END
    ) AS next
    WHERE {{tenants}}
    ORDER BY next.turn, next.priority DESC
    LIMIT :batch"""
_NEXT_JOBS_ALL = text(_NEXT_JOBS.format(tenants="TRUE"))
_NEXT_JOBS_OF_JOB = text(_NEXT_JOBS.format(tenants="t.id = (SELECT tenant_id FROM jobs WHERE id = :job_id)"))


def _window_params() -> dict[str, int | None]:
    config = current_app.config
    return {
        "default_running": config["GPUJOBS_TENANT_MAX_RUNNING_JOBS"],
        "max_published": config["GPUJOBS_TENANT_MAX_PUBLISHED"],
    }


def window_of(tenant_id: uuid.UUID) -> dict[str, int | None]:
    """The tenant's fairness window (``limit``, None: none) and its jobs in it now (``used``: published,
    counted up to the window, or running): why its next jobs wait queued, for ``GET /v1/limits``."""
    row = db.session.execute(_WINDOW_OF, {"tenant_id": tenant_id, **_window_params()}).one()
    return {"limit": row.size, "used": row.used}


# Whether a new job (of priority ``:priority``) goes out as it is inserted: its tenant's window has room,
# and it would pass over no other tenant's job waiting at a lower priority (``_PASSED_OVER_BELOW``).
_ADMITTED = f"{_ROOM_FOR_ONE} AND NOT {_PASSED_OVER_BELOW.format(priority='CAST(:priority AS integer)')}"


def admission() -> enqueue.Admission:
    """A new job goes out at once while its tenant's window has room (``enqueue.new_job`` marks it so as it
    inserts it, for ``commit_and_publish(..., marked=True)``); else it waits for the sweep or a top-up.

    Not while it would pass over another tenant's job waiting at a lower priority either: the room a
    held-back top-up leaves would otherwise go to the tenant's next submission, and a tenant submitting as
    fast as its jobs end would keep the queue above that job full as the top-up did."""
    return enqueue.Admission(_ADMITTED, _window_params())


def _admitted(queued: list[Dispatch]) -> list[Dispatch]:
    """The new jobs their tenants have room for, in order; the rest stay unpublished for later."""
    if not queued:
        return queued
    tenant_ids = list({item.tenant_id for item in queued})
    free: dict[uuid.UUID, int | None] = dict(
        db.session.execute(_FREE_SLOTS_OF, {"tenant_ids": tenant_ids, **_window_params()}).all()
    )
    admitted = []
    for item in queued:
        room = free.get(item.tenant_id)
        if room is None or room > 0:
            admitted.append(item)
            free[item.tenant_id] = None if room is None else room - 1
    return admitted


def next_jobs(batch: int, after_job: uuid.UUID | None = None) -> list[Dispatch]:
    """Lock up to ``batch`` unpublished queued jobs, tenants taking turns, each within its free slots.

    With ``after_job``, only that job's tenant (its top-up). Rows another sweep holds are skipped. None of a
    tenant whose next job would pass over another tenant's job waiting at a lower priority
    (``_PASSED_OVER_BELOW``).
    """
    params = {"batch": batch, **_window_params()}
    if after_job is None:
        picked = db.session.execute(_NEXT_JOBS_ALL, params).all()
    else:
        picked = db.session.execute(_NEXT_JOBS_OF_JOB, {"job_id": after_job, **params}).all()
    if not picked:
        return []
    locked = set(
        db.session.scalars(
            select(Job.id)
            .where(
                Job.id.in_([row.id for row in picked]),
                Job.status == JobStatus.QUEUED,
                Job.published_at.is_(None),
            )
            .with_for_update(skip_locked=True)
        )
    )
    return [Dispatch(*row) for row in picked if row.id in locked]


def top_up(ended_job: uuid.UUID) -> list[Dispatch]:
    """A job ended and freed a slot of its tenant: that tenant's next jobs, locked and marked published,
    for the caller's ``commit_and_publish(..., marked=True)`` to commit and send now rather than at the
    next sweep, so a tenant alone on the cluster keeps every worker busy.

    Read in the transaction that ends the job (no transaction of its own), where the job's end counts
    already: its slot shows free. Two jobs of a tenant ending at once each see the other still running,
    so each takes one job for its own slot (``SKIP LOCKED``: not the same one).

    None while another tenant's job waits published at a lower priority and that tenant has had no job
    start since (``_PASSED_OVER_BELOW``): the slot this end frees goes to that job, and the dispatch sweep
    publishes this tenant's next jobs once it started. Else a tenant flooding ``high`` would refill the
    ``high`` queue at every end and a worker would never read ``normal``."""
    picked = next_jobs(TOP_UP_BATCH, after_job=ended_job)
    jobs.mark_published([item.job_id for item in picked])
    return picked
