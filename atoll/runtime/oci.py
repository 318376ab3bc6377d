"""The OCI backend: crun (fast) or runc (checkpointable) over one bundle format.

Each sandbox is a bundle dir with an overlay root and a config.json; PID 1 is Atoll's static
agent from the helper layer (``agent.c``): it reaps orphans and runs commands on request (see
``agent.py``); when it cannot, commands run through ``<runtime> exec`` (see ``oci_exec``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from atoll.runtime import (
    agent,
    cgroups,
    criu,
    lxcfs,
    oci_config,
    overlay,
    reaping,
    userns,
    userns_net,
    userns_slot,
)
from atoll.runtime.base import CgroupBackend, mark_checkpoint_complete
from atoll.runtime.commands import CommandFailed, run
from atoll.runtime.oci_exec import run_exec, wrapped
from atoll.runtime.spec import CheckpointFailed, ExecRequest, ExecResult, SandboxSpec
from atoll.runtime.trees import remove_host_tree

log = logging.getLogger("atoll.oci")
SWEEP_LOOKS = 6  # further looks for crun's orphans after each detaching call, 0.5 s apart


async def _remove_work_dir(work: Path) -> None:
    """CRIU's work directory, off the event loop, without recursion (``atoll.runtime.trees``)."""
    try:
        await asyncio.to_thread(remove_host_tree, work)
    except OSError:
        log.exception("removing %s failed", work)


def user_file(state_root: Path, sandbox_id: str) -> Path:
    """The sandbox's process user (``oci_config.process_user``), for the runtime's own ``exec``:
    crun's and runsc's run as root unless told otherwise."""
    return state_root / f"{sandbox_id}.user.json"


def env_file(state_root: Path, sandbox_id: str) -> Path:
    """PID 1's environment (the config's), which the runtime's ``exec --process`` of a command
    or terminal starts from (``OCIBackend._process_file``), as the agent's commands do."""
    return state_root / f"{sandbox_id}.env.json"


