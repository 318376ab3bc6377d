"""``GET /v1/sandbox/{id}/filesystem/watch`` (``spec/processes.md``): changes to a directory of a
sandbox, as an event stream.

The server watches the sandbox's root filesystem from the host, with inotify, on the overlay
mount that is the sandbox's root (``sandbox_dir/rootfs``). Every change lands there: a command's
inside an OCI sandbox (the container's root is that same mount), a command's inside a gVisor
sandbox (its gofer makes the change on that mount for the sentry), and the filesystem API's
(which works on that mount from the host). So one mechanism serves both backends and both kinds of
writer, and nothing runs in the sandbox for it. Directories are opened confined to the sandbox's
root (``confined.Root``, ``openat2`` with ``RESOLVE_IN_ROOT``) and watched through the descriptor
(``/proc/self/fd/N``), so a sandbox that swaps a directory for a symlink cannot make the server
watch a host directory.

Bounded: at most ``MAX_STREAMS_PER_SANDBOX`` streams per sandbox (``MAX_STREAMS`` on the host),
at most ``MAX_WATCHES_PER_SANDBOX`` watched directories per sandbox over all its streams, and the
events of one inotify read (``READ_BYTES``, at most ``MAX_PENDING`` translated events) held at a
time: the next read happens only once the client took those, so a slow client leaves its events
in the kernel's queue, and when that overflows (or a recursive watch reaches the cap) the client
gets an ``overflow`` event. A write to a file through the filesystem API replaces the file
(``replace.py``: a fresh ``.atoll-new-*`` name renamed over it): that shows as one ``write``.
The stream ends when the watched directory goes away, or the sandbox's root is unmounted (a pause
or a delete): the client watches again, which resumes a paused sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import posixpath
import stat
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from atoll._exceptions import BadRequestError, CapacityError
from atoll.runtime import confined
from atoll.runtime.confined import Root
from atoll.server.manager import SandboxManager
from atoll.server.process_frames import sse

MAX_STREAMS = 64  # inotify instances are a per-user resource of the host (fs.inotify.max_user_instances)
MAX_STREAMS_PER_SANDBOX = 8
MAX_WATCHES_PER_SANDBOX = 4096  # directories, over all the sandbox's streams
MAX_PENDING = 1024  # translated events of one read; more in one read is an overflow
READ_BYTES = 65536
KEEPALIVE_S = 15.0
_TEMPORARY_PREFIX = ".atoll-new-"  # replace.py's fresh names for a file being replaced

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
IN_ISDIR = 0x40000000
MASK = (
    IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_ONLYDIR
)
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, name length

_libc = ctypes.CDLL(None, use_errno=True)


def _inotify() -> int:
    fd = int(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


@dataclass(frozen=True)
class RawEvent:
    wd: int
    mask: int
    cookie: int
    name: str


def parse(data: bytes) -> Iterator[RawEvent]:
    """The events of one inotify read (the kernel returns whole events only)."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
        raw = data[offset + _HEADER.size : offset + _HEADER.size + length].split(b"\0", 1)[0]
        offset += _HEADER.size + length
        yield RawEvent(wd, mask, cookie, raw.decode("utf-8", "surrogateescape"))


