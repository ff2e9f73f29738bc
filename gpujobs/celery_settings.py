"""Every Celery setting of gpujobs, one comment each (loaded by ``gpujobs.celery_app``).

Redis only says "work is ready": messages carry a job id, PostgreSQL holds the rest, and the sweeps
re-publish whatever Redis loses. The settings below make a worker crash cost a redelivery, never a
lost job, and keep a long backlog from starving the short monitoring and webhook tasks.
"""

from datetime import timedelta

from kombu import Queue

from gpujobs.config import load_config
from gpujobs.dispatch import QUEUE_BY_PRIORITY
from gpujobs.jobs import DEFAULT_PRIORITY, PRIORITY_LEVELS
from gpujobs.provisioning.monitor import MONITOR_QUEUE, MONITOR_TASK
from gpujobs.provisioning.tasks import SWEEP_COSTS_TASK, SWEEP_LIFETIMES_TASK, SWEEP_RECONCILE_TASK
from gpujobs.tasks import (
    MAINTENANCE_QUEUE,
    SWEEP_CLEANUP_TASK,
    SWEEP_DISPATCH_TASK,
    SWEEP_RESCUE_TASK,
    SWEEP_SCHEDULES_TASK,
    SWEEP_VIDEOS_TASK,
    SWEEP_WEBHOOKS_TASK,
)
from gpujobs.webhooks import DELIVER_TASK, WEBHOOKS_QUEUE

_config = load_config()

# Job queues by priority, most urgent first, then the service's own short tasks, each in its own queue
# (each name is defined beside the code that owns it).
JOB_QUEUES = tuple(reversed(QUEUE_BY_PRIORITY))
SERVICE_QUEUES = (MONITOR_QUEUE, WEBHOOKS_QUEUE, MAINTENANCE_QUEUE)
# The queues each worker role reads (``-Q``, in this order). Webhook deliveries have their own pool, so a
# receiver that holds every request for the whole timeout takes no time from jobs or sweeps; "all" is
# one process for everything (tests, a laptop), without that isolation.
WORKER_QUEUES: dict[str, tuple[str, ...]] = {
    "jobs": (MONITOR_QUEUE, MAINTENANCE_QUEUE, *JOB_QUEUES),
    "webhooks": (WEBHOOKS_QUEUE,),
    "all": (*SERVICE_QUEUES, *JOB_QUEUES),
}
# The webhook worker's pool. A send waits on the network, so threads serve it: one process, and no pipe
# to a pool process and back per task, which cost about 40 % of that worker's CPU (bench/README.md).
# The threads pool enforces no task time limit and recycles no thread (worker_max_tasks_per_child),
# so each wait bounds itself: the socket by the send's total deadline (gpujobs.outbound), a PostgreSQL
# server gone silent by TCP keepalives (extensions.TCP_KEEPALIVES), name resolution by the system
# resolver's own timeout. More threads than a tenant's share of sends
# (GPUJOBS_WEBHOOK_TENANT_CONCURRENCY, 4): a tenant whose receivers never answer leaves the others
# room. One process is one core: past that, run more webhook processes, not more threads. Job workers
# keep prefork: a job's hard time limit ends its process, and a handler may spend CPU.
WEBHOOK_POOL = ("--pool", "threads")
WEBHOOK_THREADS = 16

# The broker URL is set from REDIS_URL by the app factory; this is only the fallback for tooling.
broker_url = "redis://localhost:6379/0"
# Results live in PostgreSQL (job rows); a result backend would only duplicate them.
result_backend = None
task_ignore_result = True

# JSON only: messages hold ids, never pickled objects (and never secrets).
task_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# Declared queues; the service queues come first so a worker reading in order serves them first. A
# worker started without -Q reads every queue declared here, in this order (deployments pass -Q by role).
task_queues = [Queue(name) for name in (*SERVICE_QUEUES, *JOB_QUEUES)]
task_default_queue = QUEUE_BY_PRIORITY[PRIORITY_LEVELS[DEFAULT_PRIORITY]]
# Tasks whose queue is fixed, by exact name. Celery's router applies these to send_task too, so callers
# never name a service queue; only run_job's queue is chosen per job, from its priority, at publish.
task_routes = {
    DELIVER_TASK: {"queue": WEBHOOKS_QUEUE},
    MONITOR_TASK: {"queue": MONITOR_QUEUE},
    **{
        task: {"queue": MAINTENANCE_QUEUE}
        for task in (
            SWEEP_DISPATCH_TASK,
            SWEEP_RESCUE_TASK,
            SWEEP_WEBHOOKS_TASK,
            SWEEP_SCHEDULES_TASK,
            SWEEP_RECONCILE_TASK,
            SWEEP_COSTS_TASK,
            SWEEP_LIFETIMES_TASK,
            SWEEP_CLEANUP_TASK,
            SWEEP_VIDEOS_TASK,
        )
    },
}

broker_transport_options = {
    # Read queues in the declared order (kombu's "priority" strategy), not round-robin: a critical
    # job waiting behind 2,000 low ones is taken next.
    "queue_order_strategy": "priority",
    # An unacknowledged message is redelivered after this long; it exceeds the longest task's hard
    # limit below, so a slow task is never run twice at once just because it is slow.
    "visibility_timeout": 3 * 60 * 60,
}

