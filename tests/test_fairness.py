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


def submit(app: Flask, tenant: dict[str, str], seconds: float = 0.05) -> uuid.UUID:
    with app.app_context():
        return operations.submit(uuid.UUID(tenant["id"]), "test.sleep", 1, {"seconds": seconds}).id


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
