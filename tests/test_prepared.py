"""Prepared statements (gpujobs.prepared) on real PostgreSQL: repeats go out as EXECUTE."""

from __future__ import annotations

import contextlib
import uuid
from datetime import timedelta

import psycopg2
from flask import Flask
from sqlalchemy import event, func, select, text

from gpujobs import create_app, operations, prepared, schedules, sweeps
from gpujobs.extensions import among, db
from gpujobs.models import Job
from gpujobs.prepared import _PREPARABLE, PREPARE_AFTER
from gpujobs.provisioning import lifetimes, records
from gpujobs.states import JOB_ACTIVE, JobStatus


def prepared_texts() -> list[str]:
    """The statements prepared on the session's connection (pg_prepared_statements is per connection)."""
    return list(db.session.scalars(text("SELECT statement FROM pg_prepared_statements")))


def submit(tenant: dict[str, str]) -> uuid.UUID:
    job = operations.submit(uuid.UUID(tenant["id"]), "echo", 1, {"message": "hi"}, operations.JobOptions())
    db.session.commit()
    return job.id


def test_a_statement_run_again_on_a_connection_is_prepared_and_answers_as_before(app, tenant, app_context):
    job_id = submit(tenant)
    read = select(Job.status, Job.params).where(Job.id == job_id)
    answers = [db.session.execute(read).one() for _ in range(PREPARE_AFTER + 2)]
    assert answers == [answers[0]] * (PREPARE_AFTER + 2) and answers[0][0] == "queued"
    statements = [s for s in prepared_texts() if "SELECT jobs.status, jobs.params \nFROM jobs" in s]
    assert len(statements) == 1 and statements[0].startswith("PREPARE gpujobs_")
    assert "$1" in statements[0] and "%(" not in statements[0]


def test_fixed_words_are_written_into_the_prepared_text_and_select_as_in_does(app, tenant, app_context):
    job_id = submit(tenant)
    waiting = select(Job.id).where(
        Job.id == job_id, among(Job.status, (JobStatus.QUEUED, JobStatus.RETRYING))
    )
    assert [db.session.scalar(waiting) for _ in range(PREPARE_AFTER + 1)] == [job_id] * (PREPARE_AFTER + 1)
    assert db.session.scalar(select(Job.id).where(Job.id == job_id, among(Job.status, JOB_ACTIVE))) is None
    assert db.session.scalar(select(Job.id).where(Job.id == job_id, ~among(Job.status, JOB_ACTIVE))) == job_id
    statements = [s for s in prepared_texts() if "jobs.status IN ('queued', 'retrying')" in s]
    assert len(statements) == 1 and "$1" in statements[0] and "$2" not in statements[0]


def test_a_statement_run_once_is_not_prepared(app, tenant, app_context):
    job_id = submit(tenant)
    db.session.execute(select(Job.priority_number.label("run_once")).where(Job.id == job_id)).one()
    assert not [s for s in prepared_texts() if "run_once" in s]


def test_a_percent_sign_in_the_text_survives_preparation(app, app_context):
    like = text("SELECT CAST(:word AS text) LIKE 'gpu%' AS matches")
    assert [db.session.scalar(like, {"word": "gpujobs"}) for _ in range(4)] == [True] * 4
    assert [db.session.scalar(like, {"word": "cpu"}) for _ in range(2)] == [False] * 2
    assert any("LIKE 'gpu%'" in s for s in prepared_texts())


def test_a_list_parameter_keeps_the_statement_as_text(app, tenant, app_context):
    job_id = submit(tenant)
    by_ids = text("SELECT count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))")
    assert [db.session.scalar(by_ids, {"ids": [str(job_id)]}) for _ in range(4)] == [1] * 4
    assert not [s for s in prepared_texts() if "uuid[]" in s]


def test_a_text_the_server_will_not_prepare_runs_as_text_and_leaves_the_transaction_whole(
    app, tenant, app_context
):
    job_id = submit(tenant)
    db.session.execute(text("UPDATE jobs SET progress = 42 WHERE id = :id"), {"id": job_id})
    untyped = text("SELECT :value IS NULL AS untyped")  # PostgreSQL cannot type $1 here: PREPARE fails
    assert [db.session.scalar(untyped, {"value": None}) for _ in range(4)] == [True] * 4
    assert db.session.scalar(text("SELECT progress FROM jobs WHERE id = :id"), {"id": job_id}) == 42
    db.session.commit()
    assert not [s for s in prepared_texts() if "untyped" in s]


