from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool, text

from atoll.store.models import Base

config = context.config
target_metadata = Base.metadata
# PostgreSQL: processes of a cluster starting together (API replicas, nodes) migrate one at a
# time; the lock is the transaction's, so it is let go with the migrations' commit, and the
# next process then finds the schema current. (Any fixed key: Atoll's own, by its name.)
MIGRATION_LOCK_KEY = int.from_bytes(b"atollmig", "big", signed=True)

connectable = engine_from_config(
    config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
)
with connectable.connect() as connection:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()
