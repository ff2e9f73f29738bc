"""The hot queries read the indexes made for them: each test captures the SQL the code runs and plans it.

Small data on the real PostgreSQL with sequential and bitmap scans off (on a few thousand rows a
sequential scan is cheapest and says nothing about a million; a plain index scan shows whether the
index also gives the order), then ``EXPLAIN (FORMAT JSON)`` with the captured parameters. The
assertions name the intended index, so a dropped index, or a query that stops matching its index,
fails here. That cleanup deletes in batches of ``GPUJOBS_CLEANUP_BATCH_SIZE`` is proven by
``test_sweeps.py::test_cleanup_deletes_old_finished_jobs_with_their_events_in_batches``;
``bench/scale.py`` measures the same queries at 10^4 and 10^6 jobs.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from support.tenants import make_tenant

from bench.scale import Seed, Watch, seed, watching
from gpujobs import dispatch, operations, schedules, stats, sweeps
from gpujobs.dispatch import QUEUE_BY_PRIORITY
from gpujobs.extensions import db

JOBS = 2000


@pytest.fixture
def history(app, app_context, tenant) -> dict[str, Any]:
    """2,000 jobs (90 % acme, the rest ``other``) in every status with deliveries, 30 expired, a schedule."""
    other = make_tenant(app, "other")
    acme, minority = uuid.UUID(tenant["id"]), uuid.UUID(other["id"])
    now = datetime.now(UTC)
    with db.engine.connect() as conn:
        seed(conn, Seed(now, acme, (minority,), step=60, in_flight=(10, 20, 30)), 0, JOBS)
        seed(conn, Seed(now - timedelta(days=3), acme, (minority,)), 0, 30)  # past the 24 h retention
    schedules.create(
        acme, name="nightly", cron="0 3 * * *", definition_key="echo", definition_version=1,
        params={"message": "x"},
    )  # fmt: skip
    db.session.execute(text("ANALYZE"))
    db.session.commit()
    return {"acme": acme, "other": minority, "headers": tenant["headers"]}


@pytest.fixture
def captured(app) -> Callable[[Callable[[], Any]], list[tuple[str, Any]]]:
    """Run a callable and return every statement (with parameters) it sent to PostgreSQL."""

    def capture(action: Callable[[], Any]) -> list[tuple[str, Any]]:
        with watching(db.engine, Watch(capture=True)) as watch:
            action()
        db.session.rollback()
        return watch.statements

    return capture


def plan(statement: tuple[str, Any], **settings: str) -> dict[str, Any]:
    """The JSON plan of a captured statement as the planner would choose among index scans at scale."""
    sql, parameters = statement
    settings = {"enable_seqscan": "off", "enable_bitmapscan": "off", **settings}  # plain scans show order
    with db.engine.connect() as conn:
        for name, value in settings.items():
            conn.exec_driver_sql(f"SET LOCAL {name} = {value}")
        [(explained,)] = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}", parameters).all()
        conn.rollback()
    return explained[0]["Plan"]


def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a plan tree (init plans and subplans included)."""
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def indexes(node: dict[str, Any]) -> set[str]:
    """The indexes a plan reads."""
    return {n["Index Name"] for n in nodes(node) if "Index Name" in n}


def only(statements: list[tuple[str, Any]], pattern: str) -> tuple[str, Any]:
    """The one captured statement matching ``pattern`` (a regex)."""
    found = [s for s in statements if re.search(pattern, s[0], re.S)]
    assert len(found) == 1, [s[0][:120] for s in statements]
    return found[0]


def api(client, headers: dict[str, str], url: str) -> Callable[[], Any]:
    """A GET of the API that must answer 200."""

    def call() -> Any:
        response = client.get(url, headers=headers)
        assert response.status_code == 200, response.json
        return response.json

    return call


JOB_QUERY = r"^SELECT\b.*\bFROM jobs\b"


@pytest.mark.parametrize(
    ("query", "wanted"),
    [
        ("", {"ix_jobs_tenant_created"}),
        ("&status=failed", {"ix_jobs_tenant_status_created"}),
        ("&definitionKey=encode.video", {"ix_jobs_tenant_definition_created"}),
        (
            "&status=succeeded&definitionKey=echo",
            {"ix_jobs_tenant_status_created", "ix_jobs_tenant_definition_created"},
        ),
    ],
    ids=["no filter", "status", "definition", "status and definition"],
)
def test_a_tenants_job_list_reads_an_index_made_for_its_filter_in_page_order(
    client, history, captured, query, wanted
):
    listed = captured(api(client, history["headers"], f"/v1/jobs?limit=20{query}"))
    the_plan = plan(only(listed, JOB_QUERY))
    assert len(indexes(the_plan) & wanted) == 1, indexes(the_plan)
    assert not any(n["Node Type"] == "Sort" for n in nodes(the_plan)), "the index must give the page order"


