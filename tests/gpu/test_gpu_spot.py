"""Spot instances against the simulator: spot billing and prices, reclaims, replacements and their bound."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import select
from support.gpu import REQUEST, provision, run_chain, run_looks, wait_for_job
from support.polling import wait_for
from support.rows import instance_row, job_row
from support.tenants import set_limits

from gpujobs import runner
from gpujobs.extensions import db
from gpujobs.models import Instance, Job, WebhookDelivery
from gpujobs.operations import JobOptions
from gpujobs.provisioning import create, spot
from gpujobs.provisioning.reconcile import reconcile

SPOT = {**REQUEST, "region": "US-CA-06", "billingMode": "spot"}
# Reclaims and migrations complete at once; the other phases as quickly.
INSTANT = {"phase_seconds": 0, "removed_grace_seconds": 0}


@pytest.fixture
def sim_options():
    return INSTANT


def run_reconcile(app) -> dict:
    with app.app_context():
        return reconcile()


def replacement_of(app, instance_id: str) -> Instance | None:
    with app.app_context():
        row = db.session.scalar(
            select(Instance).where(Instance.replaces_instance_id == uuid.UUID(instance_id))
        )
        if row is not None:
            db.session.expunge(row)
        return row


def events(app, job_id: str) -> list[str]:
    """The webhook events recorded for a job, oldest first."""
    with app.app_context():
        rows = db.session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.job_id == uuid.UUID(job_id))
        ).all()
        return [row.event_type for row in sorted(rows, key=lambda row: row.payload["timestamp"])]


def run_replacement(app, row: Instance) -> None:
    """Run a replacement's create job and its monitor chain in this process."""
    with app.app_context():
        runner.run_job(row.job_id)
    run_looks(app)


def test_a_spot_create_sends_spot_billing_and_picks_the_cheapest_spot_price(app, tenant, sim, novita_config):
    # In US-CA-06 the cheapest on demand is 4090.hd.16c62g at $0.28/h, which Novita does not sell as spot;
    # 4090.16c62g is $0.35/h on demand and $0.18/h as spot.
    job_id, instance_id = run_chain(app, tenant["id"], {**SPOT, "maxPricePerHour": 0.2})
    assert job_row(app, job_id).status == "succeeded"
    row = instance_row(app, instance_id)
    assert (row.status, row.billing_mode, row.product_id, row.price_per_hour_units) == (
        "running",
        "spot",
        "4090.16c62g",
        18000,
    )
    assert [(item["productId"], item["billingMode"]) for item in sim.instances()] == [("4090.16c62g", "spot")]

    # The same cap on demand is refused: the cheapest on-demand price is above it.
    job_id, _ = run_chain(app, tenant["id"], {**REQUEST, "region": "US-CA-06", "maxPricePerHour": 0.2})
    assert "price cap" in job_row(app, job_id).error


def test_the_api_takes_and_shows_the_spot_fields_and_refuses_them_without_spot(client, tenant):
    refused = client.post(
        "/v1/instances", json={**REQUEST, "onReclaim": "recreate"}, headers=tenant["headers"]
    )
    assert refused.status_code == 422
    accepted = provision(client, tenant, billingMode="spot", onReclaim="recreate", fallbackToOnDemand=True)
    shown = client.get(f"/v1/instances/{accepted['instanceId']}", headers=tenant["headers"]).json
    assert (shown["billingMode"], shown["onReclaim"], shown["replacesInstanceId"]) == (
        "spot",
        "recreate",
        None,
    )
    schema = client.get("/openapi.json").json["components"]["schemas"]
    assert {"billingMode", "onReclaim", "fallbackToOnDemand"} <= set(schema["CreateInstance"]["properties"])
    assert "replacesInstanceId" in schema["Instance"]["properties"]
    assert "reclaimed" in schema["InstanceStatus"]["enum"]


def test_a_reclaim_with_fail_marks_the_instance_reclaimed_and_notifies_without_a_replacement(
    app, tenant, sim, novita_config
):
    job_id, instance_id = run_chain(app, tenant["id"], SPOT, webhook_url="http://127.0.0.1:9/hooks")
    sim.reclaim(instance_row(app, instance_id).novita_id)

    report = run_reconcile(app)
    assert report["reclaimed"] == [instance_id]
    row = instance_row(app, instance_id)
    assert (row.status, row.novita_status) == ("reclaimed", "exited")
    assert "reclaimed this spot instance (spotStatus terminated)" in row.error
    assert "instance.reclaimed" in events(app, job_id)
    assert replacement_of(app, instance_id) is None
    assert run_reconcile(app)["reclaimed"] == []  # history now: seen once


