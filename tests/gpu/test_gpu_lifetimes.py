"""Instance lifetimes: the deadline, its warning, the stop or delete at it, and extensions.

End to end with a real worker and the simulator, the sweep run in this process as beat would run it
(every few tenths of a second here); the exactly-once checks run the sweep from two threads at once.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, update
from support.gpu import REQUEST, provision, wait_for_job
from support.polling import wait_for
from support.rows import instance_row
from support.tenants import make_tenant

from gpujobs.extensions import db
from gpujobs.models import Instance, Job, WebhookDelivery
from gpujobs.provisioning import lifetimes
from gpujobs.provisioning.params import MAX_RUNTIME_SECONDS
from gpujobs.states import InstanceStatus

HOUR_SECONDS = 3600


@pytest.fixture
def settings(app: Flask) -> Iterator[Any]:
    """Set lifetime settings in this process's app config (where the sweep runs) for one test."""
    saved: dict[str, Any] = {}

    def set_(**values: Any) -> None:
        for key in values:
            saved.setdefault(key, app.config.get(key))
        app.config.update(values)

    yield set_
    app.config.update(saved)


def sweep(app: Flask) -> dict[str, int]:
    """One pass of the lifetimes sweep, as beat runs it."""
    with app.app_context():
        return lifetimes.sweep()


def sweep_until(app: Flask, instance_id: str, *statuses: str, timeout: float = 60.0) -> Instance:
    """Run the sweep every 0.3 s until the instance is in one of `statuses`."""

    def reached() -> Instance | None:
        sweep(app)
        row = instance_row(app, instance_id)
        return row if row.status in statuses else None

    return wait_for(reached, timeout=timeout, interval=0.3)  # type: ignore[return-value]


def in_parallel(app: Flask, times: int = 2) -> None:
    """Run the sweep from `times` threads released together, as two beats (or a rerun) would."""
    barrier = threading.Barrier(times)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            sweep(app)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def deliveries(app: Flask, event_type: str) -> list[WebhookDelivery]:
    with app.app_context():
        rows = db.session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.event_type == event_type)
            .order_by(WebhookDelivery.created_at)
        ).all()
        db.session.expunge_all()
    return list(rows)


def action_jobs(app: Flask) -> list[str]:
    with app.app_context():
        return list(
            db.session.scalars(select(Job.definition_key).where(Job.definition_key != "gpu.instance.create"))
        )


def as_if(app: Flask, instance_id: str, **values: Any) -> None:
    """Put the row where a worker (or the clock) would have put it, for tests that run no worker."""
    with app.app_context():
        db.session.execute(update(Instance).where(Instance.id == uuid.UUID(instance_id)).values(**values))
        db.session.commit()


def test_an_instance_is_warned_then_deleted_at_its_deadline(
    app, client, tenant, sim, gpu_worker, hooks, settings
):
    settings(GPUJOBS_INSTANCE_EXPIRY_WARNING_SECONDS=6)
    gpu_worker()
    hook = hooks()
    accepted = provision(client, tenant, maxRuntimeSeconds=8, webhookUrl=hook.url)
    assert accepted["status"] == "requested"
    shown = client.get(f"/v1/instances/{accepted['instanceId']}", headers=tenant["headers"]).json
    assert (shown["maxRuntimeSeconds"], shown["onExpiry"]) == (8, "delete")

    sweep_until(app, accepted["instanceId"], "deleting", "deleted")
    deleting = wait_for_job(app, instance_row(app, accepted["instanceId"]).job_id, "succeeded")
    assert deleting.definition_key == "gpu.instance.delete"
    assert instance_row(app, accepted["instanceId"]).status == "deleted"
    assert sim.instances()[0]["status"] == "removed"

    expected = [
        "instance.created",
        "instance.running",
        "instance.expiring",
        "instance.expired",
        "instance.deleted",
    ]
    wait_for(lambda: len([e for e in hook.verified if e["type"].startswith("instance.")]) == len(expected))
    instance_events = [e for e in hook.verified if e["type"].startswith("instance.")]
    assert sorted(e["type"] for e in instance_events) == sorted(expected)
    expiring = next(e for e in instance_events if e["type"] == "instance.expiring")
    assert expiring["instanceId"] == accepted["instanceId"]
    assert expiring["data"]["instance"]["expiresAt"] == shown["expiresAt"]
    expired = next(e for e in instance_events if e["type"] == "instance.expired")
    assert (expired["status"], expired["data"]["job"]["definitionKey"]) == ("deleting", "gpu.instance.delete")