# Acknowledge after the task ran, and give the message back if the worker process died: together
# with the claim in PostgreSQL this is at-least-once delivery, exactly-once effect.
task_acks_late = True
task_reject_on_worker_lost = True
# One message per worker process at a time, so priority order holds and a crash strands one message.
worker_prefetch_multiplier = 1
# Default limits for every task; run_job sets per-definition limits when it is published.
task_soft_time_limit = 2 * 60 * 60
task_time_limit = 2 * 60 * 60 + 60
# Soft shutdown: on a warm stop, running tasks get this long to finish before being handed back.
worker_soft_shutdown_timeout = _config["GPUJOBS_SHUTDOWN_TIMEOUT_SECONDS"]
worker_enable_soft_shutdown_on_idle = True
# Recycle a worker process after this many tasks, bounding any slow leak in handler code (prefork only:
# the webhook worker's threads are never recycled).
worker_max_tasks_per_child = 1000
# Task events off: each costs a Redis PUBLISH per task state, ~30 % of a publish and a share of every
# task, paid even when nobody listens. Flower turns the workers' events on itself while it runs
# (its --enable_events, on by default); the sent event (a task's "PENDING" line in Flower) stays off.
worker_send_task_events = False
task_send_sent_event = False

# --- Broker outages ----------------------------------------------------------------------------------------
# What each reconnection setting buys. Together with gpujobs.reconnect (a kombu patch, celery#9250) a
# worker, beat and Flower ride through a Redis outage of any length, and a Redis that comes back empty,
# with the same processes (tests/faults/test_broker_outage.py). PostgreSQL holds every job, so what Redis
# loses the sweeps re-send; these settings only keep the processes alive and reading.
#
# Reconnect, with Celery's backoff (2 s more each try, at most 30 s apart), when a connection that worked
# is lost. False would make the worker exit at the first Redis restart.
broker_connection_retry = True
# The same at start-up: a worker started before Redis waits for it instead of exiting.
broker_connection_retry_on_startup = True
# Never give up. Celery's default gives up after 100 tries (about 48 minutes of outage at the 30 s cap)
# and the worker then exits with an OperationalError.
broker_connection_max_retries = None
# Keep running tasks when the connection drops. Celery's option (True) terminates every running task
# with late acks, since its ack cannot reach the broker: each Redis blip would kill every job attempt in
# flight (a two-hour encode included) and leave it to the lease rescue. Here the job row in PostgreSQL
# is the truth and the attempt records its outcome there; the lost ack only leaves the message in
# Redis's unacked set, and if Redis kept it, its redelivery after the visibility timeout is a no-op at
# the claim. (Celery logs a CPendingDeprecationWarning about its 6.0 default on the first loss: expected.)
worker_cancel_long_running_tasks_on_connection_loss = False
# Treat a channel error as a lost connection: reconnect (at most about once a second) instead of exiting.
# A failover leaves clients of the demoted primary facing a read-only replica, and kombu's first write
# there fails with READONLY, a ResponseError (a "channel" error), which otherwise kills the worker.
broker_channel_error_retry = True

_sweep_every = timedelta(seconds=_config["GPUJOBS_SWEEP_INTERVAL_SECONDS"])


def _sweep(task: str, every: timedelta) -> dict:
    # A sweep message older than its period is useless (the next tick does the same work), so it
    # expires instead of piling up while workers are down.
    return {"task": task, "schedule": every, "options": {"expires": every.total_seconds()}}


# Beat keeps its schedule in memory, not in celery's default shelve file: every sweep is safe to run at
# start, so last-run times are not worth a file, and that file broke two ways. It must be writable in the
# working directory (not so in a read-only container), and a SIGTERM that lands while beat opens it runs
# the shutdown handler inside the open: beat crashed with a raw traceback in a JSON log.
beat_scheduler = "celery.beat:Scheduler"

# The sweeps (gpujobs.sweeps and friends). Exactly one beat is expected; each is safe to run twice at once.
beat_schedule = {
    "dispatch-due-jobs": _sweep(SWEEP_DISPATCH_TASK, _sweep_every),
    "rescue-stuck-jobs": _sweep(SWEEP_RESCUE_TASK, _sweep_every),
    "deliver-due-webhooks": _sweep(SWEEP_WEBHOOKS_TASK, _sweep_every),
    "run-due-schedules": _sweep(SWEEP_SCHEDULES_TASK, _sweep_every),
    "reconcile-instances": _sweep(SWEEP_RECONCILE_TASK, timedelta(minutes=1)),
    "accrue-instance-costs": _sweep(
        SWEEP_COSTS_TASK, timedelta(seconds=_config["GPUJOBS_COST_ACCRUAL_SECONDS"])
    ),
    # Instance deadlines are kept to within one tick; a pass reads one partial index when none is due.
    "enforce-instance-lifetimes": _sweep(SWEEP_LIFETIMES_TASK, _sweep_every),
    "clean-up-finished": _sweep(SWEEP_CLEANUP_TASK, timedelta(minutes=10)),
    "clean-up-videos": _sweep(SWEEP_VIDEOS_TASK, timedelta(minutes=10)),
}
