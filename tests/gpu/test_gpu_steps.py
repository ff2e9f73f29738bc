"""The create -> monitor -> webhook chain task by task, in this process (no worker), against the simulator."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
import redis
from sqlalchemy import func, select, update
from support.gpu import REQUEST, look, next_monitor_look, run_chain, run_looks
from support.rows import events, instance_row, job_row
from support.tenants import make_tenant

from gpujobs import dispatch, jobs, runner
from gpujobs.exceptions import PermanentError
from gpujobs.extensions import db
from gpujobs.models import Instance, Job, WebhookDelivery
from gpujobs.operations import JobOptions
from gpujobs.provisioning import create, records, snapshot
from gpujobs.registry import get_definition
from gpujobs.states import InstanceStatus

HOOK_URL = "http://127.0.0.1:9/hooks"  # never called here: deliveries are only recorded and queued


@pytest.fixture
def sim_options():
    """Every lifecycle phase takes no time: an instance runs as soon as it is created."""
    return {"phase_seconds": 0}


def created_and_handed_off(app, tenant, **options) -> tuple[str, str]:
    """Submit a create job and run its create step here; returns (job id, instance id)."""
    with app.app_context():
        job, instance = create.submit(uuid.UUID(tenant["id"]), REQUEST, JobOptions(**options))
        ids = str(job.id), str(instance.id)
        assert runner.run_job(job.id) == "running"
    return ids


def test_the_create_step_hands_the_running_job_to_the_monitor_with_ids_and_numbers_only(
    app, tenant, sim, novita_config
):
    job_id, instance_id = created_and_handed_off(app, tenant)
    args = next_monitor_look(app)
    assert args[:4] == [job_id, 1, instance_id, "create"]
    assert all(isinstance(number, float) for number in args[4:8]) and args[8:] == [False]
    assert job_row(app, job_id).status == "running"
    created = instance_row(app, instance_id)
    assert created.status == "creating" and created.novita_id == sim.instances()[0]["id"]
    assert [e.type for e in events(app, job_id)] == ["job.queued", "job.started", "job.instance_created"]


def test_a_first_create_step_creates_without_looking_for_one_to_adopt(app, tenant, sim, novita_config):
    created_and_handed_off(app, tenant)
    # A row still `requested` never had a create sent, so the by-name lookup (a list call) is skipped.
    assert sim.count_calls("GET", "/gpu/instances") == 0
    assert sim.count_calls("POST", "/gpu/instance/create") == 1


def test_create_steps_reuse_the_catalogue_until_novita_refuses_a_placement(app, tenant, sim, novita_config):
    created_and_handed_off(app, tenant)
    created_and_handed_off(app, tenant)
    assert (sim.count_calls("GET", "/clusters"), sim.count_calls("GET", "/products")) == (1, 1)
    sim.inject(fail_next={"reason": "INSUFFICIENT_RESOURCE", "endpoint": "/gpu/instance/create"})
    created_and_handed_off(app, tenant)  # its first candidate refused: CN-HK-01's list is forgotten
    assert sim.count_calls("GET", "/products") == 1
    created_and_handed_off(app, tenant)
    assert sim.count_calls("GET", "/products") == 2  # CN-HK-01's stock asked afresh
    assert sim.count_calls("POST", "/gpu/instance/create") == 5


def test_a_create_that_finds_nothing_in_remembered_lists_asks_novita_again_before_failing(
    app, tenant, sim, novita_config, app_context
):
    sim.inject(out_of_stock_clusters=["cn-hongkong-1", "as-sgp-2", "us-ca-6", "eu-ger-2"])
    job, _ = create.submit(uuid.UUID(tenant["id"]), REQUEST)
    assert runner.run_job(job.id) == "failed"  # out of stock everywhere, said by fresh lists
    sim.inject(out_of_stock_clusters=[])  # stock arrives; the worker still remembers the empty lists
    created_and_handed_off(app, tenant)
    assert sim.count_calls("POST", "/gpu/instance/create") == 1


def test_the_second_look_at_fresh_lists_never_asks_for_a_place_novita_just_refused(
    app, tenant, sim, novita_config, app_context
):
    created_and_handed_off(app, tenant)  # the worker now remembers the lists
    no_room = {"count": 100, "reason": "INSUFFICIENT_RESOURCE", "endpoint": "/gpu/instance/create"}
    sim.inject(fail_next=no_room)
    job_id = create.submit(uuid.UUID(tenant["id"]), REQUEST)[0].id
    assert runner.run_job(job_id) == "failed"
    refused = [
        (event.data["productId"], event.data["clusterId"])
        for event in events(app, job_id)
        if event.type == "job.placement_refused"
    ]
    assert refused and len(refused) == len(set(refused))  # each place asked once, across both passes
    assert sim.count_calls("POST", "/gpu/instance/create") == 1 + len(refused)


def test_a_request_with_a_price_cap_reads_fresh_lists(app, tenant, sim, novita_config, app_context):
    created_and_handed_off(app, tenant)
    created_and_handed_off(app, tenant, priority="high")
    assert sim.count_calls("GET", "/products") == 1
    job, _ = create.submit(uuid.UUID(tenant["id"]), {**REQUEST, "maxPricePerHour": 5.0})
    assert runner.run_job(job.id) == "running"
    assert sim.count_calls("GET", "/products") == 2


def test_a_run_that_lost_its_job_while_creating_leaves_the_row_to_the_rerun(
    app, tenant, sim, novita_config, app_context
):
    job, instance = create.submit(uuid.UUID(tenant["id"]), REQUEST)
    claim = jobs.claim(job.id, get_definition(create.CREATE_KEY, 1), lease_seconds=60)
    records.transition(instance.id, records.CREATABLE, status=InstanceStatus.CREATING)
    db.session.commit()  # as the create step's claim does before it calls Novita
    stale = SimpleNamespace(job_id=str(job.id), attempt=claim.attempt - 1)  # as after a rescue and rerun
    with pytest.raises(PermanentError, match="no longer holds"):
        create._record_created(stale, instance, "nv-from-the-paused-run")
    holder = SimpleNamespace(job_id=str(job.id), attempt=claim.attempt)
    create._record_created(holder, instance, "nv-ours")
    db.session.commit()
    assert db.session.get(Instance, instance.id, populate_existing=True).novita_id == "nv-ours"


def test_a_catalogue_age_of_zero_asks_novita_on_every_create(app, tenant, sim, novita_config, monkeypatch):
    monkeypatch.setitem(app.config, "GPUJOBS_NOVITA_CATALOGUE_SECONDS", 0)
    created_and_handed_off(app, tenant)
    created_and_handed_off(app, tenant)
    assert (sim.count_calls("GET", "/clusters"), sim.count_calls("GET", "/products")) == (2, 2)


def test_the_prometheus_scrape_counts_novita_calls_by_path_and_outcome(
    app, client, tenant, sim, novita_config
):
    sim.inject(fail_next={"count": 1, "status": 503, "endpoint": "/clusters"})
    created_and_handed_off(app, tenant)  # the first /clusters answers 503, its retry succeeds
    scrape = client.get("/metrics").get_data(as_text=True)
    for line in (
        'gpujobs_novita_calls_total{method="GET",outcome="5xx",path="/clusters"} 1.0',
        'gpujobs_novita_calls_total{method="GET",outcome="ok",path="/clusters"} 1.0',
        'gpujobs_novita_calls_total{method="POST",outcome="ok",path="/gpu/instance/create"} 1.0',
    ):
        assert line in scrape


def test_only_the_run_that_holds_the_job_may_claim_its_instance_row(
    app, tenant, sim, novita_config, app_context
):
    job, instance = create.submit(uuid.UUID(tenant["id"]), REQUEST)
    job_id, instance_id = job.id, instance.id
    creating = {"status": InstanceStatus.CREATING}
    # Still queued: no run holds it.
    assert records.transitioned(instance_id, records.CREATABLE, job_id, 1, **creating) is None
    jobs.claim(job_id, get_definition(create.CREATE_KEY, 1), lease_seconds=60)
    assert records.transitioned(instance_id, records.CREATABLE, job_id, 2, **creating) is None  # stale
    assert records.transitioned(instance_id, records.CREATABLE, uuid.uuid4(), 1, **creating) is None
    taken = records.transitioned(instance_id, records.CREATABLE, job_id, 1, **creating)
    assert taken is not None and taken.status == InstanceStatus.CREATING and taken.job_id == job_id
    db.session.rollback()


def test_one_look_at_a_running_instance_ends_the_job_with_its_endpoints(app, tenant, sim, novita_config):
    job_id, instance_id = run_chain(app, tenant["id"], REQUEST)
    assert job_row(app, job_id).status == "succeeded"
    assert job_row(app, job_id).result["instance"]["status"] == "running"
    assert instance_row(app, instance_id).endpoints["ssh"].startswith("ssh -p ")
    # One shared list call read the status; one GET fetched the endpoints once it ran.
    assert sim.count_calls("GET", "/gpu/instance") == 1


def test_a_look_whose_shared_snapshot_predates_the_create_asks_for_the_instance_itself(
    app, tenant, sim, novita, novita_config, app_context
):
    """The snapshot was listed before the create and another process is refreshing it: the look asks
    Novita for the instance, and that answer's endpoints serve the success (no second GET, no second look)."""
    snapshot.read(novita, "absent", max_age_seconds=60)  # taken before the create
    redis.Redis.from_url(app.config["REDIS_URL"]).set(snapshot.LOCK_KEY, "another process")
    job_id, instance_id = created_and_handed_off(app, tenant)
    look(app, next_monitor_look(app))
    assert job_row(app, job_id).status == "succeeded"
    assert instance_row(app, instance_id).endpoints["ssh"].startswith("ssh -p ")
    assert sim.count_calls("GET", "/gpu/instances") == 1  # the snapshot before the create, only
    assert sim.count_calls("GET", "/gpu/instance") == 1
    assert next_monitor_look(app) is None


