"""What a client of the seed Job Server reads and sends: ``jobId``, numeric priorities, DLQ offset paging,
the README's sample params, and rolling throughput windows read from the hourly counters."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from support.tenants import set_limits

from gpujobs import stats
from gpujobs.api.dlq import DeadLetterQuery
from gpujobs.definitions.samples import SAMPLE_DATASET_ROWS, sample_dataset
from gpujobs.extensions import db
from gpujobs.models import JobHourly


def test_every_job_answer_carries_job_id_beside_id(client, tenant, submit, dead_letter):
    submitted = submit(tenant).json
    job_id = submitted["id"]
    answers = [
        submitted,
        client.get(f"/v1/jobs/{job_id}", headers=tenant["headers"]).json,
        client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant["headers"]).json,
        client.get("/v1/jobs", headers=tenant["headers"]).json["items"][0],
        client.post(f"/v1/dlq/{dead_letter['letter_id']}/retry", headers=tenant["headers"]).json,
    ]
    assert all(answer["jobId"] == answer["id"] for answer in answers)


@pytest.mark.parametrize(
    ("sent", "answered"),
    [(5, (5, "normal")), (10, (10, "critical")), ("low", ("low", "low")), (None, ("normal", "normal"))],
)
def test_a_numeric_priority_is_answered_as_sent_and_a_name_as_the_name(
    app, client, tenant, submit, sent, answered
):
    set_limits(app, tenant, max_priority=3)  # 10 maps to critical, which the operator grants
    body = {} if sent is None else {"priority": sent}
    job_id = submit(tenant, **body).json["id"]
    stored = client.get(f"/v1/jobs/{job_id}", headers=tenant["headers"]).json  # read back from the row
    assert (stored["priority"], stored["priorityLevel"]) == answered


def test_the_dlq_pages_by_offset_with_the_job_servers_limits(client, tenant, submit, run_job):
    for _ in range(3):
        run_job(submit(tenant).json["id"], "fail")
    listed = lambda query: client.get(f"/v1/dlq?{query}", headers=tenant["headers"])  # noqa: E731
    everything = [item["id"] for item in listed("").json["items"]]
    assert len(everything) == 3
    assert [item["id"] for item in listed("limit=1&offset=1").json["items"]] == everything[1:2]
    assert listed("offset=3").json["items"] == []
    assert listed("limit=1000").status_code == 200
    assert listed("limit=1001").status_code == 422 and listed("offset=-1").status_code == 422


def test_the_dlq_answers_100_items_by_default():
    assert DeadLetterQuery().limit == 100 and DeadLetterQuery().offset == 0


@pytest.mark.parametrize(
    ("key", "params"),
    [
        ("echo", {"message": "Hello World"}),
        ("failing", {}),
        ("compute.math", {"operation": "fibonacci", "numbers": [35]}),
        ("process.data", {"dataset": "sales-2024", "operation": "aggregate"}),
        ("process.batch", {"items": ["item1", "item2", "item3"], "batchSize": 5}),
    ],
)
def test_the_job_server_readmes_sample_params_are_accepted_as_written(client, tenant, submit, key, params):
    response = submit(tenant, definitionKey=key, definitionVersion=1, params=params)
    assert response.status_code == 202, response.json


def test_process_data_without_rows_works_on_a_generated_sample_named_by_the_dataset():
    rows = sample_dataset("sales-2024")
    assert len(rows) == SAMPLE_DATASET_ROWS and rows == sample_dataset("sales-2024") != sample_dataset(
        "other"
    )


def _finished(app, tenant_id: str, hour: str, count: int) -> None:
    with app.app_context():
        db.session.add(
            JobHourly(
                tenant_id=uuid.UUID(tenant_id),
                hour=datetime.fromisoformat(hour),
                definition_key="echo",
                definition_version=1,
                shard=0,
                succeeded=count,
                failed=0,
                cancelled=0,
                retried=0,
                timed=0,
                processing_seconds=0,
                queue_seconds=0,
            )
        )
        db.session.commit()


def test_throughput_windows_end_now_and_take_the_covered_part_of_the_oldest_hour(app, tenant):
    now = datetime(2026, 12, 7, 10, 15, tzinfo=UTC)  # a quarter into the 10:00 hour
    _finished(app, tenant["id"], "2026-12-07T10:00:00+00:00", 7)
    _finished(app, tenant["id"], "2026-12-07T09:00:00+00:00", 40)  # 3/4 of it is in the last hour
    _finished(app, tenant["id"], "2026-12-06T10:00:00+00:00", 100)  # 24 h back: 3/4 in the last day
    _finished(app, tenant["id"], "2026-11-30T10:00:00+00:00", 1000)  # 168 h back: 3/4 in the last week
    _finished(app, tenant["id"], "2026-11-30T09:00:00+00:00", 5000)  # older than a week: never counted
    with app.app_context():
        windows = stats.throughput_summary(uuid.UUID(tenant["id"]), now)
    assert windows == {"lastHour": 7 + 30, "lastDay": 7 + 40 + 75, "lastWeek": 7 + 40 + 100 + 750}
