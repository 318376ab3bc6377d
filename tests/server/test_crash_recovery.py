"""kill -9 of the server, then a restart: live sandboxes are adopted and still answer; nothing of
deleted, half-created or orphaned sandboxes is left on the host."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from atoll.runtime import userns
from tests._support import api
from tests._support.leaks import assert_no_leaks, host_view
from tests._support.server import IFACE_PREFIX, INSTANCE, ServerProcess

pytestmark = [pytest.mark.privileged]


def test_kill9_restart_adopts_live_and_cleans_the_rest(server: ServerProcess, http: httpx.Client) -> None:
    keep = api.create(http)["id"]
    paused = api.create(http)["id"]
    gone = api.create(http)["id"]
    api.run(http, keep, "echo survived > /root/mark; nohup sleep 100000 >/dev/null 2>&1 &")
    assert http.post(f"/v1/sandbox/{paused}/pause").status_code == 201
    api.delete(http, gone)

    # creates in flight when the server dies leave half-made sandboxes behind
    def create_quietly() -> None:
        try:
            httpx.post(f"{server.base_url}/v1/sandbox", json={}, headers=server.headers, timeout=30)
        except httpx.HTTPError:
            pass

    burst = [threading.Thread(target=create_quietly) for _ in range(6)]
    for t in burst:
        t.start()
    threading.Event().wait(0.15)
    server.kill9()
    for t in burst:
        t.join()

    # plant orphans a crash could leave: a netns + veth pair, a cgroup, a state dir, a mount
    orphan = "sbxdeadbeefdeadbeef"
    subprocess.run(["ip", "netns", "add", f"atoll-{INSTANCE}-9999"], check=True)
    subprocess.run(
        ["ip", "link", "add", f"{IFACE_PREFIX}9999", "type", "veth", "peer", "name", f"{IFACE_PREFIX}9999p"],
        check=True,
    )
    Path(f"/sys/fs/cgroup/pids/atoll_{INSTANCE}/{orphan}").mkdir(parents=True, exist_ok=True)
    orphan_dir = server.data_dir / "sandboxes" / orphan / "rootfs"
    orphan_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(orphan_dir)], check=True)
    # a root shown to a user namespace (userns.show_root) by a create that never made its container
    shown_root = userns.runtime_root(INSTANCE, orphan)
    shown_root.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(shown_root)], check=True)

    server.start()
    assert api.run(http, keep, "cat /root/mark; pgrep -c -x sleep")["stdout"] == "survived\n1\n"
    assert http.get(f"/v1/sandbox/{paused}/").json()["state"] == "paused"
    assert api.run(http, paused, "echo resumed")["stdout"] == "resumed\n"
    assert http.get(f"/v1/sandbox/{gone}/").status_code == 404
    states = {
        i["id"]: i["state"] for i in http.get("/v1/sandboxes", params={"page-size": 100}).json()["items"]
    }
    assert all(state in ("running", "paused", "stopped") for state in states.values()), states
    view = host_view(server.data_dir)
    assert orphan not in view.cgroups | view.dirs | view.mounts
    assert f"atoll-{INSTANCE}-9999" not in view.netns
    assert not shown_root.parent.exists() and str(shown_root) not in Path("/proc/mounts").read_text()
    assert_no_leaks(server)
    for sid in states:
        api.delete(http, sid)
    assert_no_leaks(server)


def test_runtime_commands_left_running_by_a_killed_server_are_stopped_before_the_sweep(
    server: ServerProcess, http: httpx.Client
) -> None:
    """A ``run --detach`` still going when the server died would make a container after the
    restart's sweep had listed them: one no record owns, forever. The restart kills such commands
    first, and keeps what is a live sandbox's own (gVisor's sentry and gofer: ``boot``, ``gofer``)."""
    sid = api.create(http)["id"]
    state = Path(f"/run/atoll/{INSTANCE}")
    roots = [state / name for name in ("crun", "runc", "runsc") if (state / name).is_dir()]
    assert roots, "the server keeps its runtimes' state in /run/atoll/<instance>/<runtime>"
    pretend = [sys.executable, "-c", "import time; time.sleep(600)"]
    server.kill9()
    leftovers = [subprocess.Popen([*pretend, "--root", str(root), "run", "-d", "sbx0"]) for root in roots]
    leftovers += [subprocess.Popen([*pretend, f"--root={root}", "restore", "sbx1"]) for root in roots]
    keepers = [subprocess.Popen([*pretend, f"--root={root}", "boot", "sbx2"]) for root in roots]
    elsewhere = subprocess.Popen([*pretend, "--root", "/run/atoll/another-instance/runc", "run", "sbx3"])
    try:
        server.start()
        assert [p.wait(timeout=30) for p in leftovers] == [-signal.SIGKILL] * len(leftovers)
        assert [p.poll() for p in (*keepers, elsewhere)] == [None] * (len(keepers) + 1)
        assert api.run(http, sid, "echo adopted")["stdout"] == "adopted\n"
    finally:
        for p in (*leftovers, *keepers, elsewhere):
            p.kill()
            p.wait()
        api.delete(http, sid)
    assert_no_leaks(server)
