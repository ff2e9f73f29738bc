"""The jobs, definitions and DLQ endpoints: validation, pagination, transitions and tenant isolation."""

from __future__ import annotations

import uuid

from support.tenants import make_tenant, set_limits

from gpujobs import jobs
from gpujobs.extensions import db
from gpujobs.jobs import PRIORITY_LEVELS
from gpujobs.models import Job
from gpujobs.registry import get_definition


def post_job(client, tenant, **body):
    body.setdefault("definitionKey", "echo")
    body.setdefault("params", {"message": "hi"})
    return client.post("/v1/jobs", json=body, headers=tenant["headers"])


def test_submitting_a_job_answers_202_with_location_and_the_queued_job(app, client, tenant):
    set_limits(app, tenant, max_priority=PRIORITY_LEVELS["critical"])
    response = post_job(client, tenant, priority=9)
    assert response.status_code == 202
    assert response.headers["Location"] == f"/v1/jobs/{response.json['id']}"
    assert response.json["status"] == "queued" and response.json["jobId"] == response.json["id"]
    assert (response.json["priority"], response.json["priorityLevel"]) == (9, "critical")
    assert (
        client.get(response.headers["Location"], headers=tenant["headers"]).json["id"] == response.json["id"]
    )


def test_bad_input_is_a_problem_document_naming_the_field(client, tenant):
    cases = [
        (post_job(client, tenant, unknown=1), 422, "unknown"),
        (post_job(client, tenant, params={"message": "x", "extra": 1}), 422, "params.extra"),
        (post_job(client, tenant, definitionKey="nope"), 422, "definitionKey"),
        (post_job(client, tenant, priority="urgent"), 422, "priority"),
        (post_job(client, tenant, priority=11), 422, "priority"),
        (post_job(client, tenant, maxAttempts=0), 422, "maxAttempts"),
    ]
    for response, status, field in cases:
        assert response.status_code == status, response.json
        assert response.content_type == "application/problem+json"
        named = [error["field"] for error in response.json["errors"]]
        # A union (priority: a name or 0-10) reports each alternative under the field's own path.
        assert named and all(name == field or name.startswith(f"{field}.") for name in named), named
    malformed = client.post(
        "/v1/jobs", data="{not json", headers={**tenant["headers"], "Content-Type": "application/json"}
    )
    assert malformed.status_code == 400 and malformed.content_type == "application/problem+json"
    not_json = client.post("/v1/jobs", data="x=1", headers=tenant["headers"])
    assert not_json.status_code == 415


def test_an_oversized_body_is_refused_with_413(client, tenant, app):
    big = "x" * (app.config["MAX_CONTENT_LENGTH"] + 1)
    response = post_job(client, tenant, params={"message": big})
    assert response.status_code == 413 and response.content_type == "application/problem+json"