def next_page(client, history) -> Callable[[], Any]:
    """The second page of acme's jobs, fetched with the first page's cursor."""
    cursor = api(client, history["headers"], "/v1/jobs?limit=20")()["nextCursor"]
    return api(client, history["headers"], f"/v1/jobs?limit=20&cursor={cursor}")


def test_a_page_after_a_cursor_reads_ix_jobs_tenant_created(client, history, captured):
    assert "ix_jobs_tenant_created" in indexes(plan(only(captured(next_page(client, history)), JOB_QUERY)))


def test_a_page_after_a_cursor_starts_at_the_cursor_inside_the_index(client, history, captured):
    the_plan = plan(only(captured(next_page(client, history)), JOB_QUERY))
    [scan] = [n for n in nodes(the_plan) if n.get("Index Name") == "ix_jobs_tenant_created"]
    assert "created_at" in scan.get("Index Cond", ""), scan
    assert not any(n["Node Type"] == "Sort" for n in nodes(the_plan))


def test_one_job_and_its_events_are_read_by_key(client, history, captured):
    job_id = db.session.scalar(
        text("SELECT id FROM jobs WHERE tenant_id = :t LIMIT 1"), {"t": history["acme"]}
    )
    job = captured(api(client, history["headers"], f"/v1/jobs/{job_id}"))
    assert indexes(plan(only(job, JOB_QUERY))) == {"jobs_pkey"}
    events = captured(api(client, history["headers"], f"/v1/jobs/{job_id}/events"))
    assert "ix_job_events_job" in indexes(plan(only(events, r"^SELECT\b.*\bFROM job_events\b")))


def test_the_dispatch_sweep_reads_only_due_retries_and_queued_jobs(history, captured):
    swept = captured(sweeps.dispatch_due)
    assert "ix_jobs_retry_due" in indexes(plan(only(swept, r"^UPDATE jobs SET status.*next_retry_at <=")))
    # Each tenant's next jobs within its window: its published ones counted on their index, its unpublished
    # ones read from a partial index of queued jobs (here all are published, so either serves), no scan.
    unpublished = plan(only(swept, r"\bCROSS JOIN LATERAL\b"))
    assert "ix_jobs_published_tenant" in indexes(unpublished)
    assert not any(node["Node Type"] == "Seq Scan" for node in nodes(unpublished))
    reads_the_hold_on_indexes(unpublished)
    # Every queue is empty here, so each priority level is asked for jobs whose message was lost.
    lost = [
        statement for statement in swept if re.search(r"\bpriority = .*published_at < ", statement[0], re.S)
    ]
    assert len(lost) == len(QUEUE_BY_PRIORITY)
    # Both are partial indexes of the published queued jobs; on ten such rows either is as cheap, at scale
    # the one in published_at order wins (bench/scale.py).
    published = {"ix_jobs_queued_published", "ix_jobs_published_tenant"}
    assert all(
        len(indexes(plan(statement))) == 1 <= len(indexes(plan(statement)) & published) for statement in lost
    )


def reads_the_hold_on_indexes(the_plan: dict[str, Any]) -> None:
    """Whether a tenant's next jobs yield to another tenant's job waiting at a lower priority
    (``dispatch._PASSED_OVER_BELOW``) is read on indexes: per lower level, the oldest published job of
    another tenant from the queued jobs' index (priority and publish time both index conditions, so only
    published rows of that level are read), then that tenant's running jobs, looked up by tenant in a
    subplan (on ten rows either partial index of running jobs serves; at scale ix_jobs_running_tenant)."""
    waiting = [
        n
        for n in nodes(the_plan)
        if n.get("Index Name") == "ix_jobs_queued_published"
        and re.search(r"priority = .*published_at IS NOT NULL", n.get("Index Cond", ""))
    ]
    assert len(waiting) == 1, [n.get("Index Cond") for n in nodes(the_plan)]
    [running] = [
        n for n in nodes(the_plan) if "waiting.tenant_id" in n.get("Index Cond", "") + n.get("Filter", "")
    ]
    assert running.get("Subplan Name") and running["Index Name"] in {
        "ix_jobs_running_tenant",
        "ix_jobs_lease",
    }


