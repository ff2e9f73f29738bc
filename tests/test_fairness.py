"""Fairness between tenants in the job queues, with real workers: a flood waits in PostgreSQL, not in Redis.

A tenant's jobs are published only within its window (its running-jobs limit): the rest wait unpublished
and go out as its running jobs end (the top-up) or at the dispatch sweep, tenants in turn. The tests
assert order and completeness, never time: a loaded machine only makes them slower.
"""

from __future__ import annotations

import uuid

from flask import Flask
from sqlalchemy import func, select
from support.polling import wait_for
from support.rows import job_row
from support.tenants import make_tenant, set_limits

from gpujobs import dispatch, jobs, operations
from gpujobs.extensions import db
from gpujobs.models import Job
from gpujobs.registry import get_definition
from gpujobs.sweeps import dispatch_due

FLOOD = 30


def submit(
    app: Flask, tenant: dict[str, str], seconds: float = 0.05, priority: str | None = None
) -> uuid.UUID:
    with app.app_context():
        options = operations.JobOptions(priority=priority)
        return operations.submit(uuid.UUID(tenant["id"]), "test.sleep", 1, {"seconds": seconds}, options).id


def counts(app: Flask, tenant: dict[str, str]) -> dict[str, int]:
    """The tenant's jobs by status, and how many of its queued ones were handed to the broker."""
    with app.app_context():
        mine = Job.tenant_id == uuid.UUID(tenant["id"])
        by_status = dict(
            db.session.execute(select(Job.status, func.count()).where(mine).group_by(Job.status)).all()
        )
        published = db.session.scalar(
            select(func.count()).where(mine, Job.status == "queued", Job.published_at.is_not(None))
        )
        db.session.rollback()
    return {**by_status, "published": published or 0}


def test_a_tenants_flood_waits_unpublished_beyond_its_window(app, client, tenant):
    set_limits(app, tenant, max_running_jobs=2)
    for _ in range(FLOOD):
        submit(app, tenant)
    assert counts(app, tenant) == {"queued": FLOOD, "published": 2}
    # the tenant sees why the rest wait
    limits = client.get("/v1/limits", headers=tenant["headers"]).json
    assert limits["dispatchWindow"] == {"limit": 2, "used": 2}
    with app.app_context():
        dispatch_due()  # the window is full: the sweep publishes none of the rest
    assert counts(app, tenant)["published"] == 2


def test_without_any_setting_a_tenants_window_is_the_default_of_50(app, tenant):
    """Fair out of the box: an installed wheel or a Procfile app that set nothing still has a window."""
    assert app.config["GPUJOBS_TENANT_MAX_PUBLISHED"] == 50
    for _ in range(55):
        submit(app, tenant)
    assert counts(app, tenant) == {"queued": 55, "published": 50}


def test_a_running_jobs_limit_set_for_a_tenant_is_its_window_even_above_the_default(app, tenant):
    """A tenant granted more (a GPU tenant watching 60 instances come up) is not held to 50 in flight."""
    set_limits(app, tenant, max_running_jobs=60)
    for _ in range(65):
        submit(app, tenant)
    assert counts(app, tenant) == {"queued": 65, "published": 60}


def test_a_top_up_in_the_transaction_that_ends_a_job_counts_its_slot_free(app, tenant):
    """The top-up reads in the ending job's own transaction: before the end there is no room; after it,
    the oldest waiting job is taken and marked published, to commit with the end."""
    set_limits(app, tenant, max_running_jobs=1)
    running, *waiting = [submit(app, tenant) for _ in range(3)]
    with app.app_context():
        definition = get_definition("test.sleep", 1)
        assert definition is not None
        claim = jobs.claim(running, definition, lease_seconds=60)
        assert claim is not None
        db.session.commit()
        assert dispatch.top_up(running) == []
        assert jobs.succeed(running, claim.attempt, {}) is not None
        taken = dispatch.top_up(running)
        assert [item.job_id for item in taken] == [waiting[0]]
        dispatch.commit_and_publish(taken, marked=True)
    assert counts(app, tenant) == {"succeeded": 1, "queued": 2, "published": 1}


def claimed(job_id: uuid.UUID) -> jobs.Claim:
    """Claim a job as a worker taking its message does, and commit (call inside an app context)."""
    definition = get_definition("test.sleep", 1)
    assert definition is not None
    claim = jobs.claim(job_id, definition, lease_seconds=60)
    assert claim is not None
    db.session.commit()
    return claim


