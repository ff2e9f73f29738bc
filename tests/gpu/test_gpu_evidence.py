"""Evidence before belief, end to end: a proxy's HTML 404 never deletes or loses an instance, the nested
error envelope keeps region fallback working, and a full run makes no call the API does not serve."""

from __future__ import annotations

import uuid

import pytest
from support.gpu import REQUEST, look, next_monitor_look, provision, run_chain, wait_for_job
from support.rows import events, instance_row, job_row

from gpujobs import runner
from gpujobs.novita import spec
from gpujobs.provisioning import create
from gpujobs.provisioning.reconcile import reconcile


def test_a_delete_answered_by_a_proxys_html_404_is_retried_and_completes_once_the_proxy_is_gone(
    app, client, tenant, sim, gpu_worker
):
    gpu_worker()
    accepted = provision(client, tenant)
    wait_for_job(app, accepted["jobId"], "succeeded")
    instance_id = accepted["instanceId"]

    sim.inject(proxy_html_404=True)
    response = client.delete(f"/v1/instances/{instance_id}", headers=tenant["headers"])
    assert response.status_code == 202
    deleting = response.json
    retrying = wait_for_job(app, deleting["jobId"], "retrying", "failed")
    assert retrying.status == "retrying" and "HTTP 404" in retrying.error
    assert instance_row(app, instance_id).status == "deleting"  # not deleted on a proxy's word
    assert [entry["status"] for entry in sim.instances()] == ["running"]
    proxied = [call for call in sim.ledger() if call["endpoint"] == spec.INSTANCE_DELETE_PATH]
    assert proxied and all(call["status"] == 404 and call["injected"] for call in proxied)
    scrape = client.get("/metrics").get_data(as_text=True)
    assert (
        'gpujobs_novita_calls_total{method="POST",outcome="no_envelope",path="/gpu/instance/delete"}'
        in scrape
    )

    sim.inject(proxy_html_404=False)
    wait_for_job(app, deleting["jobId"], "succeeded")
    assert instance_row(app, instance_id).status == "deleted"
    assert [entry["status"] for entry in sim.instances()] == ["removed"]
    assert job_row(app, deleting["jobId"]).attempt >= 2


@pytest.mark.parametrize("sim_options", [{"phase_seconds": 0, "removed_grace_seconds": 0}])
def test_a_proxys_html_404_on_the_read_never_marks_an_instance_lost(app, tenant, sim, novita, novita_config):
    _, instance_id = run_chain(app, tenant["id"], REQUEST)
    novita.delete_instance(instance_row(app, instance_id).novita_id)  # gone behind our back, and unlisted
    sim.inject(proxy_html_404={"count": 100, "endpoint": spec.INSTANCE_PATH})

    with app.app_context():
        assert reconcile()["unread"] == [instance_id]  # left as it is; the pass goes on with the others
    assert instance_row(app, instance_id).status == "running"

    sim.inject(proxy_html_404=False)
    with app.app_context():
        assert reconcile()["lost"] == [instance_id]


def test_insufficient_resource_in_the_nested_envelope_still_falls_back_to_the_next_candidate(
    app, client, tenant, sim, gpu_worker
):
    sim.inject(
        nested_error_envelope=True,
        fail_next={"reason": "INSUFFICIENT_RESOURCE", "endpoint": spec.INSTANCE_CREATE_PATH},
    )
    gpu_worker()
    accepted = provision(client, tenant)
    wait_for_job(app, accepted["jobId"], "succeeded")

    assert instance_row(app, accepted["instanceId"]).product_id == "26"
    refused = [e.data["reason"] for e in events(app, accepted["jobId"]) if e.type == "job.placement_refused"]
    assert refused == ["INSUFFICIENT_RESOURCE"]


def test_a_full_provisioning_run_makes_no_call_the_api_does_not_serve(
    app, client, tenant, sim, gpu_worker, novita_config
):
    gpu_worker()
    accepted = provision(client, tenant)
    wait_for_job(app, accepted["jobId"], "succeeded")
    instance_id = accepted["instanceId"]
    for action in ("stop", "start"):
        response = client.post(f"/v1/instances/{instance_id}/{action}", headers=tenant["headers"])
        wait_for_job(app, response.json["jobId"], "succeeded")
    response = client.delete(f"/v1/instances/{instance_id}", headers=tenant["headers"])
    wait_for_job(app, response.json["jobId"], "succeeded")
    with app.app_context():
        reconcile()

    called = {call["endpoint"] for call in sim.ledger()}
    assert {spec.INSTANCE_CREATE_PATH, spec.INSTANCE_STOP_PATH, spec.INSTANCE_DELETE_PATH} <= called
    assert sim.unknown_calls() == []


@pytest.mark.parametrize("sim_options", [{"phase_seconds": {"default": 0, "pulling": 600}}])
def test_a_monitor_giving_up_through_a_proxys_html_404_keeps_looking_until_the_delete_is_seen(
    app, client, tenant, sim, novita_config
):
    with app.app_context():
        job, instance = create.submit(uuid.UUID(tenant["id"]), REQUEST)
        job_id, instance_id = str(job.id), str(instance.id)
        assert runner.run_job(job.id) == "running"
    response = client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant["headers"])
    assert response.status_code in (200, 202), response.json

    sim.inject(proxy_html_404=True)
    look(app, next_monitor_look(app))  # cancelled: deletes its instance, and the proxy answers the delete
    assert job_row(app, job_id).status == "cancelling"
    assert instance_row(app, instance_id).status == "creating"  # not `deleting`: nothing was deleted
    assert [entry["status"] for entry in sim.instances()] == ["pulling"]

    sim.inject(proxy_html_404=False)
    look(app, next_monitor_look(app))
    job = job_row(app, job_id)
    assert (job.status, job.error) == ("cancelled", "cancelled on request; the instance was deleted")
    assert [entry["status"] for entry in sim.instances()] == ["removed"]


@pytest.mark.parametrize("sim_options", [{"phase_seconds": 0}])
def test_a_proxys_html_success_page_on_a_monitor_look_looks_again_and_the_job_still_succeeds(
    app, tenant, sim, novita_config
):
    """A 200 whose body is a page, not JSON (§12), says nothing: the look is not the job's end, and the
    instance stays watched (failing the job here had left it billing unwatched)."""
    with app.app_context():
        job, instance = create.submit(uuid.UUID(tenant["id"]), REQUEST)
        job_id, instance_id = str(job.id), str(instance.id)
        assert runner.run_job(job.id) == "running"
    sim.inject(fail_next={"status": 200, "html": True, "count": 2})

    for _ in range(2):  # each look meets a page where Novita's JSON should be
        look(app, next_monitor_look(app))
        assert job_row(app, job_id).status == "running"
        assert instance_row(app, instance_id).status == "creating"
    look(app, next_monitor_look(app))
    assert job_row(app, job_id).status == "succeeded"
    assert instance_row(app, instance_id).status == "running"
    assert [call["status"] for call in sim.ledger() if call.get("injected")] == [200, 200]
