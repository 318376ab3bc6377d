"""``python -m desktop``: serve on ``$HOST:$PORT`` (default 0.0.0.0:6080) and run the desktop."""

from __future__ import annotations

import logging

import uvicorn

from .app import create_app
from .config import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="desktop %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http="h11",
        ws="websockets-sansio",
        loop="asyncio",
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
