from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from expert_pipeline.core.models import Base

config = context.config
target_metadata = Base.metadata
# Our own version table: Dagster's PostgreSQL storage keeps its alembic_version in the same
# database when DATABASE_URL and DAGSTER_PG_URL point to one server, and the two must not mix.
VERSION_TABLE = "expert_pipeline_alembic_version"


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            version_table=VERSION_TABLE,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("alembic: no sqlalchemy.url configured (use expert-pipeline migrate)")
    engine = create_engine(url)
    with engine.begin() as conn:
        context.configure(
            connection=conn,
            target_metadata=target_metadata,
            render_as_batch=True,
            version_table=VERSION_TABLE,
        )
        with context.begin_transaction():
            context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
