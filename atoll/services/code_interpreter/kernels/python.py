"""Python contexts: one ipykernel per context, driven with jupyter_client over ipc sockets.

ipc (unix sockets in the service's private run dir) rather than tcp: no ports to pick, nothing on
the sandbox's network, and simpler for CRIU/gVisor checkpoints to restore.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import time
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager

from ..config import INTERRUPT_GRACE_S
from ..outputs import Execution
from .base import RESTART_NEXT, STATE_LOST, Language

log = logging.getLogger(__name__)

# A figure left open becomes a png display item at the end of a cell (matplotlib_inline closes it
# after display); bbox_inches=None keeps the png at the figure's own size.
_KERNEL_CONFIG = """\
c = get_config()  # noqa: F821
c.HistoryManager.enabled = False  # no sqlite history file in the sandbox
c.InlineBackend.print_figure_kwargs = {"bbox_inches": None}
c.InlineBackend.close_figures = True
"""
_POLL_S = 0.2  # how often a waiting execution checks for a dead kernel or a gone client
_START_TIMEOUT_S = 60.0
_ENV_VAR = "_atoll_saved_environ"


def write_ipython_dir(run_dir: Path) -> Path:
    """The IPYTHONDIR of the kernels, with their config; made once per service."""
    profile = run_dir / "ipython" / "profile_default"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "ipython_kernel_config.py").write_text(_KERNEL_CONFIG)
    return run_dir / "ipython"


class PythonKernel:
    language: Language = "python"

    def __init__(self, kernel_id: str, *, cwd: Path, run_dir: Path) -> None:
        self._id = kernel_id
        self._cwd = cwd
        self._run_dir = run_dir
        self._km: AsyncKernelManager | None = None
        self._kc: Any = None
        self._restarted = False  # a restart since the last execution: say state was lost

    async def start(self) -> None:
        km = AsyncKernelManager(
            kernel_name="python3",  # the native kernel: ipykernel of this very interpreter
            transport="ipc",
            ip=str(self._run_dir / f"k-{self._id}"),
            connection_file=str(self._run_dir / f"k-{self._id}.json"),
        )
        env = dict(os.environ)
        env.update(
            MPLBACKEND="module://matplotlib_inline.backend_inline",
            IPYTHONDIR=str(self._run_dir / "ipython"),
            PYDEVD_DISABLE_FILE_VALIDATION="1",
            PYTHONUNBUFFERED="1",
        )
        env.pop("PORT", None)  # the service's own port is none of the user's business
        await km.start_kernel(cwd=str(self._cwd), env=env)
        kc = km.client()
        # No heartbeat thread waking an idle sandbox every few seconds: the manager's process poll
        # tells a dead kernel. No stdin channel: input() is refused (allow_stdin=False).
        kc.start_channels(stdin=False, hb=False)
        try:
            await kc.wait_for_ready(timeout=_START_TIMEOUT_S)
        except BaseException:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)
            raise
        self._km, self._kc = km, kc

    async def shutdown(self) -> None:
        km, kc = self._km, self._kc
        self._km = self._kc = None
        if kc is not None:
            kc.stop_channels()
        if km is not None:
            try:
                await km.shutdown_kernel(now=True)
            except Exception:  # already gone: only its files are left, cleaned below
                log.exception("kernel %s shutdown", self._id)
                km.cleanup_resources()

    async def _restart(self) -> None:
        await self.shutdown()
        await self.start()
        self._restarted = True

    async def _alive(self) -> bool:
        return self._km is not None and bool(await self._km.is_alive())

    async def execute(self, code: str, out: Execution, *, env_vars: dict[str, str], timeout_s: float) -> None:
        if not await self._alive():
            await self._restart()
        if self._restarted:
            self._restarted = False
            out.stream("stderr", f"[{STATE_LOST}]\n")
        if env_vars:
            await self._silent(_set_env_code(env_vars))
        try:
            await self._run(code, out, timeout_s)
        finally:
            if env_vars and await self._alive():
                await self._silent(_restore_env_code())

    async def _run(self, code: str, out: Execution, timeout_s: float) -> None:
        kc = self._kc
        msg_id: str = kc.execute(code, store_history=True, allow_stdin=False, stop_on_error=True)
        deadline = time.monotonic() + timeout_s
        interrupted: str | None = None  # why we interrupted: "timeout" or "cancelled"
        while True:
            now = time.monotonic()
            if interrupted is None and (now >= deadline or out.cancelled.is_set()):
                interrupted = "timeout" if now >= deadline else "cancelled"
                await self._km.interrupt_kernel()  # type: ignore[union-attr]
                deadline = now + INTERRUPT_GRACE_S
            elif interrupted is not None and now >= deadline:
                # SIGINT did not stop it (e.g. a long C call): only a restart frees the context.
                await self._restart()
                self._restarted = False  # said here already
                _fail_interrupted(out, interrupted, timeout_s, f"; {STATE_LOST}")
                return
            try:
                msg = await kc.get_iopub_msg(timeout=min(_POLL_S, max(deadline - now, 0.01)))
            except queue.Empty:
                if not await self._alive():
                    out.fail("KernelDied", f"the Python kernel died; {RESTART_NEXT}", "")
                    return
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if _handle_iopub(msg, out, interrupted):
                break
        if interrupted is not None:
            _fail_interrupted(out, interrupted, timeout_s, "")
        reply = await self._reply(msg_id, timeout_s=5.0)
        if reply is not None:
            out.execution_count = reply["content"].get("execution_count")

    async def _reply(self, msg_id: str, *, timeout_s: float) -> dict[str, Any] | None:
        """The shell reply to ``msg_id``, skipping replies to earlier requests."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg: dict[str, Any] = await self._kc.get_shell_msg(timeout=left)
            except queue.Empty:
                return None
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return msg
        return None

    async def _silent(self, code: str) -> None:
        msg_id = self._kc.execute(code, silent=True, store_history=False, allow_stdin=False)
        await self._reply(msg_id, timeout_s=10.0)


