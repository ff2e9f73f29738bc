"""instances: caller's label, GPU count, and the indexes the GPU workflow reads by

Revision ID: a2_instances
Revises: 8d600471010a
"""

import sqlalchemy as sa
from alembic import op

revision = "a2_instances"
down_revision = "8d600471010a"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("instances", sa.Column("label", sa.String(length=255), nullable=True))
    op.add_column("instances", sa.Column("gpu_num", sa.SmallInteger(), nullable=True))
    op.create_index("ix_instances_job", "instances", ["job_id"])
    op.create_index(
        "ix_instances_live",
        "instances",
        ["status"],
        postgresql_where=sa.text("status NOT IN ('deleted', 'lost', 'failed')"),
    )


def downgrade():
    op.drop_index("ix_instances_live", table_name="instances")
    op.drop_index("ix_instances_job", table_name="instances")
    op.drop_column("instances", "gpu_num")
    op.drop_column("instances", "label")
