"""``sandbox.desktop``: see and drive a graphical desktop in a sandbox (agent-services §5).

The desktop is a service inside the sandbox (template ``system/desktop:v0.1.0``,
``atoll.DESKTOP_TEMPLATE``), reached on the sandbox's own host ``{scheme}://{id}.{sandbox_domain}``
through the router; the API key goes along as a bearer token. ``url()`` is the noVNC page a
person opens in a browser to watch (and take over)."""

from __future__ import annotations

import time
from typing import Any, Protocol

import anyio
import httpx

from atoll._exceptions import AtollTimeoutError, InvalidArgument, ServerError, TransportError
from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._desktop import (
    SCROLL_DIRECTIONS,
    DesktopProcess,
    DesktopStatus,
    DesktopWindow,
    DisplayInfo,
    PointerPosition,
    RecordingStatus,
    RecordingSummary,
    check_button,
    check_coordinate,
    check_process,
    screenshot_params,
)
from atoll.sdk.models import json_object

READY_POLL_S = 0.25
# while the desktop (or the sandbox's router path to it) is starting, these answer: keep waiting
_STARTING_STATUSES = (502, 503, 504)


class SandboxHost(Protocol):
    @property
    def id(self) -> str: ...

    def invoke_url(self, path: str = "/", *, port: int | None = None) -> str: ...


