"""progress change notifications (PostgreSQL only)

Every insert or update of a progress row sends `NOTIFY expert_progress, '<expert_id>'`, so the
status API's live stream wakes at once, whichever process wrote the row (the API itself, a
Dagster run worker, the cleanup job, a person in psql). PostgreSQL delivers the notification
when the writing transaction commits, and never for a rolled-back one. On SQLite there is no
LISTEN/NOTIFY and this revision does nothing: the stream polls there.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 11:00:00
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CHANNEL = "expert_progress"


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if not _postgresql():
        return
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION expert_progress_notify() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', NEW.expert_id);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute("DROP TRIGGER IF EXISTS expert_progress_notify ON expert_processing_progress")
    op.execute(
        """
        CREATE TRIGGER expert_progress_notify
        AFTER INSERT OR UPDATE ON expert_processing_progress
        FOR EACH ROW EXECUTE FUNCTION expert_progress_notify()
        """
    )


def downgrade() -> None:
    if not _postgresql():
        return
    op.execute("DROP TRIGGER IF EXISTS expert_progress_notify ON expert_processing_progress")
    op.execute("DROP FUNCTION IF EXISTS expert_progress_notify()")
