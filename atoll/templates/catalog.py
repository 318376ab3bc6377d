"""Each organisation's imported templates: the ``templates`` table (names, sources, image config)
next to the id-keyed root filesystems on disk (``TemplateRegistry.user_root``).

A name is reserved by inserting its row in state ``importing`` before the (slow) pull starts, so
two concurrent imports of one name cannot both win; the row turns ``ready`` only once the root
filesystem is in place. Deleting a template a sandbox still uses (running, paused or stopped:
a stopped one restarts from it) or a snapshot was taken from (a restore boots it) is refused
with 409, so a template's layer is never pulled from under anyone and deletion is immediate and
complete when it succeeds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import shutil
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atoll._exceptions import TemplateConflict, TemplateNotFound
from atoll._states import State
from atoll.store.models import SandboxRow, SnapshotRow, TemplateRow, utcnow
from atoll.templates.registry import TemplateRegistry

log = logging.getLogger("atoll.templates")
IMPORTING = "importing"
READY = "ready"
Hook = Callable[[str], Awaitable[None]]  # template id -> done


def new_template_id() -> str:
    return "tpl-" + secrets.token_hex(8)


class TemplateCatalog:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        registry: TemplateRegistry,
        *,
        max_per_org: int | None,
    ) -> None:
        assert registry.user_root is not None, "imported templates need the registry's user_root"
        self.sessions = sessions
        self.registry = registry
        self.max_per_org = max_per_org
        registry.lookup = self.id_for
        # in a cluster (docs/cluster.md, Templates): a finished import is announced at once (the
        # node's heartbeat), and a deleted template's copies on other nodes are dropped
        self.on_ready: Hook | None = None
        self.on_deleted: Hook | None = None

    async def id_for(self, org_id: str, name: str) -> str | None:
        async with self.sessions() as s:
            found = await s.scalar(
                select(TemplateRow.id).where(
                    TemplateRow.org_id == org_id, TemplateRow.name == name, TemplateRow.state == READY
                )
            )
        return str(found) if found is not None else None

    async def is_ready(self, template_id: str) -> bool:
        """Whether the template exists, imported (any organisation's: the cluster's own calls)."""
        async with self.sessions() as s:
            state = await s.scalar(select(TemplateRow.state).where(TemplateRow.id == template_id))
        return state == READY

    async def get(self, org_id: str, template_id: str) -> TemplateRow:
        async with self.sessions() as s:
            row = await s.get(TemplateRow, template_id)
        if row is None or row.org_id != org_id or row.state != READY:
            raise TemplateNotFound(f"template {template_id!r} not found")
        return row

    async def of_org(self, org_id: str) -> Sequence[TemplateRow]:
        async with self.sessions() as s:
            query = select(TemplateRow).where(TemplateRow.org_id == org_id).order_by(TemplateRow.created_at)
            return (await s.scalars(query)).all()

    async def reserve(self, org_id: str, name: str, uri: str) -> TemplateRow:
        """Claim ``name`` for an import; 409 for a name in use or at the organisation's limit."""
        row = TemplateRow(id=new_template_id(), org_id=org_id, name=name, uri=uri, state=IMPORTING)
        try:
            async with self.sessions.begin() as s:
                if self.max_per_org is not None:
                    count = await s.scalar(
                        select(func.count()).select_from(TemplateRow).where(TemplateRow.org_id == org_id)
                    )
                    if int(count or 0) >= self.max_per_org:
                        raise TemplateConflict(
                            f"organisation limit reached: at most {self.max_per_org} templates"
                        )
                s.add(row)
        except IntegrityError:
            raise TemplateConflict(f"a template named {name!r} already exists") from None
        return row

    async def finish(self, template_id: str, *, digest: str, image_config: dict[str, Any]) -> TemplateRow:
        async with self.sessions.begin() as s:
            await s.execute(
                update(TemplateRow)
                .where(TemplateRow.id == template_id)
                .values(state=READY, digest=digest, image_config=image_config)
            )
            row = await s.get(TemplateRow, template_id)
            assert row is not None
        await self._announce(self.on_ready, template_id, "announcing")
        return row

    @staticmethod
    async def _announce(hook: Hook | None, template_id: str, what: str) -> None:
        if hook is None:
            return
        try:
            await hook(template_id)
        except Exception:  # the template is done here: the rest of the cluster learns it later
            log.exception("%s template %s to the cluster failed", what, template_id)

    async def discard(self, template_id: str) -> None:
        async with self.sessions.begin() as s:
            await s.execute(delete(TemplateRow).where(TemplateRow.id == template_id))
        await self._remove_files(template_id)

    async def rename(self, org_id: str, template_id: str, name: str) -> None:
        await self.get(org_id, template_id)
        try:
            async with self.sessions.begin() as s:
                await s.execute(update(TemplateRow).where(TemplateRow.id == template_id).values(name=name))
        except IntegrityError:
            raise TemplateConflict(f"a template named {name!r} already exists") from None

    async def users(self, template_id: str) -> list[str]:
        """Sandboxes and snapshots that still need the template's layer."""
        async with self.sessions() as s:
            sandboxes = select(SandboxRow.id).where(
                SandboxRow.template_id == template_id, SandboxRow.state != State.DELETED
            )
            snapshots = select(SnapshotRow.name).where(SnapshotRow.template_id == template_id)
            found = [*(await s.scalars(sandboxes)).all(), *(await s.scalars(snapshots)).all()]
            return [str(i) for i in found]

    async def delete(self, org_id: str, template_id: str) -> None:
        await self.get(org_id, template_id)
        users = await self.users(template_id)
        if users:
            shown = ", ".join(users[:5]) + (" …" if len(users) > 5 else "")
            raise TemplateConflict(f"template is in use by {len(users)} sandbox(es) or snapshot(s): {shown}")
        async with self.sessions.begin() as s:
            await s.execute(delete(TemplateRow).where(TemplateRow.id == template_id))
        await self._remove_files(template_id)
        await self._announce(self.on_deleted, template_id, "dropping the copies of")

    async def _remove_files(self, template_id: str) -> None:
        assert self.registry.user_root is not None
        for suffix in ("", ".importing"):
            path = self.registry.user_root / (template_id + suffix)
            await asyncio.to_thread(shutil.rmtree, path, True)

    async def recover(self, *, shared_after_s: float | None = None) -> None:
        """At start-up: imports a crash interrupted are dropped, and so are files no row owns.
        ``shared_after_s``: the database is a cluster's, whose other nodes may be importing now,
        so only this host's interrupted imports (their ``.importing`` directory is here) and
        those older than that are dropped; None: one host, every import was this process's."""
        assert self.registry.user_root is not None
        importing = select(TemplateRow.id).where(TemplateRow.state == IMPORTING)
        async with self.sessions.begin() as s:
            stale = list((await s.scalars(importing)).all())
            if shared_after_s is not None:
                since = await s.scalars(
                    importing.where(TemplateRow.created_at < utcnow() - dt.timedelta(seconds=shared_after_s))
                )
                old = set(since.all())
                here = self.registry.user_root
                stale = [i for i in stale if i in old or (here / f"{i}.importing").exists()]
            if stale:
                await s.execute(delete(TemplateRow).where(TemplateRow.id.in_(stale)))
            known = set((await s.scalars(select(TemplateRow.id))).all())
        for template_id in stale:
            await self._remove_files(template_id)
        assert self.registry.user_root is not None
        for entry in self.registry.user_root.iterdir():
            if entry.name.removesuffix(".importing") not in known:
                log.warning("removing template files no catalog entry owns: %s", entry)
                await asyncio.to_thread(shutil.rmtree, entry, True)