def test_with_no_snapshot_at_all_a_look_waits_for_the_listing_instead_of_asking_itself(
    app, tenant, sim, novita_config
):
    """Redis lost the snapshot and another process is listing: looks do not each GET their instance."""
    job_id, _ = created_and_handed_off(app, tenant)
    redis.Redis.from_url(app.config["REDIS_URL"]).set(snapshot.LOCK_KEY, "another process")
    calls_before = len(sim.ledger())
    look(app, next_monitor_look(app))
    assert len(sim.ledger()) == calls_before
    assert job_row(app, job_id).status == "running"
    assert next_monitor_look(app) is not None  # it looks again after the interval


def test_a_look_records_each_webhook_event_once_however_often_it_runs(
    app, tenant, sim, novita_config, app_context
):
    created_and_handed_off(app, tenant, webhook_url=HOOK_URL)
    args = next_monitor_look(app)
    for _ in range(2):  # the same message delivered twice
        look(app, args)
    types = db.session.scalars(select(WebhookDelivery.event_type).order_by(WebhookDelivery.event_type)).all()
    assert types == ["instance.created", "instance.running", "job.succeeded"]
    assert next_monitor_look(app) is None  # and the chain ended: no further look was published


def test_a_look_from_an_attempt_that_lost_the_job_stops_without_a_trace(app, tenant, sim, novita_config):
    job_id, instance_id = created_and_handed_off(app, tenant)
    args = next_monitor_look(app)
    args[1] = 0  # an older attempt's message, as after a rescue
    look(app, args)
    assert job_row(app, job_id).status == "running"
    assert instance_row(app, instance_id).status == "creating"
    assert next_monitor_look(app) is None


