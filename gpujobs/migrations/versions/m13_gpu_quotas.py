"""GPU quotas per tenant: instances at once and USD per hour, and the price an unplaced instance holds.

Revision ID: m13_gpu_quotas
Revises: l12_tenant_dispatch
"""

import sqlalchemy as sa
from alembic import op

revision = "m13_gpu_quotas"
down_revision = "l12_tenant_dispatch"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenant_limits", sa.Column("max_instances", sa.Integer()))
    op.add_column("tenant_limits", sa.Column("max_usd_per_hour", sa.Numeric(12, 5)))
    op.add_column("instances", sa.Column("reserved_price_units", sa.Integer()))


def downgrade() -> None:
    op.drop_column("instances", "reserved_price_units")
    op.drop_column("tenant_limits", "max_usd_per_hour")
    op.drop_column("tenant_limits", "max_instances")
