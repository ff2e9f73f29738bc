"""api: counters kept by triggers for stats and metrics, and the index for duration percentiles

Stats and metrics read these small tables instead of counting the jobs table on every request.
Row triggers keep them exact on INSERT and on status changes (heartbeats and progress updates do not
fire them); a statement trigger over the deleted rows subtracts whole cleanup batches at once. Each
trigger upserts its rows in key order, so two transitions never lock counter rows in opposite orders.

Revision ID: b2_api
Revises: a2_instances
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "b2_api"
down_revision = "a2_instances"
branch_labels = None
depends_on = None

SHARD = "(hashtext({row}.id::text) & 7)::smallint"  # models.COUNTER_SHARDS = 8

FUNCTIONS = f"""
CREATE FUNCTION job_counters_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counters AS c (tenant_id, definition_key, definition_version, status, shard, count)
    VALUES (NEW.tenant_id, NEW.definition_key, NEW.definition_version, NEW.status, {SHARD.format(row="NEW")}, 1)
    ON CONFLICT (tenant_id, definition_key, definition_version, status, shard)
    DO UPDATE SET count = c.count + 1;
    RETURN NULL;
END $$;

CREATE FUNCTION job_counters_on_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counters AS c (tenant_id, definition_key, definition_version, status, shard, count)
    SELECT NEW.tenant_id, NEW.definition_key, NEW.definition_version, s.status, {SHARD.format(row="NEW")}, s.delta
    FROM (VALUES (OLD.status, -1), (NEW.status, 1)) AS s (status, delta)
    ORDER BY s.status
    ON CONFLICT (tenant_id, definition_key, definition_version, status, shard)
    DO UPDATE SET count = c.count + EXCLUDED.count;
    IF NEW.status IN ('succeeded', 'failed', 'cancelled')
       AND OLD.status NOT IN ('succeeded', 'failed', 'cancelled') THEN
        INSERT INTO job_hourly AS h (
            tenant_id, hour, definition_key, definition_version, shard,
            succeeded, failed, cancelled, retried, timed, processing_seconds, queue_seconds)
        SELECT NEW.tenant_id, date_trunc('hour', coalesce(NEW.finished_at, now()), 'UTC'),
               NEW.definition_key, NEW.definition_version, {SHARD.format(row="NEW")},
               (NEW.status = 'succeeded')::int, (NEW.status = 'failed')::int,
               (NEW.status = 'cancelled')::int, (NEW.attempt > 1)::int, ran::int,
               CASE WHEN ran THEN greatest(extract(epoch FROM NEW.finished_at - NEW.started_at), 0) ELSE 0 END,
               CASE WHEN ran THEN greatest(extract(epoch FROM NEW.started_at - NEW.queued_at), 0) ELSE 0 END
        FROM (SELECT OLD.status IN ('running', 'cancelling') AND NEW.started_at IS NOT NULL
                     AND NEW.finished_at IS NOT NULL AND NEW.queued_at IS NOT NULL AS ran) AS r
        ON CONFLICT (tenant_id, hour, definition_key, definition_version, shard) DO UPDATE SET
            succeeded = h.succeeded + EXCLUDED.succeeded, failed = h.failed + EXCLUDED.failed,
            cancelled = h.cancelled + EXCLUDED.cancelled, retried = h.retried + EXCLUDED.retried,
            timed = h.timed + EXCLUDED.timed,
            processing_seconds = h.processing_seconds + EXCLUDED.processing_seconds,
            queue_seconds = h.queue_seconds + EXCLUDED.queue_seconds;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION job_counters_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counters AS c (tenant_id, definition_key, definition_version, status, shard, count)
    SELECT tenant_id, definition_key, definition_version, status, {SHARD.format(row="gone")}, -count(*)
    FROM gone GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (tenant_id, definition_key, definition_version, status, shard)
    DO UPDATE SET count = c.count + EXCLUDED.count;
    RETURN NULL;
END $$;

CREATE FUNCTION delivery_counters_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_delivery_counters AS c (tenant_id, status, shard, count)
    VALUES (NEW.tenant_id, NEW.status, {SHARD.format(row="NEW")}, 1)
    ON CONFLICT (tenant_id, status, shard) DO UPDATE SET count = c.count + 1;
    RETURN NULL;
END $$;

CREATE FUNCTION delivery_counters_on_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_delivery_counters AS c (tenant_id, status, shard, count)
    SELECT NEW.tenant_id, s.status, {SHARD.format(row="NEW")}, s.delta
    FROM (VALUES (OLD.status, -1), (NEW.status, 1)) AS s (status, delta)
    ORDER BY s.status
    ON CONFLICT (tenant_id, status, shard) DO UPDATE SET count = c.count + EXCLUDED.count;
    RETURN NULL;
END $$;

