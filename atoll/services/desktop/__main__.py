"""``python -m desktop``: serve on ``$HOST:$PORT`` (default 0.0.0.0:6080) and run the desktop.

Xvfb, the session and websockify are started first, before anything but ``os`` is imported
(``early``: under gVisor the imports take most of a second); the supervisor, once imported,
adopts them. The web service's imports (uvicorn, starlette, Pillow: about a second of a cold
start under gVisor) then run in a thread while the desktop comes up, so they are off the path
to ready (which waits for the window manager, seconds after Xvfb). python-xlib's extension
modules, which its first connection imports (that connection is the check that Xvfb answers),
are imported there first."""

from __future__ import annotations

import os

from . import early

TYPE_CHECKING = False  # typing itself is not imported before the early start
if TYPE_CHECKING:
    from .config import Settings


def main() -> None:
    entered = early.since_pid1()
    try:
        started: early.Early | None = early.start(dict(os.environ))
    except OSError:
        started = None  # the supervisor starts them (and logs why they do not start)
    import asyncio
    import logging

    from .config import Settings

    settings = Settings.from_env()
    # also in a file inside the sandbox: the start-up's timings can be read there
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s desktop %(levelname)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(settings.run_dir / "desktop.log")],
    )
    # the timeline's times are seconds since the sandbox's PID 1 started (early.since_pid1)
    logging.getLogger(__name__).info(
        "service started at %.2f s, early start %s, imports done at %.2f s",
        entered,
        "done" if started else "failed",
        early.since_pid1(),
    )
    asyncio.run(_serve(settings, started))


def _import_xlib_extensions() -> None:
    import contextlib
    import importlib

    extensions = importlib.import_module("Xlib.ext").__extensions__
    for _, module in extensions:
        with contextlib.suppress(ImportError):
            importlib.import_module(f"Xlib.ext.{module}")


async def _serve(settings: Settings, started: early.Early | None) -> None:
    import asyncio
    import importlib
    import logging
    import time

    from .supervisor import Supervisor
    from .x11 import X11

    supervisor = Supervisor(settings, X11(settings.display))
    starting = asyncio.create_task(supervisor.start(started))
    began = time.monotonic()
    await asyncio.to_thread(_import_xlib_extensions)
    uvicorn = await asyncio.to_thread(importlib.import_module, "uvicorn")
    app = await asyncio.to_thread(importlib.import_module, ".app", __package__)
    took = time.monotonic() - began
    logging.getLogger(__name__).info("web service imported in %.2f s (at %.2f s)", took, early.since_pid1())
    config = uvicorn.Config(
        app.create_app(settings, supervisor, starting),
        host=settings.host,
        port=settings.port,
        http="h11",
        ws="websockets-sansio",
        loop="none",  # this one
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    await uvicorn.Server(config).serve()


if __name__ == "__main__":
    main()
