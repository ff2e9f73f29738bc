"""Fixtures of the HTTP API tests: a second tenant and jobs in given states."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from support.tenants import make_tenant

from gpujobs import jobs, operations
from gpujobs.extensions import db
from gpujobs.models import Job
from gpujobs.registry import get_definition

WEBHOOK_URL = "http://127.0.0.1:9/hook"  # nothing listens: deliveries stay pending, which is all we read


@pytest.fixture
def other(app: Flask) -> dict[str, str]:
    """A second tenant, to prove the first one's objects are invisible to it."""
    return make_tenant(app, "other")


@pytest.fixture
def submit(client) -> Callable[..., Any]:
    """POST /v1/jobs for a tenant (an echo job unless told otherwise); returns the response."""

    def post(tenant: dict[str, str], headers: dict[str, str] | None = None, **body: Any) -> Any:
        body.setdefault("definitionKey", "echo")
        body.setdefault("params", {"message": "hi"})
        return client.post("/v1/jobs", json=body, headers={**tenant["headers"], **(headers or {})})

    return post


@pytest.fixture
def run_job(app: Flask) -> Callable[..., None]:
    """Drive a queued job through the engine's own transitions: ``succeed``, ``fail`` or ``cancel``."""

    def run(job_id: str, outcome: str) -> None:
        with app.app_context():
            job = db.session.get(Job, uuid.UUID(job_id))
            claim = jobs.claim(job.id, get_definition(job.definition_key, job.definition_version), 60)
            if outcome == "succeed":
                jobs.succeed(job.id, claim.attempt, {"ok": True})
            elif outcome == "fail":
                jobs.fail_attempt(job.id, claim.attempt, "boom", retryable=False, retry_delay_seconds=0)
            else:
                operations.cancel(job.id, job.tenant_id)
                jobs.cancel_running(job.id, claim.attempt, "cancelled")
            db.session.commit()

    return run


@pytest.fixture
def dead_letter(client, tenant, submit, run_job) -> dict[str, str]:
    """A tenant's failed job and its dead letter: ``{"job_id", "letter_id"}``."""
    job_id = submit(tenant).json["id"]
    run_job(job_id, "fail")
    letter_id = client.get("/v1/dlq", headers=tenant["headers"]).json["items"][0]["id"]
    return {"job_id": job_id, "letter_id": letter_id}


@pytest.fixture
def delivery(client, tenant, submit) -> dict[str, str]:
    """A tenant's cancelled job with a webhook URL, and the delivery of its ``job.cancelled`` event."""
    job_id = submit(tenant, webhookUrl=WEBHOOK_URL).json["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant["headers"]).status_code == 200
    items = client.get(f"/v1/jobs/{job_id}/deliveries", headers=tenant["headers"]).json["items"]
    return {"job_id": job_id, "delivery_id": items[0]["id"]}
