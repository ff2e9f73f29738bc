"""Index the jobs cleanup may delete: finished and not dead-lettered.

Dead-lettered jobs are kept until an operator redrives them, so with ``ix_jobs_finished`` every cleanup
batch first walked past all expired dead letters (48.8 ms per batch with 66,967 of them, 11.6 ms with
this index; bench/README.md). The predicate says ``dead_lettered IS FALSE`` exactly as the cleanup
query does: PostgreSQL matches a partial index only on the same expression, and ``NOT dead_lettered``
is not the same. Built concurrently so a large jobs table stays writable while it builds (the build
waits for every transaction older than it to finish, idle ones included).

Revision ID: d4_expirable_index
Revises: c3_delivery_shards
"""

import sqlalchemy as sa
from alembic import op

revision = "d4_expirable_index"
down_revision = "c3_delivery_shards"
branch_labels = None
depends_on = None

PREDICATE = "status IN ('succeeded', 'failed', 'cancelled') AND dead_lettered IS FALSE"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        # A concurrent build that failed (cancelled, deadlocked) leaves an INVALID index behind and
        # this revision unapplied; drop it so the rerun builds a valid one instead of skipping it.
        op.drop_index("ix_jobs_expirable", table_name="jobs", postgresql_concurrently=True, if_exists=True)
        op.create_index(
            "ix_jobs_expirable",
            "jobs",
            ["finished_at"],
            postgresql_where=sa.text(PREDICATE),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_jobs_expirable", table_name="jobs", postgresql_concurrently=True, if_exists=True)