@dataclass
class _Watch:
    """One stream's inotify instance and the sandbox directories it watches (wd -> path)."""

    fd: int
    sandbox_id: str
    recursive: bool
    paths: dict[int, str] = field(default_factory=dict)
    root_wd: int = -1  # the watched directory's own: when it goes, the stream ends
    capped: bool = False  # a directory was left unwatched: the per-sandbox cap

    def add(self, root: Root, path: str, counts: dict[str, int]) -> None:
        """Watch ``path`` (a sandbox directory), and with ``recursive`` the directories below."""
        todo = [path]
        while todo:
            current = todo.pop()
            if counts.get(self.sandbox_id, 0) >= MAX_WATCHES_PER_SANDBOX:
                self.capped = True
                return
            try:
                dir_fd = root.open_path(current, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                if current == path and not self.paths:
                    raise
                continue  # gone again meanwhile, or not ours to enter
            try:
                wd = _libc.inotify_add_watch(self.fd, f"/proc/self/fd/{dir_fd}".encode(), MASK)
                if wd < 0:
                    err = ctypes.get_errno()
                    if current == path and not self.paths:
                        raise OSError(err, os.strerror(err), current)
                    continue
                if wd not in self.paths:
                    counts[self.sandbox_id] = counts.get(self.sandbox_id, 0) + 1
                if self.root_wd < 0:
                    self.root_wd = wd
                self.paths[wd] = current
                if self.recursive:
                    with os.scandir(dir_fd) as entries:
                        todo += [
                            posixpath.join(current, e.name)
                            for e in entries
                            if e.is_dir(follow_symlinks=False)
                        ]
            finally:
                os.close(dir_fd)

    def forget(self, wd: int, counts: dict[str, int]) -> None:
        if self.paths.pop(wd, None) is not None:
            counts[self.sandbox_id] -= 1

    def moved(self, old: str, new: str) -> None:
        """A watched directory was renamed within the tree: its path and its subdirectories'."""
        for wd, path in list(self.paths.items()):
            if path == old or path.startswith(old + "/"):
                self.paths[wd] = new + path[len(old) :]

    def drop_below(self, old: str, counts: dict[str, int]) -> None:
        """A watched directory left the tree: stop watching it and its subdirectories."""
        for wd, path in list(self.paths.items()):
            if path == old or path.startswith(old + "/"):
                _libc.inotify_rm_watch(self.fd, wd)
                self.forget(wd, counts)


class WatchService:
    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self._streams: dict[str, int] = {}  # open streams, per sandbox
        self._watches: dict[str, int] = {}  # watched directories, per sandbox

    def open_streams(self) -> int:
        return sum(self._streams.values())

    async def open(self, org: str, sandbox_id: str, path: str, *, recursive: bool) -> AsyncIterator[bytes]:
        """The SSE body; bad input and a missing directory raise before it starts."""
        row = await self.manager.ensure_running(await self.manager.get(org, sandbox_id))
        workdir = self.manager.template_for(row).workdir or "/"
        target = confined.normalize(path, base=workdir)
        if self.open_streams() >= MAX_STREAMS or self._streams.get(row.id, 0) >= MAX_STREAMS_PER_SANDBOX:
            raise CapacityError("too many filesystem watches are open; close one and retry", retry_after=1)
        rootfs = str(self.manager.host.sandbox_dir(row.id) / "rootfs")
        try:
            watch = _Watch(_inotify(), row.id, recursive)
        except OSError as exc:  # the host's inotify instances (or descriptors) are used up
            raise CapacityError(f"cannot watch now: {exc.strerror}", retry_after=1) from None
        try:
            await asyncio.to_thread(self._start, watch, rootfs, target)
        except BaseException:
            self._close(watch)
            raise
        self._streams[row.id] = self._streams.get(row.id, 0) + 1
        return self._relay(watch, rootfs)

    def _start(self, watch: _Watch, rootfs: str, target: str) -> None:
        with Root.open(rootfs) as root, confined.mapped(target):
            info = root.stat(target)
            if not stat.S_ISDIR(info.st_mode):
                raise BadRequestError(
                    "invalid watch", errors=[{"field": "path", "error": "not a directory: watch a directory"}]
                )
            watch.add(root, target, self._watches)

    def _close(self, watch: _Watch) -> None:
        for wd in list(watch.paths):
            watch.forget(wd, self._watches)
        if not self._watches.get(watch.sandbox_id):
            self._watches.pop(watch.sandbox_id, None)
        os.close(watch.fd)

    async def _relay(self, watch: _Watch, rootfs: str) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(watch.fd, readable.set)
        try:
            if watch.capped:
                yield sse({"type": "overflow"})
            while watch.root_wd in watch.paths:
                try:
                    await asyncio.wait_for(readable.wait(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                readable.clear()
                try:
                    data = os.read(watch.fd, READ_BYTES)
                except BlockingIOError:
                    continue
                events, new_dirs = self._translate(watch, list(parse(data)))
                if new_dirs and watch.recursive:
                    capped = watch.capped
                    await asyncio.to_thread(self._add_dirs, watch, rootfs, new_dirs)
                    if watch.capped and not capped:
                        events.append({"type": "overflow"})
                for event in events:
                    yield sse(event)
        finally:
            loop.remove_reader(watch.fd)
            self._close(watch)
            self._streams[watch.sandbox_id] -= 1
            if not self._streams[watch.sandbox_id]:
                del self._streams[watch.sandbox_id]

    def _add_dirs(self, watch: _Watch, rootfs: str, paths: list[str]) -> None:
        try:
            root = Root.open(rootfs)
        except Exception:  # unmounted meanwhile (pause, delete): the stream ends by itself
            return
        with root:
            for path in paths:
                with contextlib.suppress(OSError):
                    watch.add(root, path, self._watches)

    def _translate(self, watch: _Watch, raw: list[RawEvent]) -> tuple[list[dict[str, Any]], list[str]]:
        """Wire events of one read, and the new directories a recursive watch must add."""
        events: list[dict[str, Any]] = []
        new_dirs: list[str] = []
        moved_from: dict[int, tuple[str, bool]] = {}  # cookie -> (path, is_dir)
        overflow = False

        def emit(kind: str, path: str, is_dir: bool, **extra: Any) -> None:
            nonlocal overflow
            event = {"type": kind, "path": path, "is_dir": is_dir, **extra}
            if events and events[-1] == event:
                return  # a run of writes to one file (each write(2) is an event): one is enough
            if len(events) >= MAX_PENDING:
                overflow = True
                return
            events.append(event)

        for ev in raw:
            if ev.mask & IN_Q_OVERFLOW:
                overflow = True
                continue
            base = watch.paths.get(ev.wd)
            if base is None:
                continue
            if ev.mask & (IN_IGNORED | IN_UNMOUNT):
                watch.forget(ev.wd, self._watches)
                continue
            is_dir = bool(ev.mask & IN_ISDIR)
            path = posixpath.join(base, ev.name) if ev.name else base
            temporary = ev.name.startswith(_TEMPORARY_PREFIX)
            if ev.mask & IN_DELETE_SELF:
                if ev.wd == watch.root_wd:  # (a subdirectory's removal was its parent's event)
                    emit("remove", path, True)
                continue
            if ev.mask & IN_CREATE:
                if not temporary:
                    emit("create", path, is_dir)
                if is_dir:
                    new_dirs.append(path)
            elif ev.mask & IN_MODIFY:
                if not temporary:
                    emit("write", path, is_dir)
            elif ev.mask & IN_ATTRIB:
                if not temporary:
                    emit("chmod", path, is_dir)
            elif ev.mask & IN_DELETE:
                if not temporary:
                    emit("remove", path, is_dir)
            elif ev.mask & IN_MOVED_FROM:
                moved_from[ev.cookie] = (path, is_dir)
            elif ev.mask & IN_MOVED_TO:
                source = moved_from.pop(ev.cookie, None)
                if source is not None and posixpath.basename(source[0]).startswith(_TEMPORARY_PREFIX):
                    emit("write", path, is_dir)  # the filesystem API replaced the file
                elif source is not None:
                    emit("rename", source[0], is_dir, new_path=path)
                    if is_dir:
                        watch.moved(source[0], path)
                else:
                    emit("create", path, is_dir)  # moved in from elsewhere
                    if is_dir:
                        new_dirs.append(path)
        for path, is_dir in moved_from.values():  # moved out of the watched tree
            if not posixpath.basename(path).startswith(_TEMPORARY_PREFIX):
                emit("rename", path, is_dir)
            if is_dir:
                watch.drop_below(path, self._watches)
        if overflow:
            events.append({"type": "overflow"})
        return events, new_dirs
