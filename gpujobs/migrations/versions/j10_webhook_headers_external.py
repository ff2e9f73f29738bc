"""Per-job webhook headers (copied onto each delivery) and instances gpujobs watches but did not create.

``jobs.webhook_headers`` holds the headers a tenant asked for on its job's deliveries;
``webhook_deliveries.headers`` is the copy each delivery is sent with (a ``webhook.send`` job's own
headers too). ``instances.external`` marks an instance that ``POST /v1/instances/monitor`` watches:
gpujobs never deletes it. New columns with constant defaults: no table rewrite.

Revision ID: j10_webhook_headers_external
Revises: i9_tenant_grants_limits
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "j10_webhook_headers_external"
down_revision = "i9_tenant_grants_limits"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("webhook_headers", JSONB(), nullable=True))
    op.add_column("webhook_deliveries", sa.Column("headers", JSONB(), nullable=True))
    op.add_column(
        "instances", sa.Column("external", sa.Boolean(), nullable=False, server_default=sa.text("false"))
    )


def downgrade() -> None:
    op.drop_column("instances", "external")
    op.drop_column("webhook_deliveries", "headers")
    op.drop_column("jobs", "webhook_headers")
