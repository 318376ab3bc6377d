"""``filesystem/watch`` (spec/processes.md): create, write, rename, remove and chmod, made by a
command inside the sandbox and through the filesystem API, each reaching the watcher within 1 s;
recursive watches follow new directories; bad paths are 400/404; a watch ends when its
directory goes. Real server, real sandboxes, both backends."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

import atoll
from atoll.sdk._sse import SSEDecoder
from tests._support import api
from tests._support.server import ServerProcess

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]
WITHIN_S = 1.0


class Watcher:
    """A watch stream read in a thread: its events, with their arrival times, in a queue."""

    def __init__(self, server: ServerProcess, sid: str, path: str, *, recursive: bool = False) -> None:
        self.events: queue.Queue[tuple[float, dict[str, Any] | None]] = queue.Queue()
        self._client = httpx.Client(base_url=server.base_url, headers=server.headers, timeout=60)
        params = {"path": path, "recursive": str(recursive).lower()}
        self._response = self._client.send(
            self._client.build_request("GET", f"/v1/sandbox/{sid}/filesystem/watch", params=params),
            stream=True,
        )
        assert self._response.status_code == 200, self._response.read()
        assert self._response.headers["content-type"].startswith("text/event-stream")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        decoder = SSEDecoder()
        try:
            for chunk in self._response.iter_raw():
                for data in decoder.feed(chunk):
                    self.events.put((time.monotonic(), json.loads(data)))
        except httpx.HTTPError:
            pass
        self.events.put((time.monotonic(), None))  # the stream ended

    def expect(self, wanted: Callable[[dict[str, Any]], bool], after: float) -> dict[str, Any]:
        """The first event ``wanted`` accepts, which must arrive within 1 s of ``after``."""
        seen: list[dict[str, Any]] = []
        while True:
            try:
                at, event = self.events.get(timeout=max(0.0, after + WITHIN_S - time.monotonic()) + 0.05)
            except queue.Empty:
                raise AssertionError(f"not seen within {WITHIN_S}s; saw {seen}") from None
            assert event is not None, f"the stream ended; saw {seen}"
            seen.append(event)
            if wanted(event):
                assert at - after <= WITHIN_S, (at - after, event)
                return event

    def ended(self, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                _, event = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if event is None:
                return True
        return False

    def close(self) -> None:
        # Closing the response from this thread does not wake the reader blocked in recv() (on
        # Linux a socket closed by another thread keeps its recv waiting, here for the server's
        # next keep-alive): shut the socket down first, which ends that recv with EOF at once.
        stream = self._response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)
        self._response.close()
        self._client.close()


def is_(kind: str, path: str, **extra: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["type"] == kind and e["path"] == path and all(e.get(k) == v for k, v in extra.items())


def run_at(http: httpx.Client, sid: str, command: str) -> float:
    """Run ``command``; the time it had certainly finished by."""
    result = api.run(http, sid, command)
    assert result["exit_code"] == 0, result
    return time.monotonic()


def test_changes_made_by_a_command_are_seen_within_a_second(
    http: httpx.Client, server: ServerProcess, sandbox: str
) -> None:
    run_at(http, sandbox, "mkdir -p /tmp/wcmd")
    watcher = Watcher(server, sandbox, "/tmp/wcmd")
    try:
        done = run_at(http, sandbox, "echo one > /tmp/wcmd/a")
        assert watcher.expect(is_("create", "/tmp/wcmd/a"), done)["is_dir"] is False
        watcher.expect(is_("write", "/tmp/wcmd/a"), done)
        done = run_at(http, sandbox, "echo two >> /tmp/wcmd/a")
        watcher.expect(is_("write", "/tmp/wcmd/a"), done)
        done = run_at(http, sandbox, "mv /tmp/wcmd/a /tmp/wcmd/b")
        watcher.expect(is_("rename", "/tmp/wcmd/a", new_path="/tmp/wcmd/b"), done)
        done = run_at(http, sandbox, "chmod 600 /tmp/wcmd/b")
        watcher.expect(is_("chmod", "/tmp/wcmd/b"), done)
        done = run_at(http, sandbox, "rm /tmp/wcmd/b")
        watcher.expect(is_("remove", "/tmp/wcmd/b"), done)
        done = run_at(http, sandbox, "mkdir /tmp/wcmd/d")
        assert watcher.expect(is_("create", "/tmp/wcmd/d"), done)["is_dir"] is True
        # not recursive: what happens below a subdirectory is not reported
        run_at(http, sandbox, "touch /tmp/wcmd/d/inner")
        done = run_at(http, sandbox, "touch /tmp/wcmd/marker")
        event = watcher.expect(lambda e: e["path"] != "/tmp/wcmd/d", done)
        assert event["path"] == "/tmp/wcmd/marker", event
    finally:
        watcher.close()


def test_changes_made_through_the_filesystem_api_are_seen_within_a_second(
    http: httpx.Client, server: ServerProcess, sandbox: str
) -> None:
    base = f"/v1/sandbox/{sandbox}/filesystem"
    assert http.post(f"{base}/mkdir", json={"path": "/tmp/wapi"}).status_code == 204
    watcher = Watcher(server, sandbox, "/tmp/wapi")
    try:
        assert http.post(f"{base}/mkdir", json={"path": "/tmp/wapi/sub"}).status_code == 204
        watcher.expect(is_("create", "/tmp/wapi/sub", is_dir=True), time.monotonic())
        r = http.post(f"{base}/write-file", params={"path": "/tmp/wapi/f.txt"}, content=b"hello")
        assert r.status_code == 204, r.text
        # replaced atomically under a temporary name: one write of the file, no temporary names
        watcher.expect(is_("write", "/tmp/wapi/f.txt"), time.monotonic())
        r = http.post(f"{base}/move", json={"src_path": "/tmp/wapi/f.txt", "dst_path": "/tmp/wapi/g.txt"})
        assert r.status_code == 204, r.text
        watcher.expect(is_("rename", "/tmp/wapi/f.txt", new_path="/tmp/wapi/g.txt"), time.monotonic())
        assert http.post(f"{base}/delete", json={"path": "/tmp/wapi/g.txt"}).status_code == 204
        watcher.expect(is_("remove", "/tmp/wapi/g.txt"), time.monotonic())
        seen: list[dict[str, Any]] = []
        while not watcher.events.empty():
            event = watcher.events.get()[1]
            assert event is not None
            seen.append(event)
        assert not [e for e in seen if ".atoll-new-" in e["path"]], seen
    finally:
        watcher.close()


def test_recursive_watch_follows_new_directories(
    http: httpx.Client, server: ServerProcess, sandbox: str
) -> None:
    run_at(http, sandbox, "mkdir -p /tmp/wrec/old")
    watcher = Watcher(server, sandbox, "/tmp/wrec", recursive=True)
    try:
        done = run_at(http, sandbox, "echo x > /tmp/wrec/old/f")
        watcher.expect(is_("create", "/tmp/wrec/old/f"), done)
        done = run_at(http, sandbox, "mkdir /tmp/wrec/new")
        watcher.expect(is_("create", "/tmp/wrec/new", is_dir=True), done)
        time.sleep(0.2)  # the server adds its watch as it sees the directory
        done = run_at(http, sandbox, "echo y > /tmp/wrec/new/g")
        watcher.expect(is_("create", "/tmp/wrec/new/g"), done)
        done = run_at(http, sandbox, "mv /tmp/wrec/new /tmp/wrec/renamed && touch /tmp/wrec/renamed/h")
        watcher.expect(is_("rename", "/tmp/wrec/new", new_path="/tmp/wrec/renamed"), done)
        watcher.expect(is_("create", "/tmp/wrec/renamed/h"), done)  # paths follow the rename
    finally:
        watcher.close()


def test_the_stream_ends_when_the_directory_goes(
    http: httpx.Client, server: ServerProcess, sandbox: str
) -> None:
    run_at(http, sandbox, "mkdir -p /tmp/wgone")
    watcher = Watcher(server, sandbox, "/tmp/wgone")
    try:
        done = run_at(http, sandbox, "rmdir /tmp/wgone")
        watcher.expect(is_("remove", "/tmp/wgone", is_dir=True), done)
        assert watcher.ended()
    finally:
        watcher.close()


def test_bad_paths(http: httpx.Client, sandbox: str) -> None:
    url = f"/v1/sandbox/{sandbox}/filesystem/watch"
    r = http.get(url, params={"path": "/no/such/dir"})
    assert r.status_code == 404, r.text
    r = http.get(url, params={"path": "/etc/hostname"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "path", r.text
    r = http.get(url)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "path", r.text
    r = http.get(url, params={"path": "/../.."})
    assert r.status_code in (400, 403), r.text
    assert http.get("/v1/sandbox/sbx-nope/filesystem/watch", params={"path": "/tmp"}).status_code == 404
    r = httpx.get(str(http.base_url) + url, params={"path": "/tmp"})
    assert r.status_code == 401


def test_a_symlink_out_of_the_sandbox_is_not_followed(
    http: httpx.Client, server: ServerProcess, sandbox: str
) -> None:
    """A link to an absolute host path resolves inside the sandbox's root, never on the host."""
    run_at(http, sandbox, "mkdir -p /tmp/wlink-target && ln -sfn /tmp/wlink-target /tmp/wlink")
    watcher = Watcher(server, sandbox, "/tmp/wlink")
    try:
        done = run_at(http, sandbox, "touch /tmp/wlink-target/inside")
        watcher.expect(is_("create", "/tmp/wlink/inside"), done)
    finally:
        watcher.close()


