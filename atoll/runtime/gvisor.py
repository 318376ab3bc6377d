"""The gVisor backend: ``runsc`` puts a user-space kernel (the *sentry*) between the sandbox's
code and the host's. The bundle is the OCI one (``oci_config``: overlay root, mounts, limits),
adapted where gVisor differs:

- **Platform**: ``systrap`` (Debian trixie's static runsc, ``scripts/setup-gvisor.sh``); the
  ``kvm`` platform hangs on this host kind.
- **Network**: gVisor's own network stack (``--network=sandbox``), which runsc builds from the
  sandbox's network namespace (Atoll's netns and veth: the host-side egress rules apply as for
  any backend), and which, unlike ``--network=host``, can be checkpointed. runsc refuses to do
  so when it believes it is in the host's namespace, which it decides by whether
  ``/proc/sys/net/core/rmem_default`` exists; since Linux 6.x that file exists in every network
  namespace. So runsc is started (``_launch``) inside the sandbox's netns and a private mount
  namespace whose ``/proc/sys/net/core`` is hidden under an empty tmpfs. runsc moves the
  netns's addresses into its own stack and removes them from the netns, so they are recorded at
  the first start and put back before a restore in the same netns (``_prepare_network``).
- **Processes**: the pids cgroup counts the sentry's and gofer's threads and systrap's stub
  threads (about one per process inside) too, so it gets at least ``HOST_PIDS_FLOOR``; the
  processes inside are limited to ``spec.pids_limit`` by ``RLIMIT_NPROC``, which gVisor enforces.
- **Seccomp**: the sentry runs the OCI filter itself (``--oci-seccomp``) but answers every
  ``SCMP_ACT_ERRNO`` rule with EPERM; glibc falls back from ``clone3`` to ``clone`` only on
  ENOSYS, so ``clone3`` gets ``SCMP_ACT_TRACE`` instead (ENOSYS when no tracer is attached).
  ``syslog`` is allowed: it reads the sentry's own log, not the host's.
- **Files**: writes land in the overlay's upper dir (``--overlay2=none``), the root mount is
  revalidated against the host (``--file-access=shared``) and ``/tmp`` is the root's own (runsc
  would otherwise put a tmpfs there), so the filesystem API, which works on the host side of the
  overlay, and the sandbox see the same files.
- **Commands** run through Atoll's agent, PID 1 of the sandbox, reached on the sandbox's
  loopback through runsc's port forwarding (``gvisor_exec``), so that what they leave behind
  survives checkpoint and restore.
- **Memory**: gVisor has no OOM killer of its own; past the memory limit the host's OOM killer
  ends the sentry, i.e. the whole sandbox (google/gvisor#2533).

Checkpoint and restore are runsc's own (no CRIU). As on OCI, an image gets the completion marker
(``base.mark_checkpoint_complete``) only once ``runsc checkpoint`` has succeeded and every file
of the image has been fsynced (``sync_image``): after a crash, start-up reconciliation pauses a
sandbox on a marked image and removes any other. gVisor's network stack cannot save a TCP
connection. Without ``--net-disconnect-ok`` a save fails on one (even in TIME_WAIT, up to 60 s
after it closed) and leaves the connection it failed on wedged; with it, connections are
disconnected upon save instead (runsc's own description). So a running sandbox whose processes
hold connections (``open_connections``) is not checkpointed at all: pausing falls back to
freezing, which keeps them. A snapshot is taken of a paused sandbox, which cannot be looked
into: there the save goes ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from atoll.runtime import cgroups, gvisor_exec, oci_config, overlay, procfs, reaping, terminal
from atoll.runtime.base import CgroupBackend, mark_checkpoint_complete
from atoll.runtime.commands import CommandFailed, run
from atoll.runtime.oci import user_file, user_options
from atoll.runtime.spec import CheckpointFailed, ExecRequest, ExecResult, ExecSetupFailed, SandboxSpec

PLATFORM = "systrap"
# the agent's end of the exec channel in /proc/net/tcp: 127.0.0.1 (little-endian hex) and its port
AGENT_ADDRESS = f"0100007F:{gvisor_exec.AGENT_PORT:04X}"
HOST_PIDS_FLOOR = 1024
# run a command in the sandbox's netns and a private mount namespace where /proc/sys/net/core
# is hidden (see the module docstring)
_HIDE_NET_CORE = 'mount -t tmpfs -o size=4k,mode=555 atoll-hide /proc/sys/net/core && exec "$@"'


def host_pids_limit(pids_limit: int) -> int:
    return max(HOST_PIDS_FLOOR, 2 * pids_limit)


def adapt_config(config: dict[str, Any], spec: SandboxSpec, *, own_tmp: bool) -> dict[str, Any]:
    """The OCI ``config.json`` of ``spec`` as runsc needs it (see the module docstring).
    ``own_tmp``: the root's ``/tmp`` is a real directory, to be mounted over runsc's tmpfs."""
    linux = config["linux"]
    linux["resources"]["pids"] = {"limit": host_pids_limit(spec.pids_limit)}
    config["process"]["rlimits"].append(
        {"type": "RLIMIT_NPROC", "hard": spec.pids_limit, "soft": spec.pids_limit}
    )
    for rule in linux["seccomp"]["syscalls"]:
        if rule["names"] == ["clone3"]:
            rule["action"] = "SCMP_ACT_TRACE"
            rule.pop("errnoRet", None)
        # the sentry's kernel log is gVisor's own (`dmesg` shows it), not the host's
        rule["names"] = [name for name in rule["names"] if name != "syslog"]
    if spec.netns_path is None:
        linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "network"]
    # runsc hides an empty /tmp under a tmpfs of its own unless the spec mounts one: the
    # filesystem API (which works on the root's host side) would then miss what is written there
    if own_tmp:
        config["mounts"].append(
            {
                "destination": "/tmp",
                "type": "bind",
                "source": str(spec.rootfs / "tmp"),
                "options": ["rbind", "rw"],
            }
        )
    return config


class GVisorBackend(CgroupBackend):
    def __init__(self, *, binary: str, state_root: Path, cgroup_parent: str) -> None:
        self.name = "runsc"
        self.binary = binary
        self.state_root = state_root
        self.cgroup_parent = cgroup_parent.strip("/")
        state_root.mkdir(parents=True, exist_ok=True)
        self.can_checkpoint = True
        self.executor = gvisor_exec.Executor(state_root)
        self._paused: set[str] = set()  # paused by this process (checkpoint must not pause twice)

    def _argv(self, *args: str) -> list[str]:
        return [
            self.binary, "--root", str(self.state_root), f"--platform={PLATFORM}",
            "--overlay2=none", "--file-access=shared", "--oci-seccomp", "--net-disconnect-ok", *args,
        ]  # fmt: skip

    def _launch(self, spec: SandboxSpec, *args: str) -> list[str]:
        """``runsc run`` or ``restore``, started where gVisor's network stack can be built."""
        if spec.netns_path is None:
            return self._argv("--network=none", *args)
        runsc = self._argv("--network=sandbox", *args)
        return ["nsenter", f"--net={spec.netns_path}", "unshare", "--mount", "--propagation", "private",
                "sh", "-c", _HIDE_NET_CORE, "atoll-runsc", *runsc]  # fmt: skip

    # bundle -----------------------------------------------------------------------------
    async def _prepare_bundle(self, spec: SandboxSpec) -> None:
        overlay.mount_overlay(spec.lower_dirs, spec.upper_dir, spec.work_dir, spec.rootfs)
        tmp = spec.rootfs / "tmp"
        if not tmp.exists() and not tmp.is_symlink():
            tmp.mkdir()
            tmp.chmod(0o1777)
        # never a symlink: a bind mount's source is resolved on the host
        own_tmp = tmp.is_dir() and not tmp.is_symlink()
        config = oci_config.build(
            spec,
            cgroups_path=f"/{self.cgroup_parent}/{spec.sandbox_id}",
            init_args=gvisor_exec.agent_args(spec.main_command),
        )
        config = adapt_config(config, spec, own_tmp=own_tmp)
        (spec.sandbox_dir / "config.json").write_text(json.dumps(config))
        # `runsc exec` runs as root unless told: terminals need the sandbox's user (``terminal_argv``)
        user_file(self.state_root, spec.sandbox_id).write_text(json.dumps(config["process"]["user"]))
        if spec.netns_path is not None:
            await _prepare_network(spec.netns_path, spec.sandbox_dir / "network.json")

    # lifecycle --------------------------------------------------------------------------
    async def boot(self, spec: SandboxSpec) -> None:
        try:
            await self._prepare_bundle(spec)
            log = spec.sandbox_dir / "runtime.log"
            argv = self._launch(spec, "--log", str(log), "run", "--detach", "--bundle", str(spec.sandbox_dir))
            await run([*argv, spec.sandbox_id], timeout=60, error_log=log)
            await self.executor.wait_for_agent(spec.sandbox_id)
        except BaseException:
            await self.halt(spec)
            raise

    async def exec(self, sandbox_id: str, request: ExecRequest) -> ExecResult:
        return await self.executor.exec(sandbox_id, request)

    async def set_limits(self, sandbox_id: str, *, vcpu: int, memory_mib: int) -> None:
        """The host cgroup's limits (the sentry keeps reporting the memory it was started with)."""
        cgroups.set_limits(self.cgroup_parent, sandbox_id, vcpu=vcpu, memory_mib=memory_mib)

    async def pause(self, sandbox_id: str) -> None:
        await super().pause(sandbox_id)
        self._paused.add(sandbox_id)

    async def resume(self, sandbox_id: str) -> None:
        await super().resume(sandbox_id)
        self._paused.discard(sandbox_id)

    async def checkpoint(self, sandbox_id: str, image_dir: Path, *, leave_running: bool) -> None:
        """Save the sandbox's kernel (its processes, memory, open files, sockets) to ``image_dir``.
        Without ``leave_running`` the sandbox has exited afterwards.

        runsc always checkpoints with ``--leave-running``, on a paused sandbox (which it leaves
        paused): a failed checkpoint without it ends the sandbox, and one that fails is common
        (a TCP connection), while pausing by freezing should then still be possible."""
        if self.executor.busy(sandbox_id):
            raise CheckpointFailed("commands are running in the sandbox")
        paused_here = sandbox_id not in self._paused
        # a save drops open connections (--net-disconnect-ok); a running sandbox that has some
        # is not saved, so that pausing falls back to freezing, which keeps them. A paused one
        # (a snapshot: its disk was copied while it was paused) cannot run the check.
        if paused_here and (connections := await self.open_connections(sandbox_id)):
            raise CheckpointFailed(f"open TCP connections (gVisor cannot save them): {connections}")
        if paused_here:
            await self.pause(sandbox_id)
        try:
            image_dir.mkdir(parents=True, exist_ok=True)
            argv = self._argv("checkpoint", "--leave-running", "--image-path", str(image_dir), sandbox_id)
            rc, _, err = await run(argv, timeout=600, check=False)
            if rc != 0:
                raise CheckpointFailed(_first_line(err.decode(errors="replace")))
            # after a crash only an image with the marker is restored (reconcile.py): its
            # files reach the disk first, then the marker, so a save cut short never has it
            await asyncio.to_thread(sync_image, image_dir)
            mark_checkpoint_complete(image_dir)
        except BaseException:
            if paused_here:
                await self.resume(sandbox_id)
            raise
        if not leave_running:
            await self.halt_by_id(sandbox_id)
        elif paused_here:
            await self.resume(sandbox_id)

    async def open_connections(self, sandbox_id: str) -> int:
        """TCP sockets in the sandbox that are neither listening nor closed (gVisor's
        ``/proc/net/tcp`` lists the ones a process holds; those in TIME_WAIT, held by none,
        are dropped by a save)."""
        listing = ExecRequest(
            argv=(oci_config.BUSYBOX_PATH, "cat", "/proc/net/tcp", "/proc/net/tcp6"), env={}, timeout=10
        )
        try:
            table = await self.executor.exec(sandbox_id, listing)
        except ExecSetupFailed as exc:
            raise CheckpointFailed(f"cannot list the sandbox's connections: {exc}") from None
        if table.timed_out:
            raise CheckpointFailed("cannot list the sandbox's connections: no answer in 10s")
        # the listing's own connection to the agent is one of them (it closes before the save)
        return count_open_connections(table.stdout.decode(errors="replace"), ignore_local=AGENT_ADDRESS)

    async def restore(self, spec: SandboxSpec, image_dir: Path) -> None:
        """Start the sandbox from a checkpoint image (its own, or a snapshot's for a fork)."""
        try:
            await self._prepare_bundle(spec)
            log = spec.sandbox_dir / "runtime.log"
            argv = self._launch(
                spec, "--log", str(log), "restore", "--detach", "--image-path", str(image_dir),
                "--bundle", str(spec.sandbox_dir),
            )  # fmt: skip
            try:
                await run([*argv, spec.sandbox_id], timeout=600, error_log=log)
            except CommandFailed as exc:
                raise CheckpointFailed(_first_line(exc.stderr)) from None
            await self.executor.wait_for_agent(spec.sandbox_id)
        except BaseException:
            await self.halt(spec)
            raise

    async def halt_by_id(self, sandbox_id: str) -> None:
        # the sentry, the gofer and the stubs are all in the cgroup; the first two were
        # orphaned by `run --detach` and are ours to reap
        self._paused.discard(sandbox_id)
        await self.kill_cgroup(sandbox_id)
        # a sentry that died before (the host's OOM killer) left the cgroup as a zombie, and so
        # did the stubs it had forked: runsc would wait for them
        reap_dead_sandbox_processes()
        await run(self._argv("delete", "--force", sandbox_id), timeout=30, check=False)
        cgroups.remove_group(self.cgroup_parent, sandbox_id)
        for leftover in (
            f"{sandbox_id}_sandbox:{sandbox_id}.state",
            f"{sandbox_id}_sandbox:{sandbox_id}.lock",
            f"runsc-{sandbox_id}.sock",
            user_file(self.state_root, sandbox_id).name,
        ):
            with contextlib.suppress(FileNotFoundError):
                (self.state_root / leftover).unlink()

    async def running_ids(self) -> set[str]:
        """Sandboxes whose sentry is alive (runsc's own list goes on saying ``running`` for a
        sandbox the host's OOM killer ended)."""
        rc, out, _ = await run(self._argv("list", "--format=json"), timeout=30, check=False)
        if rc != 0:
            return set()
        alive = set()
        for state in json.loads(out or b"[]") or []:
            if state.get("status") in ("running", "paused", "created") and _pid_alive(state.get("pid", 0)):
                alive.add(str(state["id"]))
        return alive

    # terminals --------------------------------------------------------------------------
    def terminal_argv(
        self,
        *,
        sandbox_id: str,
        console_socket: Path,
        pid_file: Path,
        internal_pid_file: Path,
        log_file: Path,
        process_file: Path,
        cwd: str,
        env: Mapping[str, str],
        command: Sequence[str],
    ) -> list[str]:
        """``runsc exec`` of ``command`` detached on a new terminal (no ``--tty``: a console
        socket implies one), as the sandbox's user (the image's USER); the shell's pid in the
        sandbox, which leads its session there, to ``internal_pid_file``."""
        identity = user_options(self.state_root, sandbox_id, gids_flag="--additional-gids", joined=True)
        return self._argv(
            "--log", str(log_file), "exec", "--detach", "--console-socket", str(console_socket),
            "--pid-file", str(pid_file), "--internal-pid-file", str(internal_pid_file), "--cwd", cwd,
            *identity, *terminal.env_options(env), sandbox_id, *command,
        )  # fmt: skip

    async def kill_terminal_session(self, sandbox_id: str, session_id: int) -> None:
        """SIGKILL every process of session ``session_id`` in the sandbox (a terminal's, which
        the host cannot signal: it runs in the sentry), by the agent. Not in a sandbox paused
        here: nothing there runs, and the agent would not answer."""
        if sandbox_id in self._paused:
            return
        argv = (oci_config.BUSYBOX_PATH, "sh", "-c", _KILL_SESSION, "atoll-kill", str(session_id))
        await self.executor.exec(sandbox_id, ExecRequest(argv=argv, env={}, timeout=10))