def test_a_novita_outage_during_monitoring_only_postpones_the_next_look(app, tenant, sim, novita_config):
    job_id, _ = created_and_handed_off(app, tenant)
    sim.inject(fail_next={"count": 1, "status": 503, "endpoint": "/gpu/instances"})
    look(app, next_monitor_look(app))
    assert job_row(app, job_id).status == "running"
    look(app, next_monitor_look(app))  # the next look was published, and now Novita answers
    assert job_row(app, job_id).status == "succeeded"


def test_a_permanent_novita_error_during_monitoring_fails_the_job_with_its_reason(
    app, tenant, sim, novita_config, monkeypatch
):
    job_id, _ = created_and_handed_off(app, tenant)
    monkeypatch.setitem(app.config, "NOVITA_API_KEY", "sk_revoked")
    look(app, next_monitor_look(app))
    job = job_row(app, job_id)
    assert job.status == "failed" and "HTTP 401 UNAUTHORIZED" in job.error
    assert next_monitor_look(app) is None


def test_a_lost_monitor_message_is_recovered_by_the_rescue_sweep_and_the_rerun_adopts_the_instance(
    app, tenant, sim, novita_config, app_context
):
    from gpujobs.sweeps import rescue_stuck

    job_id, _ = created_and_handed_off(app, tenant)
    assert next_monitor_look(app) is not None  # taken off the queue and lost
    db.session.execute(
        update(Job)
        .where(Job.id == uuid.UUID(job_id))
        .values(lease_expires_at=func.now() - timedelta(seconds=1))
    )
    db.session.commit()
    rescue_stuck()
    assert runner.run_job(uuid.UUID(job_id)) == "running"
    look(app, next_monitor_look(app))
    job = job_row(app, job_id)
    assert (job.status, job.attempt) == ("succeeded", 2)
    assert "job.instance_adopted" in [event.type for event in events(app, job_id)]
    assert len(sim.instances()) == 1 and sim.count_calls("POST", "/gpu/instance/create") == 1


