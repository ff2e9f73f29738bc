"""Watching an instance gpujobs did not create (`POST /v1/instances/monitor`): a real worker, the simulator
over HTTP, webhooks verified with the public library; it is never deleted."""

from __future__ import annotations

import pytest
from support.gpu import PHASE_SECONDS, create_at_novita, wait_for_job
from support.polling import wait_for
from support.rows import instance_row
from support.tenants import make_tenant

from gpujobs import grants
from gpujobs.provisioning.reconcile import reconcile


def made_elsewhere(novita, name: str = "someone-elses-box") -> str:
    """An instance created on the account by another tool: not named with gpujobs' prefix."""
    return create_at_novita(novita, name, "cn-hongkong-1")


def watch(client, tenant, novita_id: str, **changes):
    body = {"novitaInstanceId": novita_id, "pollIntervalMs": 500, **changes}
    return client.post("/v1/instances/monitor", json=body, headers=tenant["headers"])


def test_an_instance_made_elsewhere_is_watched_until_running_with_the_usual_webhooks_and_never_deleted(
    app, client, tenant, sim, novita, novita_config, gpu_worker, hooks, monkeypatch
):
    gpu_worker()
    hook = hooks()
    novita_id = made_elsewhere(novita)
    response = watch(client, tenant, novita_id, webhookUrl=hook.url, maxWaitTimeMs=30_000)
    assert response.status_code == 202, response.json
    accepted = response.json
    assert accepted["status"] == "starting"
    wait_for_job(app, accepted["jobId"], "succeeded")

    shown = client.get(f"/v1/instances/{accepted['instanceId']}", headers=tenant["headers"]).json
    assert (shown["status"], shown["novitaInstanceId"], shown["external"]) == ("running", novita_id, True)
    assert shown["label"] == "someone-elses-box" and shown["endpoints"]["ssh"]
    wait_for(lambda: len(hook.verified) == 2)
    assert [event["type"] for event in hook.verified] == ["instance.running", "job.succeeded"]
    assert (hook.verified[0]["instanceId"], hook.verified[0]["status"]) == (accepted["instanceId"], "running")

    refused = client.delete(f"/v1/instances/{accepted['instanceId']}", headers=tenant["headers"])
    assert refused.status_code == 409 and "never deletes it" in refused.json["detail"]
    monkeypatch.setitem(app.config, "GPUJOBS_LEAK_GRACE_SECONDS", 0.0)
    with app.app_context():
        assert reconcile()["leaked"] == []
    assert [(i["id"], i["status"]) for i in sim.instances()] == [(novita_id, "running")]


def test_a_watched_instance_is_stopped_only_once_the_operator_granted_it_to_the_tenant(
    app, client, tenant, sim, novita, novita_config, gpu_worker
):
    """It is the account's, not the tenant's: whoever knows an id must not stop what another deployment
    or the operator runs."""
    gpu_worker()
    novita_id = made_elsewhere(novita)
    accepted = watch(client, tenant, novita_id).json
    wait_for_job(app, accepted["jobId"], "succeeded")
    stop = f"/v1/instances/{accepted['instanceId']}/stop"

    refused = client.post(stop, headers=tenant["headers"])
    assert refused.status_code == 409 and "the operator must grant it" in refused.json["detail"]
    assert sim.count_calls("POST", "/gpu/instance/stop") == 0
    with app.app_context():
        grants.grant(tenant["name"], grants.Kind.INSTANCE, novita_id)
    stopping = client.post(stop, headers=tenant["headers"])
    assert stopping.status_code == 202, stopping.json
    wait_for_job(app, stopping.json["jobId"], "succeeded")
    assert [(i["id"], i["status"]) for i in sim.instances()] == [(novita_id, "exited")]


@pytest.mark.parametrize("sim_options", [{"phase_seconds": {"default": PHASE_SECONDS, "pulling": 60}}])
def test_an_instance_that_misses_the_deadline_fails_the_job_and_is_kept(
    app, client, tenant, sim, novita, novita_config, gpu_worker, hooks
):
    gpu_worker()
    hook = hooks()
    novita_id = made_elsewhere(novita)
    accepted = watch(client, tenant, novita_id, webhookUrl=hook.url, maxWaitTimeMs=10_000).json
    job = wait_for_job(app, accepted["jobId"], "failed", timeout=40)
    assert job.error.startswith("timed out: not running after 10 s")
    wait_for(lambda: len(hook.verified) == 2)
    assert [event["type"] for event in hook.verified] == ["instance.failed", "job.failed"]
    assert instance_row(app, accepted["instanceId"]).external
    assert sim.count_calls("DELETE") == 0 and sim.count_calls(endpoint="/gpu/instance/delete") == 0
    assert sim.instances()[0]["status"] == "pulling"


