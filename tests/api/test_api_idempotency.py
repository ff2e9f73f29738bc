"""Idempotency-Key: replays, conflicts, release on failure, expiry, and 100 concurrent identical POSTs."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import requests
from sqlalchemy import func, select, update

from gpujobs.extensions import db
from gpujobs.models import IdempotencyRecord, Job


def count_jobs(app) -> int:
    with app.app_context():
        count = db.session.scalar(select(func.count()).select_from(Job))
    return count


def test_a_repeat_with_the_same_key_and_body_replays_the_first_answer(app, tenant, submit):
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = submit(tenant, headers=key)
    again = submit(tenant, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json == first.json and again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert first.json["idempotencyKey"] == key["Idempotency-Key"]
    assert count_jobs(app) == 1


def test_the_key_may_come_as_the_idempotencykey_field_or_a_quoted_header_with_the_same_effect(
    app, tenant, submit
):
    first = submit(tenant, idempotencyKey="order-42")
    by_header = submit(tenant, headers={"Idempotency-Key": '"order-42"'})
    assert by_header.status_code == 202 and by_header.json["id"] == first.json["id"]
    both_differ = submit(tenant, headers={"Idempotency-Key": "a"}, idempotencyKey="b")
    assert both_differ.status_code == 422 and both_differ.json["errors"][0]["field"] == "idempotencyKey"
    assert count_jobs(app) == 1


def test_the_same_key_with_another_body_is_422_and_creates_nothing(app, tenant, submit):
    key = {"Idempotency-Key": "k1"}
    submit(tenant, headers=key)
    other_body = submit(tenant, headers=key, params={"message": "different"})
    assert other_body.status_code == 422 and other_body.content_type == "application/problem+json"
    assert other_body.json["errors"][0]["field"] == "Idempotency-Key"
    assert count_jobs(app) == 1


def test_the_same_key_while_the_first_request_is_in_flight_is_409_with_retry_after(app, tenant, submit):
    first = submit(tenant, headers={"Idempotency-Key": "k2"})
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():  # put the record back in the state it has while its request runs
        db.session.execute(update(IdempotencyRecord).values(response_status=None, response_body=None))
        db.session.commit()
    again = submit(tenant, headers={"Idempotency-Key": "k2"})
    assert again.status_code == 409 and again.headers["Retry-After"] == "1"
    assert first.status_code == 202 and count_jobs(app) == 1


def test_keys_are_scoped_per_tenant(app, tenant, other, submit):
    mine = submit(tenant, headers={"Idempotency-Key": "shared"})
    theirs = submit(other, headers={"Idempotency-Key": "shared"}, params={"message": "theirs"})
    assert mine.status_code == theirs.status_code == 202
    assert mine.json["id"] != theirs.json["id"] and count_jobs(app) == 2


def test_a_key_whose_request_failed_is_released_so_a_corrected_retry_succeeds(app, tenant, submit):
    refused = submit(tenant, headers={"Idempotency-Key": "k3"}, definitionKey="no.such")
    assert refused.status_code == 422
    corrected = submit(tenant, headers={"Idempotency-Key": "k3"})
    assert corrected.status_code == 202 and "Idempotent-Replayed" not in corrected.headers
    assert count_jobs(app) == 1


def test_an_expired_key_may_be_used_again(app, tenant, submit):
    submit(tenant, headers={"Idempotency-Key": "old"})
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        db.session.execute(update(IdempotencyRecord).values(created_at=func.now() - timedelta(hours=25)))
        db.session.execute(update(Job).values(idempotency_key=None))  # the old job is gone or unrelated
        db.session.commit()
    reused = submit(tenant, headers={"Idempotency-Key": "old"}, params={"message": "new"})
    assert reused.status_code == 202 and "Idempotent-Replayed" not in reused.headers
    assert count_jobs(app) == 2


def test_a_repeat_after_a_lost_answer_names_the_job_that_holds_the_key(app, tenant, submit):
    first = submit(tenant, headers={"Idempotency-Key": "lost"})
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():  # the process died between committing the job and storing the answer
        db.session.execute(
            update(IdempotencyRecord).values(
                response_status=None, response_body=None, created_at=func.now() - timedelta(minutes=2)
            )
        )
        db.session.commit()
    again = submit(tenant, headers={"Idempotency-Key": "lost"})
    assert again.status_code == 409 and again.json["jobId"] == first.json["id"]
    assert count_jobs(app) == 1


def test_malformed_keys_are_refused(tenant, submit):
    for key in ("", "x" * 201, "tab\there", "é"):
        response = submit(tenant, headers={"Idempotency-Key": key.encode().decode("latin-1")})
        assert response.status_code == 422, key


def test_a_hundred_concurrent_identical_posts_create_exactly_one_job(app, tenant, live_server):
    body = {"definitionKey": "echo", "params": {"message": "once"}}
    headers = {**tenant["headers"], "Idempotency-Key": str(uuid.uuid4())}

    def post(_: int) -> requests.Response:
        return requests.post(f"{live_server}/v1/jobs", json=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(max_workers=100) as pool:
        answers = list(pool.map(post, range(100)))
    created = [a for a in answers if a.status_code == 202]
    assert {a.status_code for a in answers} <= {202, 409}, {a.status_code for a in answers}
    assert len({a.json()["id"] for a in created}) == 1
    assert sum("Idempotent-Replayed" not in a.headers for a in created) == 1
    assert all(a.headers["Retry-After"] == "1" for a in answers if a.status_code == 409)
    assert count_jobs(app) == 1
