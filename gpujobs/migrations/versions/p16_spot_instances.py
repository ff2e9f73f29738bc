"""Spot instances: how each instance is billed, what a reclaim does, and which instance a replacement replaces.

``instances.billing_mode`` is the mode Novita bills it in (``onDemand`` or ``spot``), ``on_reclaim`` what
to do when Novita reclaims a spot instance (``fail`` or ``recreate``), ``replaces_instance_id`` the
reclaimed instance a replacement stands in for (unique: one replacement per reclaim, however many
sweeps see it), ``recreations`` how many replacements its chain has had. The new status ``reclaimed`` is
history, so ``ix_instances_live`` leaves it out like the other ended statuses. New nullable columns and
a constant default: no table rewrite.

Revision ID: p16_spot_instances
Revises: o15_instance_lifetimes
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "p16_spot_instances"
down_revision = "o15_instance_lifetimes"
branch_labels = None
depends_on = None

# The partial index's predicate before and after ``reclaimed`` joined the ended statuses.
_ENDED_BEFORE = "'deleted', 'lost', 'failed'"
_ENDED_AFTER = "'deleted', 'lost', 'failed', 'reclaimed'"


def _live_index(ended: str) -> None:
    op.drop_index("ix_instances_live", table_name="instances")
    op.create_index(
        "ix_instances_live", "instances", ["status"], postgresql_where=sa.text(f"status NOT IN ({ended})")
    )


def upgrade() -> None:
    op.add_column("instances", sa.Column("billing_mode", sa.String(16)))
    op.add_column("instances", sa.Column("on_reclaim", sa.String(16)))
    op.add_column(
        "instances",
        sa.Column(
            "replaces_instance_id",
            UUID(as_uuid=True),
            sa.ForeignKey("instances.id", ondelete="SET NULL"),
            unique=True,
        ),
    )
    op.add_column(
        "instances", sa.Column("recreations", sa.SmallInteger(), nullable=False, server_default=sa.text("0"))
    )
    _live_index(_ENDED_AFTER)


def downgrade() -> None:
    _live_index(_ENDED_BEFORE)
    op.drop_column("instances", "recreations")
    op.drop_column("instances", "replaces_instance_id")
    op.drop_column("instances", "on_reclaim")
    op.drop_column("instances", "billing_mode")
