"""Stats and metrics: exact counters through every transition, the ttl cache, and the Prometheus scrape."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, event, func, select
from support.databases import app_on, new_database

from gpujobs import create_app, stats
from gpujobs.extensions import db
from gpujobs.models import Job, JobHourly


@pytest.fixture
def history(tenant, submit, run_job) -> dict[str, str]:
    """Five jobs: succeeded, failed, cancelled while running, queued, and a queued compute.math."""
    ids = {name: submit(tenant).json["id"] for name in ("succeeded", "failed", "cancelled", "queued")}
    ids["math"] = submit(
        tenant, definitionKey="compute.math", params={"operation": "sum", "numbers": [1]}
    ).json["id"]
    run_job(ids["succeeded"], "succeed")
    run_job(ids["failed"], "fail")
    run_job(ids["cancelled"], "cancel")
    return ids


@contextmanager
def statements(app) -> Iterator[list[str]]:
    """Every SQL statement the app runs inside the block."""
    seen: list[str] = []

    def record(conn, cursor, statement, *args) -> None:
        seen.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_stats_count_every_status_and_definition_exactly_as_the_jobs_table_does(
    app, client, tenant, other, history
):
    stats = client.get("/v1/stats", headers=tenant["headers"]).json
    assert stats["total"] == 5
    expected = {"queued": 2, "running": 0, "retrying": 0, "succeeded": 1, "failed": 1, "cancelling": 0}
    assert stats["byStatus"] == {**expected, "cancelled": 1}
    by_definition = {d["definitionKey"]: d for d in stats["byDefinition"]}
    assert by_definition["echo"]["total"] == 4 and by_definition["compute.math"]["byStatus"]["queued"] == 1
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        truth = dict(db.session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    assert {s: n for s, n in stats["byStatus"].items() if n} == truth
    assert client.get("/v1/stats", headers=other["headers"]).json["total"] == 0


def test_deleted_jobs_leave_the_counts_and_redrives_move_them(app, client, tenant, history):
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        db.session.execute(delete(Job).where(Job.status.in_(("succeeded", "cancelled"))))
        db.session.commit()
    letter = client.get("/v1/dlq", headers=tenant["headers"]).json["items"][0]["id"]
    client.post(f"/v1/dlq/{letter}/retry", headers=tenant["headers"])
    stats = client.get("/v1/stats", headers=tenant["headers"]).json
    assert stats["total"] == 3 and stats["byStatus"]["queued"] == 3 and stats["byStatus"]["failed"] == 0


def test_webhook_deliveries_are_counted_by_status(client, tenant, delivery):
    stats = client.get("/v1/stats", headers=tenant["headers"]).json
    assert stats["webhookDeliveries"] == {"pending": 1, "succeeded": 0, "failed": 0, "disabled": 0}


def test_metrics_report_rates_throughput_and_percentiles_of_the_finished_jobs(client, tenant, history):
    overview = client.get("/v1/metrics?ttl=0", headers=tenant["headers"]).json
    assert overview["summary"]["total"] == 5
    assert overview["performance"]["successRate"] == 0.5 and overview["performance"]["retryRate"] == 0
    assert overview["performance"]["avgProcessingTime"] >= 0
    assert overview["throughput"] == {"lastHour": 2, "lastDay": 2, "lastWeek": 2}
    points = client.get("/v1/metrics/throughput?hours=3&ttl=0", headers=tenant["headers"]).json
    assert points["hours"] == 3 and len(points["data"]) == 3
    assert points["data"][-1] | {"period": None} == {
        "period": None,
        "completed": 1,
        "failed": 1,
        "cancelled": 1,
    }
    performance = client.get("/v1/metrics/performance?ttl=0", headers=tenant["headers"]).json
    assert performance["sampleSize"] == 2 and performance["windowHours"] == 24
    assert performance["processingTime"]["p50"] is not None and performance["queueTime"]["p99"] is not None
    definitions = client.get("/v1/metrics/definitions?ttl=0", headers=tenant["headers"]).json["definitions"]
    echo = next(d for d in definitions if d["definitionKey"] == "echo")
    assert echo["total"] == 4 and echo["successRate"] == 0.5


def test_counts_and_rates_never_read_the_jobs_table(app, client, tenant, history):
    with statements(app) as seen:
        for path in (
            "/v1/stats",
            "/v1/metrics",
            "/v1/metrics/definitions",
            "/v1/metrics/throughput?hours=168",
        ):
            assert (
                client.get(f"{path}{'&' if '?' in path else '?'}ttl=0", headers=tenant["headers"]).status_code
                == 200
            )
    assert seen and not [s for s in seen if "FROM jobs" in s]


def test_metrics_are_cached_for_ttl_seconds_and_ttl_0_computes_afresh(client, tenant, submit):
    first = client.get("/v1/metrics", headers=tenant["headers"])
    submit(tenant)
    cached = client.get("/v1/metrics?ttl=60", headers=tenant["headers"])
    assert cached.json == first.json and cached.json["summary"]["total"] == 0
    assert int(cached.headers["Age"]) >= 0
    fresh = client.get("/v1/metrics?ttl=0", headers=tenant["headers"])
    assert fresh.json["summary"]["total"] == 1 and fresh.headers["Age"] == "0"


def test_out_of_range_ttl_and_hours_are_422(client, tenant):
    for query in ("ttl=-1", "ttl=3601", "hours=0", "hours=169", "hours=x"):
        response = client.get(f"/v1/metrics/throughput?{query}", headers=tenant["headers"])
        assert response.status_code == 422, query


def test_prometheus_scrape_shows_jobs_queues_and_deliveries_without_a_key(client, tenant, history, delivery):
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)
    assert 'gpujobs_jobs{definition="echo@1",status="succeeded"} 1.0' in text
    assert 'gpujobs_webhook_deliveries{status="pending"} 1.0' in text
    assert 'gpujobs_queue_depth{queue="normal"}' in text
    assert 'gpujobs_jobs_finished_total{definition="echo@1",status="failed"} 1.0' in text
    assert 'gpujobs_job_run_seconds_count{definition="echo@1",status="succeeded"} 1.0' in text
    assert 'gpujobs_job_run_seconds_bucket{definition="echo@1",le="+Inf",status="cancelled"} 1.0' in text
    assert 'gpujobs_job_queue_wait_seconds_count{definition="echo@1"} 3.0' in text
    assert 'gpujobs_http_requests_total{method="GET",route="/metrics",status="200"}' not in text  # not yet
    scraped_again = client.get("/metrics").get_data(as_text=True)
    assert 'gpujobs_http_requests_total{method="GET",route="/metrics",status="200"} 1.0' in scraped_again
    assert 'quantile="' not in text and "_ratio" not in text


def test_without_a_token_or_the_public_opt_in_prometheus_answers_no_one_and_says_how(app, tenant):
    """Every tenant's names and spend are in it: a tenant's API key never opens it."""
    private = create_app({"TESTING": True, "GPUJOBS_METRICS_PUBLIC": False})
    client = private.test_client()
    for headers in ({}, tenant["headers"]):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 403 and refused.content_type == "application/problem+json"
        assert "GPUJOBS_METRICS_TOKEN" in refused.json["detail"]
    assert client.get("/openapi.json").json["paths"]["/metrics"]["get"]["security"] == [{"bearerAuth": []}]


def test_a_metrics_token_guards_prometheus_and_no_api_key_stands_in_for_it(app, tenant):
    guarded = create_app({"TESTING": True, "GPUJOBS_METRICS_TOKEN": "scrape-me-0123456789"})
    client = guarded.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 401
    assert client.get("/metrics", headers=tenant["headers"]).status_code == 401
    answer = client.get("/metrics", headers={"Authorization": "Bearer scrape-me-0123456789"})
    assert answer.status_code == 200 and "gpujobs_queue_depth" in answer.get_data(as_text=True)
    assert client.get("/openapi.json").json["paths"]["/metrics"]["get"]["security"] == [{"bearerAuth": []}]


def test_the_migration_counts_the_rows_that_exist_before_it(app, servers):
    from flask_migrate import upgrade
    from sqlalchemy import text

    fresh = app_on(new_database(servers, "counters_backfill"))
    with fresh.app_context():
        upgrade(revision="b2_api-1")
        db.session.execute(text(BACKFILL_ROWS))
        db.session.commit()
        upgrade(revision="b2_api")
        counts = db.session.execute(
            text("SELECT status, sum(count) FROM job_counters GROUP BY status ORDER BY status")
        ).all()
        hourly = db.session.execute(
            text("SELECT sum(succeeded), sum(failed), sum(timed) FROM job_hourly")
        ).one()
        deliveries = db.session.execute(
            text("SELECT status, sum(count) FROM webhook_delivery_counters GROUP BY 1")
        ).all()
        db.session.remove()
        db.engine.dispose()
    assert [(status, int(n)) for status, n in counts] == [("failed", 1), ("queued", 2), ("succeeded", 2)]
    assert tuple(int(n) for n in hourly) == (2, 1, 3)
    assert [(status, int(n)) for status, n in deliveries] == [("pending", 1)]


BACKFILL_ROWS = """
INSERT INTO tenants (id, name, webhook_secret)
VALUES ('00000000-0000-0000-0000-000000000001', 't', 'whsec_x');
INSERT INTO jobs (id, tenant_id, definition_key, definition_version, params, priority, status, attempt,
                  max_attempts, timeout_seconds, cancel_requested, dead_lettered,
                  queued_at, started_at, finished_at)
