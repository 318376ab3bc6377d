"""Directory trees from one node to another (docs/cluster.md), one way for everything the
cluster moves: a snapshot's files for a restore on another node, and a paused sandbox's disk
layer and memory image for its move off a draining node (``atoll.server.sandbox_move``). The
node holding them streams them as a tar archive (``archive``) from a token-only internal path,
and the receiving node unpacks the stream (``unpack``): a snapshot under a temporary name renamed
into place once complete (``fetch``), so a half-copied snapshot is never restored from (and a
restart's sweep removes one a crash left: no record has its name). Numeric owners and extended
attributes travel along: the disk layer's files keep the ids seen inside the sandbox and
overlayfs' own attributes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from atoll._exceptions import NodeUnreachable
from atoll.runtime.trees import remove_host_tree
from atoll.server.cluster_auth import TOKEN_HEADER

log = logging.getLogger("atoll.snapshots")
TAR_FLAGS = ("--numeric-owner", "--xattrs", "--xattrs-include=*", "--sparse")
CHUNK_BYTES = 1024 * 1024
INCOMING_PREFIX = ".incoming-"  # not a snapshot id: the store's sweep removes what it finds


@dataclass(frozen=True)
class SnapshotSource:
    """Where a snapshot's files are, for a node that has none (a restore moved off its node)."""

    address: str  # the holding node's API
    token: str  # the cluster's token


def client() -> httpx.AsyncClient:
    # no read timeout: a large snapshot streams for as long as it takes; connecting is quick
    return httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0))


async def drop_copies(addresses: list[str], token: str, snapshot_id: str) -> None:
    """Ask each node to drop its copy of a deleted snapshot; one that does not answer removes
    it at its next start (the store's sweep: no record has it any more)."""
    async with client() as http:
        for address in addresses:
            try:
                await http.delete(
                    f"{address}/v1/internal/snapshot/{snapshot_id}/copy", headers={TOKEN_HEADER: token}
                )
            except httpx.HTTPError as exc:
                log.warning("node at %s did not drop its copy of snapshot %s: %s", address, snapshot_id, exc)


def archive_path(snapshot_id: str) -> str:
    return f"/v1/internal/snapshot/{snapshot_id}/archive"


async def _tar(directory: Path, *args: str, reading: bool) -> asyncio.subprocess.Process:
    """tar on ``directory``, its archive on stdout (``reading``: the directory read) or stdin."""
    pipe, none = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
    return await asyncio.create_subprocess_exec(
        "tar", "-C", str(directory), *TAR_FLAGS, *args,
        stdin=none if reading else pipe, stdout=pipe if reading else none, stderr=none,
    )  # fmt: skip


async def archive(directory: Path, members: tuple[str, ...] = (".",)) -> AsyncIterator[bytes]:
    """``members`` of the directory (all of it by default) as a tar stream. A failure half-way
    raises, so that the server cuts the connection and the receiving node sees an incomplete
    copy, never a complete-looking one."""
    proc = await _tar(directory, "-cf", "-", "--", *members, reading=True)
    assert proc.stdout is not None
    try:
        while chunk := await proc.stdout.read(CHUNK_BYTES):
            yield chunk
        if await proc.wait() != 0:
            raise OSError(f"tar of {directory} exited {proc.returncode}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def fetch(client: httpx.AsyncClient, source: str, token: str, snapshot_id: str, root: Path) -> None:
    """``root/snapshot_id`` copied from the node at ``source`` (nothing when it is here already);
    ``NodeUnreachable`` when the copy fails, and nothing of it stays."""
    await fetch_tree(client, f"{source}{archive_path(snapshot_id)}", token, root / snapshot_id, "snapshot")


async def fetch_tree(client: httpx.AsyncClient, url: str, token: str, target: Path, what: str) -> None:
    """The archive at ``url`` unpacked as ``target`` (nothing when it exists already): under a
    temporary name beside it, renamed into place once complete (a snapshot's files, an imported
    template's: ``atoll.server.template_copies``). ``NodeUnreachable`` when the copy fails, and
    nothing of it stays; a sweep of ``target``'s parent removes what a crash left (the prefix)."""
    if target.exists():
        return
    root = target.parent
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    incoming = root / f"{INCOMING_PREFIX}{target.name}-{secrets.token_hex(4)}"
    incoming.mkdir(mode=0o700)
    try:
        await unpack(client, url, token, incoming)
        try:
            os.rename(incoming, target)
        except OSError:
            if not target.exists():  # another copy got there first: use that one
                raise
    except (OSError, httpx.HTTPError) as exc:
        raise NodeUnreachable(f"copying {what} {target.name} from {url} failed: {exc}") from exc
    finally:
        if incoming.exists():
            await asyncio.to_thread(remove_host_tree, incoming)


async def unpack(client: httpx.AsyncClient, url: str, token: str, into: Path) -> None:
    """The archive at ``url`` (another node's internal path) unpacked into ``into``; OSError or
    ``httpx.HTTPError`` when it is not complete (``into`` then holds part of it: the caller's)."""
    proc = await _tar(into, "--same-permissions", "-xf", "-", reading=False)
    assert proc.stdin is not None
    try:
        async with client.stream("GET", url, headers={TOKEN_HEADER: token}) as answer:
            if answer.status_code != 200:
                raise OSError(f"the node answered {answer.status_code}")
            async for chunk in answer.aiter_raw():
                proc.stdin.write(chunk)
                await proc.stdin.drain()
        proc.stdin.close()
        if await proc.wait() != 0:
            raise OSError(f"unpacking with tar failed (exit {proc.returncode})")
    finally:
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