def test_listing_pages_with_a_cursor_and_filters_by_status_and_definition(client, tenant):
    ids = [post_job(client, tenant).json["id"] for _ in range(5)]
    post_job(client, tenant, definitionKey="compute.math", params={"operation": "sum", "numbers": [1]})
    seen, cursor = [], None
    while True:
        query = {"limit": 2, "definitionKey": "echo", **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", query_string=query, headers=tenant["headers"]).json
        seen += [item["id"] for item in page["items"]]
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    queued = client.get("/v1/jobs?status=queued", headers=tenant["headers"]).json["items"]
    assert len(queued) == 6
    for bad in ("status=bogus", "cursor=!!", "limit=0", "limit=201", "limit=x", "definitionKey="):
        response = client.get(f"/v1/jobs?{bad}", headers=tenant["headers"])
        assert response.status_code == 422, bad
        assert response.json["errors"][0]["field"] == bad.split("=")[0]


def test_another_tenants_job_and_dead_letter_answer_404_on_every_route(app, client, tenant):
    other = make_tenant(app, "other")
    job_id = post_job(client, tenant).json["id"]
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        job = db.session.get(Job, uuid.UUID(job_id))
        jobs.claim(job.id, get_definition("echo", 1), 60)
        jobs.fail_attempt(job.id, 1, "boom", retryable=False, retry_delay_seconds=0)
        db.session.commit()
    letter_id = client.get("/v1/dlq", headers=tenant["headers"]).json["items"][0]["id"]
    for method, path in [
        ("get", f"/v1/jobs/{job_id}"),
        ("get", f"/v1/jobs/{job_id}/events"),
        ("post", f"/v1/jobs/{job_id}/cancel"),
        ("get", f"/v1/dlq/{letter_id}"),
        ("post", f"/v1/dlq/{letter_id}/retry"),
        ("get", "/v1/jobs/not-a-uuid"),
    ]:
        response = getattr(client, method)(path, headers=other["headers"])
        assert response.status_code == 404, (method, path)
    assert client.get("/v1/jobs", headers=other["headers"]).json["items"] == []
    assert client.get("/v1/dlq", headers=other["headers"]).json["items"] == []
    redriven = client.post(f"/v1/dlq/{letter_id}/retry", json={"maxAttempts": 2}, headers=tenant["headers"])
    assert redriven.status_code == 202 and redriven.json["status"] == "queued"
    assert redriven.json["maxAttempts"] == 3
    again = client.post(f"/v1/dlq/{letter_id}/retry", headers=tenant["headers"])
    assert again.status_code == 409


def test_definitions_list_every_built_in_definition_with_its_defaults(client, tenant):
    definitions = client.get("/v1/definitions", headers=tenant["headers"]).json["definitions"]
    keys = {d["key"] for d in definitions}
    assert {"echo", "failing", "compute.math", "process.data", "call.api", "process.batch"} <= keys
    assert {"encode.video", "routes.generate"} <= keys
    video = next(d for d in definitions if d["key"] == "encode.video")
    assert video["concurrencyLimit"] == 3 and video["defaultMaxAttempts"] == 2


def test_requests_without_a_valid_key_are_401_problems(client):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        response = client.get("/v1/jobs", headers=headers)
        assert response.status_code == 401 and response.content_type == "application/problem+json"


def test_a_job_is_read_back_with_its_timeline_which_continues_after_an_event_id(client, tenant):
    job_id = post_job(client, tenant).json["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=tenant["headers"]).json["status"] == "queued"
    client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant["headers"])
    events = client.get(f"/v1/jobs/{job_id}/events", headers=tenant["headers"]).json
    assert events["jobId"] == job_id
    assert [e["type"] for e in events["events"]] == ["job.queued", "job.cancelled"]
    after = events["events"][0]["id"]
    rest = client.get(f"/v1/jobs/{job_id}/events?after={after}", headers=tenant["headers"]).json["events"]
    assert [e["type"] for e in rest] == ["job.cancelled"]
    for bad in ("after=-1", "after=x", f"after={2**63}"):
        assert client.get(f"/v1/jobs/{job_id}/events?{bad}", headers=tenant["headers"]).status_code == 422


def test_cancel_answers_200_for_a_queued_job_202_for_a_running_one_and_200_once_finished(app, client, tenant):
    queued = post_job(client, tenant).json["id"]
    response = client.post(f"/v1/jobs/{queued}/cancel", headers=tenant["headers"])
    assert response.status_code == 200 and response.json["status"] == "cancelled"
    running = post_job(client, tenant).json["id"]
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        jobs.claim(uuid.UUID(running), get_definition("echo", 1), 60)
        db.session.commit()
    response = client.post(f"/v1/jobs/{running}/cancel", headers=tenant["headers"])
    assert response.status_code == 202 and response.json["status"] == "cancelling"
    again = client.post(f"/v1/jobs/{queued}/cancel", headers=tenant["headers"])
    assert again.status_code == 200 and again.json["status"] == "cancelled"


def test_an_unknown_job_or_dead_letter_is_a_404_problem(client, tenant):
    for path in (f"/v1/jobs/{uuid.uuid4()}", f"/v1/dlq/{uuid.uuid4()}", f"/v1/jobs/{uuid.uuid4()}/events"):
        response = client.get(path, headers=tenant["headers"])
        assert response.status_code == 404 and response.content_type == "application/problem+json"
