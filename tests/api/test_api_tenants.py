"""Authentication on every route, and the cross-tenant matrix: every route, the other tenant's ids, 404."""

from __future__ import annotations

import re
import uuid

from sqlalchemy import update

from gpujobs.api.openapi import documented
from gpujobs.extensions import db
from gpujobs.models import ApiKey

VARIABLE = re.compile(r"<(?:[^:>]+:)?(\w+)>")
VALID_BODIES = {"schedules.update_schedule": {"enabled": False}, "instances.extend_instance": {"seconds": 60}}


def routes(app, auth_only: bool = False) -> list[tuple[str, str, str]]:
    """(method, werkzeug rule, endpoint) of every /v1 route (only those needing a key, if asked)."""
    found = []
    for rule, _, op in documented(app):
        if rule.rule.startswith("/v1") and (op.auth or not auth_only):
            found += [
                (method, rule.rule, rule.endpoint) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})
            ]
    return found


def fill(rule: str, ids: dict[str, str]) -> str:
    """The rule with each variable replaced by the id of that name (a fresh UUID when none is known)."""
    return VARIABLE.sub(lambda match: ids.get(match[1], str(uuid.uuid4())), rule)


def test_every_route_but_the_probes_and_docs_refuses_a_missing_wrong_or_revoked_key(app, client, tenant):
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        db.session.execute(update(ApiKey).values(revoked_at=db.func.now()))
        db.session.commit()
    refusals = ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}, tenant["headers"])
    checked = 0
    for method, rule, _ in routes(app, auth_only=True):
        for headers in refusals:
            response = client.open(fill(rule, {}), method=method, headers=headers)
            assert response.status_code == 401, (method, rule, headers)
            assert response.content_type == "application/problem+json"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            checked += 1
    assert checked >= 4 * 25
    for path in ("/health", "/openapi.json", "/docs", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_another_tenants_ids_answer_404_on_every_route_and_its_rows_never_appear_in_lists(
    app, client, tenant, other, delivery, dead_letter
):
    schedule = client.post(
        "/v1/schedules",
        json={"name": "nightly", "cron": "@daily", "definitionKey": "echo", "params": {"message": "x"}},
        headers=tenant["headers"],
    )
    ids = {
        "job_id": delivery["job_id"],
        "delivery_id": delivery["delivery_id"],
        "letter_id": dead_letter["letter_id"],
        "schedule_id": schedule.json["id"] if schedule.status_code == 201 else str(uuid.uuid4()),
    }
    with_ids = [(m, r, e) for m, r, e in routes(app) if VARIABLE.search(r)]
    for method, rule, endpoint in with_ids:
        body = VALID_BODIES.get(endpoint, {})  # a valid body, so that only ownership can refuse
        response = client.open(fill(rule, ids), method=method, headers=other["headers"], json=body)
        assert response.status_code == 404, (method, rule, response.status_code, response.json)
    for method, rule, _ in routes(app):
        if method == "GET" and not VARIABLE.search(rule):
            body = client.get(rule, headers=other["headers"]).get_data(as_text=True)
            assert not [name for name, value in ids.items() if value in body], rule
    own = client.get(f"/v1/jobs/{delivery['job_id']}", headers=tenant["headers"]).json
    assert own["status"] == "cancelled" and client.get("/v1/dlq", headers=tenant["headers"]).json["items"]
    names = {rule for _, rule, _ in with_ids if any(f":{name}>" in rule for name in ("job_id", "letter_id"))}
    assert len(names) >= 7  # jobs, events, cancel, deliveries, redeliver, dead letter, retry
