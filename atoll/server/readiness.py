"""Waiting for a template's own service to answer before its sandbox is handed out.

A template whose main process is a service (the code interpreter) names a readiness path in
its ``template.json``. A create from it returns once ``GET http://{sandbox}:{PORT}{path}``
answers 200, so the caller's first request reaches a service that is up instead of a refused
port (what the unchanged leap0 SDK expects: it calls the service right after the create). Warm
sandboxes are made ready the same way before they join the pool, which is what makes a create
from the pool fast: the kernel is already up."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from atoll._exceptions import ServerError

log = logging.getLogger("atoll.readiness")
POLL_INTERVAL_S = 0.02
PROBE_TIMEOUT_S = 2.0
# a Python kernel with the data stack imports in about a second on an idle host; a loaded host
# (or gVisor) takes several times that
READY_TIMEOUT_S = 120.0


class ServiceNotReady(ServerError):
    """The template's service did not answer its readiness path in time."""


async def wait_until_ready(host: str, port: int, path: str, *, timeout_s: float = READY_TIMEOUT_S) -> float:
    """Poll until the service answers 200; returns the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout_s
    last = "no answer"
    # trust_env=False: a proxy from the server's environment must never see sandbox traffic
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S, trust_env=False) as client:
        while True:
            try:
                response = await client.get(f"http://{host}:{port}{path}")
                if response.status_code == 200:
                    return time.monotonic() - started
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            if time.monotonic() >= deadline:
                raise ServiceNotReady(
                    f"the template's service did not become ready on port {port} "
                    f"within {timeout_s:g}s ({last})"
                )
            await asyncio.sleep(POLL_INTERVAL_S)