def test_a_prepared_statement_outlives_a_rollback(app, tenant, app_context):
    job_id = submit(tenant)
    read = select(Job.status).where(Job.id == job_id)
    for _ in range(PREPARE_AFTER):
        db.session.scalar(read)
    db.session.rollback()
    assert db.session.scalar(read) == "queued"


def test_a_connection_the_server_ended_is_replaced_and_prepares_again(app, tenant, app_context):
    job_id = submit(tenant)
    read = select(Job.status).where(Job.id == job_id)
    for _ in range(PREPARE_AFTER):
        db.session.scalar(read)
    pid = db.session.scalar(text("SELECT pg_backend_pid()"))
    db.session.commit()
    with contextlib.closing(psycopg2.connect(app.config["DATABASE_URL"])) as other, other.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
    statuses = [db.session.scalar(read) for _ in range(PREPARE_AFTER + 1)]
    assert statuses == ["queued"] * (PREPARE_AFTER + 1)
    assert db.session.scalar(text("SELECT pg_backend_pid()")) != pid
    assert [s for s in prepared_texts() if s.endswith("WHERE jobs.id = $1::UUID") and "jobs.status" in s]


def test_the_setting_turns_preparation_off(app: Flask, tenant):
    plain = create_app({"TESTING": True, "GPUJOBS_DB_PREPARED_STATEMENTS": False})
    with plain.app_context():
        job_id = submit(tenant)
        for _ in range(PREPARE_AFTER + 2):
            db.session.scalar(select(Job.status).where(Job.id == job_id))
        assert prepared_texts() == []
        db.session.commit()
        db.engine.dispose()


def test_the_instance_row_insert_is_prepared_with_or_without_a_deadline(app, tenant, app_context):
    tenant_id = uuid.UUID(tenant["id"])
    params = {"productName": "RTX 3090 24GB"}
    job_ids = [submit(tenant) for _ in range(PREPARE_AFTER + 2)]  # each commits
    # One transaction, so one connection: preparation is counted per connection.
    rows = [records.ensure_row(job_id, tenant_id, params) for job_id in job_ids[:-1]]
    with_deadline = records.ensure_row(job_ids[-1], tenant_id, params | {"maxRuntimeSeconds": 600})
    assert [s for s in prepared_texts() if s.startswith("PREPARE") and "INSERT INTO instances" in s]
    db.session.commit()
    assert {(row.max_runtime_seconds, row.on_expiry, row.expires_at) for row in rows} == {(None, None, None)}
    assert (with_deadline.max_runtime_seconds, with_deadline.on_expiry) == (600, "delete")
    now = db.session.scalar(select(func.now()))
    assert timedelta(seconds=590) < with_deadline.expires_at - now <= timedelta(seconds=600)
    # Inserted once: the same job's row comes back as it is.
    again = records.ensure_row(rows[0].job_id, tenant_id, params | {"maxRuntimeSeconds": 60})
    assert (again.id, again.expires_at) == (rows[0].id, None)


def test_every_sweep_statement_is_one_the_server_prepares(app, app_context):
    """A statement PostgreSQL refuses to prepare goes out as text for good (and logs an ERROR at each
    start): the sweeps run every few seconds in every deployment, so each of theirs must prepare."""
    ran: set[str] = set()

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        ran.add(statement)

    event.listen(db.engine, "before_cursor_execute", record)  # after gpujobs.prepared's: the text as sent
    try:
        for _ in range(PREPARE_AFTER + 1):  # idle sweeps: the queues are empty, every level's read runs
            sweeps.dispatch_due()
            sweeps.rescue_stuck()
            sweeps.publish_due_webhooks()
            lifetimes.sweep()
            schedules.run_due_schedules()
            db.session.commit()
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    # Each statement as the app wrote it (one already prepared went out as its EXECUTE), PREPAREd on a
    # connection of its own: which of them were prepared by the pool's connections depends on the
    # tests before this one, so that is not the question.
    originals = {rewrite.execute: text for text, rewrite in prepared._rewrites.items() if rewrite}
    written = {originals.get(text, text) for text in ran}
    written = {text for text in written if _PREPARABLE.match(text)}
    refused = []
    connection = db.engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute("DEALLOCATE ALL")
        for text in written:
            rewrite = prepared._rewrite(text)
            try:
                if rewrite is None:
                    raise psycopg2.ProgrammingError("refused before")
                cursor.execute(rewrite.prepare)
            except psycopg2.Error:
                refused.append(text[:60])
                connection.rollback()
    finally:
        connection.invalidate()  # its prepared statements are not gpujobs.prepared's to know about
    assert (refused, len(written) >= 8) == ([], True)
