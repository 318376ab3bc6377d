"""The OCI backend: crun (fast) or runc (checkpointable) over one bundle format.

Each sandbox is a bundle dir with an overlay root and a config.json; PID 1 is a static reaping
init from Atoll's helper layer. Commands run through ``<runtime> exec``, wrapped in ``setsid`` so
that a timeout can kill the whole session the command started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

from atoll.runtime import cgroups, oci_config, overlay
from atoll.runtime._proc import run
from atoll.runtime.spec import ExecRequest, ExecResult, ExecSetupFailed, SandboxSpec

OUTPUT_GRACE_S = 0.05  # after the command exits, how long to wait for output still in flight


class OCIBackend:
    def __init__(self, *, binary: str, state_root: Path, cgroup_parent: str) -> None:
        self.name = Path(binary).name
        self.binary = binary
        self.state_root = state_root
        self.cgroup_parent = cgroup_parent.strip("/")
        state_root.mkdir(parents=True, exist_ok=True)
        if self.name == "crun":
            cgroups.ensure_crun_compatible()

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.state_root), *args]

    async def boot(self, spec: SandboxSpec) -> None:
        try:
            overlay.mount_overlay(spec.lower_dirs, spec.upper_dir, spec.work_dir, spec.rootfs)
            config = oci_config.build(
                spec,
                cgroups_path=f"/{self.cgroup_parent}/{spec.sandbox_id}",
                init_args=self._init_args(spec),
            )
            (spec.sandbox_dir / "config.json").write_text(json.dumps(config))
            await run(
                self._argv("run", "--detach", "--bundle", str(spec.sandbox_dir), spec.sandbox_id),
                timeout=30,
                output_file=spec.sandbox_dir / "console.log",
            )
        except BaseException:
            await self.halt(spec)
            raise

    @staticmethod
    def _init_args(spec: SandboxSpec) -> list[str]:
        if spec.main_command:
            # the init reaps orphans and forwards signals to the template's own main process
            return [oci_config.INIT_PATH, "--", *spec.main_command]
        return [oci_config.INIT_PATH, "-P"]

    async def exec(self, sandbox_id: str, request: ExecRequest) -> ExecResult:
        pid_file = self.state_root / f"{sandbox_id}.exec.{os.urandom(6).hex()}.pid"
        argv = self._argv("exec", "--no-new-privs", "--pid-file", str(pid_file), "--cwd", request.cwd)
        for key, value in request.env.items():
            argv += ["--env", f"{key}={value}"]
        argv += [sandbox_id, oci_config.BUSYBOX_PATH, "setsid", *request.argv]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stderr is not None
        out, err = bytearray(), bytearray()
        readers = [
            asyncio.create_task(_read_capped(proc.stdout, out, request.max_output_bytes)),
            asyncio.create_task(_read_capped(proc.stderr, err, request.max_output_bytes)),
        ]
        timed_out = False
        try:
            await asyncio.wait_for(proc.wait(), request.timeout)
        except TimeoutError:
            timed_out = True
            _kill_session(pid_file)
            proc.kill()
            await proc.wait()
        finally:
            # background children may hold the pipes open: take what is there, then let go
            await asyncio.wait(readers, timeout=OUTPUT_GRACE_S)
            for task in readers:
                task.cancel()
            _close_pipes(proc)
            started = pid_file.exists()
            with contextlib.suppress(FileNotFoundError):
                pid_file.unlink()
        code = proc.returncode if proc.returncode is not None else -1
        if timed_out:
            err += f"\nprocess timed out after {request.timeout:g}s and was killed\n".encode()
            code = 124
        elif not started:
            # the runtime failed before the command began (no such cwd, container gone)
            raise ExecSetupFailed(err.decode(errors="replace").strip() or f"exec failed with {code}")
        return ExecResult(exit_code=code, stdout=bytes(out), stderr=bytes(err), timed_out=timed_out)

    async def pause(self, sandbox_id: str) -> None:
        await run(self._argv("pause", sandbox_id), timeout=30)

    async def resume(self, sandbox_id: str) -> None:
        await run(self._argv("resume", sandbox_id), timeout=30)

    async def halt(self, spec: SandboxSpec) -> None:
        await self.halt_by_id(spec.sandbox_id)
        overlay.unmount(spec.rootfs)
        with contextlib.suppress(FileNotFoundError):
            (spec.sandbox_dir / "config.json").unlink()

    async def halt_by_id(self, sandbox_id: str) -> None:
        rc, _, err = await run(self._argv("delete", "--force", sandbox_id), timeout=30, check=False)
        if rc != 0 and b"not exist" not in err and b"No such file" not in err:
            # a paused or wedged container: thaw and kill through the cgroup, then forget it
            cgroups.remove_group(self.cgroup_parent, sandbox_id)
            await run(self._argv("delete", "--force", sandbox_id), timeout=30, check=False)
        cgroups.remove_group(self.cgroup_parent, sandbox_id)

    async def running_ids(self) -> set[str]:
        rc, out, _ = await run(self._argv("list", "--quiet"), timeout=30, check=False)
        if rc != 0:
            return set()
        return {line.strip() for line in out.decode().splitlines() if line.strip()}

    async def orphan_cgroups(self, known: set[str]) -> list[str]:
        removed = []
        for name in cgroups.children(self.cgroup_parent) - known:
            cgroups.remove_group(self.cgroup_parent, name)
            removed.append(name)
        return removed


async def _read_capped(stream: asyncio.StreamReader, into: bytearray, cap: int) -> None:
    while chunk := await stream.read(65536):
        room = cap - len(into)
        if room > 0:
            into += chunk[:room]


def _close_pipes(proc: asyncio.subprocess.Process) -> None:
    transport = getattr(proc, "_transport", None)
    if transport is None:
        return
    for fd in (1, 2):
        pipe = transport.get_pipe_transport(fd)
        if pipe is not None:
            pipe.close()


def _kill_session(pid_file: Path) -> None:
    """SIGKILL every process in the session the command's setsid started."""
    try:
        session = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # fields after the ")" that closes comm: state ppid pgrp session ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == session:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
