"""Instance lifetimes: a deadline, what happens at it, and the expiring warning's marker.

Revision ID: o15_instance_lifetimes
Revises: n14_deployment_prefix
"""

import sqlalchemy as sa
from alembic import op

revision = "o15_instance_lifetimes"
down_revision = "n14_deployment_prefix"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("instances", sa.Column("max_runtime_seconds", sa.Integer()))
    op.add_column("instances", sa.Column("on_expiry", sa.String(16)))
    op.add_column("instances", sa.Column("expires_at", sa.DateTime(timezone=True)))
    op.add_column("instances", sa.Column("expiry_warned_at", sa.DateTime(timezone=True)))
    op.add_column(
        "instances", sa.Column("expiry_warnings", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )
    op.create_index(
        "ix_instances_expires",
        "instances",
        ["expires_at"],
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_instances_expires", table_name="instances")
    for column in ("expiry_warnings", "expiry_warned_at", "expires_at", "on_expiry", "max_runtime_seconds"):
        op.drop_column("instances", column)
