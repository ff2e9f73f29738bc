"""The monitor step: watch an instance until it reaches its goal, fails, or runs out of time.

A job whose handler returned `Watch(...).handoff()` is owned by a chain of short `gpujobs.gpu.monitor`
tasks. Each one renews the job's lease (and learns of cancellation), reads the shared status snapshot,
and either publishes the next look with a countdown (a worker never sleeps) or ends the job with fenced
writes, updates the instance row, records the `instance.*` and `job.*` webhook events in the same
transaction, and hands the deliveries to the webhook queue after commit: that is the chain's webhook
step. A look that runs twice is harmless: whichever ends the job first wins, the other is fenced out.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import redis
from flask import current_app
from sqlalchemy import bindparam, select
from sqlalchemy.exc import OperationalError

from gpujobs import dispatch, jobs, resources, webhooks
from gpujobs.dispatch import send_task
from gpujobs.exceptions import PermanentError, TransientError
from gpujobs.extensions import db
from gpujobs.models import Instance, InstanceRow, JobRow
from gpujobs.novita import Instance as NovitaInstance
from gpujobs.novita import InvalidStateError, NovitaClient, NovitaNotFoundError, spec
from gpujobs.provisioning import records, snapshot, spot
from gpujobs.provisioning.novita_client import novita_client
from gpujobs.registry import Handoff
from gpujobs.states import InstanceStatus, JobStatus

log = logging.getLogger(__name__)

MONITOR_TASK = "gpujobs.gpu.monitor"
# Its own queue (gpujobs.celery_settings routes the task there), so a backlog of jobs never delays a look.
MONITOR_QUEUE = "monitor"
CREATE, START, STOP, DELETE = "create", "start", "stop", "delete"
# Watching an instance gpujobs did not create (`gpujobs.provisioning.external`): like a start, it waits
# for `running`; unlike a create, giving up never deletes it.
MONITOR = "monitor"
FAILED_EVENT = "instance.failed"


class Verdict(StrEnum):
    """What one look concludes about an action (see ``judge``)."""

    #: Not there yet: look again after the interval.
    WAIT = "wait"
    #: The instance reached the action's goal.
    DONE = "done"
    #: The action cannot succeed any more (the reason says why).
    FAIL = "fail"
    #: Created but left stopped: start it, then keep watching.
    START = "start"


@dataclass(frozen=True)
class Judgement:
    """A verdict, and for a failure the reason the job fails with."""

    verdict: Verdict
    reason: str | None = None


@dataclass(frozen=True)
class Sighting:
    """Novita's view of the instance since the action; `seen` is None when Novita no longer has it.

    `detailed` when it is the instance's own answer (`GET /gpu/instance`), which carries the port
    endpoints a list answer lacks (docs/novita-api.md §6).
    """

    seen: NovitaInstance | None
    detailed: bool = False


@dataclass(frozen=True)
class Goal:
    """What an action waits for: the row's status meanwhile, its status when done, and the event then."""

    in_flight: InstanceStatus
    done: InstanceStatus
    event: str


GOALS = {
    CREATE: Goal(InstanceStatus.CREATING, InstanceStatus.RUNNING, "instance.running"),
    START: Goal(InstanceStatus.STARTING, InstanceStatus.RUNNING, "instance.running"),
    STOP: Goal(InstanceStatus.STOPPING, InstanceStatus.STOPPED, "instance.stopped"),
    DELETE: Goal(InstanceStatus.DELETING, InstanceStatus.DELETED, "instance.deleted"),
    MONITOR: Goal(InstanceStatus.STARTING, InstanceStatus.RUNNING, "instance.running"),
}