def user_options(state_root: Path, sandbox_id: str, *, gids_flag: str | None, joined: bool) -> list[str]:
    """``--user UID:GID`` (and the supplementary groups through ``gids_flag``, one flag per gid
    or, ``joined``, all in one) for an ``exec`` in the sandbox; none for a sandbox booted before
    its user was recorded (it runs as root, as it always did)."""
    try:
        user = json.loads(user_file(state_root, sandbox_id).read_text())
        options = ["--user", f"{int(user['uid'])}:{int(user['gid'])}"]
        groups = [str(int(gid)) for gid in user.get("additionalGids", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if gids_flag and groups:
        options += [gids_flag, ",".join(groups)] if joined else [a for g in groups for a in (gids_flag, g)]
    return options


class OCIBackend(CgroupBackend):
    command_oom_score_adj = oci_config.OOM_SCORE_ADJ

    def __init__(self, *, binary: str, state_root: Path, cgroup_parent: str) -> None:
        self.name = Path(binary).name
        self.binary = binary
        self.state_root = state_root
        self.cgroup_parent = cgroup_parent.strip("/")
        state_root.mkdir(parents=True, exist_ok=True)
        if self.name == "crun":
            cgroups.ensure_crun_compatible()
        # Debian's crun is built without libcriu; runc drives CRIU itself
        self.can_checkpoint = self.name == "runc" and criu.works()
        self._init_pids: dict[str, int] = {}  # sandbox id -> host pid of its PID 1 (the agent)
        self._sweeper: asyncio.Task[None] | None = None
        self._sweep_wanted = False
        self.userns: userns.RangeRecords | None = None  # set by use_userns (settings.userns)

    def use_userns(self) -> None:
        """Run every sandbox booted from now on in its network slot's user namespace (the
        network pool makes them: ``NetworkPool(ranges=...)``)."""
        self.userns = userns.RangeRecords(self.state_root)

    @property
    def _instance(self) -> str:
        return self.state_root.parent.name  # <run dir>/<runtime>: the run dir is per instance

    def _slot_userns(self, spec: SandboxSpec) -> tuple[Path, userns.IdRange] | None:
        """The user namespace (and its range) made with the sandbox's network slot."""
        if self.userns is None:
            return None
        found = userns_slot.of(spec.netns_path)
        if found is None:  # never run as the host's root when user namespaces are on
            raise RuntimeError(f"sandbox {spec.sandbox_id}: its network slot has no user namespace")
        return found

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.state_root), *args]

    def _prepare_bundle(self, spec: SandboxSpec, *, restoring: bool = False) -> None:
        slot_userns = self._slot_userns(spec)
        if slot_userns is None:
            overlay.mount_overlay(spec.lower_dirs, spec.upper_dir, spec.work_dir, spec.rootfs)
        else:
            userns_path, id_range = slot_userns
            assert self.userns is not None
            self.userns.record(spec.sandbox_id, id_range)
            overlay.mount_overlay_idmapped(
                spec.lower_dirs,
                spec.upper_dir,
                spec.work_dir,
                spec.rootfs,
                base=id_range.base,
                size=id_range.size,
                userns_path=userns_path,
            )
            for bind in spec.binds:  # the generated /etc files: the sandbox's root may edit them
                if not bind.read_only:
                    os.chown(bind.source, id_range.base, id_range.base)
        config = oci_config.build(
            spec,
            cgroups_path=f"/{self.cgroup_parent}/{spec.sandbox_id}",
            init_args=self._init_args(spec),
            # the server's LXCFS (lxcfs.py) lives beside the runtimes' state dirs
            proc_binds=lxcfs.binds(self.state_root.parent),
        )
        if slot_userns is not None:
            rootfs = userns.show_root(spec.rootfs, self._instance, spec.sandbox_id, id_range)
            if restoring:  # runc and crun open bind sources before they join the user namespace
                userns.expose_bind_sources(config["mounts"], self._instance, spec.sandbox_id)
            if restoring and spec.netns_path is not None:
                # CRIU makes a user namespace of its own, which cannot join the slot's network
                # namespace: the runtime makes one inside it and the hook moves eth0 in
                hook = userns_net.network_hook(spec.netns_path, self._net_file(spec.sandbox_id))
                oci_config.apply_userns(config, id_range.mappings(), hook, rootfs=rootfs)
                self._slot_file(spec.sandbox_id).unlink(missing_ok=True)
            else:
                oci_config.join_userns(config, id_range.mappings(), userns_path, rootfs=rootfs)
                if spec.netns_path is not None and self.can_checkpoint:  # read by checkpoints alone
                    self._slot_file(spec.sandbox_id).write_text(str(spec.netns_path))
        (spec.sandbox_dir / "config.json").write_text(json.dumps(config))
        user_file(self.state_root, spec.sandbox_id).write_text(json.dumps(config["process"]["user"]))
        env_file(self.state_root, spec.sandbox_id).write_text(json.dumps(config["process"]["env"]))

    def _process_file(
        self,
        path: Path,
        sandbox_id: str,
        cwd: str,
        env: Mapping[str, str],
        command: Sequence[str],
        *,
        terminal: bool,
    ) -> Path:
        """``path``: the process of an ``exec --process`` (``oci_config.command_process``): the
        command's user, capabilities and OOM score, never PID 1's (the runtime's own options
        would hand it the agent's capabilities; crun's cannot name supplementary groups)."""
        try:
            recorded = json.loads(env_file(self.state_root, sandbox_id).read_text())
            base = dict(item.split("=", 1) for item in recorded)
        except (OSError, ValueError, TypeError):
            base = {}  # booted before its environment was recorded: the request's alone
        process = oci_config.command_process(
            user_file(self.state_root, sandbox_id), cwd, {**base, **env}, command, terminal=terminal
        )
        path.write_text(json.dumps(process))
        return path

    async def boot(self, spec: SandboxSpec) -> None:
        try:
            self._prepare_bundle(spec)
            log = spec.sandbox_dir / "runtime.log"
            argv = self._argv("--log", str(log), "run", "--detach", "--bundle", str(spec.sandbox_dir))
            argv += ["--pid-file", str(self._init_pid_file(spec.sandbox_id))]
            await run([*argv, spec.sandbox_id], timeout=30, error_log=log)
            self.reap_runtime_orphans()
            await self._agent_ready(spec.sandbox_id)
        except BaseException:
            await self.halt(spec)
            raise

    @staticmethod
    def _init_args(spec: SandboxSpec) -> list[str]:
        # the agent reaps orphans and forwards signals to the template's own main process
        return agent.init_args(spec.main_command)

    def reap_runtime_orphans(self) -> None:
        """After every runtime call that detaches (run, restore, exec): see reaping.py. One
        sweep at a time: calls during a sweep ask for one more round after it."""
        if self.name != "crun":  # runc leaves only the sandbox's init, reaped when it halts
            return
        self._sweep_wanted = True
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        while self._sweep_wanted:
            self._sweep_wanted = False
            await reaping.reap_orphaned_zombies(frozenset({"crun"}))
            # crun's detached child can outlive that first look (it takes longer to set up FUSE
            # binds, e.g. LXCFS's): look again for a few seconds
            for _ in range(SWEEP_LOOKS):
                await asyncio.sleep(0.5)
                await reaping.reap_orphaned_zombies(frozenset({"crun"}))

    def _init_pid_file(self, sandbox_id: str) -> Path:
        return self.state_root / f"{sandbox_id}.init.pid"

    async def _init_pid(self, sandbox_id: str) -> int | None:
        """The host pid of the sandbox's PID 1, checked to still be that sandbox's."""
        pid = self._init_pids.get(sandbox_id)
        if pid is None:
            try:
                pid = int(self._init_pid_file(sandbox_id).read_text())
            except (FileNotFoundError, ValueError):
                return None
        try:  # a recycled pid would sit in another cgroup
            with open(f"/proc/{pid}/cgroup") as f:
                if sandbox_id not in f.read():
                    raise ProcessLookupError
        except (OSError, ProcessLookupError):
            self._init_pids.pop(sandbox_id, None)
            return None
        self._init_pids[sandbox_id] = pid
        return pid

    async def _agent_ready(self, sandbox_id: str, timeout: float = 2.0) -> None:
        """Wait until the agent listens, so that the first command takes the fast path. An
        agent that never does (e.g. an old sandbox) only costs the fallback, never a failure."""
        pid = await self._init_pid(sandbox_id)
        if pid is None:
            return
        socket_path = Path(f"/proc/{pid}/root{agent.SOCKET_IN_SANDBOX}")
        for _ in range(int(timeout / 0.001)):
            if socket_path.exists():
                return
            await asyncio.sleep(0.001)

    async def checkpoint(self, sandbox_id: str, image_dir: Path, *, leave_running: bool) -> None:
        """Write the sandbox's processes, memory and open files to ``image_dir``. Without
        ``leave_running`` the processes are gone afterwards (the container is removed)."""
        image_dir.mkdir(parents=True, exist_ok=True)
        work = image_dir.with_name(image_dir.name + ".work")
        argv = self._argv("checkpoint", "--image-path", str(image_dir), "--work-path", str(work))
        argv += ["--tcp-established", "--file-locks"]
        if leave_running:
            argv.append("--leave-running")
        members = [] if leave_running else cgroups.pids_in_group(self.cgroup_parent, sandbox_id)
        # user namespaces: the pool's interface leaves the sandbox's network namespace for the
        # dump (CRIU cannot save a veth whose peer is outside) and comes back if it runs on;
        # on restore the prestart hook moves it in again (userns_net.network_hook)
        netns_fd = await self._hold_netns(sandbox_id)
        init_pid = await self._init_pid(sandbox_id)
        setting_up = await userns_net.return_for_dump(self._net_file(sandbox_id), netns_fd)
        parked = None
        if netns_fd is None:  # still in its slot's namespaces (not restored)?
            state = self.state_root / sandbox_id / "state.json"
            parked = await asyncio.to_thread(userns_net.park_for_dump, self._slot_file(sandbox_id), state)
        try:
            # frozen first: CRIU's own freeze mostly waits 100 ms (criu.freeze_for_dump)
            async with criu.frozen_for_dump(self.cgroup_parent, sandbox_id):
                await run([*argv, sandbox_id], timeout=600)
        except CommandFailed as exc:
            raise CheckpointFailed(criu.log_errors(work / "dump.log") or str(exc)) from None
        finally:
            if setting_up is not None:
                await setting_up
            await _remove_work_dir(work)
            if parked is not None:
                await asyncio.to_thread(userns_net.unpark, *parked)
            if netns_fd is not None:
                os.close(netns_fd)
                if init_pid is not None and cgroups.pids_in_group(self.cgroup_parent, sandbox_id):
                    await asyncio.to_thread(userns_net.move_network_in, self._net_file(sandbox_id), init_pid)
        mark_checkpoint_complete(image_dir)
        # CRIU ended the processes: the init, orphaned to us by `run --detach`, is ours to reap
        await asyncio.gather(*(reaping.reap_when_exits(pid, timeout=5) for pid in members))

    async def restore(self, spec: SandboxSpec, image_dir: Path) -> None:
        """Start the sandbox from a checkpoint image (its own, or a snapshot's for a fork)."""
        work = spec.sandbox_dir / "restore.work"
        view = spec.sandbox_dir / "restore.image"  # user namespaces: userns.image_for_range
        self._init_pids.pop(spec.sandbox_id, None)
        try:
            self._prepare_bundle(spec, restoring=True)
            if (id_range := self.userns.of(spec.sandbox_id) if self.userns else None) is not None:
                image_dir = userns.image_for_range(image_dir, view, id_range)
                config = json.loads((spec.sandbox_dir / "config.json").read_text())
                userns.make_mount_points(spec.rootfs, config["mounts"], id_range)
            log = spec.sandbox_dir / "runtime.log"
            argv = self._argv("--log", str(log), "restore", "--detach", "--image-path", str(image_dir))
            argv += ["--work-path", str(work), "--tcp-established", "--file-locks"]
            argv += ["--bundle", str(spec.sandbox_dir)]
            argv += ["--pid-file", str(self._init_pid_file(spec.sandbox_id))]
            try:
                await run([*argv, spec.sandbox_id], timeout=600, error_log=log)
            except CommandFailed as exc:
                raise CheckpointFailed(criu.log_errors(work / "restore.log") or str(exc)) from None
            self.reap_runtime_orphans()
        except BaseException:
            await self.halt(spec)
            raise
        finally:
            await _remove_work_dir(work)
            await _remove_work_dir(view)

    async def exec(self, sandbox_id: str, request: ExecRequest) -> ExecResult:
        init_pid = await self._init_pid(sandbox_id)
        if init_pid is not None:
            self._wake_agent(sandbox_id, init_pid)
        if init_pid is not None and (result := await agent.run(init_pid, request)) is not None:
            return result
        token = os.urandom(6).hex()
        pid_file = self.state_root / f"{sandbox_id}.exec.{token}.pid"
        process_file = self.state_root / f"{sandbox_id}.exec.{token}.process.json"
        try:
            self._process_file(
                process_file, sandbox_id, request.cwd, request.env, wrapped(request.argv), terminal=False
            )
            argv = self._argv("exec", "--detach", "--pid-file", str(pid_file), "--process", str(process_file))
            refused = cgroups.forks_refused(self.cgroup_parent, sandbox_id)
            return await run_exec(
                [*argv, sandbox_id], pid_file, request, init_pid=init_pid,
                forks_refused=lambda: cgroups.forks_refused(self.cgroup_parent, sandbox_id) > refused,
            )  # fmt: skip
        finally:
            process_file.unlink(missing_ok=True)
            self.reap_runtime_orphans()

    def _wake_agent(self, sandbox_id: str, init_pid: int) -> None:
        """The watchdog: a stopped agent would stall every command of the sandbox (each one
        waiting ``agent.START_TIMEOUT_S``), so before each exec (~20 us) a stopped one is
        continued, and a tracer holding it is killed if it is a process of the same sandbox. Code
        inside can neither stop (signals to a pid namespace's init from inside it are ignored
        unless handled) nor trace it (non-dumpable), so this only covers what gets past those."""
        try:
            with open(f"/proc/{init_pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            return
        state, tracer = fields.get("State", "").strip()[:1], int(fields.get("TracerPid", "0") or 0)
        if tracer and tracer in cgroups.pids_in_group(self.cgroup_parent, sandbox_id):
            log.warning("sandbox %s: agent traced by its pid %d: killed the tracer", sandbox_id, tracer)
            with contextlib.suppress(ProcessLookupError):
                os.kill(tracer, signal.SIGKILL)
        if state in ("T", "t"):
            log.warning("sandbox %s: agent was stopped (%s): continued", sandbox_id, state)
            with contextlib.suppress(ProcessLookupError):
                os.kill(init_pid, signal.SIGCONT)

    async def set_limits(self, sandbox_id: str, *, vcpu: int, memory_mib: int) -> None:
        cgroups.set_limits(self.cgroup_parent, sandbox_id, vcpu=vcpu, memory_mib=memory_mib)

    async def halt_by_id(self, sandbox_id: str) -> None:
        netns_fd = await self._hold_netns(sandbox_id)
        self._init_pids.pop(sandbox_id, None)
        with contextlib.suppress(FileNotFoundError):
            self._init_pid_file(sandbox_id).unlink()
        for recorded in (user_file(self.state_root, sandbox_id), env_file(self.state_root, sandbox_id)):
            recorded.unlink(missing_ok=True)
        await self.kill_cgroup(sandbox_id)  # first: then `delete --force` finds nothing to freeze
        await run(self._argv("delete", "--force", sandbox_id), timeout=30, check=False)
        # a runtime killed mid-create leaves its state dir without the state file, which delete
        # does not know: it would stay, and keep lxcfs running (lxcfs.stop_if_unused)
        with contextlib.suppress(OSError):
            remove_host_tree(self.state_root / sandbox_id)
        cgroups.remove_group(self.cgroup_parent, sandbox_id)
        await self._return_network(sandbox_id, netns_fd, ended=True)
        if self.userns is not None:
            userns.hide_root(self._instance, sandbox_id)
            self.userns.forget(sandbox_id)
            self._net_file(sandbox_id).unlink(missing_ok=True)
            self._slot_file(sandbox_id).unlink(missing_ok=True)

    def _slot_file(self, sandbox_id: str) -> Path:
        """The network slot whose namespaces a sandbox joined (``oci_config.join_userns``)."""
        return self.state_root / f"{sandbox_id}.slot"

    def _net_file(self, sandbox_id: str) -> Path:
        """What ``userns_net.network_hook`` moved into the sandbox (for ``userns_net.return_network``)."""
        return self.state_root / f"{sandbox_id}.net.json"

    async def _hold_netns(self, sandbox_id: str) -> int | None:
        """A descriptor keeping a user-namespaced sandbox's network namespace (with the pool's
        interface in it) alive after its processes end, so that the interface can go back."""
        if self.userns is None or not self._net_file(sandbox_id).exists():
            return None
        pid = await self._init_pid(sandbox_id)
        if pid is None:
            return None
        try:
            return os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    async def _return_network(
        self, sandbox_id: str, netns_fd: int | None, *, ended: bool, close: bool = True
    ) -> None:
        if netns_fd is None:
            return
        try:
            if ended:
                netns = Path(f"/proc/{os.getpid()}/fd/{netns_fd}")
                await asyncio.to_thread(userns_net.return_network, self._net_file(sandbox_id), netns)
        finally:
            if close:
                os.close(netns_fd)

    async def running_ids(self) -> set[str]:
        rc, out, _ = await run(self._argv("list", "--quiet"), timeout=30, check=False)
        if rc != 0:
            return set()
        return {line.strip() for line in out.decode().splitlines() if line.strip()}

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
        """``exec`` of ``command`` detached on a new terminal, as the sandbox's user (no
        ``internal_pid_file``: the host signals an OCI sandbox's processes itself)."""
        argv = self._argv(
            "--log", str(log_file), "exec", "--detach", "--console-socket", str(console_socket),
            "--pid-file", str(pid_file),
        )  # fmt: skip
        self._process_file(process_file, sandbox_id, cwd, env, command, terminal=True)
        return [*argv, "--process", str(process_file), sandbox_id]