CREATE FUNCTION delivery_counters_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_delivery_counters AS c (tenant_id, status, shard, count)
    SELECT tenant_id, status, {SHARD.format(row="gone")}, -count(*)
    FROM gone GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (tenant_id, status, shard) DO UPDATE SET count = c.count + EXCLUDED.count;
    RETURN NULL;
END $$;
"""

TRIGGERS = """
CREATE TRIGGER job_counters_insert AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION job_counters_on_insert();
CREATE TRIGGER job_counters_status AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION job_counters_on_status();
CREATE TRIGGER job_counters_delete AFTER DELETE ON jobs REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION job_counters_on_delete();
CREATE TRIGGER delivery_counters_insert AFTER INSERT ON webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION delivery_counters_on_insert();
CREATE TRIGGER delivery_counters_status AFTER UPDATE OF status ON webhook_deliveries
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION delivery_counters_on_status();
CREATE TRIGGER delivery_counters_delete AFTER DELETE ON webhook_deliveries REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_counters_on_delete();
"""

# Existing rows, counted once. The triggers exist already and their locks block writers until this
# migration commits, so no transition falls between the count and the triggers.
BACKFILL = f"""
INSERT INTO job_counters (tenant_id, definition_key, definition_version, status, shard, count)
SELECT tenant_id, definition_key, definition_version, status, {SHARD.format(row="jobs")}, count(*)
FROM jobs GROUP BY 1, 2, 3, 4, 5;
INSERT INTO webhook_delivery_counters (tenant_id, status, shard, count)
SELECT tenant_id, status, {SHARD.format(row="webhook_deliveries")}, count(*)
FROM webhook_deliveries GROUP BY 1, 2, 3;
INSERT INTO job_hourly (tenant_id, hour, definition_key, definition_version, shard,
                        succeeded, failed, cancelled, retried, timed, processing_seconds, queue_seconds)
SELECT tenant_id, date_trunc('hour', finished_at, 'UTC'), definition_key, definition_version,
       {SHARD.format(row="jobs")},
       count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed'),
       count(*) FILTER (WHERE status = 'cancelled'), count(*) FILTER (WHERE attempt > 1),
       count(started_at), coalesce(sum(extract(epoch FROM finished_at - started_at)), 0),
       coalesce(sum(extract(epoch FROM started_at - queued_at)), 0)
FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at IS NOT NULL
GROUP BY 1, 2, 3, 4, 5;
"""


def upgrade():
    op.create_table(
        "job_counters",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("definition_key", sa.String(length=100), nullable=False),
        sa.Column("definition_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "definition_key", "definition_version", "status", "shard"),
    )
    counts = [
        sa.Column(name, sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        for name in ("succeeded", "failed", "cancelled", "retried", "timed")
    ]
    sums = [
        sa.Column(name, postgresql.DOUBLE_PRECISION(), server_default=sa.text("0"), nullable=False)
        for name in ("processing_seconds", "queue_seconds")
    ]
    op.create_table(
        "job_hourly",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("definition_key", sa.String(length=100), nullable=False),
        sa.Column("definition_version", sa.Integer(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        *counts,
        *sums,
        sa.PrimaryKeyConstraint("tenant_id", "hour", "definition_key", "definition_version", "shard"),
    )
    op.create_index("ix_job_hourly_hour", "job_hourly", ["hour"])
    op.create_table(
        "webhook_delivery_counters",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "status", "shard"),
    )
    op.create_index(
        "ix_jobs_tenant_finished",
        "jobs",
        ["tenant_id", "finished_at"],
        postgresql_where=sa.text("status IN ('succeeded', 'failed', 'cancelled')"),
    )
    op.execute(FUNCTIONS)
    op.execute(TRIGGERS)
    op.execute(BACKFILL)


def downgrade():
    for trigger, table in (
        ("job_counters_insert", "jobs"),
        ("job_counters_status", "jobs"),
        ("job_counters_delete", "jobs"),
        ("delivery_counters_insert", "webhook_deliveries"),
        ("delivery_counters_status", "webhook_deliveries"),
        ("delivery_counters_delete", "webhook_deliveries"),
    ):
        op.execute(f"DROP TRIGGER {trigger} ON {table}")
    for function in (
        "job_counters_on_insert",
        "job_counters_on_status",
        "job_counters_on_delete",
        "delivery_counters_on_insert",
        "delivery_counters_on_status",
        "delivery_counters_on_delete",
    ):
        op.execute(f"DROP FUNCTION {function}()")
    op.drop_index("ix_jobs_tenant_finished", table_name="jobs")
    op.drop_table("webhook_delivery_counters")
    op.drop_index("ix_job_hourly_hour", table_name="job_hourly")
    op.drop_table("job_hourly")
    op.drop_table("job_counters")