@dataclass(frozen=True)
class Watch:
    """One monitored job; travels in the task's arguments as ids and numbers (never secrets)."""

    job_id: uuid.UUID
    attempt: int
    instance_id: uuid.UUID
    action: str
    since: float  # epoch seconds; a snapshot read before this predates the action and proves nothing
    started: float  # epoch seconds the deadline counts from
    timeout: float  # seconds
    interval: float  # seconds between looks
    started_by_us: bool = False  # this watch has sent a start (a create left stopped): never a second

    @classmethod
    def from_args(cls, job_id: str, attempt: int, *args: Any) -> Watch:
        """Rebuild from a task's arguments: `(job_id, attempt, *handoff args)` (a look published before
        `started_by_us` was carried has one argument fewer)."""
        instance_id, action, since, started, timeout, interval, *rest = args
        return cls(
            uuid.UUID(job_id),
            attempt,
            uuid.UUID(instance_id),
            action,
            since,
            started,
            timeout,
            interval,
            bool(rest and rest[0]),
        )

    @property
    def goal(self) -> Goal:
        """What this action waits for."""
        return GOALS[self.action]

    def _args(self) -> tuple[Any, ...]:
        return (
            str(self.instance_id),
            self.action,
            self.since,
            self.started,
            self.timeout,
            self.interval,
            self.started_by_us,
        )

    def handoff(self) -> Handoff:
        """What a handler returns to pass its job to the monitor chain."""
        return Handoff(MONITOR_TASK, self._args(), countdown_seconds=self.interval)

    def look_again(self) -> None:
        """Publish the next look; if the broker is away, the lease runs out and the rescue sweep reruns."""
        send_task(
            MONITOR_TASK,
            [str(self.job_id), self.attempt, *self._args()],
            f"job {self.job_id}: next look",
            countdown=self.interval,
        )


_RENEWED = jobs.RENEW_LEASE.cte("renewed")
# The look's lease renewal and its instance row in one round trip: no row when the lease is not ours.
_INSTANCES = Instance.__table__
_RENEW_AND_READ = select(_RENEWED.c.cancel_requested, *_INSTANCES.c).select_from(
    _RENEWED.outerjoin(_INSTANCES, _INSTANCES.c.id == bindparam("instance_id"))
)


def poll(watch: Watch) -> None:
    """One look at a watched instance: end the job, or schedule the next look.

    The lease is renewed past the next look, which comes `interval` seconds from now (a request may ask
    for up to a minute, as long as the default lease): a lease of only `GPUJOBS_LEASE_SECONDS` would
    expire while the job waits for it, and the rescue sweep would rerun a job that is being watched.
    """
    lease_seconds = current_app.config["GPUJOBS_LEASE_SECONDS"] + watch.interval
    params = {
        "job": watch.job_id,
        "fence": watch.attempt,
        "lease_seconds": lease_seconds,
        "instance_id": watch.instance_id,
    }
    # A read-only Core row: the instance's columns, and the job's cancel flag beside them.
    instance = db.session.execute(_RENEW_AND_READ, params).one_or_none()
    db.session.commit()
    if instance is None or instance.id is None:
        log.info("job %s: attempt %s no longer owns the job; monitor stops", watch.job_id, watch.attempt)
        return
    try:
        with novita_client(max_attempts=1) as client:  # no retries within a look: the next look is the retry
            _look(watch, instance, client, instance.cancel_requested)
    except (TransientError, redis.RedisError, OperationalError) as exc:
        # A database blip (a deadlock, a restart) is as transient as a Novita one: look again.
        db.session.rollback()
        log.warning(
            "job %s: look failed (%s), next in %.1f s", watch.job_id, type(exc).__name__, watch.interval
        )
        watch.look_again()
    except PermanentError as exc:
        db.session.rollback()
        _end(watch, JobStatus.FAILED, str(exc), {}, FAILED_EVENT)