def test_a_top_up_yields_to_another_tenants_job_waiting_at_a_lower_priority_until_it_starts(app, tenant):
    """A's job ends while B's job waits published at a lower priority and B has had nothing start since: the
    top-up takes none of A's, so the slot goes to B's job; once B's job has started, A's top-up goes on."""
    set_limits(app, tenant, max_running_jobs=1)
    other = make_tenant(app, "other")
    running, *waiting = [submit(app, tenant, priority="high") for _ in range(3)]
    theirs = submit(app, other, priority="normal")  # published at once: B's window has room
    with app.app_context():
        claim = claimed(running)
        assert jobs.succeed(running, claim.attempt, {}) is not None
        assert dispatch.top_up(running) == []  # yields: the next of A's would be read before B's
        dispatch.commit_and_publish([], marked=True)
        assert counts(app, tenant) == {"succeeded": 1, "queued": 2, "published": 0}
        claimed(theirs)  # a worker took B's job
        taken = dispatch.top_up(running)
        assert [item.job_id for item in taken] == [waiting[0]]
        dispatch.commit_and_publish(taken, marked=True)
    assert counts(app, tenant) == {"succeeded": 1, "queued": 2, "published": 1}


def test_a_lower_priority_flood_with_a_job_started_since_holds_no_one_back(app, tenant):
    """B floods ``low`` and one of its jobs runs, started after B's next waiting one was published: B is
    being served, so A's top-up at ``high`` goes on (a low flood never holds a higher one back for long)."""
    set_limits(app, tenant, max_running_jobs=1)
    other = make_tenant(app, "other")
    set_limits(app, other, max_running_jobs=2)
    running, *waiting = [submit(app, tenant, priority="high") for _ in range(2)]
    first, _second, _third = [submit(app, other, priority="low") for _ in range(3)]
    with app.app_context():
        claimed(first)  # started after B's second job was published
        claim = claimed(running)
        assert jobs.succeed(running, claim.attempt, {}) is not None
        taken = dispatch.top_up(running)
        assert [item.job_id for item in taken] == waiting
        dispatch.commit_and_publish(taken, marked=True)


def test_the_dispatch_sweep_holds_a_tenants_jobs_above_another_tenants_waiting_job_until_it_starts(
    app, tenant
):
    """The sweep fills windows every few seconds: left alone it would refill A's window in ``high`` as fast
    as its jobs end, ahead of B's job in ``normal``. It holds A's next jobs back until B's job started."""
    set_limits(app, tenant, max_running_jobs=2)
    other = make_tenant(app, "other")
    flood = [submit(app, tenant, priority="high") for _ in range(5)]
    with app.app_context():
        claim = claimed(flood[0])
        assert jobs.succeed(flood[0], claim.attempt, {}) is not None
        db.session.commit()  # ended without a top-up: one slot of A's window is free
    theirs = submit(app, other, priority="normal")
    with app.app_context():
        dispatch_due()
        assert counts(app, tenant)["published"] == 1  # held: A's second job only
        claimed(theirs)
        dispatch_due()
    assert counts(app, tenant)["published"] == 2


def test_a_new_job_above_another_tenants_waiting_job_waits_unpublished_until_that_job_starts(app, tenant):
    """The room a held-back top-up leaves must not go to A's next submission instead: a tenant submitting
    as fast as its jobs end would refill ``high`` as the top-up did. Below B's job, or once it started, a
    new job goes out at once as before."""
    set_limits(app, tenant, max_running_jobs=3)
    other = make_tenant(app, "other")
    theirs = submit(app, other, priority="normal")
    submit(app, tenant, priority="high")
    assert counts(app, tenant) == {"queued": 1, "published": 0}  # room, but held back for the sweep
    submit(app, tenant, priority="normal")  # behind B's job in the same queue: it passes nothing over
    assert counts(app, tenant) == {"queued": 2, "published": 1}
    with app.app_context():
        claimed(theirs)
    submit(app, tenant, priority="high")
    assert counts(app, tenant) == {"queued": 3, "published": 2}


def test_another_tenants_job_starts_before_a_flood_queued_ahead_of_it_drains(app, tenant, start_worker):
    """A floods FLOOD jobs at the same priority before B's one job; B's starts after a window of A's."""
    set_limits(app, tenant, max_running_jobs=2)
    other = make_tenant(app, "other")
    flood = [submit(app, tenant) for _ in range(FLOOD)]
    theirs = submit(app, other)
    start_worker(concurrency=2, name="fair")
    wait_for(lambda: job_row(app, theirs).status == "succeeded", timeout=90, interval=0.2)
    started = job_row(app, theirs).started_at
    after_b = [
        job_id
        for job_id in flood
        if (row := job_row(app, job_id)).started_at is None or row.started_at > started
    ]
    # Only A's window (2) and the jobs topped up while B's message waited behind it can start first.
    assert len(after_b) >= FLOOD - 6, f"B's job started after {FLOOD - len(after_b)} of A's {FLOOD} jobs"


