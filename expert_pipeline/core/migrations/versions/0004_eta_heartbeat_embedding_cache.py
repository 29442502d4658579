"""ETA, throughput and heartbeat on the progress row; the embedding cache

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 11:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("expert_processing_progress", schema=None) as batch_op:
        batch_op.add_column(sa.Column("eta_seconds", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("chunks_per_second", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "embedding_cache",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("embedding_cache")
    with op.batch_alter_table("expert_processing_progress", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("chunks_per_second")
        batch_op.drop_column("eta_seconds")