def test_a_reclaim_with_recreate_migrates_the_exited_instance_into_a_linked_replacement(
    app, client, tenant, sim, gpu_worker, novita_config, hooks
):
    gpu_worker()
    hook = hooks()
    accepted = provision(client, tenant, **SPOT, onReclaim="recreate", webhookUrl=hook.url)
    wait_for_job(app, accepted["jobId"], "succeeded")
    old_id = accepted["instanceId"]
    novita_id = instance_row(app, old_id).novita_id
    sim.reclaim(novita_id)  # notified -> reclaiming -> terminated, exited: at once here

    assert run_reconcile(app)["reclaimed"] == [old_id]
    new = replacement_of(app, old_id)
    assert new is not None and new.recreations == 1
    wait_for_job(app, str(new.job_id), "succeeded")

    # Novita's migrate ran the same instance again: the replacement holds it now, the old row does not.
    assert sim.count_calls("POST", "/gpu/instance/migrate") == 1
    assert sim.count_calls("POST", "/gpu/instance/create") == 1
    replaced = instance_row(app, new.id)
    assert (replaced.status, replaced.novita_id, replaced.billing_mode) == ("running", novita_id, "spot")
    assert instance_row(app, old_id).novita_id is None
    shown = client.get(f"/v1/instances/{new.id}", headers=tenant["headers"]).json
    assert shown["replacesInstanceId"] == old_id
    assert client.get(f"/v1/instances/{old_id}", headers=tenant["headers"]).json["status"] == "reclaimed"
    assert run_reconcile(app)["leaked"] == []  # the migrated instance is the replacement's
    reclaimed = wait_for(lambda: [e for e in hook.verified if e["type"] == "instance.reclaimed"])
    assert [(e["instanceId"], e["status"]) for e in reclaimed] == [(old_id, "reclaimed")]


@pytest.mark.parametrize("sim_options", [{**INSTANT, "phase_seconds": {"default": 0, "notified": 3600}}])
def test_a_reclaim_in_its_notice_period_is_replaced_by_a_new_spot_instance(
    app, tenant, sim, novita_config, monkeypatch
):
    job_id, old_id = run_chain(
        app, tenant["id"], {**SPOT, "onReclaim": "recreate"}, webhook_url="http://127.0.0.1:9/h"
    )
    old_novita_id = instance_row(app, old_id).novita_id
    sim.reclaim(old_novita_id)  # notified, still running for the notice period

    assert run_reconcile(app)["reclaimed"] == [old_id]
    assert "instance.reclaimed" in events(app, job_id)
    new = replacement_of(app, old_id)
    run_replacement(app, new)
    replaced = instance_row(app, new.id)
    assert replaced.status == "running" and replaced.novita_id != old_novita_id
    assert replaced.billing_mode == "spot" and replaced.replaces_instance_id == uuid.UUID(old_id)
    assert sim.count_calls("POST", "/gpu/instance/migrate") == 0
    # The reclaimed instance nobody wants any more goes as a leak, after the grace period.
    monkeypatch.setitem(app.config, "GPUJOBS_LEAK_GRACE_SECONDS", 0.0)
    assert [item["novitaInstanceId"] for item in run_reconcile(app)["leaked"]] == [old_novita_id]


def test_recreations_stop_at_the_configured_bound(app, tenant, sim, novita_config, monkeypatch):
    monkeypatch.setitem(app.config, "GPUJOBS_SPOT_MAX_RECREATES", 1)
    _, first = run_chain(app, tenant["id"], {**SPOT, "onReclaim": "recreate"})
    sim.reclaim(instance_row(app, first).novita_id)
    run_reconcile(app)
    second = replacement_of(app, first)
    run_replacement(app, second)
    assert instance_row(app, second.id).status == "running"

    sim.reclaim(instance_row(app, second.id).novita_id)
    assert run_reconcile(app)["reclaimed"] == [str(second.id)]
    assert replacement_of(app, str(second.id)) is None
    assert "not recreated: GPUJOBS_SPOT_MAX_RECREATES (1)" in instance_row(app, second.id).error


