"""The shared status snapshot: one list call serves every monitor within a poll interval."""

from __future__ import annotations

import uuid

import pytest
import redis
from support.gpu import create_at_novita, novita_name

from gpujobs.provisioning import snapshot


@pytest.fixture
def sim_options():
    return {"phase_seconds": 0}


def test_reads_within_one_interval_share_one_list_call(app, app_context, sim, novita, novita_config):
    ids = [create_at_novita(novita, novita_name(app, uuid.uuid4()), "us-ca-6") for _ in range(3)]
    for _ in range(10):
        for novita_id in ids:
            _, seen = snapshot.read(novita, novita_id, max_age_seconds=60)
            assert seen.id == novita_id and seen.status == "running"
    assert sim.count_calls("GET", "/gpu/instances") == 1
    assert sim.count_calls("GET", "/gpu/instance") == 0


def test_instances_without_our_prefix_are_not_in_the_snapshot(app_context, sim, novita, novita_config):
    theirs = create_at_novita(novita, "someone-elses-box", "us-ca-6")
    _, seen = snapshot.read(novita, theirs, max_age_seconds=60)
    assert seen is None


def test_while_another_process_refreshes_a_reader_uses_the_previous_snapshot(
    app, app_context, sim, novita, novita_config
):
    novita_id = create_at_novita(novita, novita_name(app, uuid.uuid4()), "us-ca-6")
    assert snapshot.read(novita, "absent", max_age_seconds=60)[1] is None  # a first snapshot
    redis.Redis.from_url(app.config["REDIS_URL"]).set(snapshot.LOCK_KEY, "someone else")
    _, seen = snapshot.read(novita, novita_id, max_age_seconds=0)  # stale, but the lock is taken
    assert seen is not None and sim.count_calls("GET", "/gpu/instances") == 1
    redis.Redis.from_url(app.config["REDIS_URL"]).delete(snapshot.KEY)
    assert snapshot.read(novita, novita_id, max_age_seconds=0) is None  # nothing to fall back on yet


def test_a_snapshot_read_back_keeps_novitas_last_start_and_stop(app, app_context, sim, novita, novita_config):
    novita_id = create_at_novita(novita, novita_name(app, uuid.uuid4()), "us-ca-6")
    novita.stop_instance(novita_id)
    _, fresh = snapshot.read(novita, novita_id, max_age_seconds=0)  # listed now
    _, stored = snapshot.read(novita, novita_id, max_age_seconds=60)  # read back from Redis
    assert fresh.stopped_at is not None and fresh.started_at is not None
    assert (stored.started_at, stored.stopped_at) == (fresh.started_at, fresh.stopped_at)


def test_a_snapshot_read_back_keeps_the_spot_status(app, app_context, sim, novita, novita_config):
    """A monitor that reads another process's snapshot must see a reclaim coming, as a fresh read does."""
    novita_id = create_at_novita(novita, novita_name(app, uuid.uuid4()), "us-ca-6")
    sim.reclaim(novita_id)
    _, fresh = snapshot.read(novita, novita_id, max_age_seconds=0)
    _, stored = snapshot.read(novita, novita_id, max_age_seconds=60)
    assert fresh.spot_status is not None
    assert stored.spot_status == fresh.spot_status
