"""Encrypt webhook signing secrets at rest; record API key use; keep dashboard sessions server-side.

The secret columns become text holding Fernet tokens (gpujobs.encryption), and every existing row is
encrypted here under ``GPUJOBS_ENCRYPTION_KEY``; with rows to encrypt and no key the upgrade stops with
a message naming the variable. ``dashboard_sessions`` lets signing out and key revocation end a
``/ui`` session at once; ``api_keys.last_used_at`` is what ``keys list`` shows.

Revision ID: g7_secrets_at_rest
Revises: f6_priority_number
"""

import sqlalchemy as sa
from alembic import op
from flask import current_app
from sqlalchemy.dialects import postgresql

from gpujobs.encryption import cipher, decrypt, encrypt

revision = "g7_secrets_at_rest"
down_revision = "f6_priority_number"
branch_labels = None
depends_on = None

SECRET_COLUMNS = ("webhook_secret", "previous_webhook_secret")


def _recode(encode: bool) -> None:
    """Encrypt (or, going down, decrypt) both secret columns of every tenant."""
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, webhook_secret, previous_webhook_secret FROM tenants")).all()
    if not rows:
        return
    config = current_app.config
    box = cipher(config.get("GPUJOBS_ENCRYPTION_KEY"), config.get("GPUJOBS_ENCRYPTION_OLD_KEYS") or ())
    code = encrypt if encode else decrypt
    for row in rows:
        values = {c: None if getattr(row, c) is None else code(getattr(row, c), box) for c in SECRET_COLUMNS}
        bind.execute(
            sa.text(
                "UPDATE tenants SET webhook_secret = :webhook_secret, "
                "previous_webhook_secret = :previous_webhook_secret WHERE id = :id"
            ),
            {"id": row.id, **values},
        )


def upgrade() -> None:
    for column in SECRET_COLUMNS:
        op.alter_column("tenants", column, type_=sa.Text(), existing_type=sa.String(length=100))
    _recode(encode=True)
    op.add_column("api_keys", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "dashboard_sessions",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("api_key_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_dashboard_sessions_api_key_id", "dashboard_sessions", ["api_key_id"])


def downgrade() -> None:
    op.drop_index("ix_dashboard_sessions_api_key_id", table_name="dashboard_sessions")
    op.drop_table("dashboard_sessions")
    op.drop_column("api_keys", "last_used_at")
    _recode(encode=False)
    for column in SECRET_COLUMNS:
        op.alter_column("tenants", column, type_=sa.String(length=100), existing_type=sa.Text())
