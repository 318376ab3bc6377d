"""``sandbox.desktop`` against a fake sandbox host: where requests go (the sandbox's own host, with
the key), what they carry, how answers parse, which arguments are refused before any request,
and how ``wait_until_ready`` waits."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from atoll import AsyncClient, AsyncSandbox, AtollTimeoutError, ConflictError, InvalidArgument, NotFoundError
from atoll.sdk import DESKTOP_TEMPLATE, DesktopWindow

from .._mock import Router, sandbox_json

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x05\xa0\x00\x00\x03\x84\x08\x02\x00\x00\x00"
PROCESSES = [
    {"name": n, "running": True, "pid": 10 + i, "stdout_log": f"/l/{n}.out", "stderr_log": f"/l/{n}.err"}
    for i, n in enumerate(("xvfb", "xfce4", "x11vnc", "novnc"))
]


def make_client(router: Router) -> AsyncClient:
    return AsyncClient(
        api_key="k",
        base_url="http://api.test",
        sandbox_domain="sbx.test",
        http_client=httpx.AsyncClient(transport=router.transport()),
    )


async def created(router: Router) -> AsyncSandbox:
    router.on("POST", "/v1/sandbox", 201, json=sandbox_json())
    return await make_client(router).sandboxes.create(template_name=DESKTOP_TEMPLATE)


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


async def test_display_screenshot_and_windows_go_to_the_sandbox_host() -> None:
    router = Router()
    sandbox = await created(router)
    assert sandbox.desktop.url() == "https://sbx-abc123.sbx.test/"
    router.on("GET", "/api/display", json={"display": ":0", "width": 1440, "height": 900})
    info = await sandbox.desktop.display_info()
    assert (info.display, info.width, info.height) == (":0", 1440, 900)
    assert str(router.last.url) == "https://sbx-abc123.sbx.test/api/display"
    assert router.last.headers["authorization"] == "Bearer k"
    router.on("GET", "/api/screenshot", content=PNG, headers={"content-type": "image/png"})
    assert await sandbox.desktop.screenshot(image_format="jpeg", quality=40, region=(1, 2, 30, 40)) == PNG
    assert dict(router.last.url.params) == {
        "format": "jpeg",
        "quality": "40",
        "x": "1",
        "y": "2",
        "width": "30",
        "height": "40",
    }
    window = {"id": "0x1", "title": "t", "class": "xterm.XTerm", "pid": 5, "focused": True, "width": 9}
    router.on("GET", "/api/display/windows", json={"items": [window, "junk"]})
    assert await sandbox.desktop.windows() == [
        DesktopWindow(id="0x1", title="t", window_class="xterm.XTerm", pid=5, width=9, focused=True)
    ]


async def test_input_bodies_and_positions() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("POST", "/api/input/click", json={"x": 3, "y": 4})
    position = await sandbox.desktop.click(3, 4, button=3)
    assert (position.x, position.y) == (3, 4) and body(router.last) == {"x": 3, "y": 4, "button": 3}
    await sandbox.desktop.click()
    assert body(router.last) == {"button": 1}
    router.on("POST", "/api/input/drag", json={"x": 7, "y": 8})
    await sandbox.desktop.drag(1, 2, 7, 8)
    assert body(router.last) == {"from_x": 1, "from_y": 2, "to_x": 7, "to_y": 8, "button": 1}
    router.on("POST", "/api/input/hotkey", json={"ok": True})
    await sandbox.desktop.hotkey("ctrl", "l")
    assert body(router.last) == {"keys": ["ctrl", "l"]}
    router.on("POST", "/api/input/type", json={"ok": True})
    await sandbox.desktop.type_text("hi")
    assert body(router.last) == {"text": "hi"}


async def test_bad_arguments_are_refused_before_any_request() -> None:
    router = Router()
    sandbox = await created(router)
    sent = len(router.requests)
    with pytest.raises(InvalidArgument):
        await sandbox.desktop.move(-1, 0)
    with pytest.raises(InvalidArgument):
        await sandbox.desktop.click(1, None)
    with pytest.raises(InvalidArgument):
        await sandbox.desktop.click(1, 1, button=4)
    with pytest.raises(InvalidArgument):
        await sandbox.desktop.scroll("sideways")
    with pytest.raises(InvalidArgument):
        await sandbox.desktop.screenshot(image_format="gif")
    with pytest.raises(InvalidArgument):
        await sandbox.desktop.resize_screen(100, 900)
    with pytest.raises(InvalidArgument):
        await sandbox.desktop.process("kde")
    with pytest.raises(InvalidArgument):
        await sandbox.desktop.get_recording("../x")
    assert len(router.requests) == sent


async def test_recordings_and_their_errors() -> None:
    router = Router()
    sandbox = await created(router)
    started = {"id": "rec_1", "active": True, "mime_type": "video/mp4", "resolution": "1440x900"}
    router.on("POST", "/api/recording/start", 201, json=started)
    status = await sandbox.desktop.start_recording()
    assert status.active and status.id == "rec_1" and status.resolution == "1440x900"
    router.on("POST", "/api/recording/start", 409, json={"message": "a recording is active"})
    with pytest.raises(ConflictError):
        await sandbox.desktop.start_recording()
    router.on("GET", "/api/recordings/rec_9", 404, json={"message": "no such recording"})
    with pytest.raises(NotFoundError):
        await sandbox.desktop.get_recording("rec_9")
    router.on("GET", "/api/recordings", json={"items": [{"id": "rec_1", "size_bytes": 12, "active": False}]})
    assert [(r.id, r.size_bytes) for r in await sandbox.desktop.recordings()] == [("rec_1", 12)]
    router.on("DELETE", "/api/recordings/rec_1", 204)
    await sandbox.desktop.delete_recording("rec_1")


async def test_wait_until_ready_waits_through_starting_answers() -> None:
    router = Router()
    sandbox = await created(router)
    answers = [
        httpx.Response(502, json={"message": "starting"}),
        httpx.Response(200, json={"status": "degraded", "items": PROCESSES[:2], "running": 2, "total": 4}),
        httpx.Response(200, json={"status": "running", "items": PROCESSES, "running": 4, "total": 4}),
    ]
    router.handle("GET", "/api/status", lambda _: answers.pop(0))
    status = await sandbox.desktop.wait_until_ready(timeout_s=10)
    assert status.ready and [p.name for p in status.items] == ["xvfb", "xfce4", "x11vnc", "novnc"]
    assert status.items[0].pid == 10 and answers == []
    router.on("GET", "/api/status", json={"status": "stopped", "items": [], "running": 0, "total": 4})
    with pytest.raises(AtollTimeoutError):
        await sandbox.desktop.wait_until_ready(timeout_s=0.3)
