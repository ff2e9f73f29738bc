"""The public resources on the wire: camelCase keys in field order, ``isoformat`` times, explicit nulls."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from gpujobs import models, resources

CREATED = datetime(2026, 12, 7, 0, 1, 2, 345678, tzinfo=UTC)
QUEUED = datetime(2026, 12, 7, 1, 0, tzinfo=timezone(timedelta(hours=2)))


def test_a_job_is_written_as_the_api_always_answered():
    job = models.Job(
        id=uuid.UUID(int=1),
        definition_key="echo",
        definition_version=1,
        status="queued",
        priority=3,
        params={"message": "é"},
        attempt=0,
        max_attempts=3,
        timeout_seconds=30,
        progress=None,
        result=None,
        error=None,
        cancel_requested=False,
        dead_lettered=False,
        idempotency_key=None,
        webhook_url=None,
        created_at=CREATED,
        queued_at=QUEUED,
        started_at=None,
        finished_at=None,
        next_retry_at=None,
    )
    assert list(resources.Job.json_of(job).items()) == [
        ("id", "00000000-0000-0000-0000-000000000001"),
        ("jobId", "00000000-0000-0000-0000-000000000001"),
        ("definitionKey", "echo"),
        ("definitionVersion", 1),
        ("status", "queued"),
        ("priority", "critical"),
        ("priorityLevel", "critical"),
        ("params", {"message": "é"}),
        ("attempt", 0),
        ("maxAttempts", 3),
        ("timeoutSeconds", 30),
        ("progress", None),
        ("result", None),
        ("error", None),
        ("cancelRequested", False),
        ("deadLettered", False),
        ("idempotencyKey", None),
        ("webhookUrl", None),
        ("webhookHeaders", None),
        ("createdAt", "2026-12-07T00:01:02.345678+00:00"),
        ("queuedAt", "2026-12-07T01:00:00+02:00"),
        ("startedAt", None),
        ("finishedAt", None),
        ("nextRetryAt", None),
    ]


def test_an_instance_shows_its_novita_id_and_price_in_dollars():
    instance = models.Instance(
        id=uuid.UUID(int=2),
        job_id=None,
        name="n",
        novita_id="nv-1",
        status="running",
        gpu_num=2,
        price_per_hour_units=123_456,
        endpoints={},
        created_at=CREATED,
    )
    body = resources.Instance.json_of(instance)
    assert (body["novitaInstanceId"], body["pricePerHour"], body["jobId"]) == ("nv-1", 1.23456, None)
    assert body["createdAt"] == "2026-12-07T00:01:02.345678+00:00" and body["lastSeenAt"] is None


def test_a_job_shows_its_webhook_header_names_and_never_their_values():
    job = models.Job(
        id=uuid.UUID(int=1),
        definition_key="echo",
        definition_version=1,
        status="queued",
        priority=1,
        params={},
        attempt=0,
        max_attempts=3,
        timeout_seconds=30,
        cancel_requested=False,
        dead_lettered=False,
        webhook_headers={"Authorization": "Bearer hunter2", "X-Team": "blue"},
        created_at=CREATED,
    )
    body = resources.Job.json_of(job)
    assert body["webhookHeaders"] == {"Authorization": "••••", "X-Team": "••••"}
    assert "hunter2" not in str(body) and "blue" not in str(body)
