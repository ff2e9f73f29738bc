"""Status reads at scale: 200 instances watched at once cost one list page per poll interval, not 200."""

from __future__ import annotations

import math
import time
import uuid

import pytest
from sqlalchemy import func, select
from support.polling import wait_for
from support.tenants import set_limits

from gpujobs import operations
from gpujobs.extensions import db
from gpujobs.models import Instance, Job
from gpujobs.provisioning import create, snapshot

INSTANCES = 200
# Two shared cores manage about 35 looks a second (each renews a lease, reads the snapshot, publishes the
# next look, and Celery adds its events and acks); at 10 s, 200 instances need 20. Faster, the looks queue
# up and, read before the job queues, starve the creates. The call count per interval does not depend on it.
POLL_INTERVAL_SECONDS = 10.0
WINDOW_SECONDS = 2 * POLL_INTERVAL_SECONDS
LEASE_SECONDS = 30  # longer than a look can lag here, so every lease is renewed by a look
REQUEST = {"productName": "RTX 3090 24GB", "region": "CN-HK-01", "imageUrl": "ubuntu:22.04"}


@pytest.fixture
def sim_options():
    """Instances are created at once, then stay `pulling` for an hour: monitored until cancelled."""
    return {"phase_seconds": {"default": 0, "pulling": 3600}}


def count(app, *conditions) -> int:
    with app.app_context():
        total = db.session.scalar(select(func.count()).select_from(Job).where(*conditions))
    return total


def test_two_hundred_monitored_instances_cost_one_list_page_per_poll_interval_not_a_call_each(
    app, tenant, sim, gpu_worker
):
    sim.set_capacity("3090.16c92g", "cn-hongkong-1", INSTANCES)
    # above the default GPU quota and the default fairness window (each job runs while it is watched)
    set_limits(app, tenant, max_instances=INSTANCES, max_running_jobs=INSTANCES)
    gpu_worker(
        concurrency=4,
        GPUJOBS_MONITOR_INTERVAL_SECONDS=str(POLL_INTERVAL_SECONDS),
        GPUJOBS_LEASE_SECONDS=str(LEASE_SECONDS),
    )
    # separate contexts: each step sees what the one before committed, in a fresh session
    with app.app_context():
        job_ids = [create.submit(uuid.UUID(tenant["id"]), REQUEST)[0].id for _ in range(INSTANCES)]

    def all_created() -> bool:
        with app.app_context():
            created = db.session.scalar(select(func.count()).where(Instance.novita_id.is_not(None)))
        return created == INSTANCES

    wait_for(all_created, timeout=120, interval=0.5)
    # A first look that meets a refresh in progress GETs its instance (gpujobs.provisioning.monitor's
    # `_observe`): once per instance at most. The window starts after every first look.
    time.sleep(POLL_INTERVAL_SECONDS + 2)
    started = time.time()
    time.sleep(WINDOW_SECONDS)
    ended = time.time()

    # Every job was looked at during the window (each look renews its lease)...
    assert count(
        app, Job.status == "running", Job.lease_expires_at > func.to_timestamp(started + LEASE_SECONDS)
    )
    looked_at = count(app, Job.lease_expires_at > func.to_timestamp(started + LEASE_SECONDS))
    assert looked_at == INSTANCES
    # ...yet Novita was asked only through the shared list, about once per poll interval.
    calls = [call for call in sim.ledger() if started <= call["at"] < ended]
    list_calls = sum(call["endpoint"] == "/gpu/instances" for call in calls)
    single_calls = sum(call["endpoint"] == "/gpu/instance" for call in calls)
    pages = math.ceil(INSTANCES / snapshot.PAGE_SIZE)
    intervals = WINDOW_SECONDS / POLL_INTERVAL_SECONDS
    print(
        f"\n{INSTANCES} instances: {list_calls / intervals:.2f} list calls per poll interval ({pages} page)"
    )
    assert single_calls == 0
    assert 1 <= list_calls <= (intervals + 1) * pages

    with app.app_context():
        for job_id in job_ids:
            operations.cancel(job_id, uuid.UUID(tenant["id"]))
    wait_for(lambda: count(app, Job.status == "cancelled") == INSTANCES, timeout=120, interval=0.5)
    assert all(instance["status"] == "removed" for instance in sim.instances())
