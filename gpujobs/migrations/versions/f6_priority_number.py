"""Keep the 0-10 priority a client sent, so the job answers with the number it was given.

Jobs store one of four levels (``priority``) for queue choice and ordering; a numeric priority maps onto
them and used to come back as the level's name. The nullable column costs nothing on existing rows
(PostgreSQL adds it without a rewrite) and is null for named priorities.

Revision ID: f6_priority_number
Revises: e5_queued_published_index
"""

import sqlalchemy as sa
from alembic import op

revision = "f6_priority_number"
down_revision = "e5_queued_published_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("priority_number", sa.SmallInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "priority_number")
