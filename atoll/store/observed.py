"""Sandbox state changes as events: the repository every write goes through tells its listeners
which sandbox changed, so the router drops its cached view at once (a paused sandbox must never
be served from a cached "running") and the dashboard's live lists update."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from atoll.store.models import SandboxRow
from atoll.store.repo import Repository

log = logging.getLogger("atoll.store")
Listener = Callable[[str], None]


class ObservedRepository(Repository):
    """A ``Repository`` that calls ``listener(sandbox_id)`` around every sandbox update."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _notify(self, sandbox_id: str) -> None:
        for listener in self._listeners:
            try:
                listener(sandbox_id)
            except Exception:
                log.exception("sandbox change listener failed")

    def changed(self, sandbox_id: str) -> None:
        """Tell the listeners of a change written around this repository (the cluster's
        liveness job fails a dead node's sandboxes in one statement)."""
        self._notify(sandbox_id)

    async def add_sandbox(self, row: SandboxRow) -> None:
        await super().add_sandbox(row)
        self._notify(row.id)  # a new sandbox: the dashboard's live lists show it at once

    async def update_sandbox(self, sandbox_id: str, **values: Any) -> SandboxRow:
        # before and after: a reader that filled the cache between the two sees the new state
        self._notify(sandbox_id)
        try:
            return await super().update_sandbox(sandbox_id, **values)
        finally:
            self._notify(sandbox_id)
