"""Shard webhook delivery counters by job, not by delivery.

One job's end records two deliveries (job.* and instance.*); sharded by their own random ids, two jobs
ending at once could lock the same two counter rows in opposite orders and deadlock (seen in the
pipeline benchmark). Sharded by job id, one transaction touches one counter row per status. Counts are
read as sums over shards, so rows counted under the old shards stay correct.

Revision ID: c3_delivery_shards
Revises: b2_api
"""

from alembic import op

revision = "c3_delivery_shards"
down_revision = "b2_api"
branch_labels = None
depends_on = None

FUNCTIONS = """
CREATE OR REPLACE FUNCTION delivery_counters_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_delivery_counters AS c (tenant_id, status, shard, count)
    VALUES (NEW.tenant_id, NEW.status, (hashtext(NEW.{key}::text) & 7)::smallint, 1)
    ON CONFLICT (tenant_id, status, shard) DO UPDATE SET count = c.count + 1;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION delivery_counters_on_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_delivery_counters AS c (tenant_id, status, shard, count)
    SELECT NEW.tenant_id, s.status, (hashtext(NEW.{key}::text) & 7)::smallint, s.delta
    FROM (VALUES (OLD.status, -1), (NEW.status, 1)) AS s (status, delta)
    ORDER BY s.status
    ON CONFLICT (tenant_id, status, shard) DO UPDATE SET count = c.count + EXCLUDED.count;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION delivery_counters_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_delivery_counters AS c (tenant_id, status, shard, count)
    SELECT tenant_id, status, (hashtext(gone.{key}::text) & 7)::smallint, -count(*)
    FROM gone GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (tenant_id, status, shard) DO UPDATE SET count = c.count + EXCLUDED.count;
    RETURN NULL;
END $$;
"""


def upgrade() -> None:
    op.execute(FUNCTIONS.format(key="job_id"))


def downgrade() -> None:
    op.execute(FUNCTIONS.format(key="id"))
