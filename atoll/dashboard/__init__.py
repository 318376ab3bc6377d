"""The web dashboard served by ``atoll serve`` at ``/`` on the API's port (docs/dashboard.md).

Server-rendered pages (Jinja2) with htmx, xterm.js for terminals; the front-end libraries come
from the npm registry at setup time (``frontend/package.json``), never from a CDN."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Response

from atoll.dashboard import observe_page, pages, resources, sandbox_page, web

assets = APIRouter(include_in_schema=False)


@assets.get("/ui/static/{name}")
async def static(name: str, v: str | None = None) -> Response:
    return web.static_file(name, v)


@assets.get("/ui/vendor/{name}")
async def vendor(name: str, v: str | None = None) -> Response:
    return web.vendor_file(name, v)


def install(app: FastAPI) -> None:
    """Add the dashboard's routes to the API's application."""
    web.warn_if_missing()
    for router in (
        assets,
        pages.router,
        sandbox_page.router,
        sandbox_page.ws_router,
        observe_page.router,
        resources.router,
    ):
        app.include_router(router)
