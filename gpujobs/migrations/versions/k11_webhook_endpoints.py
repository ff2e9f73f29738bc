"""Circuit breakers of webhook receivers (``webhook_endpoints``), and each delivery's endpoint key.

The breaker lives in PostgreSQL, beside the deliveries it holds back: a Redis that restarts empty must
not close every open circuit at once, and the dashboard reads it with the deliveries.

Revision ID: k11_webhook_endpoints
Revises: j10_webhook_headers_external
"""

import sqlalchemy as sa
from alembic import op

revision = "k11_webhook_endpoints"
down_revision = "j10_webhook_headers_external"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("endpoint", sa.Text(), primary_key=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("open_until", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.add_column("webhook_deliveries", sa.Column("endpoint", sa.Text()))


def downgrade() -> None:
    op.drop_column("webhook_deliveries", "endpoint")
    op.drop_table("webhook_endpoints")