def test_with_on_expiry_stop_the_instance_is_stopped_and_kept(app, client, tenant, sim, gpu_worker, settings):
    settings(GPUJOBS_INSTANCE_EXPIRY_WARNING_SECONDS=0)
    gpu_worker()
    accepted = provision(client, tenant, maxRuntimeSeconds=5, onExpiry="stop")
    wait_for_job(app, accepted["jobId"], "succeeded")

    sweep_until(app, accepted["instanceId"], "stopping", "stopped")
    stopping = wait_for_job(app, instance_row(app, accepted["instanceId"]).job_id, "succeeded")
    assert stopping.definition_key == "gpu.instance.stop"
    stopped = instance_row(app, accepted["instanceId"])
    assert (stopped.status, stopped.novita_status) == ("stopped", "exited")
    sweep(app)  # a stopped instance is where its deadline leads: nothing more to do
    assert action_jobs(app) == ["gpu.instance.stop"]
    assert deliveries(app, "instance.expiring") == []  # warnings were switched off


def test_two_sweeps_at_once_send_one_warning_take_one_action_and_send_one_expired_event(
    app, client, tenant, hooks, settings
):
    settings(GPUJOBS_INSTANCE_EXPIRY_WARNING_SECONDS=HOUR_SECONDS)
    accepted = provision(client, tenant, maxRuntimeSeconds=600, webhookUrl=hooks().url)
    in_parallel(app)
    sweep(app)
    (warning,) = deliveries(app, "instance.expiring")
    assert warning.payload["instanceId"] == accepted["instanceId"]
    assert instance_row(app, accepted["instanceId"]).expiry_warned_at is not None

    # Created and running, and now past its deadline (no worker runs in this test).
    as_if(app, accepted["instanceId"], status=InstanceStatus.RUNNING, expires_at=func.now())
    in_parallel(app, times=3)
    sweep(app)
    assert action_jobs(app) == ["gpu.instance.delete"]
    (expired,) = deliveries(app, "instance.expired")
    row = instance_row(app, accepted["instanceId"])
    assert (row.status, str(expired.job_id)) == ("deleting", str(row.job_id))
    assert len(deliveries(app, "instance.expiring")) == 1


def test_an_expiry_acts_even_when_the_previous_receiver_is_refused_now(app, client, tenant, hooks):
    """A stop or delete that cannot be queued keeps a GPU billing: a receiver the SSRF rules refuse
    since (here the cloud metadata address, refused in every setting) does not hold the expiry back."""
    accepted = provision(client, tenant, maxRuntimeSeconds=600, webhookUrl=hooks().url)
    with app.app_context():
        db.session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(accepted["jobId"]))
            .values(webhook_url="http://169.254.169.254/")
        )
        db.session.commit()
    as_if(app, accepted["instanceId"], status=InstanceStatus.RUNNING, expires_at=func.now())
    sweep(app)
    assert action_jobs(app) == ["gpu.instance.delete"]
    row = instance_row(app, accepted["instanceId"])
    with app.app_context():
        action = db.session.get_one(Job, row.job_id)
    assert (row.status, action.webhook_url) == ("deleting", None)


def test_extending_pushes_the_deadline_and_arms_a_new_warning(app, client, tenant, hooks, settings):
    settings(GPUJOBS_INSTANCE_EXPIRY_WARNING_SECONDS=HOUR_SECONDS)
    accepted = provision(client, tenant, maxRuntimeSeconds=600, webhookUrl=hooks().url)
    url = f"/v1/instances/{accepted['instanceId']}"
    before = client.get(url, headers=tenant["headers"]).json
    sweep(app)
    assert len(deliveries(app, "instance.expiring")) == 1

    response = client.post(f"{url}/extend", json={"seconds": 1800}, headers=tenant["headers"])
    assert response.status_code == 200, response.json
    assert response.json["id"] == accepted["instanceId"]
    pushed = _time(response.json["expiresAt"]) - _time(before["expiresAt"])
    assert pushed == timedelta(seconds=1800)
    assert instance_row(app, accepted["instanceId"]).expiry_warned_at is None

    sweep(app)
    sweep(app)
    first, second = deliveries(app, "instance.expiring")
    assert first.id != second.id  # a new event (new webhook-id) for the new deadline
    assert second.payload["data"]["instance"]["expiresAt"] == response.json["expiresAt"]


def test_an_extended_instance_outlives_its_first_deadline(app, client, tenant):
    accepted = provision(client, tenant, maxRuntimeSeconds=2)
    as_if(app, accepted["instanceId"], status=InstanceStatus.RUNNING)
    response = client.post(
        f"/v1/instances/{accepted['instanceId']}/extend",
        json={"seconds": HOUR_SECONDS},
        headers=tenant["headers"],
    )
    assert response.status_code == 200
    time.sleep(2.5)  # past the first deadline
    assert sweep(app)["expired"] == 0
    assert instance_row(app, accepted["instanceId"]).status == "running"
    assert action_jobs(app) == []

    # An extension of a deadline that already passed counts from now.
    as_if(app, accepted["instanceId"], expires_at=func.now() - timedelta(hours=2))
    again = client.post(
        f"/v1/instances/{accepted['instanceId']}/extend", json={"seconds": 60}, headers=tenant["headers"]
    ).json
    left = _time(again["expiresAt"]) - datetime.now(UTC)
    assert timedelta(seconds=50) < left <= timedelta(seconds=61)


