"""A draining node's paused sandboxes move to other nodes (docs/cluster.md, "Draining").

The draining node itself drives the moves of its sandboxes (``DrainMover``, one at a time):
it alone can keep its own requests off a sandbox while it moves (the sandbox's lock, held for
the whole move: a resume waits, a pause or delete gets 409), and it alone holds the files.
For each paused sandbox whose memory is on disk (paused by checkpoint; a frozen one's is in its
host's RAM and stays), it claims a move in the database (``atoll.cluster.handoff``), places the
sandbox like a create (placement takes only ``up`` nodes, so never a draining one) under a
provisional id, and asks the chosen node to receive it (``receive``, at the token-only internal
path ``POST /v1/internal/sandbox/{id}/receive``). The target copies the sandbox's disk layer and
memory image from the source (the same tar stream as a snapshot's files:
``snapshot_transfer``), and the snapshots its disk builds on, into a disk and a network slot of
its own, and then takes the sandbox over in one conditional write. Only then is the sandbox the
target's; the source, told so (or finding it so after a failed answer), removes its own copy
(files, disk, network slot, egress rules) without touching the row. A failed move leaves the
sandbox paused on the source (the target removes what it made) and is tried again later
(``handoff.RetryBook``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from atoll._exceptions import APIError, ConflictError, NodeUnreachable
from atoll._states import State
from atoll._tasks import cancel_and_wait
from atoll.cluster.handoff import MOVABLE_PAUSE, RETRY_AFTER_S, RetryBook, SandboxHandoff
from atoll.cluster.placement import PlacementRequest, Placer, provisional_id
from atoll.cluster.registry import DRAINING, NodeRegistry
from atoll.network import egress_trust
from atoll.runtime.base import checkpoint_complete
from atoll.server import snapshot_transfer, transitions
from atoll.server.cluster_auth import TOKEN_HEADER
from atoll.server.manager import SandboxManager
from atoll.server.snapshot_transfer import SnapshotSource
from atoll.server.snapshots import SnapshotService
from atoll.store.models import SandboxRow, utcnow
from atoll.store.observed import ObservedRepository

log = logging.getLogger("atoll.cluster")
TICK_S = 2.0  # how often a draining node looks for a paused sandbox to move
# one move's bound, the copy included (a sandbox's disk layer and memory image, on the
# cluster's network); past it the source gives up and the target's copy goes
MOVE_TIMEOUT_S = 900.0
CONNECT_TIMEOUT_S = 5.0
# what the source streams: the disk layer (the overlay's upper dir) and the memory image; the
# /etc files, egress rules and the runtime's bundle are made again by the target
ARCHIVED = ("disk/upper", "checkpoint")
# and, when it has one, the sandbox's own egress CA (TLS transforms): its processes restored from
# memory trust the CA they loaded before the move (Node reads NODE_EXTRA_CA_CERTS once), so
# the target's proxy must sign with the same one, not a CA of its own
ARCHIVED_IF_PRESENT = (egress_trust.CA_DIR,)


def archived(sandbox_dir: Path) -> tuple[str, ...]:
    """The members of a moving sandbox's directory the source streams."""
    return ARCHIVED + tuple(m for m in ARCHIVED_IF_PRESENT if (sandbox_dir / m).is_dir())


def archive_path(sandbox_id: str, move_id: str) -> str:
    return f"/v1/internal/sandbox/{sandbox_id}/archive?move_id={move_id}"


def receive_path(sandbox_id: str) -> str:
    return f"/v1/internal/sandbox/{sandbox_id}/receive"


@dataclass(frozen=True)
class MoveRequest:
    """What the source asks the target to receive (the body of the internal receive call)."""

    source_node: str
    source_address: str
    move_id: str


