"""``/v1/schedules`` over HTTP: create, list, pause, resume, delete; validation and tenant isolation."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from support.tenants import make_tenant, set_limits

from gpujobs import resources, schedules
from gpujobs.api.schedules import SchedulePage
from gpujobs.extensions import db
from gpujobs.jobs import PRIORITY_LEVELS
from gpujobs.models import Job


def post_schedule(client, tenant, **body):
    body.setdefault("name", "nightly")
    body.setdefault("cron", "0 3 * * *")
    body.setdefault("definitionKey", "echo")
    body.setdefault("params", {"message": "good night"})
    return client.post("/v1/schedules", json=body, headers=tenant["headers"])


def test_creating_a_schedule_answers_201_with_its_location_and_next_run(app, client, tenant):
    set_limits(app, tenant, max_priority=PRIORITY_LEVELS["critical"])
    response = post_schedule(client, tenant, priority=9, timezone="Europe/Berlin")
    assert response.status_code == 201, response.json
    body = response.json
    resources.Schedule.model_validate(body)
    assert response.headers["Location"] == f"/v1/schedules/{body['id']}"
    assert (body["name"], body["cron"], body["timezone"], body["priority"]) == (
        "nightly",
        "0 3 * * *",
        "Europe/Berlin",
        "critical",
    )
    assert body["params"] == {"message": "good night", "data": None}  # normalised by the definition
    assert body["enabled"] is True and body["lastRunAt"] is None
    assert datetime.fromisoformat(body["nextRunAt"]).astimezone(ZoneInfo("Europe/Berlin")).hour == 3
    assert client.get(response.headers["Location"], headers=tenant["headers"]).json == body


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "*/5 * * * * *"}, "cron"),
        ({"cron": "0 0 31 2 *"}, "cron"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"priority": "urgent"}, "priority"),
        ({"priority": 11}, "priority"),
        ({"definitionKey": "nope"}, "definitionKey"),
        ({"definitionVersion": 2}, "definitionKey"),
        ({"params": {"message": "x", "colour": "blue"}}, "colour"),
        ({"name": ""}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"enabled": "yes"}, "enabled"),
        ({"every": "day"}, "every"),
    ],
)
def test_a_bad_schedule_is_a_422_problem_naming_the_field(client, tenant, change, field):
    response = post_schedule(client, tenant, **change)
    assert response.status_code == 422, response.json
    assert response.content_type == "application/problem+json"
    assert any(field in error["field"] for error in response.json["errors"]), response.json


def test_a_name_is_unique_per_tenant_only(client, tenant, app):
    assert post_schedule(client, tenant).status_code == 201
    duplicate = post_schedule(client, tenant, cron="@hourly")
    assert duplicate.status_code == 409 and duplicate.content_type == "application/problem+json"
    assert post_schedule(client, make_tenant(app, "globex")).status_code == 201


def test_a_schedule_is_paused_and_resumed_with_patch(client, tenant):
    url = post_schedule(client, tenant).headers["Location"]
    paused = client.patch(url, json={"enabled": False}, headers=tenant["headers"])
    assert paused.status_code == 200 and paused.json["enabled"] is False
    assert client.patch(url, json={"enabled": False}, headers=tenant["headers"]).json["enabled"] is False
    resumed = client.patch(url, json={"enabled": True}, headers=tenant["headers"])
    assert resumed.status_code == 200 and resumed.json["enabled"] is True
    for body in ({"enabled": "no"}, {}, {"every": "day"}):
        assert client.patch(url, json=body, headers=tenant["headers"]).status_code == 422


def test_patch_changes_a_schedules_cron_zone_params_and_priority_and_keeps_the_rest(client, tenant):
    created = post_schedule(client, tenant, priority="low").json
    url = f"/v1/schedules/{created['id']}"
    when = {"cron": "30 4 * * *", "timezone": "Europe/Berlin"}
    moved = client.patch(url, json=when, headers=tenant["headers"])
    assert moved.status_code == 200, moved.json
    body = moved.json
    assert (body["cron"], body["timezone"], body["priority"]) == ("30 4 * * *", "Europe/Berlin", "low")
    next_run = datetime.fromisoformat(body["nextRunAt"]).astimezone(ZoneInfo("Europe/Berlin"))
    assert (next_run.hour, next_run.minute) == (4, 30)
    assert (body["id"], body["name"], body["params"]) == (created["id"], created["name"], created["params"])

    changed = client.patch(url, json={"params": {"message": "good morning"}}, headers=tenant["headers"]).json
    assert changed["params"] == {"message": "good morning", "data": None}  # normalised by the definition
    assert changed["nextRunAt"] == body["nextRunAt"]  # the timing is kept
    assert client.patch(url, json={"priority": None}, headers=tenant["headers"]).json["priority"] == "normal"

    for change, field in (
        ({"params": {"message": "x", "colour": "blue"}}, "colour"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"priority": "critical"}, "priority"),  # above the tenant's default limit
    ):
        refused = client.patch(url, json=change, headers=tenant["headers"])
        assert refused.status_code == 422 and any(field in e["field"] for e in refused.json["errors"]), change
    assert client.get(url, headers=tenant["headers"]).json == changed | {"priority": "normal"}


def test_a_deleted_schedule_is_gone(client, tenant):
    url = post_schedule(client, tenant).headers["Location"]
    assert client.delete(url, headers=tenant["headers"]).status_code == 204
    assert client.delete(url, headers=tenant["headers"]).status_code == 404
    assert client.get(url, headers=tenant["headers"]).status_code == 404
    assert client.get("/v1/schedules", headers=tenant["headers"]).json["items"] == []


def test_schedules_list_newest_first_in_pages(client, tenant):
    for name in ("a", "b", "c"):
        post_schedule(client, tenant, name=name)
    first = client.get("/v1/schedules?limit=2", headers=tenant["headers"]).json
    second = client.get(f"/v1/schedules?limit=2&cursor={first['nextCursor']}", headers=tenant["headers"]).json
    pages = [SchedulePage.model_validate(first), SchedulePage.model_validate(second)]
    assert [schedule.name for page in pages for schedule in page.items] == ["c", "b", "a"]
    assert pages[1].nextCursor is None


def test_another_tenants_schedules_are_invisible_and_keys_are_required(client, tenant, app):
    url = post_schedule(client, tenant).headers["Location"]
    other = make_tenant(app, "globex")
    assert client.get("/v1/schedules", headers=other["headers"]).json["items"] == []
    assert client.get(url, headers=other["headers"]).status_code == 404
    assert client.patch(url, json={"enabled": False}, headers=other["headers"]).status_code == 404
    assert client.delete(url, headers=other["headers"]).status_code == 404
    not_an_id = client.get("/v1/schedules/not-a-uuid", headers=tenant["headers"])
    assert not_an_id.status_code == 404 and not_an_id.content_type == "application/problem+json"
    for method in (client.get, client.post):
        response = method("/v1/schedules")
        assert response.status_code == 401 and response.content_type == "application/problem+json"
    assert client.get(url, headers=tenant["headers"]).json["enabled"] is True


def test_a_schedule_made_over_http_queues_its_job_at_its_tick(client, tenant, app):
    created = post_schedule(client, tenant, cron="*/10 * * * *", priority="low").json
    tick = datetime.fromisoformat(created["nextRunAt"])
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        assert schedules.run_due_schedules(now=tick) == 1
        job_id = db.session.scalar(select(Job.id).where(Job.idempotency_key.like("schedule:%")))
    job = client.get(f"/v1/jobs/{job_id}", headers=tenant["headers"]).json
    assert (job["definitionKey"], job["priority"], job["params"]["message"]) == ("echo", "low", "good night")
    after = client.get(f"/v1/schedules/{created['id']}", headers=tenant["headers"]).json
    assert datetime.fromisoformat(after["lastRunAt"]) == tick
    assert (datetime.fromisoformat(after["nextRunAt"]) - tick).total_seconds() == 600