def test_sdk_watch_iterates_changes(http: httpx.Client, server: ServerProcess, sandbox: str) -> None:
    run_at(http, sandbox, "mkdir -p /tmp/wsdk")
    with atoll.Client(api_key=server.api_key, base_url=server.base_url, sandbox_domain="sbx.test") as c:
        events = c.sandboxes.get(sandbox).filesystem.watch("/tmp/wsdk", recursive=True)
        got: list[atoll.WatchEvent] = []

        def read() -> None:
            for event in events:
                got.append(event)
                if event.type == "remove":
                    return

        def seen(kind: str, path: str) -> bool:
            return any((e.type, e.path) == (kind, path) for e in list(got))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        # the watch is in place once the server answered, and the thread gets there on its own
        # time (seconds on a loaded host): until a change is seen, make another
        deadline = time.monotonic() + 30
        for attempt in itertools.count():
            run_at(http, sandbox, f"touch /tmp/wsdk/ready{attempt}")
            time.sleep(0.2)
            if any(e.path.startswith("/tmp/wsdk/ready") for e in list(got)):
                break
            assert time.monotonic() < deadline, "the watch reported nothing"
        run_at(http, sandbox, "mkdir /tmp/wsdk/d")
        # a directory is watched once its creation is seen: what happens in it before is not
        # reported (docs/processes.md, "Watching a directory"), so the file comes after
        deadline = time.monotonic() + 10
        while not seen("create", "/tmp/wsdk/d"):
            assert time.monotonic() < deadline, [(e.type, e.path) for e in got]
            time.sleep(0.05)
        run_at(http, sandbox, "echo x > /tmp/wsdk/d/f && rm /tmp/wsdk/d/f")
        reader.join(timeout=10)
        assert not reader.is_alive(), [(e.type, e.path) for e in got]
        cast(Generator[atoll.WatchEvent], events).close()  # its end closes the stream
    kinds = [(e.type, e.path) for e in got]
    assert ("create", "/tmp/wsdk/d") in kinds and ("remove", "/tmp/wsdk/d/f") in kinds, kinds