def test_deleting_an_instance_that_never_reached_novita_just_marks_it_deleted(
    app, client, tenant, sim, novita_config
):
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        job, instance = create.submit(uuid.UUID(tenant["id"]), REQUEST | {"maxPricePerHour": 0.01})
        instance_id = str(instance.id)
        assert runner.run_job(job.id) == "failed"
    assert instance_row(app, instance_id).status == "failed"
    deleting = client.delete(f"/v1/instances/{instance_id}", headers=tenant["headers"]).json
    with app.app_context():
        assert runner.run_job(uuid.UUID(deleting["jobId"])) == "succeeded"
    assert instance_row(app, instance_id).status == "deleted"
    assert sim.count_calls("POST", "/gpu/instance/delete") == 0


def delete_through_v1_jobs(app, client, headers, instance_id: str) -> str:
    """Submit `gpu.instance.delete@1` the generic way (no API state check) and run it here; returns its id."""
    body = {"definitionKey": "gpu.instance.delete", "params": {"instanceId": instance_id}}
    response = client.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.json
    with app.app_context():
        assert runner.run_job(uuid.UUID(response.json["id"])) == "failed"
    return response.json["id"]


def test_a_delete_job_naming_another_tenants_instance_fails_and_leaves_that_instance_alone(
    app, client, tenant, sim, novita_config
):
    job_id, instance_id = created_and_handed_off(app, tenant)  # tenant A's instance, being provisioned
    other = make_tenant(app, "other")
    theirs = delete_through_v1_jobs(app, client, other["headers"], instance_id)

    assert job_row(app, theirs).error == f"no instance {instance_id}"
    untouched = instance_row(app, instance_id)
    assert (untouched.status, str(untouched.job_id), untouched.error) == ("creating", job_id, None)
    run_looks(app)  # and A's provisioning carries on to the end
    assert job_row(app, job_id).status == "succeeded"
    assert instance_row(app, instance_id).status == "running"
    assert sim.count_calls("POST", "/gpu/instance/delete") == 0


