"""The states of jobs, GPU instances and webhook deliveries: one spelling each, stored and answered by value.

Each is a ``StrEnum``, so a member is its public string: it binds to SQL, compares with a column read
back from PostgreSQL and serializes to JSON as that word. This module imports nothing from the package,
so the models, the state machines and the API can all share it.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is in its life: it ends succeeded, failed or cancelled."""

    #: Waiting for a worker: new, due again after a failed attempt, rescued from a lost worker, or redriven.
    QUEUED = "queued"
    #: A worker holds it under a lease and runs its handler (or a monitor chain watches it).
    RUNNING = "running"
    #: An attempt failed and another is due at ``next_retry_at``.
    RETRYING = "retrying"
    #: Finished: the handler returned a result.
    SUCCEEDED = "succeeded"
    #: Finished: its attempts are spent or the error was permanent; it is dead-lettered.
    FAILED = "failed"
    #: Running, and asked to stop; its worker sees the flag at its next lease renewal.
    CANCELLING = "cancelling"
    #: Finished: stopped on request.
    CANCELLED = "cancelled"


#: A job in one of these has finished; only a redrive (of a failed one) changes it again.
JOB_TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
#: A worker holds a job in one of these, under a lease.
JOB_ACTIVE = (JobStatus.RUNNING, JobStatus.CANCELLING)
#: A job in one of these may still change its instance (queued, held or due again).
JOB_LIVE = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RETRYING, JobStatus.CANCELLING)


class InstanceStatus(StrEnum):
    """What we intend and observe of a GPU instance; its ``novitaStatus`` is Novita's own word."""

    #: The create job is queued; no create has been sent to Novita yet.
    REQUESTED = "requested"
    #: A create step has claimed the row and is placing or waiting for the instance.
    CREATING = "creating"
    #: Novita runs it and its endpoints are known.
    RUNNING = "running"
    #: A stop job is waiting for it to exit.
    STOPPING = "stopping"
    #: Exited on request; Novita keeps it (and its disk).
    STOPPED = "stopped"
    #: A start job is waiting for it to run again.
    STARTING = "starting"
    #: A delete was sent (by a delete job, or on giving up a create); waiting for Novita to remove it.
    DELETING = "deleting"
    #: Novita no longer has it, as intended.
    DELETED = "deleted"
    #: An action ended in failure; the instance may still exist at Novita.
    FAILED = "failed"
    #: Novita no longer has it, and nobody asked for that (found by the reconcile sweep).
    LOST = "lost"
    #: Novita took the spot instance back (``spotStatus`` notified, reclaiming or terminated); any
    #: replacement is a new row whose ``replaces_instance_id`` names this one.
    RECLAIMED = "reclaimed"


#: An instance in one of these is history: the reconcile sweep reads it only while Novita still lists it.
INSTANCE_ENDED = (
    InstanceStatus.DELETED,
    InstanceStatus.LOST,
    InstanceStatus.FAILED,
    InstanceStatus.RECLAIMED,
)


class DeliveryStatus(StrEnum):
    """Where one webhook event for one receiver is: it ends succeeded, failed or disabled."""

    #: Not delivered yet (or sent again on request); due at ``next_attempt_at``.
    PENDING = "pending"
    #: The receiver answered 2xx.
    SUCCEEDED = "succeeded"
    #: Every try on the retry schedule went unanswered or was refused.
    FAILED = "failed"
    #: The receiver answered 410 Gone: it wants no more, so no retry.
    DISABLED = "disabled"


def sql_list(statuses: Iterable[str]) -> str:
    """``'a', 'b'`` for a SQL text fragment, such as a partial index's ``status IN (...)``.

    Only for these fixed words, never for input: the values are quoted, not escaped.
    """
    return ", ".join(f"'{status}'" for status in statuses)
