"""``python -m code_interpreter``: serve on ``$HOST:$PORT`` (default 0.0.0.0:49999)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from .app import create_app
from .config import Settings
from .contexts import Contexts


class _Server(uvicorn.Server):
    """On SIGTERM/SIGINT, running cells are interrupted first, so their requests end with an error
    result within the graceful shutdown instead of being cut."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        contexts: Contexts | None = getattr(self._app.state, "contexts", None)
        if contexts is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to interrupt
                asyncio.get_running_loop().call_soon_threadsafe(contexts.interrupt_all)
        super().handle_exit(sig, frame)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="code_interpreter %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http="h11",
        loop="asyncio",
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    _Server(config, app).run()


if __name__ == "__main__":
    main()