def _handle_iopub(msg: dict[str, Any], out: Execution, interrupted: str | None) -> bool:
    """Feeds one iopub message of our request to ``out``; True once the kernel is idle again."""
    kind = msg["header"]["msg_type"]
    content = msg["content"]
    if kind == "stream":
        out.stream("stderr" if content.get("name") == "stderr" else "stdout", content.get("text", ""))
    elif kind == "execute_result":
        out.display(content.get("data", {}), primary=True)
        out.execution_count = content.get("execution_count")
    elif kind == "display_data":
        out.display(content.get("data", {}), primary=False)
    elif kind == "error" and interrupted is None:
        out.fail(content.get("ename", "Error"), content.get("evalue", ""), "\n".join(content["traceback"]))
    elif kind == "status" and content.get("execution_state") == "idle":
        return True
    return False


def _fail_interrupted(out: Execution, why: str, timeout_s: float, suffix: str) -> None:
    if why == "timeout":
        value = f"execution exceeded the timeout of {round(timeout_s * 1000)} ms and was interrupted{suffix}"
        out.fail("TimeoutError", value, f"TimeoutError: {value}")
    else:
        value = f"execution interrupted: the client went away or the service is stopping{suffix}"
        out.fail("KeyboardInterrupt", value, f"KeyboardInterrupt: {value}")


def _set_env_code(env_vars: dict[str, str]) -> str:
    # A JSON string inside a Python string literal: no user text is ever parsed as code.
    payload = repr(json.dumps(env_vars))
    return (
        "import os as _o, json as _j\n"
        f"_n = _j.loads({payload})\n"
        f"{_ENV_VAR} = {{k: _o.environ.get(k) for k in _n}}\n"
        "_o.environ.update(_n)\n"
        "del _o, _j, _n\n"
    )


def _restore_env_code() -> str:
    return (
        "import os as _o\n"
        f"for _k, _v in globals().pop({_ENV_VAR!r}, {{}}).items():\n"
        "    _o.environ.pop(_k, None) if _v is None else _o.environ.__setitem__(_k, _v)\n"
        "del _o\n"
        "globals().pop('_k', None); globals().pop('_v', None)\n"
    )
