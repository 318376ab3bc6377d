"""Rendering for the dashboard: Jinja2 pages with security headers, the front-end libraries
from ``frontend/node_modules`` (installed by ``make setup``, never committed), and one route
class that turns API errors into HTML (a 404 page, a sign-in redirect, an inline message for
htmx requests) instead of the API's JSON."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError

from atoll._exceptions import APIError, NotFoundError, OperationFailure, status_for
from atoll.dashboard.sessions import CsrfRefused, SignInRequired
from atoll.server.errors import http_error

log = logging.getLogger("atoll.dashboard")
HERE = Path(__file__).parent
NODE_MODULES = HERE / "frontend" / "node_modules"
INSTALL_HINT = "cd atoll/dashboard/frontend && npm ci (or: make setup)"
# served name -> file under node_modules: only these, never the whole tree
VENDOR: dict[str, str] = {
    "htmx.min.js": "htmx.org/dist/htmx.min.js",
    "xterm.js": "@xterm/xterm/lib/xterm.js",
    "xterm.css": "@xterm/xterm/css/xterm.css",
    "addon-fit.js": "@xterm/addon-fit/lib/addon-fit.js",
    "uPlot.iife.min.js": "uplot/dist/uPlot.iife.min.js",
    "uPlot.min.css": "uplot/dist/uPlot.min.css",
}
# inline styles are allowed because xterm.js sizes its rows with them; scripts never inline
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}

env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    enable_async=False,
)


def frontend_installed() -> bool:
    return all((NODE_MODULES / path).is_file() for path in VENDOR.values())


def warn_if_missing() -> None:
    if not frontend_installed():
        log.warning("dashboard front-end libraries are not installed; the pages work without "
                    "their scripts until then: %s", INSTALL_HINT)  # fmt: skip


def render(request: Request, template: str, status_code: int = 200, /, **context: Any) -> HTMLResponse:
    context.setdefault("session", getattr(request.state, "dashboard_session", None))
    context.setdefault("frontend_missing", None if frontend_installed() else INSTALL_HINT)
    html = env.get_template(template).render(request=request, **context)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


# Assets are linked with a version (a hash of the file) and then cached for good: a page load
# asks for none of them again, not even to revalidate (the stylesheet blocks the first paint).
IMMUTABLE = "public, max-age=31536000, immutable"
_versions: dict[Path, tuple[tuple[int, int], str]] = {}  # path -> ((mtime ns, size), hash)


def _version(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    key = (stat.st_mtime_ns, stat.st_size)
    known = _versions.get(path)
    if known is None or known[0] != key:
        known = (key, hashlib.sha256(path.read_bytes()).hexdigest()[:16])
        _versions[path] = known
    return known[1]


def _vendor_path(name: str) -> Path | None:
    relative = VENDOR.get(name)
    return NODE_MODULES / relative if relative else None


def _static_path(name: str) -> Path | None:
    if "/" in name or name.startswith("."):
        return None
    return HERE / "static" / name


def static_url(name: str) -> str:
    path = _static_path(name)
    return f"/ui/static/{name}?v={_version(path) if path else 'missing'}"


def vendor_url(name: str) -> str:
    path = _vendor_path(name)
    return f"/ui/vendor/{name}?v={_version(path) if path else 'missing'}"


def _asset(path: Path, version: str | None) -> Response:
    # the current version is cached for good; any other (or none) is revalidated each time
    cache = IMMUTABLE if version is not None and version == _version(path) else "no-cache"
    return FileResponse(path, headers={"cache-control": cache, "x-content-type-options": "nosniff"})


def vendor_file(name: str, version: str | None = None) -> Response:
    path = _vendor_path(name)
    if path is None or not path.is_file():
        return Response(f"not installed: {INSTALL_HINT}\n", status_code=404, media_type="text/plain")
    return _asset(path, version)


def static_file(name: str, version: str | None = None) -> Response:
    path = _static_path(name)
    if path is None or not path.is_file():
        return Response("not found\n", status_code=404, media_type="text/plain")
    return _asset(path, version)


env.globals.update(static=static_url, vendor=vendor_url)  # versioned asset links in templates


def validation_messages(exc: ValidationError) -> list[dict[str, str]]:
    """The API's ``errors`` list (same field names and wording as ``atoll.server.errors``)."""
    out = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ())]
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        out.append({"field": ".".join(loc) or "body", "error": message})
    return out


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def message_fragment(request: Request, message: str, errors: list[dict[str, str]] | None = None) -> Response:
    """An error shown in the page's message area by htmx (200: htmx swaps only successes)."""
    response = render(request, "_message.html", message=message, errors=errors or [], kind="error")
    response.headers["hx-retarget"] = "#flash"
    response.headers["hx-reswap"] = "innerHTML"
    return response


def error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, SignInRequired):
        if is_htmx(request):
            return Response(status_code=401, headers={"hx-redirect": "/ui/login"})
        return RedirectResponse("/ui/login", status_code=303)
    if isinstance(exc, CsrfRefused):
        return render(request, "error.html", 403, title="Forbidden", message="missing or wrong CSRF token")
    if isinstance(exc, ValidationError):
        errors = validation_messages(exc)
        summary = "invalid request: " + "; ".join(f"{e['field']}: {e['error']}" for e in errors)
        if is_htmx(request):
            return message_fragment(request, summary, errors)
        return render(request, "error.html", 400, title="Invalid request", message=summary)
    assert isinstance(exc, APIError)
    if is_htmx(request) and not isinstance(exc, NotFoundError):
        return message_fragment(request, exc.message)
    title = "Not found" if isinstance(exc, NotFoundError) else "Error"
    return render(request, "error.html", status_for(exc), title=title, message=exc.message)


class DashboardRoute(APIRoute):
    """Dashboard errors as pages: sign-in redirects, the 404 page, messages for htmx."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except (APIError, SignInRequired, CsrfRefused, ValidationError) as exc:
                return error_response(request, exc)
            except OperationFailure as exc:  # typed below the server (e.g. a file): its API answer
                return error_response(request, http_error(exc))

        return handle
