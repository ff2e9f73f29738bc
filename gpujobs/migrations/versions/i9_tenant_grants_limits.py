"""Tenant-owned Novita resources and per-tenant limits (issue 20).

``novita_grants`` lists the templates and registry auths of the operator's Novita account each tenant
may name; ``tenant_limits`` holds a tenant's own limits (a NULL column takes the operator's default).
``ix_jobs_running_tenant`` lets the claim count a tenant's running jobs without scanning its history;
it is built concurrently so a large jobs table stays writable meanwhile.

Revision ID: i9_tenant_grants_limits
Revises: h8_job_histograms
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "i9_tenant_grants_limits"
down_revision = "h8_job_histograms"
branch_labels = None
depends_on = None

ACTIVE = sa.text("status IN ('running', 'cancelling')")


def upgrade() -> None:
    op.create_table(
        "novita_grants",
        sa.Column(
            "tenant_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("resource_id", sa.String(255), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "tenant_limits",
        sa.Column(
            "tenant_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("max_running_jobs", sa.Integer()),
        sa.Column("max_priority", sa.SmallInteger()),
        sa.Column("max_schedules", sa.Integer()),
    )
    with op.get_context().autocommit_block():
        # A failed concurrent build leaves an INVALID index behind: drop it so the rerun builds a valid one.
        op.drop_index("ix_jobs_running_tenant", table_name="jobs", postgresql_concurrently=True, if_exists=True)
        op.create_index(
            "ix_jobs_running_tenant",
            "jobs",
            ["tenant_id"],
            postgresql_where=ACTIVE,
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_jobs_running_tenant", table_name="jobs", postgresql_concurrently=True, if_exists=True)
    op.drop_table("tenant_limits")
    op.drop_table("novita_grants")