SELECT gen_random_uuid(), '00000000-0000-0000-0000-000000000001', 'echo', 1, '{}', 1, s, 1,
       3, 60, false, false, now() - interval '3 minutes', now() - interval '2 minutes',
       CASE WHEN s = 'queued' THEN NULL ELSE now() END
FROM unnest(ARRAY['queued', 'queued', 'succeeded', 'succeeded', 'failed']) AS s;
INSERT INTO webhook_deliveries (id, tenant_id, job_id, job_attempt, event_type, url, payload, status,
                                attempts)
SELECT gen_random_uuid(), tenant_id, id, 1, 'job.failed', 'http://x', '{}', 'pending', 0
FROM jobs WHERE status = 'failed';
"""


def test_folding_past_hours_into_one_shard_keeps_every_metric(app, client, tenant, history):
    tenant_id = uuid.UUID(tenant["id"])
    old_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=30)
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        for shard, (succeeded, seconds) in enumerate([(3, 1.5), (4, 2.0), (5, 0.5)], start=1):
            db.session.add(
                JobHourly(
                    tenant_id=tenant_id, hour=old_hour, definition_key="echo", definition_version=1,
                    shard=shard, succeeded=succeeded, failed=1, cancelled=0, retried=0, timed=succeeded,
                    processing_seconds=seconds, queue_seconds=0.25,
                )
            )  # fmt: skip
        db.session.commit()
    urls = ["/v1/metrics?ttl=0", "/v1/metrics/throughput?hours=48&ttl=0", "/v1/metrics/definitions?ttl=0"]
    before = [client.get(url, headers=tenant["headers"]).json for url in urls]
    with app.app_context():
        assert stats.compact_hours() == 1  # one shard-0 row for the old hour; this hour's rows untouched
        rows = db.session.execute(
            select(JobHourly.hour, JobHourly.shard, JobHourly.succeeded, JobHourly.processing_seconds)
            .where(JobHourly.tenant_id == tenant_id)
            .order_by(JobHourly.hour)
        ).all()
        assert stats.compact_hours() == 0  # nothing left to fold
    assert rows[0] == (old_hour, 0, 12, 4.0) and all(row.hour > old_hour for row in rows[1:])
    assert [client.get(url, headers=tenant["headers"]).json for url in urls] == before


PROMTOOL = os.environ.get("GPUJOBS_PROMTOOL", "promtool")


def test_the_exposition_passes_promtool_check_metrics(client, tenant, history, delivery, submit):
    """Prometheus's own linter: counters end in ``_total``, histograms are whole, names are well formed."""
    promtool = shutil.which(PROMTOOL)
    if promtool is None:
        reason = "no promtool: apt-get install prometheus (or run .ci/install-promtool)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must check the metrics)")
        pytest.skip(reason)
    submit(tenant, params={"message": "x" * 10})
    client.get("/v1/jobs/00000000-0000-0000-0000-000000000000", headers=tenant["headers"])  # a 404
    client.get("/no/such/path")  # no route: one "unmatched" label value, whatever the path
    exposition = client.get("/metrics").get_data()
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=60
    )
    assert checked.returncode == 0 and not checked.stdout.strip(), (checked.stdout, checked.stderr)
    text = exposition.decode()
    assert 'route="/v1/jobs/<uuid:job_id>",status="404"' in text and 'route="unmatched"' in text
    assert "/no/such/path" not in text
