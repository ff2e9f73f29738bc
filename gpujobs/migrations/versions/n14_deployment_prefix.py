"""This deployment's instance prefix (``deployment``), and the cost each instance accrues.

``deployment`` holds one row: the prefix of the Novita instances this deployment creates. A fresh
database gets ``gpujobs-<8 hex>-``, so two deployments on one Novita account never take each other's
instances for leaks. A database that already has instances keeps ``gpujobs-``, the default its instances
were named with, so the reconcile sweep still recognises them.

``instances.cost_units`` and ``cost_accrued_at`` are the cost sweep's running total and mark (existing
instances accrue from the upgrade on);
``instance_cost_hours`` splits the same amounts by clock hour for ``GET /v1/metrics/cost``.

Revision ID: n14_deployment_prefix
Revises: m13_gpu_quotas
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "n14_deployment_prefix"
down_revision = "m13_gpu_quotas"
branch_labels = None
depends_on = None

# What GPUJOBS_INSTANCE_PREFIX defaulted to before this revision.
LEGACY_PREFIX = "gpujobs-"


def upgrade() -> None:
    op.create_table(
        "deployment",
        sa.Column("id", sa.SmallInteger(), primary_key=True),
        sa.Column("instance_prefix", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_deployment_one_row"),
    )
    connection = op.get_bind()
    existing = connection.scalar(sa.text("SELECT EXISTS (SELECT 1 FROM instances WHERE NOT external)"))
    prefix = LEGACY_PREFIX if existing else f"gpujobs-{secrets.token_hex(4)}-"
    connection.execute(
        sa.text("INSERT INTO deployment (id, instance_prefix) VALUES (1, :prefix)"), {"prefix": prefix}
    )

    op.add_column(
        "instances",
        sa.Column("cost_units", sa.Numeric(24, 6), nullable=False, server_default=sa.text("0")),
    )
    # Existing instances accrue from the upgrade on: what they cost before is not known.
    op.add_column(
        "instances",
        sa.Column(
            "cost_accrued_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.create_table(
        "instance_cost_hours",
        sa.Column(
            "instance_id",
            sa.UUID(),
            sa.ForeignKey("instances.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("tenant_id", sa.UUID(), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("units", sa.Numeric(24, 6), nullable=False),
    )
    op.create_index("ix_instance_cost_hours_tenant_hour", "instance_cost_hours", ["tenant_id", "hour"])


def downgrade() -> None:
    op.drop_index("ix_instance_cost_hours_tenant_hour", table_name="instance_cost_hours")
    op.drop_table("instance_cost_hours")
    op.drop_column("instances", "cost_accrued_at")
    op.drop_column("instances", "cost_units")
    op.drop_table("deployment")