def test_a_delete_job_for_an_instance_still_being_provisioned_is_refused_as_the_api_refuses_it(
    app, client, tenant, sim, novita_config
):
    job_id, instance_id = created_and_handed_off(app, tenant)
    refused = client.delete(f"/v1/instances/{instance_id}", headers=tenant["headers"])
    assert refused.status_code == 409

    delete_job = delete_through_v1_jobs(app, client, tenant["headers"], instance_id)
    assert job_row(app, delete_job).error == refused.json["detail"]
    untouched = instance_row(app, instance_id)
    assert (untouched.status, str(untouched.job_id)) == ("creating", job_id)
    run_looks(app)
    assert job_row(app, job_id).status == "succeeded"
    assert sim.count_calls("POST", "/gpu/instance/delete") == 0


def test_a_stop_whose_instance_a_delete_took_over_fails_instead_of_claiming_the_instance_stopped(
    app, client, tenant, sim, novita_config
):
    _, instance_id = run_chain(app, tenant["id"], REQUEST, webhook_url=HOOK_URL)
    stop = client.post(f"/v1/instances/{instance_id}/stop", headers=tenant["headers"]).json
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        assert runner.run_job(uuid.UUID(stop["jobId"])) == "running"  # Novita was asked; now watched
    delete = client.delete(f"/v1/instances/{instance_id}", headers=tenant["headers"]).json
    assert delete["status"] == "deleting"

    run_looks(app)  # Novita says exited, the stop's goal, but the row is no longer the stop's
    stopped = job_row(app, stop["jobId"])
    assert (stopped.status, stopped.error) == (
        "failed",
        f"instance {instance_id} was taken over before this stop finished: it is deleting now, "
        f"under job {delete['jobId']}",
    )
    row = instance_row(app, instance_id)
    assert (row.status, str(row.job_id)) == ("deleting", delete["jobId"])
    with app.app_context():
        sent = db.session.scalars(select(WebhookDelivery.event_type)).all()
    assert sorted(sent) == [
        "instance.created",
        "instance.running",
        "job.failed",
        "job.succeeded",
    ]  # no stopped


def test_an_action_job_is_published_only_once_its_instance_is_marked_with_it(
    app, client, tenant, sim, novita_config, monkeypatch
):
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():  # an instance whose provisioning failed before it reached Novita
        job, instance = create.submit(uuid.UUID(tenant["id"]), REQUEST | {"maxPricePerHour": 0.01})
        instance_id = instance.id
        assert runner.run_job(job.id) == "failed"
    seen = []

    def publish(item):  # what a worker that took the message at once would find
        with db.engine.connect() as other:
            seen.append(
                other.execute(
                    select(Instance.status, Instance.job_id).where(Instance.id == instance_id)
                ).one()
            )
        return True

    monkeypatch.setattr(dispatch, "publish", publish)
    deleting = client.delete(f"/v1/instances/{instance_id}", headers=tenant["headers"]).json
    assert [tuple(row) for row in seen] == [("deleting", uuid.UUID(deleting["jobId"]))]


def test_with_redis_away_the_novita_call_tally_pauses_instead_of_waiting_on_every_call(monkeypatch):
    from gpujobs import create_app
    from gpujobs.dev.embedded import free_port
    from gpujobs.provisioning import novita_client

    monkeypatch.setattr(novita_client, "_tally_paused_until", 0.0)
    down = create_app({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    with down.app_context():
        novita_client.count_call("GET", "/clusters", "ok")  # fails once, quietly
    assert novita_client._tally_paused_until > time.monotonic() + novita_client.TALLY_PAUSE_SECONDS - 5
