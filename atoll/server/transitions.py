"""When a transition fails or takes too long (issue 15: no transitional state outlives its
operation).

Each transition's work runs under a timeout (``bounded``: ``Settings.transition_timeout_s``, a
snapshot's ``snapshot_timeout_s``); past it the work is cancelled, which kills the commands it
runs. The sandbox then falls back through the state table (``fall_back``: the ``failed`` event,
its processes removed, its disk kept, the reason recorded as ``state_reason``). A sandbox that
cannot even be cleaned up or resumed is quarantined (``quarantine``): ``failed``, which accepts
only delete and start (see ``atoll._states``)."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from atoll._exceptions import APIError, CapacityError, ServerError
from atoll._states import Event
from atoll.store.models import SandboxRow

if TYPE_CHECKING:
    from atoll.server.manager import SandboxManager

log = logging.getLogger("atoll.manager")
T = TypeVar("T")


async def bounded(what: str, work: Awaitable[T], *, timeout_s: float) -> T:
    """``work`` within ``timeout_s``; past it the work is cancelled and a 504 names what timed out."""
    scope = asyncio.timeout(timeout_s)
    try:
        async with scope:
            return await work
    except Exception as exc:  # cut short, the work may also end in an error of its own
        if not scope.expired():
            raise
        raise ServerError(f"{what} timed out after {timeout_s:g} s", status_code=504) from exc


def timed_out(exc: BaseException) -> bool:
    return isinstance(exc, APIError) and exc.status_code == 504


NO_SPACE_RETRY_AFTER_S = 30.0


def out_of_space(exc: BaseException) -> bool:
    """An ENOSPC anywhere in the chain: the data filesystem filled between admission and the
    work (``disk_budget`` admits against a figure that can go stale)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def failure(what: str, exc: BaseException) -> ServerError:
    """What a failed transition answers: 504 when it timed out (``bounded``), 503 with a
    Retry-After when the host ran out of space, else 500."""
    if out_of_space(exc):
        return CapacityError(
            f"{what}: the host has no disk space left for it", retry_after=NO_SPACE_RETRY_AFTER_S
        )
    return ServerError(f"{what}: {exc}", status_code=504 if timed_out(exc) else None)


async def fall_back(manager: SandboxManager, row: SandboxRow, reason: str) -> SandboxRow:
    """A transition failed or timed out: its processes go (its disk stays) and it takes the
    ``failed`` event back to a resting state, with the reason. When even that clean-up fails, it
    is quarantined."""
    try:
        await manager.bounded("cleaning up", manager.host.teardown(row, keep_disk=True))
    except Exception as exc:
        return await quarantine(manager, row, f"{reason}; cleaning up failed: {exc}", clean_up=False)
    return await manager.move(
        row, Event.FAILED, reason=reason, net_slot=None, timeout_at=None, pause_kind=None
    )


async def quarantine(
    manager: SandboxManager, row: SandboxRow, reason: str, *, clean_up: bool = True
) -> SandboxRow:
    """Could not be repaired: its processes are removed (``clean_up``: tried once more), its disk
    kept for inspection, and the record ``failed`` with the reason; only delete or start (over
    the kept disk) follow. Until a clean-up succeeds its network slot stays recorded, so that
    delete or start releases it."""
    log.error("sandbox %s failed (disk kept): %s", row.id, reason)
    cleaned = False
    if clean_up:
        try:
            await manager.bounded("removing its processes", manager.host.teardown(row, keep_disk=True))
            cleaned = True
        except Exception:
            log.exception("sandbox %s: teardown during quarantine failed", row.id)
    slot = {"net_slot": None} if cleaned else {}
    return await manager.move(row, Event.QUARANTINE, reason=reason, timeout_at=None, pause_kind=None, **slot)


async def undo_pause(manager: SandboxManager, row: SandboxRow, reason: str) -> None:
    """A pause timed out (it has no state of its own: the sandbox is still ``running``): resumed
    and its image removed, with the reason; one that cannot be resumed is quarantined."""
    try:
        await manager.bounded("resuming after the pause", manager.host.thaw(row))
    except Exception as exc:
        await quarantine(manager, row, f"{reason}; it could not be resumed: {exc}")
        return
    await asyncio.to_thread(manager.host.discard_checkpoint, row.id)
    await manager.repo.update_sandbox(row.id, state_reason=reason[:500])  # running, but says why