def _look(watch: Watch, instance: InstanceRow, client: NovitaClient, cancel: bool) -> None:
    if cancel:
        return _cancel(watch, instance, client)
    if time.time() >= watch.started + watch.timeout:
        return _time_out(watch, instance, client)
    sighting = _observe(watch, instance, client)
    if sighting is None:
        return watch.look_again()
    seen = sighting.seen
    if watch.action in (CREATE, START) and seen is not None and spot.reclaim_signal(seen):
        if seen.status != instance.novita_status:
            records.mirror(instance.id, seen)
        return _reclaimed(watch, instance, seen)
    judgement = judge(watch.action, seen, started_by_us=watch.started_by_us)
    # A look that ends the job writes Novita's status with the outcome (``_succeed``).
    if seen is not None and seen.status != instance.novita_status and judgement.verdict != Verdict.DONE:
        records.mirror(instance.id, seen)
    if judgement.verdict == Verdict.START:
        _start(client, instance)
        db.session.commit()
        return replace(watch, since=time.time(), started_by_us=True).look_again()
    if judgement.verdict == Verdict.WAIT:
        db.session.commit()
        return watch.look_again()
    if judgement.verdict == Verdict.DONE:
        return _succeed(watch, instance, client, sighting)
    return _fail(watch, instance, client, judgement.reason, seen)


def _reclaimed(watch: Watch, instance: InstanceRow, seen: NovitaInstance) -> None:
    """Novita reclaims the spot instance this create or start waits for: the job fails, the instance is
    `reclaimed` (and replaced on request), as the reconcile sweep does for an instance no job watches."""
    reclaimed = spot.reclaim(instance, seen, (watch.goal.in_flight,))
    if reclaimed is None:  # another job took the row, or the sweep got there first: fenced as in `_end`
        db.session.rollback()
        return watch.look_again()
    reason = f"Novita reclaimed the spot instance (spotStatus {seen.spot_status})"
    if jobs.fail_attempt(watch.job_id, watch.attempt, reason, retryable=False, retry_delay_seconds=0) is None:
        db.session.rollback()
        log.info(
            "job %s: attempt %s was fenced out; the reclaim is not recorded", watch.job_id, watch.attempt
        )
        return None
    webhooks.record_job_event(watch.job_id)
    db.session.commit()
    webhooks.publish_pending(watch.job_id)
    spot.announce([reclaimed])  # publishes the replacement first, so the top-up cannot send it again
    dispatch.commit_and_publish(dispatch.top_up(watch.job_id), marked=True)
    log.info("job %s: failed, instance %s reclaimed by Novita", watch.job_id, instance.id)
    return None


def _observe(watch: Watch, instance: InstanceRow, client: NovitaClient) -> Sighting | None:
    """Novita's view of the instance since the action: its entry in the shared snapshot when that was
    taken since, else its own `GET`; None while there is no snapshot at all (look again).

    A snapshot that predates the action cannot speak for the instance; that happens to a first look
    while another process refreshes the snapshot, and asking directly then costs one call where waiting
    for the next snapshot cost a whole look more. With no snapshot at all (Redis lost it, and another
    process is listing), every look would ask at once: they wait for the listing instead. Not listed
    in a snapshot taken since: make sure before calling it gone (a list can lag, or stop at its page cap).
    """
    novita_id = records.novita_id_of(instance)
    found = snapshot.read(client, novita_id, watch.interval)
    if found is None:
        return None
    if found[0] >= watch.since and found[1] is not None:
        return Sighting(found[1])
    try:
        return Sighting(client.get_instance(novita_id), detailed=True)
    except NovitaNotFoundError:  # Novita's own envelope says so; a proxy's 404 is transient: look again
        return Sighting(None)


