"""System templates built in the background once the server is up (``atoll serve`` starts
without waiting minutes for them): one at a time, in a thread, never on the event loop.

While one is missing and being built, a create from it gets 503 with Retry-After and the
build's progress; ``/v1/health`` shows the progress too. A failed build is logged, shown in
health, and answered with 503 naming the failure; the next create after ``retry_backoff_s``
starts it again (so a transient failure, e.g. the package index being down, heals itself
without hammering the index on every request).

Only missing templates are built here: one on disk but built from older inputs is replaced
by ``atoll template build`` (``make test`` does), never under sandboxes a server may run."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from atoll._exceptions import UnavailableError
from atoll._tasks import cancel_and_wait
from atoll.templates.build import cancel_event
from atoll.templates.registry import TemplateRegistry
from atoll.templates.system import SYSTEM_TEMPLATES, SystemTemplate

log = logging.getLogger("atoll.server.templates")
RETRY_AFTER_S = 30
RETRY_BACKOFF_S = 300.0
LOG_EVERY_S = 10.0  # progress lines in the log: on each new phase, else at most this often
STOP_TIMEOUT_S = 60.0


def log_to_stderr(level: str) -> None:
    """Show the build's progress lines in the server's output (atoll's loggers have no handler
    of their own; uvicorn configures only its own)."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-9s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.getLevelNamesMapping().get(level.upper(), logging.DEBUG))  # "trace": DEBUG


@dataclass
class BuildState:
    progress: float = 0.0
    phase: str = "queued"
    error: str | None = None
    failed_at: float | None = None  # time.monotonic()
    logged_at: float = field(default=0.0)

    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = {"progress": round(self.progress, 3), "phase": self.phase}
        if self.error is not None:
            data["error"] = self.error
        return data


class TemplateBuilds:
    def __init__(
        self,
        registry: TemplateRegistry,
        templates: Sequence[SystemTemplate] | None = None,
        *,
        retry_backoff_s: float = RETRY_BACKOFF_S,
        on_built: Callable[[], None] | None = None,
    ) -> None:
        self.registry = registry
        self.on_built = on_built  # e.g. wakes the warm pool, which may keep sandboxes of it
        self.templates = [t for t in (templates or SYSTEM_TEMPLATES) if t.on_demand]
        self.retry_backoff_s = retry_backoff_s
        self.states: dict[str, BuildState] = {}  # templates building, queued or failed
        self._stop = threading.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        missing = [t for t in self.templates if self.registry.get(t.name) is None]
        for template in missing:
            self.states[template.name] = BuildState()
            log.info("template %s is missing: building it in the background", template.name)
        for template in self.templates:
            if template not in missing and not template.is_current(self.registry):
                log.warning(
                    "template %s was built from older inputs: rebuild it with `atoll template build %s`",
                    template.name,
                    template.untagged,
                )
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        self._stop.set()  # terminates the running build step; the thread then ends
        self._wake.set()
        if self._task is not None:
            try:  # let the thread finish (cancelling the task would not stop it)
                await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("a template build did not stop within %.0f s", STOP_TIMEOUT_S)
            await cancel_and_wait(self._task)

    def report(self) -> dict[str, dict[str, Any]]:
        """For /v1/health: each template being built (or whose build failed) and its progress."""
        return {name: state.report() for name, state in self.states.items()}

    def check(self, name: str) -> None:
        """Raise UnavailableError (503, Retry-After) when ``name`` (with its tag, as creates name
        templates) is one being built or whose build failed; nothing when it is not one of ours
        (the caller answers 400)."""
        template = next((t for t in self.templates if t.name == name), None)
        if template is None or self.registry.get(template.name) is not None:
            return
        state = self.states.get(template.name)
        if state is None:  # built then deleted from disk: build it again
            state = self.states[template.name] = BuildState()
            self._wake.set()
        if state.error is not None:
            if state.failed_at is not None and time.monotonic() - state.failed_at >= self.retry_backoff_s:
                self.states[template.name] = BuildState()
                self._wake.set()
                log.info("retrying the build of template %s", template.name)
            raise UnavailableError(
                f"template {template.name} could not be built ({state.error}); retry later",
                retry_after=RETRY_AFTER_S,
            )
        raise UnavailableError(
            f"template {template.name} is being built ({state.progress:.0%}, {state.phase}); retry later",
            retry_after=RETRY_AFTER_S,
        )

    async def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            for template in self.templates:
                state = self.states.get(template.name)
                if state is not None and state.error is None and not self._stop.is_set():
                    await self._build(template, state)
            await self._wake.wait()

    async def _build(self, template: SystemTemplate, state: BuildState) -> None:
        started = time.monotonic()
        try:
            await asyncio.to_thread(self._build_in_thread, template, state)
        except Exception as exc:  # any failure is reported, never fatal to the server
            if self._stop.is_set():
                log.info("build of template %s stopped with the server", template.name)
                return
            state.error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            state.failed_at = time.monotonic()
            log.error("building template %s failed: %s", template.name, exc)
            return
        self.states.pop(template.name, None)
        log.info("template %s built in %.0f s", template.name, time.monotonic() - started)
        if self.on_built is not None:
            self.on_built()

    def _build_in_thread(self, template: SystemTemplate, state: BuildState) -> None:
        cancel_event.set(self._stop)  # this thread's copy of the context: stops its subprocesses

        def progress(fraction: float, phase: str) -> None:
            new_phase = phase.split(" (")[0] != state.phase.split(" (")[0]  # not per package
            state.progress, state.phase = fraction, phase
            now = time.monotonic()
            if new_phase or now - state.logged_at >= LOG_EVERY_S:
                state.logged_at = now
                log.info("building template %s: %3.0f%% %s", template.name, fraction * 100, phase)

        template.build(self.registry, on_progress=progress)
