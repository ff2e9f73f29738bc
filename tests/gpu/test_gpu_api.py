"""`/v1/instances` as a client sees it: validation, 202s, pages, tenancy, conflicts (no worker needed)."""

from __future__ import annotations

import re
import uuid

import pytest
from sqlalchemy import delete, func, select
from support.gpu import REQUEST, novita_name, provision
from support.rows import job_row
from support.tenants import make_tenant

from gpujobs import dispatch
from gpujobs.extensions import db
from gpujobs.models import IdempotencyRecord, Instance, Job
from gpujobs.provisioning import create, records
from gpujobs.provisioning.records import instance_id_for


def test_a_create_request_answers_202_with_its_job_its_instance_and_where_to_look(app, client, tenant):
    response = client.post("/v1/instances", json={**REQUEST, "name": "box"}, headers=tenant["headers"])
    assert response.status_code == 202
    body = response.json
    assert body["status"] == "requested"
    assert body["instanceId"] == str(instance_id_for(uuid.UUID(body["jobId"])))
    assert response.headers["Location"] == f"/v1/instances/{body['instanceId']}"
    shown = client.get(response.headers["Location"], headers=tenant["headers"]).json
    assert (shown["status"], shown["label"], shown["productName"], shown["region"]) == (
        "requested",
        "box",
        "RTX 4090 24GB",
        "CN-HK-01",
    )
    assert shown["name"] == novita_name(app, body["jobId"]) and shown["jobId"] == body["jobId"]
    job = client.get(f"/v1/jobs/{body['jobId']}", headers=tenant["headers"]).json
    assert (job["definitionKey"], job["status"], job["params"]["productName"]) == (
        "gpu.instance.create",
        "queued",
        "RTX 4090 24GB",
    )


