"""The provisioning workflow end to end: a real worker, the simulator over HTTP, real webhooks."""

from __future__ import annotations

import pytest
from support.gpu import IMAGE, PHASE_SECONDS, novita_name, provision, wait_for_job
from support.polling import wait_for
from support.rows import events, instance_row, job_row
from support.tenants import set_limits

# Instances that stay in `pulling` for a minute: long enough to cancel or time out first.
SLOW_PULL = pytest.mark.parametrize(
    "sim_options", [{"phase_seconds": {"default": PHASE_SECONDS, "pulling": 60}}]
)


def test_a_request_for_an_rtx_4090_in_hong_kong_becomes_a_running_instance_and_a_delivered_webhook(
    app, client, tenant, sim, gpu_worker, hooks
):
    gpu_worker()
    hook = hooks()
    ports = [{"port": 8888, "type": "http"}, {"port": 22, "type": "tcp"}]
    accepted = provision(client, tenant, ports=ports, name="trainer", webhookUrl=hook.url)
    assert accepted["status"] == "requested"
    wait_for_job(app, accepted["jobId"], "succeeded")

    shown = client.get(f"/v1/instances/{accepted['instanceId']}", headers=tenant["headers"]).json
    assert shown["status"] == "running" and shown["novitaStatus"] == "running"
    assert (shown["productId"], shown["region"], shown["clusterId"]) == (
        "4090.16c62g",
        "CN-HK-01",
        "cn-hongkong-1",
    )
    assert shown["pricePerHour"] == 0.35 and shown["label"] == "trainer" and shown["readyAt"]
    assert shown["name"] == novita_name(app, accepted["jobId"])
    endpoints = {port["port"]: port["endpoint"] for port in shown["endpoints"]["ports"]}
    assert endpoints[8888].startswith("https://") and ":" in endpoints[22]
    assert shown["endpoints"]["ssh"].startswith("ssh -p ")

    wait_for(lambda: len(hook.verified) == 3)
    by_type = {event["type"]: event for event in hook.verified}
    types = [event["type"] for event in hook.verified]
    assert types == ["instance.created", "instance.running", "job.succeeded"]  # in order
    assert by_type["instance.running"]["data"]["instance"]["status"] == "running"
    # Instance events carry the GPU queue's top-level fields beside the Standard Webhooks envelope.
    running = by_type["instance.running"]
    assert (running["instanceId"], running["status"]) == (accepted["instanceId"], "running")
    assert running["timestamp"] and "instanceId" not in by_type["job.succeeded"]
    created_event = by_type["instance.created"]
    assert (created_event["instanceId"], created_event["status"]) == (accepted["instanceId"], "creating")
    assert created_event["data"]["instance"]["novitaInstanceId"] == sim.instances()[0]["id"]
    (created,) = [call for call in sim.ledger() if call["endpoint"] == "/gpu/instance/create"]
    assert created["status"] == 200
    assert [i["clusterId"] for i in sim.instances()] == ["cn-hongkong-1"]


def test_an_out_of_stock_region_falls_back_to_the_next_configured_region(
    app, client, tenant, sim, gpu_worker
):
    sim.inject(out_of_stock_clusters=["cn-hongkong-1"])
    gpu_worker()
    accepted = provision(client, tenant)
    wait_for_job(app, accepted["jobId"], "succeeded")
    instance = instance_row(app, accepted["instanceId"])
    # GPUJOBS_REGION_FALLBACK's default order is CN-HK-01, AS-SGP-02, US-CA-06, EU-DE-01.
    assert (instance.region, instance.cluster_id, instance.product_id) == (
        "AS-SGP-02",
        "as-sgp-2",
        "4090.16c62g",
    )