def test_no_spot_capacity_falls_back_to_on_demand_only_when_asked(app, tenant, sim, novita_config):
    sim.inject(no_spot_capacity=True)
    job_id, _ = run_chain(app, tenant["id"], SPOT)
    assert "out of stock: no RTX 4090 24GB x1 (spot)" in job_row(app, job_id).error

    job_id, instance_id = run_chain(app, tenant["id"], {**SPOT, "fallbackToOnDemand": True})
    assert job_row(app, job_id).status == "succeeded"
    row = instance_row(app, instance_id)
    assert (row.status, row.billing_mode, row.product_id) == ("running", "onDemand", "4090.hd.16c62g")
    assert [item["billingMode"] for item in sim.instances()] == ["onDemand"]


def test_a_reclaim_seen_twice_at_once_yields_one_replacement(app, tenant, sim, novita, novita_config):
    _, instance_id = run_chain(app, tenant["id"], {**SPOT, "onReclaim": "recreate"})
    novita_id = instance_row(app, instance_id).novita_id
    sim.reclaim(novita_id)
    seen = novita.get_instance(novita_id)
    barrier = threading.Barrier(2)
    outcomes: list[bool] = []

    def handle() -> None:  # as the monitor and the reconcile sweep would, each in its own transaction
        with app.app_context():
            row = db.session.get(Instance, uuid.UUID(instance_id))
            barrier.wait()
            reclaimed = spot.reclaim(row, seen, ("running",))
            db.session.commit()
            spot.announce([reclaimed] if reclaimed else [])
            outcomes.append(reclaimed is not None)

    threads = [threading.Thread(target=handle) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [False, True]
    with app.app_context():
        replacements = db.session.scalars(
            select(Instance).where(Instance.replaces_instance_id == uuid.UUID(instance_id))
        ).all()
    assert len(replacements) == 1
    assert run_reconcile(app)["reclaimed"] == []


def test_a_reclaim_the_create_watch_sees_fails_its_job_and_queues_the_replacement(
    app, tenant, sim, novita_config
):
    with app.app_context():
        job, instance = create.submit(
            uuid.UUID(tenant["id"]),
            {**SPOT, "onReclaim": "recreate"},
            JobOptions(webhook_url="http://127.0.0.1:9/h"),
        )
        job_id, instance_id = str(job.id), str(instance.id)
        runner.run_job(job.id)  # created, and running at Novita at once; the monitor has not looked yet
    sim.reclaim(instance_row(app, instance_id).novita_id)
    run_looks(app)

    failed = job_row(app, job_id)
    assert (failed.status, failed.error) == (
        "failed",
        "Novita reclaimed the spot instance (spotStatus terminated)",
    )
    assert instance_row(app, instance_id).status == "reclaimed"
    assert events(app, job_id)[-2:] == ["instance.reclaimed", "job.failed"]
    assert replacement_of(app, instance_id) is not None
    assert run_reconcile(app)["reclaimed"] == []  # seen once


def test_a_replacement_keeps_the_reclaimed_instances_deadline(app, tenant, sim, novita_config):
    """A reclaim must not lengthen what the caller allowed to bill: the chain keeps its first deadline."""
    _, old_id = run_chain(app, tenant["id"], {**SPOT, "onReclaim": "recreate", "maxRuntimeSeconds": 3600})
    sim.reclaim(instance_row(app, old_id).novita_id)
    assert run_reconcile(app)["reclaimed"] == [old_id]
    new = replacement_of(app, old_id)
    assert new is not None and new.expires_at == instance_row(app, old_id).expires_at


def test_a_replacement_over_the_tenants_quota_is_not_queued_and_the_reclaim_still_counts(
    app, tenant, sim, novita_config
):
    """The replacement is held to the tenant's GPU quotas like any create: refused, it leaves no job
    behind, and the reclaim itself is recorded with the reason."""
    _, old_id = run_chain(app, tenant["id"], {**SPOT, "onReclaim": "recreate"})
    # Another instance of the tenant takes the only place once the reclaimed one stops counting.
    run_chain(app, tenant["id"], SPOT)
    set_limits(app, tenant, max_instances=1)
    sim.reclaim(instance_row(app, old_id).novita_id)
    assert run_reconcile(app)["reclaimed"] == [old_id]
    assert replacement_of(app, old_id) is None
    assert (
        "not recreated" in instance_row(app, old_id).error and "instances" in instance_row(app, old_id).error
    )
    with app.app_context():
        creates = db.session.scalars(select(Job).where(Job.definition_key == "gpu.instance.create")).all()
    assert len(creates) == 2  # the two originals, no orphan replacement job
