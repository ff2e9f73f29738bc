"""The reconcile sweep against the simulator: leaks deleted after their grace, lost instances marked."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import pytest
from sqlalchemy import text, update
from support.gpu import REQUEST, create_at_novita, novita_name, run_chain
from support.rows import instance_row

from gpujobs import operations, runner
from gpujobs.exceptions import TransientError
from gpujobs.extensions import db
from gpujobs.models import Instance
from gpujobs.provisioning import create
from gpujobs.provisioning.reconcile import LOCK_NAME, reconcile


@pytest.fixture
def sim_options():
    """Instant lifecycles, and deleted instances vanish from Novita's list at once."""
    return {"phase_seconds": 0, "removed_grace_seconds": 0}


def run_reconcile(app) -> dict:
    with app.app_context():
        report = reconcile()
    return report


def test_an_instance_no_live_job_owns_is_deleted_after_the_grace_period_and_reported(
    app, sim, novita, novita_config, monkeypatch
):
    leaked = create_at_novita(novita, novita_name(app, uuid.uuid4()))
    theirs = create_at_novita(novita, "someone-elses-box")

    monkeypatch.setitem(app.config, "GPUJOBS_LEAK_GRACE_SECONDS", 3600.0)
    report = run_reconcile(app)
    assert (report["leaked"], report["waiting"]) == ([], [leaked])

    monkeypatch.setitem(app.config, "GPUJOBS_LEAK_GRACE_SECONDS", 0.0)
    report = run_reconcile(app)
    assert [item["novitaInstanceId"] for item in report["leaked"]] == [leaked]
    status = {instance["id"]: instance["status"] for instance in sim.instances()}
    assert status == {leaked: "removed", theirs: "running"}  # not ours: never touched


@pytest.mark.parametrize(
    "sim_options", [{"phase_seconds": 0, "removed_grace_seconds": 0, "run_times": False}]
)
def test_a_leak_novita_sends_no_created_at_for_is_deleted_a_grace_after_a_pass_first_saw_it(
    app, sim, novita, novita_config, monkeypatch
):
    """`createdAt` is undocumented (NOVITA_API.md §6): a server that sends none still has its leaks
    deleted, a grace period after the first pass that found them unwanted."""
    leaked = create_at_novita(novita, novita_name(app, uuid.uuid4()))
    assert novita.get_instance(leaked).created_at is None
    monkeypatch.setitem(app.config, "GPUJOBS_LEAK_GRACE_SECONDS", 1.0)

    first = run_reconcile(app)
    assert (first["leaked"], first["waiting"]) == ([], [leaked])
    time.sleep(1.1)
    report = run_reconcile(app)
    assert [item["novitaInstanceId"] for item in report["leaked"]] == [leaked]
    assert report["leaked"][0]["ageSeconds"] >= 1
    assert [instance["status"] for instance in sim.instances()] == ["removed"]


def test_another_deployments_instances_on_the_same_account_are_never_taken_for_leaks(
    app, tenant, sim, novita, novita_config, monkeypatch
):
    stored = novita_name(app, "")  # this deployment's own prefix, gpujobs-<8 hex>-
    staging = [  # in another cluster: the simulator holds a few 4090s per cluster
        create_at_novita(novita, f"{stored}staging-{uuid.uuid4()}", "us-ca-6"),  # a prefix starting with ours
        create_at_novita(novita, f"{stored}-{uuid.uuid4()}", "us-ca-6"),  # ours plus "-": not a canonical id
        create_at_novita(novita, f"{stored}{uuid.uuid4().hex}", "us-ca-6"),
        create_at_novita(novita, f"gpujobs-{uuid.uuid4()}", "us-ca-6"),  # the old shared default
    ]
    monkeypatch.setitem(app.config, "GPUJOBS_LEAK_GRACE_SECONDS", 0.0)
    assert run_reconcile(app)["leaked"] == []
    ours = create_at_novita(novita, novita_name(app, uuid.uuid4()))
    monkeypatch.setitem(app.config, "GPUJOBS_INSTANCE_PREFIX", "gpujobs-prod-")
    leaked = create_at_novita(novita, f"gpujobs-prod-{uuid.uuid4()}")  # the stored prefix is another one now
    assert [item["novitaInstanceId"] for item in run_reconcile(app)["leaked"]] == [leaked]
    status = {instance["id"]: instance["status"] for instance in sim.instances()}
    assert status == {**dict.fromkeys([*staging, ours], "running"), leaked: "removed"}


def test_a_create_names_its_instance_with_the_deployments_prefix(
    app, tenant, sim, novita_config, monkeypatch
):
    monkeypatch.setitem(app.config, "GPUJOBS_INSTANCE_PREFIX", "acme-gpu-")
    job_id, _ = run_chain(app, tenant["id"], REQUEST)
    assert [instance["name"] for instance in sim.instances()] == [f"acme-gpu-{job_id}"]