def test_a_top_up_reads_its_tenants_next_jobs_and_the_hold_on_indexes(history, captured):
    """The top-up runs in the transaction of every job's end: one statement, on indexes, no scan."""
    job_id = db.session.scalar(
        text("SELECT id FROM jobs WHERE tenant_id = :t AND status = 'running' LIMIT 1"),
        {"t": history["acme"]},
    )
    topped = plan(only(captured(lambda: dispatch.top_up(job_id)), r"\bCROSS JOIN LATERAL\b"))
    assert {"jobs_pkey", "ix_jobs_published_tenant"} <= indexes(topped)
    assert not any(node["Node Type"] == "Seq Scan" for node in nodes(topped))
    reads_the_hold_on_indexes(topped)


def test_a_submit_reads_its_tenants_window_and_the_hold_on_indexes(history, captured):
    """A new job goes out at once only within its tenant's window and if it passes over no other tenant's
    job waiting at a lower priority: read in the submit's one statement, on indexes."""
    submitted = captured(
        lambda: operations.submit(
            history["other"], "echo", 1, {"message": "x"}, operations.JobOptions(priority="high")
        )
    )
    the_plan = plan(only(submitted, r"^\s*WITH tenant AS"))
    assert "ix_jobs_published_tenant" in indexes(the_plan)
    assert not any(node["Node Type"] == "Seq Scan" for node in nodes(the_plan))
    reads_the_hold_on_indexes(the_plan)


def test_the_rescue_sweep_reads_only_leased_jobs(history, captured):
    swept = captured(sweeps.rescue_stuck)
    assert "ix_jobs_lease" in indexes(plan(only(swept, r"lease_expires_at < now\(\)")))
    assert "ix_jobs_lease" in indexes(plan(only(swept, r"lease_expires_at >= now\(\)")))


def test_cleanup_finds_expired_jobs_through_ix_jobs_expirable(history, captured):
    deletes = [s for s in captured(sweeps.clean_up) if re.match(r"DELETE FROM jobs\b", s[0])]
    batches = [s for s in deletes if re.search(r"dead_lettered IS false", s[0], re.I)]
    assert len(batches) > 1 and len({statement for statement, _ in batches}) == 1  # one query, batch by batch
    assert "ix_jobs_expirable" in indexes(plan(batches[0]))
    assert len(deletes) == len(batches) + 1  # then one pass over dead-lettered jobs (their own retention)


def test_the_webhook_and_schedule_sweeps_read_only_due_rows(history, captured):
    webhooks = captured(sweeps.publish_due_webhooks)
    assert "ix_webhook_due" in indexes(plan(only(webhooks, r"FROM webhook_deliveries\b")))
    due = captured(schedules.run_due_schedules)
    assert "ix_schedules_due" in indexes(plan(only(due, r"FROM schedules\b")))


def test_duration_percentiles_read_recent_finished_jobs_through_a_finished_index(history, captured):
    one_tenant = captured(lambda: stats.duration_percentiles(history["other"]))
    # With the default random_page_cost (4, spinning disks) PostgreSQL prefers ix_jobs_finished plus a
    # tenant filter even for a small tenant, at 10^6 jobs too (bench/README.md, "Scale"); with 1.1, the
    # usual setting for SSDs or a cached database, it reads the tenant's own index.
    assert "ix_jobs_tenant_finished" in indexes(
        plan(only(one_tenant, r"FROM jobs\b"), random_page_cost="1.1")
    )
    every_tenant = captured(lambda: stats.duration_percentiles(None))
    assert "ix_jobs_finished" in indexes(plan(only(every_tenant, r"FROM jobs\b")))


@pytest.mark.parametrize(
    "url", ["/v1/stats", "/v1/metrics?ttl=0", "/v1/metrics/definitions?ttl=0", "/v1/metrics/throughput?ttl=0"]
)
def test_stats_and_metrics_read_counters_never_the_jobs_table(client, history, captured, url):
    read = captured(api(client, history["headers"], url))
    assert read, "nothing was read: the cache answered"
    assert not [s for s, _ in read if re.search(r"\b(FROM|JOIN) (jobs|job_events)\b", s)]