def judge(action: str, seen: NovitaInstance | None, *, started_by_us: bool = False) -> Judgement:
    """Whether an action is done, failed (and why), needs a start, or must wait; None means gone.

    `exited` without a stop request is a failure (NOVITA_API.md §8), except for a create whose instance
    Novita reports never started (no `startedAt`, a field Novita does not document): it is started once.
    A server that sends no start times cannot tell a never-started instance from one whose container
    exited: one start, and an exit after it fails the job (`started_by_us`), so a crashing container is
    not restarted until the create times out."""
    done, wait = Judgement(Verdict.DONE), Judgement(Verdict.WAIT)
    if action == DELETE:
        return done if seen is None or seen.is_gone else wait
    if seen is None or seen.is_being_removed:
        status = seen.status if seen else "gone"
        return Judgement(Verdict.FAIL, f"the instance was removed (Novita status {status})")
    if action == STOP:
        return done if seen.is_exited else wait
    if seen.is_running:
        return done
    if seen.status_error is not None:
        state = seen.status_error.state or seen.status
        return Judgement(Verdict.FAIL, f"Novita reports {state}: {seen.status_error.message}")
    if seen.is_exited:
        if action == CREATE and seen.started_at is None and not started_by_us:
            return Judgement(Verdict.START)  # created but left stopped: it is not starting by itself
        if started_by_us:
            return Judgement(Verdict.FAIL, "the instance exited again after gpujobs started it")
        return Judgement(Verdict.FAIL, "the instance exited without a stop request")
    return wait


def _start(client: NovitaClient, instance: InstanceRow) -> None:
    log.info("instance %s: created but not starting by itself; starting it", instance.id)
    with contextlib.suppress(InvalidStateError):  # it moved on its own since the snapshot was read
        client.start_instance(records.novita_id_of(instance))


def _delete(client: NovitaClient, instance: InstanceRow) -> None:
    """Delete, returning only once a read shows the instance removing or gone; anything short of that
    (an HTML 404 from a proxy, a delete not yet visible) raises a transient error and the look is retried."""
    with contextlib.suppress(NovitaNotFoundError):  # Novita's envelope says it is gone: the goal of a delete
        client.delete_instance(records.novita_id_of(instance))
    log.info("instance %s: Novita instance %s is being removed", instance.id, instance.novita_id)


def endpoints_of(seen: NovitaInstance) -> dict[str, Any]:
    """Connection details for the row: port endpoints and the SSH command (Novita's password left out)."""
    ports = [{"port": m.port, "type": m.type, "endpoint": m.endpoint} for m in seen.port_mappings]
    return {"ports": ports, "ssh": seen.ssh_command}


def _succeed(watch: Watch, instance: InstanceRow, client: NovitaClient, sighting: Sighting) -> None:
    values: dict[str, Any] = {"status": watch.goal.done, "error": None, "last_seen_at": jobs.utcnow()}
    if sighting.seen is not None:
        values.update(records.novita_view(sighting.seen))
    if watch.goal.done == InstanceStatus.RUNNING:
        # List answers lack port endpoints (docs/novita-api.md §6): the instance's own answer has them,
        # read now unless this look already did.
        detailed = sighting.seen if sighting.detailed else None
        seen_now = detailed or client.get_instance(records.novita_id_of(instance))
        values.update(endpoints=endpoints_of(seen_now), ready_at=jobs.utcnow())
    _end(watch, JobStatus.SUCCEEDED, None, values, watch.goal.event)


def _fail(
    watch: Watch, instance: InstanceRow, client: NovitaClient, reason: str | None, seen: NovitaInstance | None
) -> None:
    if watch.action == CREATE and seen is not None:
        return _give_up(watch, instance, client, JobStatus.FAILED, reason)
    status = records.settled_status(seen.status if seen else spec.Status.REMOVED.value, watch.goal.in_flight)
    return _end(watch, JobStatus.FAILED, reason, {"status": status}, FAILED_EVENT)


def _time_out(watch: Watch, instance: InstanceRow, client: NovitaClient) -> None:
    last = instance.novita_status or "unknown"
    reason = f"timed out: not {watch.goal.done} after {watch.timeout:g} s (last Novita status: {last})"
    if watch.action != CREATE:
        status = records.settled_status(instance.novita_status, watch.goal.in_flight)
        return _end(watch, JobStatus.FAILED, reason, {"status": status}, FAILED_EVENT)
    if current_app.config["GPUJOBS_DELETE_ON_TIMEOUT"]:
        return _give_up(watch, instance, client, JobStatus.FAILED, reason)
    return _end(
        watch,
        JobStatus.FAILED,
        f"{reason}; the instance was kept",
        {"status": InstanceStatus.FAILED},
        FAILED_EVENT,
    )


