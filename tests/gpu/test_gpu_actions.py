"""Instance actions as jobs (stop, start, delete) end to end, with a real worker and the simulator."""

from __future__ import annotations

from support.gpu import provision, wait_for_job
from support.polling import wait_for
from support.rows import instance_row, job_row


def act(client, tenant, instance_id: str, action: str) -> dict:
    """Ask for an action the way a client does; returns the 202 body."""
    url = f"/v1/instances/{instance_id}" + ("" if action == "delete" else f"/{action}")
    response = (client.delete if action == "delete" else client.post)(url, headers=tenant["headers"])
    assert response.status_code == 202, response.json
    return response.json


def test_stop_start_and_delete_jobs_take_an_instance_through_its_lifecycle(
    app, client, tenant, sim, gpu_worker, hooks
):
    gpu_worker()
    hook = hooks()
    accepted = provision(client, tenant, webhookUrl=hook.url)
    wait_for_job(app, accepted["jobId"], "succeeded")
    instance_id = accepted["instanceId"]

    stopping = act(client, tenant, instance_id, "stop")
    assert stopping["status"] == "stopping" and stopping["instanceId"] == instance_id
    wait_for_job(app, stopping["jobId"], "succeeded")
    stopped = instance_row(app, instance_id)
    assert (stopped.status, stopped.novita_status, str(stopped.job_id)) == (
        "stopped",
        "exited",
        stopping["jobId"],
    )

    starting = act(client, tenant, instance_id, "start")
    assert starting["status"] == "starting"
    wait_for_job(app, starting["jobId"], "succeeded")
    assert instance_row(app, instance_id).status == "running"

    deleting = act(client, tenant, instance_id, "delete")
    assert deleting["status"] == "deleting"
    wait_for_job(app, deleting["jobId"], "succeeded")
    assert instance_row(app, instance_id).status == "deleted"
    assert sim.instances()[0]["status"] == "removed"

    # Each action notifies the webhook URL the instance was created with.
    expected = [
        "instance.created",
        "instance.running",
        "instance.stopped",
        "instance.running",
        "instance.deleted",
    ]
    wait_for(lambda: len(hook.verified) == len(expected) + 4)  # and one job.* event for each of the 4 jobs
    assert sorted(e["type"] for e in hook.verified if e["type"].startswith("instance.")) == sorted(expected)


def test_a_start_after_stop_without_a_free_gpu_fails_with_a_clear_reason(
    app, client, tenant, sim, gpu_worker
):
    gpu_worker()
    accepted = provision(client, tenant)
    wait_for_job(app, accepted["jobId"], "succeeded")
    instance_id = accepted["instanceId"]
    wait_for_job(app, act(client, tenant, instance_id, "stop")["jobId"], "succeeded")
    sim.set_capacity("4090.16c62g", "cn-hongkong-1", 0)  # someone took the GPU meanwhile

    starting = act(client, tenant, instance_id, "start")
    job = wait_for_job(app, starting["jobId"], "failed")
    assert job.attempt == 1
    assert job.error.startswith(
        f"cannot start instance {instance_id}: Novita has no free RTX 4090 24GB GPU in CN-HK-01 right now "
        "(INSUFFICIENT_RESOURCE"
    )
    instance = instance_row(app, instance_id)
    assert (instance.status, instance.error) == ("stopped", job.error)
    assert job_row(app, accepted["jobId"]).status == "succeeded"