def test_an_unknown_instance_and_another_tenants_are_answered_alike(
    app, client, tenant, sim, novita, novita_config
):
    novita_id = made_elsewhere(novita)
    assert watch(client, tenant, novita_id).status_code == 202  # acme watches it first

    other = make_tenant(app, "other")
    theirs = watch(client, other, novita_id)
    unknown = watch(client, other, "no-such-instance")
    assert theirs.status_code == unknown.status_code == 422
    assert [e["field"] for e in theirs.json["errors"]] == [e["field"] for e in unknown.json["errors"]]
    assert theirs.json["errors"][0]["message"] == f"no Novita instance {novita_id} on this account"
    assert unknown.json["errors"][0]["message"] == "no Novita instance no-such-instance on this account"
    listed = client.get("/v1/instances", headers=other["headers"]).json["items"]
    assert listed == []


def test_an_instance_the_operator_granted_is_watched_only_by_its_grantees_who_take_it_over(
    app, client, tenant, sim, novita, novita_config, gpu_worker
):
    """A tenant that knows an instance's id watched it first; the operator then granted it to acme:
    the row (its endpoints and SSH command) becomes acme's, and the first watcher is answered as for
    an unknown instance."""
    gpu_worker()
    novita_id = made_elsewhere(novita)
    other = make_tenant(app, "other")
    first = watch(client, other, novita_id)
    assert first.status_code == 202
    wait_for_job(app, first.json["jobId"], "succeeded")
    with app.app_context():
        grants.grant(tenant["name"], grants.Kind.INSTANCE, novita_id)

    again = watch(client, other, novita_id)
    assert again.status_code == 422
    assert again.json["errors"][0]["message"] == f"no Novita instance {novita_id} on this account"
    taken = watch(client, tenant, novita_id)
    assert taken.status_code == 202, taken.json
    assert taken.json["instanceId"] == first.json["instanceId"]  # the one row, now acme's
    wait_for_job(app, taken.json["jobId"], "succeeded")
    shown = client.get(f"/v1/instances/{taken.json['instanceId']}", headers=tenant["headers"])
    assert shown.status_code == 200 and shown.json["status"] == "running"
    gone = client.get(f"/v1/instances/{first.json['instanceId']}", headers=other["headers"])
    assert gone.status_code == 404
    assert client.get("/v1/instances", headers=other["headers"]).json["items"] == []

    # Granted from the start: a tenant without the grant never gets a row.
    second_id = made_elsewhere(novita, "operators-box")
    with app.app_context():
        grants.grant(tenant["name"], grants.Kind.INSTANCE, second_id)
    assert watch(client, other, second_id).status_code == 422
    assert watch(client, tenant, second_id).status_code == 202
    # Granted to both: the first to watch keeps it; the other grantee is told so, not "no instance".
    with app.app_context():
        grants.grant(other["name"], grants.Kind.INSTANCE, second_id)
    shared = watch(client, other, second_id)
    assert shared.status_code == 409 and "another tenant it was granted to" in shared.json["detail"]


def test_an_instance_gpujobs_created_is_not_watched_as_a_foreign_one(
    app, client, tenant, sim, novita, novita_config
):
    from support.gpu import provision

    from gpujobs.extensions import db
    from gpujobs.models import Instance

    accepted = provision(client, tenant)
    novita_id = made_elsewhere(novita, "gpujobs-made")
    with app.app_context():  # as if the create step had recorded this instance on the row
        db.session.get(Instance, accepted["instanceId"]).novita_id = novita_id
        db.session.commit()
    response = watch(client, tenant, novita_id)
    assert response.status_code == 409 and "created by gpujobs" in response.json["detail"]


def test_when_novita_cannot_be_asked_the_watch_is_queued_and_its_job_checks(
    app, client, tenant, sim, novita, novita_config, monkeypatch, gpu_worker
):
    monkeypatch.setitem(app.config, "NOVITA_API_KEY", None)  # the API process cannot reach Novita
    response = watch(client, tenant, "no-such-instance")
    assert response.status_code == 202
    gpu_worker()  # the worker can: it finds no such instance and fails the job for good
    job = wait_for_job(app, response.json["jobId"], "failed")
    assert job.error == "no Novita instance no-such-instance on this account" and job.attempt == 1
    # The definition's on_end hook settles the instance just after the job's own commit.
    wait_for(lambda: instance_row(app, response.json["instanceId"]).status == "failed")


def test_an_instance_named_as_gpujobs_names_its_own_is_not_watched(
    app, client, tenant, sim, novita, novita_config
):
    import uuid

    from support.gpu import novita_name

    novita_id = made_elsewhere(novita, novita_name(app, uuid.uuid4()))  # a create whose answer was lost, say
    response = watch(client, tenant, novita_id)
    assert response.status_code == 422 and [e["field"] for e in response.json["errors"]] == [
        "novitaInstanceId"
    ]
    assert client.get("/v1/instances", headers=tenant["headers"]).json["items"] == []
