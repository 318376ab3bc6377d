"""HTTP routes of the desktop service (leap0 wire, spec agent-services section 5): display,
screenshots, pointer and keyboard input, recordings, the supervisor's status and processes, and
the noVNC viewer (``vnc``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from . import handlers, inputs, vnc
from .bodies import (
    BadRequestError,
    image_format,
    in_screen,
    integer,
    parse_json,
    query_ints,
    required_int,
    string,
)
from .config import (
    MAX_BODY_BYTES,
    MAX_HEIGHT,
    MAX_HOTKEY_KEYS,
    MAX_KEY_CHARS,
    MAX_LOG_TAIL_BYTES,
    MAX_SCROLL,
    MAX_TYPE_CHARS,
    MAX_WIDTH,
    MIN_HEIGHT,
    MIN_WIDTH,
    NOVNC_DIR,
    Settings,
)
from .recording import NotRecordingError, Recorder, RecordingActiveError, UnknownRecordingError
from .supervisor import NAMES, Supervisor
from .x11 import X11, DisplayUnavailableError, Region, encode

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0  # the status stream repeats itself this often (leap0's documented heartbeat)


class BodyTooLargeError(Exception):
    pass


async def _body(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyTooLargeError
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLargeError
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


def _sup(request: Request) -> Supervisor:
    supervisor: Supervisor = request.app.state.supervisor
    return supervisor


def _x11(request: Request) -> X11:
    x11: X11 = request.app.state.x11
    return x11


def _recorder(request: Request) -> Recorder:
    recorder: Recorder = request.app.state.recorder
    return recorder


async def _size(request: Request) -> tuple[int, int]:
    return await asyncio.to_thread(_x11(request).size)


# -- health and display ------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    healthy = _sup(request).healthy
    return JSONResponse({"ok": healthy}, status_code=200 if healthy else 503)


async def display(request: Request) -> Response:
    width, height = await _size(request)
    return JSONResponse({"display": _x11(request).display_name, "width": width, "height": height})


async def resize_screen(request: Request) -> Response:
    body = await _body(request)
    width = required_int(body, "width", low=MIN_WIDTH, high=MAX_WIDTH)
    height = required_int(body, "height", low=MIN_HEIGHT, high=MAX_HEIGHT)
    if (width, height) != await _size(request):
        # live (RandR) within Xvfb's framebuffer; beyond it the desktop starts again at that size
        await _sup(request).resize(width, height)
    return await display(request)


async def windows(request: Request) -> Response:
    return JSONResponse({"items": await asyncio.to_thread(_x11(request).windows)})


# -- screenshots -------------------------------------------------------------------------------


async def _capture(request: Request, fields: dict[str, Any]) -> Response:
    fmt = image_format(fields.get("format"))
    quality = integer(fields, "quality", low=1, high=100)
    x = integer(fields, "x", low=0) or 0
    y = integer(fields, "y", low=0) or 0
    width = integer(fields, "width", low=0)
    height = integer(fields, "height", low=0)
    if (width is None) != (height is None):
        raise BadRequestError("height" if height is None else "width", "width and height go together")
    screen_w, screen_h = await _size(request)
    in_screen("x", x, screen_w)
    in_screen("y", y, screen_h)
    region = None
    if width and height:
        if x + width > screen_w:
            raise BadRequestError("width", f"x + width must be <= {screen_w}")
        if y + height > screen_h:
            raise BadRequestError("height", f"y + height must be <= {screen_h}")
        region = Region(x, y, width, height)
    elif width or height:
        raise BadRequestError(
            "width" if not width else "height", "must be > 0 (or both 0 for the full screen)"
        )
    elif x or y:
        region = Region(x, y, screen_w - x, screen_h - y)
    x11 = _x11(request)

    def shot() -> tuple[bytes, str]:
        return encode(x11.capture(region), fmt, quality)

    data, media_type = await asyncio.to_thread(shot)
    return Response(data, media_type=media_type)


async def screenshot(request: Request) -> Response:
    params = dict(request.query_params)
    fields: dict[str, Any] = {"format": params.get("format") or None}
    fields.update(query_ints(params, ("quality", "x", "y", "width", "height")))
    return await _capture(request, fields)


async def screenshot_region(request: Request) -> Response:
    body = await _body(request)
    for name in ("x", "y"):
        required_int(body, name, low=0)
    for name in ("width", "height"):
        required_int(body, name, low=1)
    return await _capture(request, body)


# -- input -------------------------------------------------------------------------------------


async def _position(request: Request) -> Response:
    x, y = await asyncio.to_thread(_x11(request).pointer)
    return JSONResponse({"x": x, "y": y})


async def _point(
    request: Request, body: dict[str, Any], xname: str, yname: str, *, required: bool
) -> tuple[int, int] | None:
    x = integer(body, xname, required=required, low=0)
    y = integer(body, yname, required=required, low=0)
    if (x is None) != (y is None):
        raise BadRequestError(yname if y is None else xname, f"{xname} and {yname} go together")
    if x is None or y is None:
        return None
    width, height = await _size(request)
    in_screen(xname, x, width)
    in_screen(yname, y, height)
    return x, y


async def position(request: Request) -> Response:
    return await _position(request)


async def move(request: Request) -> Response:
    point = await _point(request, await _body(request), "x", "y", required=True)
    assert point is not None
    await inputs.move(*point)
    return await _position(request)


async def click(request: Request) -> Response:
    body = await _body(request)
    button = integer(body, "button", low=1, high=3) or 1
    point = await _point(request, body, "x", "y", required=False)
    await inputs.click(point[0] if point else None, point[1] if point else None, button)
    return await _position(request)


async def drag(request: Request) -> Response:
    body = await _body(request)
    button = integer(body, "button", low=1, high=3) or 1
    start = await _point(request, body, "from_x", "from_y", required=True)
    end = await _point(request, body, "to_x", "to_y", required=True)
    assert start is not None and end is not None
    await inputs.drag(*start, *end, button)
    return await _position(request)


async def scroll(request: Request) -> Response:
    body = await _body(request)
    direction = string(body, "direction", max_chars=8)
    if direction not in inputs.SCROLL_BUTTONS:
        raise BadRequestError("direction", "must be one of: up, down, left, right")
    amount = integer(body, "amount", low=1, high=MAX_SCROLL) or 1
    await inputs.scroll(direction, amount)
    return await _position(request)


async def type_text(request: Request) -> Response:
    text = string(await _body(request), "text", max_chars=MAX_TYPE_CHARS, allow_empty=True)
    if text:
        await inputs.type_text(text)
    return JSONResponse({"ok": True})


async def press(request: Request) -> Response:
    key = inputs.check_key(string(await _body(request), "key", max_chars=MAX_KEY_CHARS), "key")
    await inputs.press(key)
    return JSONResponse({"ok": True})


async def hotkey(request: Request) -> Response:
    keys = (await _body(request)).get("keys")
    if not isinstance(keys, list) or not keys:
        raise BadRequestError("keys", "must be a non-empty array of key names")
    if len(keys) > MAX_HOTKEY_KEYS:
        raise BadRequestError("keys", f"must have at most {MAX_HOTKEY_KEYS} keys")
    for i, key in enumerate(keys):
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
            raise BadRequestError(f"keys[{i}]", "must be a key name")
        inputs.check_key(key, f"keys[{i}]")
    await inputs.hotkey(keys)
    return JSONResponse({"ok": True})


# -- recordings --------------------------------------------------------------------------------


async def recording_status(request: Request) -> Response:
    return JSONResponse(_recorder(request).current())


async def recording_start(request: Request) -> Response:
    width, height = await _size(request)
    return JSONResponse(await _recorder(request).start(width, height), status_code=201)


async def recording_stop(request: Request) -> Response:
    return JSONResponse(await _recorder(request).stop())


async def recordings(request: Request) -> Response:
    return JSONResponse({"items": _recorder(request).list()})


async def recording(request: Request) -> Response:
    recorder = _recorder(request)
    rec_id = request.path_params["rec_id"]
    if request.method == "DELETE":
        await recorder.delete(rec_id)
        return Response(status_code=204)
    return JSONResponse(recorder.get(rec_id).summary())


async def recording_download(request: Request) -> Response:
    found = _recorder(request).get(request.path_params["rec_id"])
    if found.active or not found.path.is_file():
        return JSONResponse({"message": "the recording is still active"}, status_code=409)
    return FileResponse(found.path, media_type="video/mp4", filename=found.path.name)


# -- supervisor --------------------------------------------------------------------------------


async def status(request: Request) -> Response:
    return JSONResponse(_sup(request).status())


async def status_stream(request: Request) -> Response:
    supervisor = _sup(request)

    async def events() -> AsyncIterator[bytes]:
        while True:
            changed = supervisor.changed
            yield f"data: {json.dumps(supervisor.status())}\n\n".encode()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), HEARTBEAT_S)

    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _process_name(request: Request) -> str:
    name = str(request.path_params["name"])
    if name not in NAMES:
        raise BadRequestError("processName", f"must be one of: {', '.join(NAMES)}")
    return name


async def process_status(request: Request) -> Response:
    return JSONResponse(_sup(request).processes[_process_name(request)].info())


async def process_restart(request: Request) -> Response:
    name = _process_name(request)
    info = await _sup(request).restart(name)
    return JSONResponse({"message": f"{name} restarted", "status": info})


def _tail(path: Any) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - MAX_LOG_TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


async def process_logs(request: Request) -> Response:
    name = _process_name(request)
    text = await asyncio.to_thread(_tail, _sup(request).processes[name].stdout_log)
    return JSONResponse({"process": name, "logs": text})


async def process_errors(request: Request) -> Response:
    name = _process_name(request)
    text = await asyncio.to_thread(_tail, _sup(request).processes[name].stderr_log)
    return JSONResponse({"process": name, "errors": text})


# -- errors and the app ------------------------------------------------------------------------


def create_app(
    settings: Settings, supervisor: Supervisor | None = None, starting: asyncio.Task[None] | None = None
) -> Starlette:
    """The service; ``supervisor`` and its ``starting`` task when the desktop was started
    before this module was imported (``__main__``), else both are made here."""
    if supervisor is None:
        supervisor = Supervisor(settings, X11(settings.display))
    x11 = supervisor.x11
    recorder = Recorder(settings.recordings_dir, settings.display)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal starting
        app.state.x11, app.state.supervisor, app.state.recorder = x11, supervisor, recorder
        if starting is None:
            starting = asyncio.create_task(supervisor.start())
        try:
            yield
        finally:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await recorder.close()
            await supervisor.close()
            await asyncio.to_thread(x11.close)

    api = [
        Route("/api/healthz", healthz),
        Route("/api/display", display),
        Route("/api/display/screen", display, methods=["GET"]),
        Route("/api/display/screen", resize_screen, methods=["POST"]),
        Route("/api/display/windows", windows),
        Route("/api/screenshot", screenshot),
        Route("/api/screenshot/region", screenshot_region, methods=["POST"]),
        Route("/api/input/position", position),
        Route("/api/input/move", move, methods=["POST"]),
        Route("/api/input/click", click, methods=["POST"]),
        Route("/api/input/drag", drag, methods=["POST"]),
        Route("/api/input/scroll", scroll, methods=["POST"]),
        Route("/api/input/type", type_text, methods=["POST"]),
        Route("/api/input/press", press, methods=["POST"]),
        Route("/api/input/hotkey", hotkey, methods=["POST"]),
        Route("/api/recording", recording_status),
        Route("/api/recording/start", recording_start, methods=["POST"]),
        Route("/api/recording/stop", recording_stop, methods=["POST"]),
        Route("/api/recordings", recordings),
        Route("/api/recordings/{rec_id}", recording, methods=["GET", "DELETE"]),
        Route("/api/recordings/{rec_id}/download", recording_download),
        Route("/api/status", status),
        Route("/api/status/stream", status_stream),
        Route("/api/process/{name}/status", process_status),
        Route("/api/process/{name}/restart", process_restart, methods=["POST"]),
        Route("/api/process/{name}/logs", process_logs),
        Route("/api/process/{name}/errors", process_errors),
        Route("/", vnc.index),
        WebSocketRoute("/websockify", vnc.websockify),
    ]
    if NOVNC_DIR.is_dir():
        api.append(Mount("/", app=StaticFiles(directory=NOVNC_DIR), name="novnc"))
    return Starlette(
        routes=api,
        lifespan=lifespan,
        exception_handlers={
            BadRequestError: handlers.bad_request,
            BodyTooLargeError: handlers.status(413, "request body too large"),
            UnknownRecordingError: handlers.status(404, "no such recording"),
            RecordingActiveError: handlers.status(409, "a recording is active"),
            NotRecordingError: handlers.status(409, "no recording is active"),
            DisplayUnavailableError: handlers.status(503, "the display is not running"),
            inputs.InputFailedError: handlers.input_failed,
            HTTPException: handlers.http_error,
        },
    )