class AsyncDesktop:
    """The desktop of one sandbox."""

    def __init__(self, transport: AsyncTransport, sandbox: SandboxHost) -> None:
        self._transport = transport
        self._sandbox = sandbox

    def url(self) -> str:
        """The noVNC page of this desktop (for a browser)."""
        return self._sandbox.invoke_url("/")

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        expected_status: int = 200,
        http_timeout: float | None = None,
    ) -> httpx.Response:
        host = self._transport.for_base_url(self._sandbox.invoke_url("/").rstrip("/"))
        try:
            return await host.request(
                method, path, params=params, json=json, expected_status=expected_status, timeout=http_timeout
            )
        except TransportError as exc:
            exc.add_note(f"sandbox URL: {host.base_url}")
            raise

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return json_object((await self._request(method, path, **kwargs)).content)

    # -- display -------------------------------------------------------------------------------

    async def display_info(self) -> DisplayInfo:
        return DisplayInfo.from_dict(await self._json("GET", "/api/display"))

    async def resize_screen(self, width: int, height: int) -> DisplayInfo:
        """A new resolution (width 320-7680, height 320-4320). The desktop restarts at that size:
        open windows are closed."""
        if not 320 <= width <= 7680:
            raise InvalidArgument("width", "must be between 320 and 7680")
        if not 320 <= height <= 4320:
            raise InvalidArgument("height", "must be between 320 and 4320")
        body = {"width": width, "height": height}
        return DisplayInfo.from_dict(
            await self._json("POST", "/api/display/screen", json=body, http_timeout=120)
        )

    async def windows(self) -> list[DesktopWindow]:
        data = await self._json("GET", "/api/display/windows")
        items = data.get("items")
        return (
            [DesktopWindow.from_dict(i) for i in items if isinstance(i, dict)]
            if isinstance(items, list)
            else []
        )

    async def screenshot(
        self,
        *,
        image_format: str | None = None,
        quality: int | None = None,
        region: tuple[int, int, int, int] | None = None,
    ) -> bytes:
        """The screen (or ``region`` = (x, y, width, height)) as PNG or JPEG bytes."""
        params = screenshot_params(image_format, quality, region)
        return (await self._request("GET", "/api/screenshot", params=params or None)).content

    # -- input ---------------------------------------------------------------------------------

    async def pointer_position(self) -> PointerPosition:
        return PointerPosition.from_dict(await self._json("GET", "/api/input/position"))

    async def move(self, x: int, y: int) -> PointerPosition:
        check_coordinate("x", x)
        check_coordinate("y", y)
        return PointerPosition.from_dict(await self._json("POST", "/api/input/move", json={"x": x, "y": y}))

    async def click(self, x: int | None = None, y: int | None = None, *, button: int = 1) -> PointerPosition:
        """Click ``button`` (1 left, 2 middle, 3 right) at (x, y), or where the pointer is."""
        if (x is None) != (y is None):
            raise InvalidArgument("y" if y is None else "x", "x and y go together")
        check_coordinate("x", x)
        check_coordinate("y", y)
        check_button(button)
        body: dict[str, Any] = {"button": button}
        if x is not None:
            body.update(x=x, y=y)
        return PointerPosition.from_dict(await self._json("POST", "/api/input/click", json=body))

    async def drag(
        self, from_x: int, from_y: int, to_x: int, to_y: int, *, button: int = 1
    ) -> PointerPosition:
        for name, value in (("from_x", from_x), ("from_y", from_y), ("to_x", to_x), ("to_y", to_y)):
            check_coordinate(name, value)
        check_button(button)
        body = {"from_x": from_x, "from_y": from_y, "to_x": to_x, "to_y": to_y, "button": button}
        return PointerPosition.from_dict(await self._json("POST", "/api/input/drag", json=body))

    async def scroll(self, direction: str, amount: int = 1) -> PointerPosition:
        if direction not in SCROLL_DIRECTIONS:
            raise InvalidArgument("direction", f"must be one of {', '.join(SCROLL_DIRECTIONS)}")
        if not 1 <= amount <= 100:
            raise InvalidArgument("amount", "must be between 1 and 100")
        body = {"direction": direction, "amount": amount}
        return PointerPosition.from_dict(await self._json("POST", "/api/input/scroll", json=body))

    async def type_text(self, text: str) -> None:
        """Type ``text`` (at most 50,000 characters) on the keyboard."""
        if len(text) > 50_000:
            raise InvalidArgument("text", "must be at most 50000 characters")
        await self._request("POST", "/api/input/type", json={"text": text}, http_timeout=300)

    async def press(self, key: str) -> None:
        """Press one key by its X11 keysym name (``Return``, ``Escape``, ``ctrl+c``)."""
        await self._request("POST", "/api/input/press", json={"key": key})

    async def hotkey(self, *keys: str) -> None:
        """Press keys together: ``hotkey("ctrl", "l")``."""
        if not keys:
            raise InvalidArgument("keys", "needs at least one key")
        await self._request("POST", "/api/input/hotkey", json={"keys": list(keys)})

    # -- recordings ----------------------------------------------------------------------------

    async def recording_status(self) -> RecordingStatus:
        return RecordingStatus.from_dict(await self._json("GET", "/api/recording"))

    async def start_recording(self) -> RecordingStatus:
        """Start recording the screen (ConflictError if a recording is active)."""
        return RecordingStatus.from_dict(
            await self._json("POST", "/api/recording/start", expected_status=201)
        )

    async def stop_recording(self) -> RecordingStatus:
        return RecordingStatus.from_dict(await self._json("POST", "/api/recording/stop", http_timeout=60))

    async def recordings(self) -> list[RecordingSummary]:
        items = (await self._json("GET", "/api/recordings")).get("items")
        return (
            [RecordingSummary.from_dict(i) for i in items if isinstance(i, dict)]
            if isinstance(items, list)
            else []
        )

    async def get_recording(self, recording_id: str) -> RecordingSummary:
        return RecordingSummary.from_dict(
            await self._json("GET", f"/api/recordings/{_segment(recording_id)}")
        )

    async def download_recording(self, recording_id: str) -> bytes:
        """The recording as MP4 bytes."""
        response = await self._request(
            "GET", f"/api/recordings/{_segment(recording_id)}/download", http_timeout=300
        )
        return response.content

    async def delete_recording(self, recording_id: str) -> None:
        await self._request("DELETE", f"/api/recordings/{_segment(recording_id)}", expected_status=204)

    # -- supervisor ----------------------------------------------------------------------------

    async def status(self) -> DesktopStatus:
        return DesktopStatus.from_dict(await self._json("GET", "/api/status"))

    async def process(self, name: str) -> DesktopProcess:
        return DesktopProcess.from_dict(await self._json("GET", f"/api/process/{check_process(name)}/status"))

    async def restart_process(self, name: str) -> DesktopProcess:
        data = await self._json("POST", f"/api/process/{check_process(name)}/restart", http_timeout=60)
        status = data.get("status")
        return DesktopProcess.from_dict(status if isinstance(status, dict) else {})

    async def process_logs(self, name: str, *, errors: bool = False) -> str:
        """The end of a process's stdout (or, with ``errors``, stderr) log."""
        kind = "errors" if errors else "logs"
        data = await self._json("GET", f"/api/process/{check_process(name)}/{kind}")
        value = data.get(kind)
        return value if isinstance(value, str) else ""

    async def wait_until_ready(self, timeout_s: float = 60.0) -> DesktopStatus:
        """Wait until every desktop process runs; AtollTimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        last: DesktopStatus | None = None
        while True:
            try:
                last = await self.status()
                if last.ready:
                    return last
            except ServerError as exc:
                if exc.status_code not in _STARTING_STATUSES:
                    raise
            if time.monotonic() >= deadline:
                seen = last.status if last is not None else "unreachable"
                raise AtollTimeoutError(f"the desktop was not ready within {timeout_s:g} s (last: {seen})")
            await anyio.sleep(READY_POLL_S)


def _segment(value: str) -> str:
    if not value or "/" in value or value in (".", ".."):
        raise InvalidArgument("recording_id", f"not a recording id: {value!r}")
    return value