def test_an_instance_whose_create_job_is_still_live_is_not_a_leak(
    app, tenant, sim, novita, novita_config, monkeypatch, app_context
):
    # queued through /v1/jobs: no worker has run it, so there is no row yet
    job_id = operations.submit(uuid.UUID(tenant["id"]), "gpu.instance.create", 1, REQUEST).id
    create_at_novita(novita, novita_name(app, job_id))  # created just before a crash
    monkeypatch.setitem(app.config, "GPUJOBS_LEAK_GRACE_SECONDS", 0.0)
    assert run_reconcile(app)["leaked"] == []
    assert sim.count_calls("POST", "/gpu/instance/delete") == 0


def test_an_instance_whose_create_answer_was_lost_and_whose_job_then_failed_is_deleted_as_a_leak(
    app, tenant, sim, novita_config, monkeypatch, app_context
):
    """At the first pass, without the leak grace: no run is left to record it, and it bills meanwhile."""
    sim.inject(lose_next_creates=1)
    # one attempt only: the lost answer fails the job, the row never learns the id
    job, instance = create.submit(uuid.UUID(tenant["id"]), REQUEST, operations.JobOptions(max_attempts=1))
    job_id, instance_id = job.id, str(instance.id)
    assert runner.run_job(job_id) == "failed"
    assert (instance_row(app, instance_id).status, instance_row(app, instance_id).novita_id) == (
        "failed",
        None,
    )
    (created,) = sim.instances()
    assert created["name"] == novita_name(app, job_id)

    monkeypatch.setitem(app.config, "GPUJOBS_LEAK_GRACE_SECONDS", 3600.0)
    report = run_reconcile(app)
    assert [(item["novitaInstanceId"], item["instanceId"]) for item in report["leaked"]] == [
        (created["id"], instance_id)
    ]
    assert [item["status"] for item in sim.instances()] == ["removed"]
    row = instance_row(app, instance_id)
    assert (row.status, row.novita_id) == ("deleting", created["id"])  # the row learns what became of it
    assert run_reconcile(app)["settled"] == [instance_id]
    assert instance_row(app, instance_id).status == "deleted"


def test_a_running_instance_novita_no_longer_has_is_marked_lost(app, tenant, sim, novita, novita_config):
    _, instance_id = run_chain(app, tenant["id"], REQUEST)
    novita.delete_instance(instance_row(app, instance_id).novita_id)  # deleted behind our back
    report = run_reconcile(app)
    assert report["lost"] == [instance_id]
    instance = instance_row(app, instance_id)
    assert (instance.status, instance.error) == ("lost", "Novita no longer has this instance")


def test_a_row_left_mid_stop_by_a_job_that_ended_takes_novitas_status(
    app, tenant, sim, novita, novita_config, app_context
):
    _, instance_id = run_chain(app, tenant["id"], REQUEST)
    novita.stop_instance(instance_row(app, instance_id).novita_id)
    # as if a stop job had died after asking Novita
    db.session.execute(
        update(Instance)
        .where(Instance.id == uuid.UUID(instance_id))
        .values(status="stopping", updated_at=db.func.now() - text("interval '1 minute'"))
    )
    db.session.commit()
    assert run_reconcile(app)["settled"] == [instance_id]
    assert instance_row(app, instance_id).status == "stopped"


def test_a_second_reconcile_running_at_the_same_time_steps_aside(app, sim, novita_config, app_context):
    with db.engine.connect() as other:
        other.execute(text("SELECT pg_advisory_lock(hashtext(:name))"), {"name": LOCK_NAME})
        assert reconcile() == {"skipped": True}
        other.execute(text("SELECT pg_advisory_unlock(hashtext(:name))"), {"name": LOCK_NAME})
    assert reconcile()["skipped"] is False
    assert sim.count_calls("GET", "/gpu/instances") == 1


def test_a_create_step_that_cannot_learn_whether_an_earlier_create_happened_says_what_is_at_stake(
    app, sim, novita, novita_config, app_context
):
    """A proxy's HTML page answering the lookup by name is not "no instance": the step is retried with a
    message naming the instance and what becomes of it if the job ends first."""
    name = novita_name(app, uuid.uuid4())
    sim.inject(fail_next={"count": 20, "status": 502, "html": True, "endpoint": "/gpu/instances"})
    with pytest.raises(TransientError) as unknown:
        create._adoptable(novita, SimpleNamespace(name=name))
    message = str(unknown.value)
    assert message.startswith(f"could not learn whether an earlier create of {name} happened")
    assert "the reconcile sweep deletes that instance" in message and "text/html" in message


def test_a_reconcile_pass_novita_does_not_answer_is_skipped_with_a_warning_not_an_error(
    app, sim, novita_config, app_context, caplog
):
    from gpujobs.provisioning.reconcile import sweep

    sim.inject(fail_next={"count": 20, "status": 502, "html": True, "endpoint": "/gpu/instances"})
    report = sweep()
    assert report["skipped"] is True and "text/html" in report["error"]
    assert [r.levelname for r in caplog.records if "pass skipped" in r.getMessage()] == ["WARNING"]
