"""Contexts: one kernel each, a default per language, executions in one context serialised."""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import INTERRUPT_GRACE_S, Settings
from .kernels.base import Kernel, Language
from .kernels.python import PythonKernel, write_ipython_dir
from .kernels.typescript import TypeScriptKernel
from .outputs import Execution

log = logging.getLogger(__name__)


class ContextError(Exception):
    """Base of the errors the routes turn into a status."""


class UnknownContextError(ContextError):
    pass


class TooManyContextsError(ContextError):
    pass


class KernelUnavailableError(ContextError):
    """The language's runtime is missing or its kernel would not start."""


@dataclass(slots=True)
class Context:
    id: str
    language: Language
    cwd: Path
    kernel: Kernel
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    running: Execution | None = None

    def wire(self) -> dict[str, Any]:
        return {"id": self.id, "language": self.language, "cwd": str(self.cwd)}


class Contexts:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._contexts: dict[str, Context] = {}
        self._defaults: dict[Language, str] = {}
        self._default_lock = asyncio.Lock()  # two first calls must not start two default kernels
        self._reserved = 0  # contexts being created: they count against the limit already
        write_ipython_dir(settings.run_dir)

    def _kernel(self, kernel_id: str, language: Language, cwd: Path) -> Kernel:
        if language == "python":
            return PythonKernel(kernel_id, cwd=cwd, run_dir=self._settings.run_dir)
        if self._settings.node is None:
            raise KernelUnavailableError("TypeScript/JavaScript is not available: node was not found")
        return TypeScriptKernel(kernel_id, cwd=cwd, node=self._settings.node, runner=self._settings.ts_runner)

    async def create(self, language: Language, cwd: Path | None = None) -> Context:
        limit = self._settings.max_contexts
        if len(self._contexts) + self._reserved >= limit:
            raise TooManyContextsError(f"at most {limit} contexts at once; delete one first")
        self._reserved += 1
        try:
            context_id = secrets.token_urlsafe(12)
            cwd = cwd or self._settings.default_cwd
            kernel = self._kernel(context_id, language, cwd)
            try:
                await kernel.start()
            except Exception as exc:
                log.exception("starting a %s kernel", language)
                raise KernelUnavailableError(f"the {language} kernel did not start: {exc}") from exc
            context = Context(context_id, language, cwd, kernel)
            self._contexts[context_id] = context
            return context
        finally:
            self._reserved -= 1

    async def default(self, language: Language) -> Context:
        async with self._default_lock:
            context = self._contexts.get(self._defaults.get(language, ""))
            if context is None:
                context = await self.create(language)
                self._defaults[language] = context.id
            return context

    def get(self, context_id: str) -> Context:
        context = self._contexts.get(context_id)
        if context is None:
            raise UnknownContextError(f"context {context_id!r} not found")
        return context

    def list(self) -> list[Context]:
        return list(self._contexts.values())

    async def delete(self, context_id: str) -> None:
        context = self.get(context_id)
        del self._contexts[context_id]
        await _stop(context)

    async def execute(
        self, context: Context, code: str, out: Execution, *, env_vars: dict[str, str], timeout_s: float
    ) -> None:
        """Runs one cell; always finishes ``out`` (markers, closing ``exit`` event)."""
        try:
            async with context.lock:
                if context.id not in self._contexts:
                    out.fail("ContextDeleted", f"context {context.id} was deleted", "")
                    return
                context.running = out
                try:
                    await context.kernel.execute(code, out, env_vars=env_vars, timeout_s=timeout_s)
                finally:
                    context.running = None
        except Exception as exc:  # a kernel that will not even restart: an error result, not a 500
            log.exception("execute in context %s", context.id)
            out.fail("KernelError", f"the {context.language} kernel failed: {exc}", "")
        finally:
            out.finish()

    def interrupt_all(self) -> None:
        """The service is stopping: running cells end now with an error result, not a cut connection."""
        for context in self._contexts.values():
            if context.running is not None:
                context.running.cancelled.set()

    async def close(self) -> None:
        contexts, self._contexts = list(self._contexts.values()), {}
        await asyncio.gather(*(_stop(c) for c in contexts), return_exceptions=True)


async def _stop(context: Context) -> None:
    # A running cell is interrupted first, so its execute returns an error instead of hanging.
    if context.running is not None:
        context.running.cancelled.set()
    try:
        await asyncio.wait_for(context.lock.acquire(), INTERRUPT_GRACE_S * 2)
        locked = True
    except TimeoutError:
        locked = False
    try:
        await context.kernel.shutdown()
    finally:
        if locked:
            context.lock.release()