def test_a_flood_alone_on_the_cluster_completes_every_job_by_top_ups_without_the_sweep(
    app, tenant, start_worker
):
    """No beat and no sweep here: every job beyond the window is published when one of A's jobs ends."""
    set_limits(app, tenant, max_running_jobs=2)
    flood = [submit(app, tenant, seconds=0.01) for _ in range(FLOOD)]
    start_worker(concurrency=2, name="alone")
    wait_for(lambda: counts(app, tenant).get("succeeded") == FLOOD, timeout=120, interval=0.3)
    assert {job_row(app, job_id).attempt for job_id in flood} == {1}  # each ran once: none lost, none twice


def test_the_dispatch_sweep_publishes_tenants_in_turn_each_within_its_window(app, tenant):
    """After a Redis flush, every job is unpublished: the sweep takes A's first, B's first, A's second..."""
    import redis
    from sqlalchemy import update

    from gpujobs.broker import job_id_of_message

    other = make_tenant(app, "other")
    set_limits(app, tenant, max_running_jobs=3)
    set_limits(app, other, max_running_jobs=2)
    mine = [submit(app, tenant) for _ in range(5)]
    theirs = [submit(app, other) for _ in range(5)]
    store = redis.Redis.from_url(app.config["REDIS_URL"])
    store.flushdb()  # Redis restarted empty, and the jobs were never sent: all wait in PostgreSQL
    with app.app_context():
        db.session.execute(update(Job).values(published_at=None))
        db.session.commit()
        dispatch_due()
    published = [job_id_of_message(raw) for raw in reversed(store.lrange("normal", 0, -1))]  # oldest first
    assert published == [mine[0], theirs[0], mine[1], theirs[1], mine[2]]


def started_before(app: Flask, flood: list[uuid.UUID], job_id: uuid.UUID) -> int:
    """How many of ``flood`` started before ``job_id`` did."""
    started = job_row(app, job_id).started_at
    return sum(
        1 for j in flood if (row := job_row(app, j)).started_at is not None and row.started_at < started
    )


def test_another_tenants_normal_job_starts_before_a_flood_at_high_drains(app, tenant, start_worker):
    """The hostile-tenant probe: A floods FLOOD jobs at ``high`` (window 2), then B submits one at ``normal``.
    Every end of A's used to publish A's next ``high`` job at once, so the worker never read ``normal`` and
    B's job started after the whole flood. Now it starts after A's window."""
    set_limits(app, tenant, max_running_jobs=2)
    other = make_tenant(app, "other")
    flood = [submit(app, tenant, priority="high") for _ in range(FLOOD)]
    theirs = submit(app, other, priority="normal")
    start_worker(concurrency=2, name="priority")

    def done() -> bool:
        with app.app_context():
            dispatch_due()  # as beat would: the sweep must not refill A's window ahead of B's job either
        return job_row(app, theirs).status == "succeeded"

    wait_for(done, timeout=90, interval=0.2)
    ahead = started_before(app, flood, theirs)
    # A's window (2) was taken before B's job was published; a race of the sweep may add one or two.
    assert ahead <= 4, f"B's job started after {ahead} of A's {FLOOD} jobs"


def test_a_window_wider_than_the_workers_is_not_refilled_by_the_sweep_ahead_of_a_lower_job(
    app, tenant, start_worker
):
    """A's window (6) is wider than the worker (2), so A's jobs wait in the ``high`` queue; the sweep, run
    far more often than A's jobs end, used to refill it every time and B's ``normal`` job waited for the
    whole flood. Now B's job starts after at most A's window."""
    window = 6
    set_limits(app, tenant, max_running_jobs=window)
    other = make_tenant(app, "other")
    flood = [submit(app, tenant, seconds=0.3, priority="high") for _ in range(FLOOD)]
    theirs = submit(app, other, priority="normal")
    start_worker(concurrency=2, name="wide")

    def done() -> bool:
        with app.app_context():
            dispatch_due()
        return job_row(app, theirs).status == "succeeded"

    wait_for(done, timeout=120, interval=0.05)
    ahead = started_before(app, flood, theirs)
    assert ahead <= window + 2, f"B's job started after {ahead} of A's {FLOOD} jobs"
