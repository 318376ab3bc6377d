"""An organisation's imported templates on every node of a cluster (docs/cluster.md, Templates).

A template is imported on one node (an API replica forwards the import there:
``atoll.cluster.template_homes``); its row is in the shared database and its files on that
node's disk. A create on a node without them first copies them (``TemplateCopies.ensure``, the
registry's ``fetch`` hook) from a live node whose heartbeat lists the template's id: the
token-only internal path streams the directory as a tar archive, unpacked under a temporary
name and renamed into place once complete (``snapshot_transfer.fetch_tree``: the same piece as a
snapshot's files). Bounds: one copy of a template at a time on a node (the others wait for it
and use it), at most the node's import slots copying at once, ``template_import_timeout_s`` per
copy, and the copy's size admitted against the data disk as a new sandbox disk is. Deleting the
template asks every live node to drop its copy (``dropper``); a node that was down sweeps it at
its next start (``TemplateCatalog.recover``: files no row owns)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx

from atoll._exceptions import NodeUnreachable, NotFoundError
from atoll.cluster.heartbeat import Heartbeat
from atoll.cluster.registry import ALIVE, NodeRegistry
from atoll.cluster.template_homes import holders
from atoll.runtime.trees import remove_host_tree
from atoll.server import snapshot_transfer
from atoll.server.cluster_auth import TOKEN_HEADER
from atoll.server.disk_budget import DiskBudget
from atoll.server.settings import Settings
from atoll.store.db import is_postgresql
from atoll.templates.catalog import Hook, TemplateCatalog
from atoll.templates.registry import TemplateRegistry

log = logging.getLogger("atoll.templates")
TEMPLATE_ID = re.compile(r"tpl-[0-9a-f]{16}")
SIZE_TIMEOUT_S = 60.0  # the holder walks the template's tree to size it
STALE_MARGIN_S = 600.0  # an import older than its timeout by this much is dead, wherever it ran


class KeyedLocks:
    """One lock per key, kept only while someone holds or waits for it (so the map is bounded
    by the copies under way, not by every template ever copied)."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._held)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._held.get(key, (asyncio.Lock(), 0))
        self._held[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._held[key]
            if users == 1:
                del self._held[key]
            else:
                self._held[key] = (lock, users - 1)


def archive_path(template_id: str) -> str:
    return f"/v1/internal/template/{template_id}/archive"


def size_path(template_id: str) -> str:
    return f"/v1/internal/template/{template_id}"


class TemplateCopies:
    """This node's side: copy a template's files here when a create needs them, serve its own to
    other nodes, drop a copy whose template was deleted."""

    def __init__(
        self,
        *,
        registry: NodeRegistry,
        node_id: str,
        token: str,
        templates: TemplateRegistry,
        catalog: TemplateCatalog,
        disk_budget: DiskBudget,
        slots: asyncio.Semaphore,
        timeout_s: float,
        announce: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        assert templates.user_root is not None
        self.registry = registry
        self.node_id = node_id
        self.token = token
        self.templates = templates
        self.catalog = catalog
        self.disk_budget = disk_budget
        self.slots = slots  # shared with imports: pulls and copies at once on this node
        self.timeout_s = timeout_s
        self.announce = announce  # a heartbeat now, so that other nodes may copy from this one
        self.locks = KeyedLocks()
        self.user_root: Path = templates.user_root

    async def ensure(self, template_id: str) -> None:
        """The template's files here: copied from a live node that holds them unless they are
        here already (or another create's copy of it finished meanwhile). 503 (NodeUnreachable,
        ``Retry-After``) when no live node holds them or every copy failed; nothing half-copied
        stays either way. Nothing for a system template's id: each host builds its own."""
        if not TEMPLATE_ID.fullmatch(template_id):
            return
        async with self.locks.hold(template_id):
            if self.templates.by_id(template_id) is not None:
                return
            sources = holders(await self.registry.nodes(), template_id, own_id=self.node_id)
            if not sources:
                raise NodeUnreachable(
                    f"template {template_id}'s files are on no live node of the cluster (the node "
                    "that imported it, and any that copied it, are down or gone); retry later"
                )
            failure: NodeUnreachable | None = None
            async with self.slots:
                for node in sources:
                    try:
                        await self._copy(template_id, node.id, node.address)
                    except NodeUnreachable as exc:
                        log.warning("%s", exc)
                        failure = exc
                        continue
                    log.info("copied template %s from node %s", template_id, node.id)
                    await self._announce()
                    return
            assert failure is not None
            raise failure

    async def _copy(self, template_id: str, node_id: str, address: str) -> None:
        target = self.user_root / template_id
        headers = {TOKEN_HEADER: self.token}
        async with snapshot_transfer.client() as http:
            url = f"{address}{size_path(template_id)}"
            try:
                sized = await http.get(url, headers=headers, timeout=SIZE_TIMEOUT_S)
            except httpx.HTTPError as exc:
                raise NodeUnreachable(f"node {node_id} did not size template {template_id}: {exc}") from exc
            if sized.status_code != 200:
                raise NodeUnreachable(f"node {node_id} answered {sized.status_code} sizing {template_id}")
            size = int(sized.json()["bytes"])
            # admitted as a new sandbox disk is (CapacityError: 503 with Retry-After)
            async with self.disk_budget.reserve_room(size):
                try:
                    async with asyncio.timeout(self.timeout_s):
                        await snapshot_transfer.fetch_tree(
                            http, f"{address}{archive_path(template_id)}", self.token, target, "template"
                        )
                except TimeoutError:
                    raise NodeUnreachable(
                        f"copying template {template_id} from node {node_id} took over {self.timeout_s:.0f} s"
                    ) from None

    async def _announce(self) -> None:
        if self.announce is None:
            return
        try:
            await self.announce()
        except Exception:  # the next regular heartbeat reports it
            log.exception("heartbeat after copying a template failed")

    async def served(self, template_id: str) -> Path:
        """This node's complete files of a ready template, for another node to copy."""
        if not TEMPLATE_ID.fullmatch(template_id) or self.templates.by_id(template_id) is None:
            raise NotFoundError("template not found on this node")
        if not await self.catalog.is_ready(template_id):
            raise NotFoundError("template not found")
        return self.user_root / template_id

    async def drop(self, template_id: str) -> None:
        """The template was deleted: this node's copy goes too (only if its row is gone: never a
        live template's files). Waits for a copy of it under way here."""
        if not TEMPLATE_ID.fullmatch(template_id):
            raise NotFoundError("template not found")
        async with self.locks.hold(template_id):
            if await self.catalog.is_ready(template_id):
                return
            directory = self.user_root / template_id
            if directory.exists():
                await asyncio.to_thread(remove_host_tree, directory)
                log.info("dropped the copy of deleted template %s", template_id)


def dropper(registry: NodeRegistry, token: str, own_id: str | None) -> Hook:
    """What a process does after deleting a template: every other live node drops its copy; one
    that does not answer sweeps it at its next start (no row owns it any more)."""

    async def drop(template_id: str) -> None:
        others = [n for n in await registry.nodes() if n.id != own_id and n.state in ALIVE]
        async with snapshot_transfer.client() as http:
            for node in others:
                try:
                    answer = await http.delete(
                        f"{node.address}/v1/internal/template/{template_id}/copy",
                        headers={TOKEN_HEADER: token},
                        timeout=SIZE_TIMEOUT_S,
                    )
                    if answer.status_code != 204:
                        what = "node %s answered %s to dropping template %s"
                        log.warning(what, node.id, answer.status_code, template_id)
                except httpx.HTTPError as exc:
                    log.warning("node %s did not drop its copy of template %s: %s", node.id, template_id, exc)

    return drop


async def no_token(template_id: str) -> None:
    """A cluster node without the cluster token cannot copy a template imported elsewhere."""
    raise NodeUnreachable(
        f"template {template_id} was imported on another node; copying it here needs the cluster "
        "token (ATOLL_CLUSTER_TOKEN) on every process"
    )


def stale_import_after_s(settings: Settings) -> float | None:
    """How old another process's unfinished import must be for a starting process to drop it
    (``TemplateCatalog.recover``): on one host (SQLite) every one is this process's own."""
    return settings.template_import_timeout_s + STALE_MARGIN_S if is_postgresql(settings.db_url) else None


def join(
    settings: Settings,
    *,
    registry: NodeRegistry | None,
    node_id: str | None,
    heartbeat: Heartbeat | None,
    templates: TemplateRegistry,
    catalog: TemplateCatalog,
    disk_budget: DiskBudget,
    slots: asyncio.Semaphore,
) -> TemplateCopies | None:
    """This process's templates in its cluster: a delete drops every node's copy, a finished
    import or copy is heartbeated at once, and a node copies what it lacks. The node's copier;
    None on an API replica (it holds no template files) and on one host."""
    token = settings.cluster_token
    if registry is None or node_id is None:
        return None
    if token is not None:
        catalog.on_deleted = dropper(registry, token, node_id)
    if settings.role == "api":
        return None
    announce = heartbeat.beat if heartbeat is not None else None
    if announce is not None:
        beat = announce
        catalog.on_ready = lambda _template_id: beat()
    if token is None:
        templates.fetch = no_token
        return None
    copies = TemplateCopies(
        registry=registry, node_id=node_id, token=token, templates=templates, catalog=catalog,
        disk_budget=disk_budget, slots=slots, timeout_s=settings.template_import_timeout_s, announce=announce,
    )  # fmt: skip
    templates.fetch = copies.ensure
    return copies