class DrainMover:
    """A node's background job: while the node is draining, its paused sandboxes move away."""

    def __init__(
        self,
        *,
        manager: SandboxManager,
        registry: NodeRegistry,
        placer: Placer,
        node_id: str,
        address: str,
        token: str,
        tick_s: float = TICK_S,
        retry_after_s: float = RETRY_AFTER_S,
    ) -> None:
        self.manager = manager
        self.registry = registry
        self.handoff = SandboxHandoff(manager.repo.sessions)
        self.placer = placer
        self.node_id = node_id
        self.address = address  # where the targets reach this node's internal paths
        self.token = token
        self.tick_s = tick_s
        self.retries = RetryBook(base_s=retry_after_s)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cleared = await self.handoff.clear_stale(self.node_id)
        if cleared:
            log.warning("%d moves this node had under way when it stopped were given up", cleared)
        self._task = asyncio.create_task(self._run_forever(), name="drain mover")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _run_forever(self) -> None:
        while True:
            try:
                await self.pass_once()
            except Exception:
                log.exception("moving a paused sandbox off this draining node failed")
            await asyncio.sleep(self.tick_s)

    async def pass_once(self) -> str | None:
        """Move one paused sandbox when the node is draining; the id of the one moved."""
        node = await self.registry.get(self.node_id)
        if node is None or node.state != DRAINING:
            return None
        rows = {row.id: row for row in await self.handoff.movable(self.node_id)}
        busy = [sandbox_id for sandbox_id in rows if self.manager.busy(sandbox_id)]
        chosen = self.retries.next_up(rows, utcnow(), busy)
        if chosen is None:
            return None
        try:
            moved_to = await self.move(rows[chosen])
        except Exception as exc:
            delay_s = self.retries.failed(chosen, utcnow())
            log.warning("sandbox %s stays on this node (retried in %.0f s): %s", chosen, delay_s, exc)
            return None
        self.retries.succeeded(chosen)
        if moved_to is None:
            return None
        log.info("sandbox %s moved to node %s", chosen, moved_to)
        return chosen

    async def move(self, row: SandboxRow) -> str | None:
        """Hand the paused sandbox to another node; the node it went to (None: it was no longer
        this node's paused sandbox). Raises when the move failed: the sandbox stays here."""
        manager = self.manager
        async with manager.transition(row.id):  # ConflictError: a transition of it is under way
            fresh = await manager.repo.get_sandbox(row.id)
            if fresh is None or fresh.node_id != self.node_id or fresh.state != State.PAUSED:
                return None
            if fresh.pause_kind != MOVABLE_PAUSE:
                return None
            move_id = await self.handoff.claim(fresh.id, self.node_id)
            if move_id is None:
                return None
            target = await self._hand_over(fresh, move_id)
            # the target holds the complete copy and the row names it: this copy goes
            try:
                removing = manager.host.teardown(fresh, keep_disk=False)
                await manager.bounded("removing the moved sandbox's copy", removing)
            except Exception:  # no record of this node names it: the start-up sweep removes it
                log.exception("sandbox %s moved to %s; removing its copy here failed", fresh.id, target)
        manager.forget(fresh.id)
        return target

    async def _hand_over(self, row: SandboxRow, move_id: str) -> str:
        """Placed on another node, which receives it; that node's id once the row names it."""
        pending = provisional_id()
        wanted = PlacementRequest(pending, row.org_id, row.template_name, row.vcpu, row.memory)
        try:
            placement = await self.placer.place(wanted)  # ClusterCapacityExhausted: no node has room
        except BaseException:
            await asyncio.shield(self.handoff.abandon(row.id, self.node_id, move_id))
            raise
        try:
            await self._ask(placement.address, placement.node_id, row.id, move_id)
        except BaseException as exc:  # failed, or no answer: the row says whether the target took it
            stays = await asyncio.shield(self.handoff.abandon(row.id, self.node_id, move_id))
            await asyncio.shield(self._settle(row.id, pending, taken=not stays))
            if stays or not isinstance(exc, Exception):
                raise
            log.warning("node %s took sandbox %s; its answer failed: %s", placement.node_id, row.id, exc)
            return placement.node_id
        await asyncio.shield(self._settle(row.id, pending, taken=True))
        return placement.node_id

    async def _settle(self, sandbox_id: str, pending: str, *, taken: bool) -> None:
        """The placement ledger after the move: the room the sandbox held here (none when it was
        made here directly) is given back and the target's kept under its id, or the target's
        given back."""
        if taken:
            await self.placer.transfer(pending, sandbox_id)
        else:
            await self.placer.release(pending)

    async def _ask(self, address: str, node_id: str, sandbox_id: str, move_id: str) -> None:
        body = {"source_node": self.node_id, "source_address": self.address, "move_id": move_id}
        timeout = httpx.Timeout(MOVE_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        try:
            async with httpx.AsyncClient(timeout=timeout) as http, asyncio.timeout(MOVE_TIMEOUT_S):
                answer = await http.post(
                    f"{address}{receive_path(sandbox_id)}", json=body, headers={TOKEN_HEADER: self.token}
                )
        except (httpx.HTTPError, TimeoutError) as exc:
            raise NodeUnreachable(f"node {node_id} did not receive the sandbox: {exc!r}") from exc
        if answer.status_code != 200:
            refusal = f"({answer.status_code}): {answer.text[:300]}"
            raise NodeUnreachable(f"node {node_id} refused the sandbox {refusal}")


async def receive(
    manager: SandboxManager,
    snapshots: SnapshotService,
    *,
    sandbox_id: str,
    node_id: str,
    token: str,
    request: MoveRequest,
    ensure_template: Callable[[str], Awaitable[None]] | None = None,
) -> SandboxRow:
    """The target's side: copy the sandbox from its source and take it over (paused, its
    network slot here). On any failure nothing of it stays here and the row is untouched.
    ``ensure_template`` copies an organisation's imported template here first when it is
    missing (``template_copies``, as a create does)."""
    handoff = SandboxHandoff(manager.repo.sessions)
    row = await handoff.claimed(sandbox_id, request.source_node, request.move_id)
    if row is None:
        raise ConflictError(f"no move of sandbox {sandbox_id} from node {request.source_node} is under way")
    host = manager.host
    if host.find_template(row) is None and ensure_template is not None and row.template_id:
        await ensure_template(row.template_id)  # 503 when no live node holds its files
    if host.find_template(row) is None:
        raise ConflictError(f"template {row.template_name!r} is not on this node")
    if not host.backend_for(row).can_checkpoint:
        raise ConflictError(f"runtime {row.runtime!r} cannot restore a checkpoint on this node")
    async with manager.transition(row.id):
        if host.sandbox_dir(row.id).exists():  # a copy of an earlier attempt still going away
            raise ConflictError(f"this node still holds a copy of sandbox {row.id}")
        # room on the data filesystem for its disk, as for a create (503 when there is none)
        room = manager.disk_budget.reserve(row.disk) if manager.disk_budget else contextlib.nullcontext()
        async with room:
            work = _receive(manager, snapshots, row, node_id, token, request)
            row = await manager.bounded("receiving the sandbox", work, timeout_s=MOVE_TIMEOUT_S)
    if isinstance(manager.repo, ObservedRepository):  # watchers and the dashboard see the new node
        manager.repo.changed(row.id)
    return row


async def _receive(
    manager: SandboxManager,
    snapshots: SnapshotService,
    row: SandboxRow,
    node_id: str,
    token: str,
    request: MoveRequest,
) -> SandboxRow:
    host = manager.host
    source = request.source_address
    if row.base_snapshot_id is not None:  # its disk builds on a snapshot's layers: those first
        base = await snapshots.repo.get_any(row.base_snapshot_id)
        if base is None:
            raise ConflictError(f"snapshot {row.base_snapshot_id} its disk builds on is gone")
        await snapshots.copy_from(SnapshotSource(source, token), base)
    slot = await host.pool.acquire()
    row.net_slot = slot.index  # so that a teardown gives the slot back
    try:
        await host.attach_disk(row)
        async with snapshot_transfer.client() as http:
            url = f"{source}{archive_path(row.id, request.move_id)}"
            await snapshot_transfer.unpack(http, url, token, host.sandbox_dir(row.id))
        if not checkpoint_complete(host.checkpoint_dir(row.id)):
            raise OSError("the sandbox's memory image arrived incomplete")
        row, recorded = await host.attach_network(row, slot)
        handoff = SandboxHandoff(manager.repo.sessions)
        taken = await handoff.take(
            row.id, source=request.source_node, target=node_id, move_id=request.move_id, **recorded
        )
        if not taken:
            raise ConflictError(f"the move of sandbox {row.id} was given up by node {request.source_node}")
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await asyncio.shield(host.teardown(row, keep_disk=False))
        if isinstance(exc, APIError) or not isinstance(exc, Exception):
            raise
        raise transitions.failure(f"receiving sandbox {row.id} failed", exc) from exc
    host.pool.refill()
    row.node_id = node_id
    return row