# /proc/PID/stat after the command's name, which may hold spaces: state ppid pgrp session ...
_KILL_SESSION = (
    'sid=$1; for f in /proc/[0-9]*/stat; do read -r line < "$f" 2>/dev/null || continue; '
    'set -- ${line##*") "}; '
    '[ "$4" = "$sid" ] || continue; p=${f#/proc/}; kill -9 "${p%/stat}" 2>/dev/null; done; exit 0'
)


def count_open_connections(proc_net_tcp: str, *, ignore_local: str = "") -> int:
    """Sockets in ``/proc/net/tcp``-format text whose state (``st``) is neither LISTEN (0A) nor
    CLOSE (07), leaving out those whose local address is ``ignore_local`` (that format's hex)."""
    count = 0
    for line in proc_net_tcp.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[0].endswith(":") and fields[3] not in ("0A", "07"):
            count += fields[1] != ignore_local
    return count


def sync_image(image_dir: Path) -> None:
    """fsync every file of a checkpoint image and the directories holding them (runsc writes
    its state file and memory pages without syncing them)."""
    directories = [image_dir]
    while directories:
        directory = directories.pop()
        for entry in os.scandir(directory):
            if entry.is_dir(follow_symlinks=False):
                directories.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                _fsync(entry.path, os.O_RDONLY)
        _fsync(str(directory), os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[0][:500] if lines else "runsc failed"


def reap_dead_sandbox_processes() -> list[int]:
    """Reap our zombie children that were gVisor sandbox processes (the sentry, the gofer and
    systrap's stubs all run as ``exe``; the server never starts a program of that name, so
    none of these is a child the event loop waits for). They became ours as orphans."""
    me = os.getpid()
    return [
        stat.pid
        for stat in procfs.processes()
        if stat.comm == "exe" and stat.state == "Z" and stat.ppid == me and reaping.try_reap(stat.pid)
    ]


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# network ------------------------------------------------------------------------------
async def _prepare_network(netns: Path, record: Path) -> None:
    """Record the netns's IPv4 addresses and routes while it has them; put them back when runsc
    has moved them into a sandbox that is now gone (a restore in the same netns)."""
    rc, out, _ = await run(
        ["nsenter", f"--net={netns}", "ip", "-json", "-4", "-batch", "-"],
        input=b"addr show\nroute show\n",
        timeout=30,
        check=False,
    )
    if rc != 0:
        return
    addrs, routes = _decode_all(out.decode())[:2] if out else ([], [])
    found = [
        {"dev": link["ifname"], "local": a["local"], "prefixlen": a["prefixlen"]}
        for link in addrs
        if link.get("ifname") != "lo"
        for a in link.get("addr_info", [])
        if a.get("family") == "inet"
    ]
    if found:
        wanted = {"addrs": found, "routes": [r for r in routes if r.get("dev") != "lo"]}
        record.write_text(json.dumps(wanted))
        return
    try:
        wanted = json.loads(record.read_text())
    except (OSError, ValueError):
        return
    commands = [f"addr add {a['local']}/{a['prefixlen']} dev {a['dev']}" for a in wanted["addrs"]]
    for route in sorted(wanted["routes"], key=lambda r: "gateway" in r):  # on-link routes first
        via = f" via {route['gateway']}" if "gateway" in route else ""
        commands.append(f"route replace {route['dst']}{via} dev {route['dev']}")
    await run(
        ["nsenter", f"--net={netns}", "ip", "-force", "-batch", "-"],
        input="".join(f"{c}\n" for c in commands).encode(),
        timeout=30,
        check=False,
    )


def _decode_all(text: str) -> list[Any]:
    """``ip -json -batch`` prints one JSON document per command, back to back."""
    decoder = json.JSONDecoder()
    documents, index = [], 0
    while index < len(text):
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            break
        document, index = decoder.raw_decode(text, index)
        documents.append(document)
    while len(documents) < 2:
        documents.append([])
    return documents
