"""The OCI backend: crun (fast) or runc (checkpointable) over one bundle format.

Each sandbox is a bundle dir with an overlay root and a config.json; PID 1 is a static reaping
init from Atoll's helper layer. Commands run through ``<runtime> exec`` (see ``oci_exec``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

from atoll.runtime import cgroups, oci_config, overlay, reaping
from atoll.runtime._proc import run
from atoll.runtime.oci_exec import run_exec
from atoll.runtime.spec import ExecRequest, ExecResult, SandboxSpec


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
            log = spec.sandbox_dir / "runtime.log"
            argv = self._argv("--log", str(log), "run", "--detach", "--bundle", str(spec.sandbox_dir))
            await run([*argv, spec.sandbox_id], timeout=30, error_log=log)
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
        argv = self._argv(
            "exec", "--detach", "--no-new-privs", "--pid-file", str(pid_file), "--cwd", request.cwd
        )
        for key, value in request.env.items():
            argv += ["--env", f"{key}={value}"]
        return await run_exec([*argv, sandbox_id], pid_file, request)

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
        # Kill through the cgroup first: it works on frozen sandboxes too, and `runc delete
        # --force` on a live container spends seconds freezing and polling.
        members = cgroups.pids_in_group(self.cgroup_parent, sandbox_id)
        cgroups.kill_group(self.cgroup_parent, sandbox_id)
        # the init was orphaned by `run --detach` and is ours to reap (see reaping.py)
        await asyncio.gather(*(reaping.reap_when_exits(pid, timeout=5) for pid in members))
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
