"""GPU quotas per tenant: instances at once and their USD per hour, refused at submit (409) on every path.

Against real servers: concurrent creates over real HTTP, the simulator's catalogue for the price an
unplaced instance reserves, the create step run in process, schedules ticked as beat does.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
import requests
from sqlalchemy import func, select, update
from support.gpu import REQUEST, run_looks
from support.polling import wait_for
from support.tenants import make_tenant, set_limits

from gpujobs import jobs, runner, schedules
from gpujobs.extensions import db
from gpujobs.models import Instance, Job, Schedule
from gpujobs.registry import get_definition
from gpujobs.states import InstanceStatus

CAPPED = {**REQUEST, "maxPricePerHour": 0.5}


def limits_of(client, tenant) -> dict:
    return client.get("/v1/limits", headers=tenant["headers"]).json


def set_status(app, instance_id: str, status: str) -> None:
    """Put a row where a finished action would leave it (no worker in these tests)."""
    with app.app_context():
        row = Instance.id == uuid.UUID(instance_id)
        db.session.execute(update(Instance).where(row).values(status=status))
        db.session.commit()


@pytest.mark.parametrize(
    ("quota", "named", "limit"),
    [({"max_instances": 3}, "instances", 3), ({"max_usd_per_hour": Decimal("1.5")}, "usdPerHour", 1.5)],
)
def test_concurrent_creates_over_http_are_accepted_exactly_up_to_the_quota(
    app, tenant, live_server, quota, named, limit
):
    set_limits(app, tenant, **quota)
    other = make_tenant(app, "other")

    def post(_: int) -> requests.Response:
        url = f"{live_server}/v1/instances"
        return requests.post(url, json=CAPPED, headers=tenant["headers"], timeout=60)

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(post, range(12)))
    assert sorted(a.status_code for a in answers) == [202] * 3 + [409] * 9
    refused = next(a for a in answers if a.status_code == 409)
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert (refused.json()["limitName"], refused.json()["limit"]) == (named, limit)
    assert refused.json()["used"] == (3 if named == "instances" else 1.5)
    with app.app_context():
        rows = db.session.scalar(select(func.count()).select_from(Instance))
    assert rows == 3  # every refused create left nothing behind, neither job nor row
    requests.post(f"{live_server}/v1/instances", json=CAPPED, headers=other["headers"], timeout=60)
    assert limits_of(app.test_client(), other)["instances"]["used"] == 1  # each tenant counts its own


def test_limits_show_use_against_each_quota_and_the_refusal_says_which(app, client, tenant):
    set_limits(app, tenant, max_instances=2, max_usd_per_hour=Decimal("1"))
    assert limits_of(client, tenant)["instances"] == {"limit": 2, "used": 0}
    assert limits_of(client, tenant)["usdPerHour"] == {"limit": 1.0, "used": 0.0}
    assert client.post("/v1/instances", json=CAPPED, headers=tenant["headers"]).status_code == 202
    over = client.post("/v1/instances", json={**CAPPED, "maxPricePerHour": 0.6}, headers=tenant["headers"])
    assert over.status_code == 409 and over.json["limitName"] == "usdPerHour"
    assert (over.json["limit"], over.json["used"]) == (1.0, 0.5)
    assert "may cost up to $0.60 an hour" in over.json["detail"]
    assert client.post("/v1/instances", json=CAPPED, headers=tenant["headers"]).status_code == 202
    shown = limits_of(client, tenant)
    assert (shown["instances"], shown["usdPerHour"]) == ({"limit": 2, "used": 2}, {"limit": 1.0, "used": 1.0})
    third = client.post("/v1/instances", json={**CAPPED, "maxPricePerHour": 0.01}, headers=tenant["headers"])
    assert (third.status_code, third.json["limitName"], third.json["used"]) == (409, "instances", 2)


def test_what_counts_is_what_bills_a_gpu_and_a_start_needs_room_again(app, client, tenant):
    set_limits(app, tenant, max_instances=1)
    first = client.post("/v1/instances", json=CAPPED, headers=tenant["headers"]).json
    set_status(app, first["instanceId"], InstanceStatus.STOPPED)  # a stopped GPU bills only its disk
    assert limits_of(client, tenant)["instances"]["used"] == 0
    second = client.post("/v1/instances", json=CAPPED, headers=tenant["headers"]).json
    set_status(app, second["instanceId"], InstanceStatus.DELETING)  # still billed until Novita says gone
    refused = client.post(f"/v1/instances/{first['instanceId']}/start", headers=tenant["headers"])
    assert (refused.status_code, refused.json["limitName"], refused.json["used"]) == (409, "instances", 1)
    assert client.get(f"/v1/instances/{first['instanceId']}", headers=tenant["headers"]).json["status"] == (
        "stopped"
    )
    for status in (InstanceStatus.DELETED, InstanceStatus.FAILED, InstanceStatus.LOST):
        set_status(app, second["instanceId"], status)
        assert limits_of(client, tenant)["instances"]["used"] == 0, status
    started = client.post(f"/v1/instances/{first['instanceId']}/start", headers=tenant["headers"])
    assert started.status_code == 202 and limits_of(client, tenant)["instances"]["used"] == 1


def test_a_create_through_post_v1_jobs_is_held_to_the_quota_and_gets_its_row_at_submit(app, client, tenant):
    set_limits(app, tenant, max_instances=1, max_usd_per_hour=Decimal("10"))
    body = {"definitionKey": "gpu.instance.create", "params": CAPPED}
    accepted = client.post("/v1/jobs", json=body, headers=tenant["headers"])
    assert accepted.status_code == 202
    with app.app_context():
        row = db.session.scalar(select(Instance).where(Instance.job_id == uuid.UUID(accepted.json["id"])))
        assert (row.status, row.reserved_price_units) == ("requested", 50_000)
    refused = client.post("/v1/jobs", json=body, headers=tenant["headers"])
    assert (refused.status_code, refused.json["limitName"]) == (409, "instances")


def test_a_schedule_tick_over_the_quota_is_skipped_and_the_schedule_moves_on(app, client, tenant):
    set_limits(app, tenant, max_instances=1)
    assert client.post("/v1/instances", json=CAPPED, headers=tenant["headers"]).status_code == 202
    body = {"name": "gpu", "cron": "* * * * *", "definitionKey": "gpu.instance.create", "params": CAPPED}
    schedule_id = uuid.UUID(client.post("/v1/schedules", json=body, headers=tenant["headers"]).json["id"])
    with app.app_context():
        due = jobs.utcnow() - timedelta(seconds=1)
        db.session.execute(update(Schedule).where(Schedule.id == schedule_id).values(next_run_at=due))
        db.session.commit()
        assert schedules.run_due_schedules() == 0
        assert db.session.get_one(Schedule, schedule_id).next_run_at > jobs.utcnow()
        assert db.session.scalar(select(func.count()).select_from(Job)) == 1


def test_without_novita_to_price_it_an_uncapped_create_holds_all_the_room_left(app, client, tenant):
    """No Novita settings in this app: the dearest matching product is unknown, so all the room is held."""
    set_limits(app, tenant, max_usd_per_hour=Decimal("2"))
    assert client.post("/v1/instances", json=REQUEST, headers=tenant["headers"]).status_code == 202
    assert limits_of(client, tenant)["usdPerHour"] == {"limit": 2.0, "used": 2.0}
    capped = {**REQUEST, "maxPricePerHour": 0.1}
    refused = client.post("/v1/instances", json=capped, headers=tenant["headers"])
    assert (refused.status_code, refused.json["limitName"]) == (409, "usdPerHour")


def test_a_cap_of_any_size_is_checked_against_the_quota_before_it_is_stored(app, client, tenant):
    huge = {**REQUEST, "maxPricePerHour": 1.8e157}  # found by the API fuzzer: no row holds it
    assert client.post("/v1/instances", json=huge, headers=tenant["headers"]).status_code == 202  # no quota
    set_limits(app, tenant, max_usd_per_hour=Decimal("19999"))
    refused = client.post("/v1/instances", json=huge, headers=tenant["headers"])
    assert (refused.status_code, refused.json["limitName"], refused.json["used"]) == (409, "usdPerHour", 0.0)


def test_an_uncapped_create_reserves_the_dearest_listed_product_until_placed_at_its_price(
    app, client, tenant, sim, novita_config
):
    """RTX 4090 24GB is listed at $0.35 and $0.67 an hour: $0.67 is held until the create step places it
    (at the cheapest, $0.35); then the quota has room for another uncapped one."""
    set_limits(app, tenant, max_usd_per_hour=Decimal("1.05"))
    first = client.post("/v1/instances", json=REQUEST, headers=tenant["headers"]).json
    assert limits_of(client, tenant)["usdPerHour"]["used"] == 0.67
    refused = client.post("/v1/instances", json=REQUEST, headers=tenant["headers"])
    assert (refused.status_code, refused.json["used"]) == (409, 0.67)
    with app.app_context():
        runner.run_job(uuid.UUID(first["jobId"]))

    def running() -> dict | None:
        run_looks(app)  # the monitor's looks, in this process, until the simulator says running
        shown = client.get(f"/v1/instances/{first['instanceId']}", headers=tenant["headers"]).json
        return shown if shown["status"] == "running" else None

    shown = wait_for(running, timeout=30, interval=0.2)
    assert shown["pricePerHour"] == 0.35
    assert limits_of(client, tenant)["usdPerHour"]["used"] == 0.35
    assert client.post("/v1/instances", json=REQUEST, headers=tenant["headers"]).status_code == 202


def test_a_redriven_create_is_held_to_the_quota_and_its_row_counts_again(app, client, tenant):
    """A create that failed left its row `failed` (history); redriving it needs room like a new create."""
    set_limits(app, tenant, max_instances=1)
    first = client.post("/v1/instances", json=CAPPED, headers=tenant["headers"]).json
    with app.app_context():
        job_id = uuid.UUID(first["jobId"])
        jobs.claim(job_id, get_definition("gpu.instance.create", 1), 60)
        jobs.fail_attempt(job_id, 1, "no stock", retryable=False, retry_delay_seconds=0)
        db.session.commit()
    set_status(app, first["instanceId"], InstanceStatus.FAILED)
    letter_id = client.get("/v1/dlq", headers=tenant["headers"]).json["items"][0]["id"]
    second = client.post("/v1/instances", json=CAPPED, headers=tenant["headers"]).json
    refused = client.post(f"/v1/dlq/{letter_id}/retry", headers=tenant["headers"])
    assert (refused.status_code, refused.json["limitName"], refused.json["used"]) == (409, "instances", 1)
    assert client.get(f"/v1/jobs/{job_id}", headers=tenant["headers"]).json["status"] == "failed"
    set_status(app, second["instanceId"], InstanceStatus.DELETED)
    assert client.post(f"/v1/dlq/{letter_id}/retry", headers=tenant["headers"]).status_code == 202
    shown = client.get(f"/v1/instances/{first['instanceId']}", headers=tenant["headers"]).json
    assert shown["status"] == "creating" and limits_of(client, tenant)["instances"]["used"] == 1


def test_a_start_through_post_v1_jobs_is_held_to_the_quota_at_submit_and_when_it_runs(app, client, tenant):
    """Over quota, `POST /v1/jobs` refuses a start with the 409 of `POST /v1/instances/{id}/start`. Nothing
    is held until the row moves, so the start handler checks again, under the same lock, in the
    transaction that marks the row starting: the quota filled meanwhile, the job fails and the row stays."""
    set_limits(app, tenant, max_instances=1)
    first = client.post("/v1/instances", json=CAPPED, headers=tenant["headers"]).json
    set_status(app, first["instanceId"], InstanceStatus.STOPPED)
    second = client.post("/v1/instances", json=CAPPED, headers=tenant["headers"])
    assert second.status_code == 202  # the place
    body = {"definitionKey": "gpu.instance.start", "params": {"instanceId": first["instanceId"]}}
    refused = client.post("/v1/jobs", json=body, headers=tenant["headers"])
    assert refused.status_code == 409 and refused.mimetype == "application/problem+json"
    assert (refused.json["limitName"], refused.json["limit"], refused.json["used"]) == ("instances", 1, 1)
    assert len(client.get("/v1/jobs", headers=tenant["headers"]).json["items"]) == 2  # the refused: not kept

    set_status(app, second.json["instanceId"], InstanceStatus.DELETED)
    accepted = client.post("/v1/jobs", json=body, headers=tenant["headers"])
    assert accepted.status_code == 202
    assert client.post("/v1/instances", json=CAPPED, headers=tenant["headers"]).status_code == 202  # refilled
    with app.app_context():
        runner.run_job(uuid.UUID(accepted.json["id"]))
        job = db.session.get_one(Job, uuid.UUID(accepted.json["id"]))
        assert job.status == "failed" and "instances" in job.error
        assert db.session.get_one(Instance, uuid.UUID(first["instanceId"])).status == "stopped"
