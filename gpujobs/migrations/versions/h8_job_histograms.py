"""Job totals and duration histograms for Prometheus, kept by a trigger like the other counters.

``/metrics`` must give counters (monotonic, ``_total``) and histograms of run time and queue wait
that are the same whichever web process answers the scrape, for workers on any number of hosts. So
the observations are recorded where every process writes already, in the transaction that ends the
job: one upsert of ``job_finished_counters`` and, when the job ran, one row of
``job_duration_buckets`` per histogram (non-cumulative counts per bucket, plus the summed seconds).
Both are history: cleanup of old jobs does not subtract from them. Rows are sharded like
``job_counters``. The bucket bounds are ``job_duration_bounds()``, read by the exposition too.

Revision ID: h8_job_histograms
Revises: g7_secrets_at_rest
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "h8_job_histograms"
down_revision = "g7_secrets_at_rest"
branch_labels = None
depends_on = None

SHARD = "(hashtext(NEW.id::text) & 7)::smallint"  # models.COUNTER_SHARDS = 8
TERMINAL = "('succeeded', 'failed', 'cancelled')"

FUNCTIONS = f"""
CREATE FUNCTION job_duration_bounds() RETURNS float8[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY[0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600]::float8[]
$$;

CREATE FUNCTION job_duration_bucket(seconds float8) RETURNS float8 LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(min(b), 'Infinity') FROM unnest(job_duration_bounds()) AS b WHERE b >= seconds
$$;

CREATE FUNCTION job_histograms_on_finish() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_finished_counters AS c
        (definition_key, definition_version, status, shard, finished, retried)
    VALUES (NEW.definition_key, NEW.definition_version, NEW.status, {SHARD}, 1, (NEW.attempt > 1)::int)
    ON CONFLICT (definition_key, definition_version, status, shard)
    DO UPDATE SET finished = c.finished + 1, retried = c.retried + EXCLUDED.retried;
    IF OLD.status IN ('running', 'cancelling') AND NEW.started_at IS NOT NULL
       AND NEW.finished_at IS NOT NULL AND NEW.queued_at IS NOT NULL THEN
        INSERT INTO job_duration_buckets AS b
            (histogram, definition_key, definition_version, status, le, shard, count, seconds)
        SELECT o.histogram, NEW.definition_key, NEW.definition_version, NEW.status,
               job_duration_bucket(o.seconds), {SHARD}, 1, o.seconds
        FROM (VALUES
            ('queue', greatest(extract(epoch FROM NEW.started_at - NEW.queued_at), 0)::float8),
            ('run', greatest(extract(epoch FROM NEW.finished_at - NEW.started_at), 0)::float8)
        ) AS o (histogram, seconds)
        ORDER BY o.histogram
        ON CONFLICT (histogram, definition_key, definition_version, status, le, shard)
        DO UPDATE SET count = b.count + 1, seconds = b.seconds + EXCLUDED.seconds;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER job_histograms_finish AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (NEW.status IN {TERMINAL} AND OLD.status NOT IN {TERMINAL})
    EXECUTE FUNCTION job_histograms_on_finish();
"""


def upgrade() -> None:
    op.create_table(
        "job_finished_counters",
        sa.Column("definition_key", sa.String(length=100), nullable=False),
        sa.Column("definition_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("finished", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("retried", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("definition_key", "definition_version", "status", "shard"),
    )
    op.create_table(
        "job_duration_buckets",
        sa.Column("histogram", sa.String(length=8), nullable=False),
        sa.Column("definition_key", sa.String(length=100), nullable=False),
        sa.Column("definition_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("le", postgresql.DOUBLE_PRECISION(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("seconds", postgresql.DOUBLE_PRECISION(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("histogram", "definition_key", "definition_version", "status", "le", "shard"),
    )
    op.execute(FUNCTIONS)


def downgrade() -> None:
    op.execute("DROP TRIGGER job_histograms_finish ON jobs")
    for function in ("job_histograms_on_finish()", "job_duration_bucket(float8)", "job_duration_bounds()"):
        op.execute(f"DROP FUNCTION {function}")
    op.drop_table("job_duration_buckets")
    op.drop_table("job_finished_counters")
