"""Index queued jobs by priority and publish time, for the dispatch sweep; it replaces ix_jobs_unpublished.

Each tick the dispatch sweep asks for queued jobs never published, and, per priority, for queued jobs
published before the oldest message still waiting in that queue (their message was lost). Both are
ranges of this index (NULL publish times sort last within a priority), so under a backlog of queued
jobs the sweep reads only the rows it returns, not the whole backlog as with ``ix_jobs_unpublished``
(queued jobs by ``queued_at``), which nothing else reads. Built concurrently so a large jobs table
stays writable while it builds (the build waits for every transaction older than it to finish, idle
ones included).

Revision ID: e5_queued_published_index
Revises: d4_expirable_index
"""

import sqlalchemy as sa
from alembic import op

revision = "e5_queued_published_index"
down_revision = "d4_expirable_index"
branch_labels = None
depends_on = None

QUEUED = sa.text("status = 'queued'")


def upgrade() -> None:
    with op.get_context().autocommit_block():
        # A concurrent build that failed leaves an INVALID index behind and this revision unapplied;
        # drop it so the rerun builds a valid one instead of skipping it.
        op.drop_index(
            "ix_jobs_queued_published", table_name="jobs", postgresql_concurrently=True, if_exists=True
        )
        op.create_index(
            "ix_jobs_queued_published",
            "jobs",
            ["priority", "published_at"],
            postgresql_where=QUEUED,
            postgresql_concurrently=True,
        )
        op.drop_index("ix_jobs_unpublished", table_name="jobs", postgresql_concurrently=True, if_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_jobs_unpublished", table_name="jobs", postgresql_concurrently=True, if_exists=True)
        op.create_index(
            "ix_jobs_unpublished",
            "jobs",
            ["queued_at"],
            postgresql_where=QUEUED,
            postgresql_concurrently=True,
        )
        op.drop_index(
            "ix_jobs_queued_published", table_name="jobs", postgresql_concurrently=True, if_exists=True
        )
