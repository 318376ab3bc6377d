"""Running one command in a sandbox (``POST /process/execute``, git): the sandbox resumed if
paused, the template's environment and working directory, and the runtime's setup failures
turned into the request's errors."""

from __future__ import annotations

from atoll._exceptions import SandboxFailure
from atoll.runtime.spec import ExecRequest, ExecResult
from atoll.server.errors import http_error
from atoll.server.manager import SandboxManager


async def execute(
    manager: SandboxManager,
    org_id: str,
    sandbox_id: str,
    *,
    command: str,
    cwd: str | None,
    envs: dict[str, str],
    timeout: float,
) -> ExecResult:
    row = await manager.ensure_running(await manager.get(org_id, sandbox_id))
    template = manager.host.template_for(row)
    request = ExecRequest(
        argv=("/bin/sh", "-c", command),
        env={**template.sandbox_env(), **row.env_vars, **envs},
        cwd=cwd or template.workdir,
        timeout=timeout,
        max_output_bytes=manager.settings.exec_max_output_bytes,
    )
    try:
        return await manager.host.backend_for(row).exec(row.id, request)
    except SandboxFailure as exc:  # typed by the runtime; errors.py picks the status
        raise http_error(exc) from None
