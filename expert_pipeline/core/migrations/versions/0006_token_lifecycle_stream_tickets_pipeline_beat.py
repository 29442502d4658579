"""Token expiry, revocation and owner email; single-use stream tickets; the pipeline's heartbeat

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 20:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("email", sa.String(length=320), nullable=True))
    op.create_table(
        "stream_tickets",
        sa.Column("ticket_sha256", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.String(length=64), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ticket_sha256"),
    )
    op.create_table(
        "pipeline_heartbeats",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("pipeline_heartbeats")
    op.drop_table("stream_tickets")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("email")
        batch_op.drop_column("revoked_at")
        batch_op.drop_column("expires_at")
