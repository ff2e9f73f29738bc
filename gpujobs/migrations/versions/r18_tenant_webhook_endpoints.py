"""A circuit breaker per tenant and receiver: ``webhook_endpoints`` keyed by (tenant_id, endpoint).

Keyed by the receiver alone, one tenant's failing deliveries to a shared receiver (a gateway, Zapier)
opened the circuit for every tenant that names it, and held their deliveries. The existing rows are
that shared state, which belongs to no one tenant: they are dropped, closing those circuits. Deliveries
they held come due at the end of their cool-down as before (``next_attempt_at``), are tried, and a
receiver still failing opens the circuit of each tenant whose deliveries fail. The downgrade drops the
rows too (several tenants' rows of one receiver would collide on the old key).

Revision ID: r18_tenant_webhook_endpoints
Revises: q17_novita_run_times
"""

import sqlalchemy as sa
from alembic import op

revision = "r18_tenant_webhook_endpoints"
down_revision = "q17_novita_run_times"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM webhook_endpoints")
    op.drop_constraint("webhook_endpoints_pkey", "webhook_endpoints", type_="primary")
    op.add_column(
        "webhook_endpoints",
        sa.Column(
            "tenant_id",
            sa.UUID(),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
    )
    op.create_primary_key("webhook_endpoints_pkey", "webhook_endpoints", ["tenant_id", "endpoint"])


def downgrade() -> None:
    op.execute("DELETE FROM webhook_endpoints")
    op.drop_constraint("webhook_endpoints_pkey", "webhook_endpoints", type_="primary")
    op.drop_column("webhook_endpoints", "tenant_id")
    op.create_primary_key("webhook_endpoints_pkey", "webhook_endpoints", ["endpoint"])