def _cancel(watch: Watch, instance: InstanceRow, client: NovitaClient) -> None:
    if watch.action == CREATE:
        return _give_up(watch, instance, client, JobStatus.CANCELLED, "cancelled on request")
    status = records.settled_status(instance.novita_status, watch.goal.in_flight)
    return _end(watch, JobStatus.CANCELLED, "cancelled on request", {"status": status})


def _give_up(
    watch: Watch, instance: InstanceRow, client: NovitaClient, outcome: JobStatus, reason: str | None
) -> None:
    """End a provisioning that will not be used: delete its instance first, so it stops billing."""
    _delete(client, instance)
    event = FAILED_EVENT if outcome == JobStatus.FAILED else None
    _end(watch, outcome, f"{reason}; the instance was deleted", {"status": InstanceStatus.DELETING}, event)


def _end(
    watch: Watch, outcome: JobStatus, error: str | None, row_values: dict[str, Any], event: str | None = None
) -> None:
    """End the job (fenced), update its instance, record the webhook events; commit, then publish.

    The row changes only while it is still in the action's in-flight status under this job. If another
    job took it meanwhile (a delete during a stop), the row is that job's to end: this job does not
    claim a success it can no longer vouch for (it fails, saying who has the instance now) and sends no
    instance event; a failure or cancellation keeps its reason.
    """
    if outcome != JobStatus.SUCCEEDED:
        row_values = {**row_values, "error": error}
    moved = records.transitioned(watch.instance_id, (watch.goal.in_flight,), watch.job_id, **row_values)
    instance: InstanceRow = moved or db.session.get_one(Instance, watch.instance_id, populate_existing=True)
    if not moved:
        event = None
        if outcome == JobStatus.SUCCEEDED:
            outcome, error = JobStatus.FAILED, _taken_over(watch, instance)
    job: JobRow | None = None
    if outcome == JobStatus.SUCCEEDED:
        job = jobs.succeed(watch.job_id, watch.attempt, {"instance": resources.Instance.json_of(instance)})
        ended = job is not None
    elif outcome == JobStatus.CANCELLED:
        ended = jobs.cancel_running(watch.job_id, watch.attempt, error or "cancelled")
    else:
        failed = jobs.fail_attempt(
            watch.job_id, watch.attempt, error or "failed", retryable=False, retry_delay_seconds=0
        )
        ended = failed is not None
    if not ended:
        db.session.rollback()
        if outcome == JobStatus.SUCCEEDED:
            # Refused: a cancel was recorded since this look began (or the job moved on). The next look
            # cancels it the cancel way (a create deletes its instance), or finds the job not ours.
            return watch.look_again()
        log.info(
            "job %s: attempt %s was fenced out; its outcome is not recorded", watch.job_id, watch.attempt
        )
        return
    if job is None:  # ended some other way than by `succeed`, which returned the row as it is now
        job = jobs.job_row(watch.job_id)
    # The instance is the job's own only while this job still holds it (`moved`; no instance event else).
    webhooks.record_job_event(watch.job_id, job, moved, preceded_by=(event,) if event else ())
    due = webhooks.pending(watch.job_id)
    # The job ended here, not in run_job: its tenant's next jobs take the slot, committed with the end.
    dispatch.commit_and_publish(dispatch.top_up(watch.job_id), marked=True)
    webhooks.publish(watch.job_id, due)
    log.info("job %s: %s (instance %s %s)", watch.job_id, outcome, instance.id, instance.status)


def _taken_over(watch: Watch, instance: InstanceRow) -> str:
    return (
        f"instance {watch.instance_id} was taken over before this {watch.action} finished: it is "
        f"{instance.status} now, under job {instance.job_id}"
    )
