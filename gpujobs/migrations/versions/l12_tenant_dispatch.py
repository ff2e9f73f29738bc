"""Indexes of the fair dispatch: each tenant's jobs waiting unpublished, and its jobs published.

The dispatch sweep and a job's top-up take a tenant's next unpublished jobs (best priority, oldest
first) and count its published ones against its window (``gpujobs.dispatch``), without scanning its
backlog. Built concurrently, so a large jobs table stays writable meanwhile.

Revision ID: l12_tenant_dispatch
Revises: k11_webhook_endpoints
"""

import sqlalchemy as sa
from alembic import op

revision = "l12_tenant_dispatch"
down_revision = "k11_webhook_endpoints"
branch_labels = None
depends_on = None

UNPUBLISHED = sa.text("status = 'queued' AND published_at IS NULL")
PUBLISHED = sa.text("status = 'queued' AND published_at IS NOT NULL")
INDEXES = {
    "ix_jobs_unpublished_tenant": (["tenant_id", sa.text("priority DESC"), "queued_at"], UNPUBLISHED),
    "ix_jobs_published_tenant": (["tenant_id"], PUBLISHED),
}


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, (columns, where) in INDEXES.items():
            # A failed concurrent build leaves an INVALID index behind: drop it so the rerun builds a valid one.
            op.drop_index(name, table_name="jobs", postgresql_concurrently=True, if_exists=True)
            op.create_index(name, "jobs", columns, postgresql_where=where, postgresql_concurrently=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name in INDEXES:
            op.drop_index(name, table_name="jobs", postgresql_concurrently=True, if_exists=True)
