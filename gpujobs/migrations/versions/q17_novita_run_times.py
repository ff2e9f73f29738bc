"""Novita's last start and stop of each instance, which bound what the cost sweep charges.

``instances.novita_started_at`` and ``novita_stopped_at`` are the ``lastStartedAt``/``startedAt`` and
``lastStoppedAt``/``stoppedAt`` of Novita's latest answer, written where the monitor and the reconcile
sweep mirror its status. Existing rows start without them (the next reconcile fills them in) and are
charged as before until then. New nullable columns: no table rewrite.

Revision ID: q17_novita_run_times
Revises: p16_spot_instances
"""

import sqlalchemy as sa
from alembic import op

revision = "q17_novita_run_times"
down_revision = "p16_spot_instances"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("instances", sa.Column("novita_started_at", sa.DateTime(timezone=True)))
    op.add_column("instances", sa.Column("novita_stopped_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("instances", "novita_stopped_at")
    op.drop_column("instances", "novita_started_at")
