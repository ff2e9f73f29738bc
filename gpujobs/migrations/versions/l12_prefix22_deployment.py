"""This deployment's instance prefix (``deployment``).

``deployment`` holds one row: the prefix of the Novita instances this deployment creates. A fresh
database gets ``gpujobs-<8 hex>-``, so two deployments on one Novita account never take each other's
instances for leaks. A database that already has instances keeps ``gpujobs-``, the default its instances
were named with, so the reconcile sweep still recognises them.

Revision ID: l12_prefix22_deployment
Revises: k11_webhook_endpoints
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "l12_prefix22_deployment"
down_revision = "k11_webhook_endpoints"
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


def downgrade() -> None:
    op.drop_table("deployment")
