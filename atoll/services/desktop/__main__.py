"""``python -m desktop``: serve on ``$HOST:$PORT`` (default 0.0.0.0:6080) and run the desktop.

The desktop starts first and the web service's imports (uvicorn, starlette, Pillow: about a
second of a cold start under gVisor) run in a thread meanwhile, so they are off the path to
ready (which waits for the window manager, seconds after Xvfb)."""

from __future__ import annotations

import asyncio
import importlib
import logging
import time

from .config import Settings
from .supervisor import Supervisor
from .x11 import X11

log = logging.getLogger(__name__)


def main() -> None:
    settings = Settings.from_env()
    # also in a file inside the sandbox: the start-up's timings can be read there
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s desktop %(levelname)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(settings.run_dir / "desktop.log")],
    )
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    supervisor = Supervisor(settings, X11(settings.display))
    starting = asyncio.create_task(supervisor.start())
    began = time.monotonic()
    uvicorn = await asyncio.to_thread(importlib.import_module, "uvicorn")
    app = await asyncio.to_thread(importlib.import_module, ".app", __package__)
    log.info("web service imported in %.2f s", time.monotonic() - began)
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
