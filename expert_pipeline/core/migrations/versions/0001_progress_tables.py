"""progress tables

Revision ID: 0001
Revises:
Create Date: 2026-11-24 09:40:31.637195
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "expert_processing_progress",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("expert_id", sa.String(length=128), nullable=False),
        sa.Column("agent_id", sa.String(length=128), nullable=True),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("current_file", sa.String(length=255), nullable=True),
        sa.Column("current_file_index", sa.Integer(), nullable=False),
        sa.Column("total_files", sa.Integer(), nullable=False),
        sa.Column("current_batch", sa.Integer(), nullable=False),
        sa.Column("total_batches", sa.Integer(), nullable=False),
        sa.Column("current_chunk", sa.Integer(), nullable=False),
        sa.Column("total_chunks", sa.Integer(), nullable=False),
        sa.Column("processed_files", sa.Integer(), nullable=False),
        sa.Column("failed_files", sa.Integer(), nullable=False),
        sa.Column("progress_percentage", sa.Float(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("expert_id"),
    )
    with op.batch_alter_table("expert_processing_progress", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_expert_processing_progress_status"), ["status"], unique=False)

    op.create_table(
        "expert_progress_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("expert_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("expert_progress_events", schema=None) as batch_op:
        batch_op.create_index("ix_progress_events_expert_time", ["expert_id", "id"], unique=False)

    op.create_table(
        "experts",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("agent_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "expert_files",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("expert_id", sa.String(length=128), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("storage_key", sa.String(length=1024), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_kind", sa.String(length=32), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("pages", sa.Integer(), nullable=True),
        sa.Column("characters", sa.Integer(), nullable=True),
        sa.Column("chunks", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["expert_id"], ["experts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("expert_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_expert_files_expert_id"), ["expert_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("expert_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_expert_files_expert_id"))

    op.drop_table("expert_files")
    op.drop_table("experts")
    with op.batch_alter_table("expert_progress_events", schema=None) as batch_op:
        batch_op.drop_index("ix_progress_events_expert_time")

    op.drop_table("expert_progress_events")
    with op.batch_alter_table("expert_processing_progress", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_expert_processing_progress_status"))

    op.drop_table("expert_processing_progress")