def test_the_deployment_default_lifetime_applies_when_a_request_gives_none(app, client, tenant, settings):
    plain = provision(client, tenant)
    shown = client.get(f"/v1/instances/{plain['instanceId']}", headers=tenant["headers"]).json
    assert (shown["maxRuntimeSeconds"], shown["onExpiry"], shown["expiresAt"]) == (None, None, None)

    settings(GPUJOBS_INSTANCE_MAX_RUNTIME_SECONDS=7200)
    defaulted = provision(client, tenant)
    own = provision(client, tenant, maxRuntimeSeconds=60, onExpiry="stop")
    shown = client.get(f"/v1/instances/{defaulted['instanceId']}", headers=tenant["headers"]).json
    assert (shown["maxRuntimeSeconds"], shown["onExpiry"]) == (7200, "delete")
    assert _time(shown["expiresAt"]) - _time(shown["createdAt"]) == timedelta(seconds=7200)
    shown = client.get(f"/v1/instances/{own['instanceId']}", headers=tenant["headers"]).json
    assert (shown["maxRuntimeSeconds"], shown["onExpiry"]) == (60, "stop")


def test_extend_answers_404_for_another_tenants_instance_and_409_without_a_lifetime(app, client, tenant):
    mine = provision(client, tenant, maxRuntimeSeconds=600)
    other = make_tenant(app, "other")
    body = {"seconds": 60}
    response = client.post(f"/v1/instances/{mine['instanceId']}/extend", json=body, headers=other["headers"])
    assert (response.status_code, response.content_type) == (404, "application/problem+json")
    missing = client.post(f"/v1/instances/{uuid.uuid4()}/extend", json=body, headers=tenant["headers"])
    assert missing.status_code == 404

    plain = provision(client, tenant)
    response = client.post(
        f"/v1/instances/{plain['instanceId']}/extend", json=body, headers=tenant["headers"]
    )
    assert (response.status_code, response.content_type) == (409, "application/problem+json")
    assert "has no deadline" in response.json["detail"]

    as_if(app, mine["instanceId"], status=InstanceStatus.DELETED)
    response = client.post(f"/v1/instances/{mine['instanceId']}/extend", json=body, headers=tenant["headers"])
    assert response.status_code == 409 and "is deleted" in response.json["detail"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"maxRuntimeSeconds": 0}, "maxRuntimeSeconds"),
        ({"maxRuntimeSeconds": MAX_RUNTIME_SECONDS + 1}, "maxRuntimeSeconds"),
        ({"maxRuntimeSeconds": "an hour"}, "maxRuntimeSeconds"),
        ({"onExpiry": "pause"}, "onExpiry"),
    ],
)
def test_a_bad_lifetime_is_refused_with_a_422_naming_the_field(client, tenant, changes, field):
    response = client.post("/v1/instances", json={**REQUEST, **changes}, headers=tenant["headers"])
    assert (response.status_code, response.content_type) == (422, "application/problem+json")
    assert field in {error["field"] for error in response.json["errors"]}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"seconds": 0},
        {"seconds": -5},
        {"seconds": "60"},
        {"seconds": 1.5},
        {"seconds": MAX_RUNTIME_SECONDS + 1},
        {"seconds": 60, "more": 1},
    ],
)
def test_a_bad_extension_is_refused_with_a_422(client, tenant, body):
    accepted = provision(client, tenant, maxRuntimeSeconds=600)
    url = f"/v1/instances/{accepted['instanceId']}/extend"
    response = client.post(url, json=body, headers=tenant["headers"])
    assert (response.status_code, response.content_type) == (422, "application/problem+json")


def test_the_api_document_describes_lifetimes(client):
    spec = client.get("/openapi.json").json
    extend = spec["paths"]["/v1/instances/{instance_id}/extend"]["post"]
    assert {"200", "404", "409", "422"} <= extend["responses"].keys()
    schemas = spec["components"]["schemas"]
    assert {"maxRuntimeSeconds", "onExpiry"} <= schemas["CreateInstance"]["properties"].keys()
    assert {"maxRuntimeSeconds", "onExpiry", "expiresAt"} <= schemas["Instance"]["properties"].keys()
    assert "seconds" in schemas["ExtendInstance"]["properties"]


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)