def inotify_fds(server: ServerProcess) -> int:
    assert server.proc is not None
    fd_dir = Path(f"/proc/{server.proc.pid}/fd")
    count = 0
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd) == "anon_inode:inotify"
    return count


def test_closed_streams_release_their_inotify_instances(
    http: httpx.Client, server: ServerProcess, sandbox: str
) -> None:
    run_at(http, sandbox, "mkdir -p /tmp/wfd/a/b")
    before = inotify_fds(server)
    watchers = [Watcher(server, sandbox, "/tmp/wfd", recursive=True) for _ in range(3)]
    assert inotify_fds(server) >= before + 3
    for watcher in watchers:
        watcher.close()
    deadline = time.monotonic() + 10
    while inotify_fds(server) > before:
        assert time.monotonic() < deadline, "a closed watch kept its inotify instance"
        time.sleep(0.2)


def test_streams_per_sandbox_are_bounded(http: httpx.Client, server: ServerProcess, sandbox: str) -> None:
    watchers = [Watcher(server, sandbox, "/tmp") for _ in range(8)]
    try:
        r = http.get(f"/v1/sandbox/{sandbox}/filesystem/watch", params={"path": "/tmp"})
        assert r.status_code == 503 and "retry-after" in r.headers, r.text
    finally:
        for watcher in watchers:
            watcher.close()