def test_an_insufficient_resource_answer_at_create_time_moves_on_to_the_next_candidate(
    app, client, tenant, sim, gpu_worker
):
    sim.inject(fail_next={"reason": "INSUFFICIENT_RESOURCE", "endpoint": "/gpu/instance/create"})
    gpu_worker()
    accepted = provision(client, tenant)
    wait_for_job(app, accepted["jobId"], "succeeded")
    # The cheapest product in Hong Kong was refused at create time; the next one there was taken.
    assert instance_row(app, accepted["instanceId"]).product_id == "26"
    refused = [e.data for e in events(app, accepted["jobId"]) if e.type == "job.placement_refused"]
    assert refused == [
        {
            "productId": "4090.16c62g",
            "region": "CN-HK-01",
            "clusterId": "cn-hongkong-1",
            "pricePerHour": 0.35,
            "billingMode": "onDemand",
            "reason": "INSUFFICIENT_RESOURCE",
        }
    ]


def test_a_price_cap_refuses_every_product_above_it_with_a_clear_reason(app, client, tenant, sim, gpu_worker):
    gpu_worker()
    accepted = provision(client, tenant, maxPricePerHour=0.2)
    job = wait_for_job(app, accepted["jobId"], "failed")
    assert job.attempt == 1 and job.error == (
        "price cap: no RTX 4090 24GB x1 at or below $0.20/h in CN-HK-01, AS-SGP-02, US-CA-06, EU-GER-02; "
        "the cheapest in stock is $0.28/h (4090.hd.16c62g in US-CA-06)"
    )
    # The create step's on_end hook settles the instance just after the job's own commit.
    wait_for(lambda: instance_row(app, accepted["instanceId"]).status == "failed")
    assert instance_row(app, accepted["instanceId"]).error == job.error
    assert sim.count_calls("POST", "/gpu/instance/create") == 0


def test_a_lost_create_answer_and_the_retry_yield_exactly_one_instance(app, client, tenant, sim, gpu_worker):
    sim.inject(lose_next_creates=1)
    gpu_worker()
    accepted = provision(client, tenant)
    job = wait_for_job(app, accepted["jobId"], "succeeded")
    assert job.attempt == 2
    types = [event.type for event in events(app, accepted["jobId"])]
    assert "job.retrying" in types and "job.instance_adopted" in types
    ours = [i for i in sim.instances() if i["name"] == novita_name(app, accepted["jobId"])]
    assert len(ours) == 1 and len(sim.instances()) == 1
    assert sim.count_calls("POST", "/gpu/instance/create") == 1
    assert instance_row(app, accepted["instanceId"]).novita_id == ours[0]["id"]


def test_a_lost_create_answer_is_adopted_through_a_proxys_pages_on_the_lookup(
    app, client, tenant, sim, gpu_worker
):
    """The retry's lookup by name meets five HTML pages (a proxy's blip): it keeps asking within the
    attempt instead of spending the job's attempts (three tries each), and adopts the one instance."""
    sim.inject(
        lose_next_creates=1,
        fail_next={"count": 5, "status": 200, "html": True, "endpoint": "/gpu/instances"},
    )
    gpu_worker()
    accepted = provision(client, tenant)
    job = wait_for_job(app, accepted["jobId"], "succeeded", timeout=90)
    assert job.attempt == 2  # not 3: the attempt that met the pages adopted the instance
    assert "job.instance_adopted" in [event.type for event in events(app, accepted["jobId"])]
    assert len(sim.instances()) == 1 and sim.count_calls("POST", "/gpu/instance/create") == 1


def test_an_image_pull_failure_fails_the_job_deletes_the_instance_and_sends_a_failure_webhook(
    app, client, tenant, sim, gpu_worker, hooks
):
    sim.inject(fail_pull_images=[IMAGE])
    gpu_worker()
    hook = hooks()
    accepted = provision(client, tenant, webhookUrl=hook.url)
    job = wait_for_job(app, accepted["jobId"], "failed")
    assert job.error == "Novita reports pulling: pull image failed; the instance was deleted"
    assert instance_row(app, accepted["instanceId"]).status == "deleting"
    wait_for(lambda: sim.instances()[0]["status"] in ("toRemove", "removing", "removed"))
    wait_for(lambda: len(hook.verified) == 3)
    assert [event["type"] for event in hook.verified] == ["instance.created", "instance.failed", "job.failed"]


