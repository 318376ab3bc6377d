"""The store's fixtures (a migrated database on SQLite and on PostgreSQL) for the cluster's
tests that talk to the database directly."""

from __future__ import annotations

from tests.store.conftest import engine, sessions, store_url

__all__ = ["engine", "sessions", "store_url"]