def test_a_repeated_create_with_the_same_idempotency_key_gets_the_first_answer(client, tenant):
    headers = {**tenant["headers"], "Idempotency-Key": "create-box-1"}
    first = client.post("/v1/instances", json=REQUEST, headers=headers)
    again = client.post("/v1/instances", json=REQUEST, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json == first.json and again.headers["Idempotent-Replayed"] == "true"
    assert len(client.get("/v1/instances", headers=tenant["headers"]).json["items"]) == 1


def test_reusing_an_idempotency_key_whose_answer_expired_is_a_conflict_naming_the_first_job(
    app, client, tenant
):
    headers = {**tenant["headers"], "Idempotency-Key": "create-box-2"}
    first = client.post("/v1/instances", json=REQUEST, headers=headers)
    assert first.status_code == 202
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():  # the cleanup sweep forgot the answer after 24 h; the job still holds the key
        db.session.execute(delete(IdempotencyRecord))
        db.session.commit()
    again = client.post("/v1/instances", json=REQUEST, headers=headers)
    assert (again.status_code, again.content_type) == (409, "application/problem+json")
    assert again.json["jobId"] == first.json["jobId"]
    assert (
        again.json["detail"] == f"Idempotency-Key 'create-box-2' already belongs to job {first.json['jobId']}"
    )
    assert len(client.get("/v1/instances", headers=tenant["headers"]).json["items"]) == 1


def test_a_create_job_is_committed_together_with_its_instance_before_it_is_published(
    app, client, tenant, monkeypatch
):
    seen = []

    def publish(item):  # what a worker, or a client reading its 202, would find at that moment
        with db.engine.connect() as other:
            job = other.scalar(select(func.count()).select_from(Job).where(Job.id == item.job_id))
            row = other.scalar(
                select(func.count()).select_from(Instance).where(Instance.job_id == item.job_id)
            )
        seen.append((job, row))
        return True

    monkeypatch.setattr(dispatch, "publish", publish)
    provision(client, tenant)
    assert seen == [(1, 1)]


def test_a_create_whose_instance_row_cannot_be_written_leaves_no_job_behind(
    app, tenant, monkeypatch, app_context
):
    def broken(*args, **kwargs):
        raise RuntimeError("database refused the row")

    monkeypatch.setattr(records, "ensure_row", broken)
    with pytest.raises(RuntimeError):
        create.submit(uuid.UUID(tenant["id"]), REQUEST)
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(Job)) == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"templateId": "1"}, "body"),  # both an image and a template
        ({"imageUrl": None}, "body"),  # neither
        ({"ports": [{"port": 2222}]}, "ports.0.port"),  # reserved by Novita
        ({"gpuNum": 9}, "gpuNum"),
        ({"maxPricePerHour": 0}, "maxPricePerHour"),
        ({"timeoutSeconds": 30, "monitoring": {"maxWaitTimeMs": 30000}}, "body"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_an_invalid_create_request_is_refused_with_the_field_named(client, tenant, change, field):
    body = {key: value for key, value in {**REQUEST, **change}.items() if value is not None}
    response = client.post("/v1/instances", json=body, headers=tenant["headers"])
    assert response.status_code == 422
    assert field in [error["field"] for error in response.json["errors"]]


def test_the_create_definition_validates_post_v1_jobs_params_the_same_way(client, tenant):
    bad = {"definitionKey": "gpu.instance.create", "params": {**REQUEST, "gpuNum": 9}}
    assert client.post("/v1/jobs", json=bad, headers=tenant["headers"]).status_code == 422
    good = {"definitionKey": "gpu.instance.create", "params": REQUEST}
    assert client.post("/v1/jobs", json=good, headers=tenant["headers"]).status_code == 202


def test_the_request_monitoring_config_sets_the_jobs_attempt_budget(app, client, tenant):
    accepted = provision(client, tenant, monitoring={"pollIntervalMs": 1000, "maxRetryAttempts": 5})
    assert job_row(app, accepted["jobId"]).max_attempts == 5


def test_the_monitoring_defaults_are_exposed_in_the_seeds_names(client, tenant):
    response = client.get("/v1/instances/monitoring", headers=tenant["headers"])
    assert response.json == {
        "pollIntervalMs": 5000,
        "maxWaitTimeMs": 600000,
        "maxRetryAttempts": 3,
        "instancePrefix": response.json["instancePrefix"],
    }
    assert re.fullmatch(r"gpujobs-[0-9a-f]{8}-", response.json["instancePrefix"])


def test_an_explicit_instance_prefix_is_shown_and_wins_over_the_stored_one(app, client, tenant, monkeypatch):
    monkeypatch.setitem(app.config, "GPUJOBS_INSTANCE_PREFIX", "acme-gpu-")
    response = client.get("/v1/instances/monitoring", headers=tenant["headers"])
    assert response.json["instancePrefix"] == "acme-gpu-"
    instance_id = provision(client, tenant)["instanceId"]
    shown = client.get(f"/v1/instances/{instance_id}", headers=tenant["headers"]).json
    assert shown["name"].startswith("acme-gpu-")


def test_instances_are_listed_newest_first_a_page_at_a_time(client, tenant):
    ids = [provision(client, tenant)["instanceId"] for _ in range(3)]
    first = client.get("/v1/instances?limit=2", headers=tenant["headers"]).json
    second = client.get(f"/v1/instances?limit=2&cursor={first['nextCursor']}", headers=tenant["headers"]).json
    assert [item["id"] for item in first["items"] + second["items"]] == ids[::-1]
    assert second["nextCursor"] is None
    assert client.get("/v1/instances?status=running", headers=tenant["headers"]).json["items"] == []
    assert client.get("/v1/instances?status=bogus", headers=tenant["headers"]).status_code == 422


def test_another_tenants_instance_answers_404_to_every_request(app, client, tenant):
    instance_id = provision(client, tenant)["instanceId"]
    other = make_tenant(app, "other")["headers"]
    assert client.get(f"/v1/instances/{instance_id}", headers=other).status_code == 404
    assert client.post(f"/v1/instances/{instance_id}/stop", headers=other).status_code == 404
    assert client.delete(f"/v1/instances/{instance_id}", headers=other).status_code == 404
    assert client.get("/v1/instances", headers=other).json["items"] == []
    assert client.get("/v1/instances/not-a-uuid", headers=tenant["headers"]).status_code == 404


def test_an_instance_still_being_provisioned_refuses_actions_with_a_conflict(client, tenant):
    accepted = provision(client, tenant)
    stop = client.post(f"/v1/instances/{accepted['instanceId']}/stop", headers=tenant["headers"])
    assert stop.status_code == 409 and "still being provisioned" in stop.json["detail"]
    delete = client.delete(f"/v1/instances/{accepted['instanceId']}", headers=tenant["headers"])
    assert delete.status_code == 409
    assert delete.json["detail"] == (
        f"instance {accepted['instanceId']} is still being provisioned by job {accepted['jobId']}; "
        "wait for that job, or cancel it to delete the instance"
    )