@SLOW_PULL
def test_an_instance_that_misses_its_deadline_fails_the_job_and_is_deleted(
    app, client, tenant, sim, gpu_worker, hooks
):
    gpu_worker(GPUJOBS_MONITOR_TIMEOUT_SECONDS="1")  # the default deadline, for requests that set none
    hook = hooks()
    accepted = provision(client, tenant, webhookUrl=hook.url)
    job = wait_for_job(app, accepted["jobId"], "failed")
    assert job.error.startswith("timed out: not running after 1 s (last Novita status: ")
    assert job.error.endswith("; the instance was deleted")
    wait_for(lambda: sim.instances()[0]["status"] in ("toRemove", "removing", "removed"))
    wait_for(lambda: len(hook.verified) == 3)
    assert [event["type"] for event in hook.verified] == ["instance.created", "instance.failed", "job.failed"]


@SLOW_PULL
def test_cancelling_a_create_job_mid_monitor_deletes_its_instance(app, client, tenant, sim, gpu_worker):
    gpu_worker()
    accepted = provision(client, tenant, timeoutSeconds=600)
    wait_for(lambda: instance_row(app, accepted["instanceId"]).novita_id)
    response = client.post(f"/v1/jobs/{accepted['jobId']}/cancel", headers=tenant["headers"])
    assert response.status_code in (200, 202)
    job = wait_for_job(app, accepted["jobId"], "cancelled")
    assert job.error == "cancelled on request; the instance was deleted"
    assert instance_row(app, accepted["instanceId"]).status == "deleting"
    wait_for(lambda: sim.instances()[0]["status"] in ("toRemove", "removing", "removed"))
    assert job_row(app, accepted["jobId"]).status == "cancelled"


# The instance runs about 7 s after its create: two looks, 5 s apart, each after more than a lease.
@pytest.mark.parametrize("sim_options", [{"phase_seconds": {"default": PHASE_SECONDS, "pulling": 6}}])
def test_a_monitor_polling_less_often_than_its_lease_lasts_is_never_rescued(
    app, client, tenant, sim, gpu_worker
):
    """Lease 3 s (the test settings), a look every 5 s: each look must keep the job leased until the next."""
    from gpujobs.sweeps import rescue_stuck

    assert app.config["GPUJOBS_LEASE_SECONDS"] == 3
    gpu_worker()
    accepted = provision(client, tenant, monitoring={"pollIntervalMs": 5000})

    def ended() -> bool:
        # a fresh context per poll: it sees what the worker committed since the last one
        with app.app_context():  # the rescue sweep, as beat would run it
            rescue_stuck()
        return job_row(app, accepted["jobId"]).status in ("succeeded", "failed")

    wait_for(ended, timeout=40, interval=0.5)
    job = job_row(app, accepted["jobId"])
    assert (job.status, job.attempt) == ("succeeded", 1)
    assert "job.rescued" not in [event.type for event in events(app, accepted["jobId"])]


def test_a_gpu_job_that_ends_in_the_monitor_publishes_its_tenants_next_job_at_once(
    app, client, tenant, gpu_worker
):
    """A create ends in a monitor look, not in run_job; it still hands its slot of the tenant's fairness
    window to the next job at once (no dispatch sweep runs in this test)."""
    set_limits(app, tenant, max_running_jobs=1)
    gpu_worker()
    first, second = provision(client, tenant), provision(client, tenant)
    assert job_row(app, second["jobId"]).published_at is None  # a window of 1 holds it back
    wait_for(lambda: job_row(app, second["jobId"]).status == "succeeded", timeout=60)
    assert job_row(app, first["jobId"]).status == "succeeded"
