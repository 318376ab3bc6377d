"""Runs under Python 3.12 with the public leap0==0.8.0 SDK (never imported by pytest itself).

Usage: leap0_desktop.py BASE_URL API_KEY SANDBOX_DOMAIN CHECK SANDBOX_ID [OUT_DIR]
Prints one JSON object with what the unchanged SDK observed for CHECK (files such as a downloaded
recording go to OUT_DIR). The sandbox host is reached over https (``SSL_CERT_FILE`` names Atoll's
CA), as the SDK always does."""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

from leap0 import Leap0Client
from leap0.models.errors import Leap0Error

TERMINAL_TITLE = "atoll-desktop-check"
EDITOR_TITLE = "atoll-notes"


def png_size(data: bytes) -> list[int]:
    """Width and height from a PNG's IHDR chunk (no imaging library in this venv)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    width, height = struct.unpack(">II", data[16:24])
    return [width, height]


def error_of(call: Any) -> dict[str, Any]:
    try:
        call()
    except Leap0Error as exc:
        return {"class": type(exc).__name__, "status": exc.status_code, "body": str(exc.body)}
    return {"class": None}


def ready(client: Leap0Client, sid: str, out: Path) -> dict[str, Any]:
    desktop = client.sandboxes.get(sid).desktop
    started = time.monotonic()
    desktop.wait_until_ready(timeout=90)
    seen: dict[str, Any] = {"ready_s": time.monotonic() - started}
    info = desktop.display_info()
    seen["display"] = [info.display, info.width, info.height]
    screen = desktop.screen()
    seen["screen"] = [screen.width, screen.height]
    shot = desktop.screenshot()
    seen["png"] = png_size(shot)
    (out / "screen.png").write_bytes(shot)
    seen["region"] = png_size(desktop.screenshot_region(x=10, y=20, width=300, height=200))
    seen["query_region"] = png_size(desktop.screenshot(x=100, y=100, width=64, height=48))
    seen["jpeg_magic"] = desktop.screenshot(image_format="jpeg", quality=50)[:3].hex()
    status = desktop.process_status()
    seen["status"] = [status.status, status.running, status.total, sorted(i.name for i in status.items)]
    seen["health"] = desktop.health().ok
    seen["url"] = desktop.desktop_url()
    seen["xvfb_logs"] = desktop.process_logs("xvfb").process
    return seen


def keyboard(client: Leap0Client, sid: str, out: Path) -> dict[str, Any]:
    sandbox = client.sandboxes.get(sid)
    desktop = sandbox.desktop
    marker = "/tmp/typed-into-terminal"
    sandbox.process.execute(command=f"rm -f {marker}")
    # st: xterm and xfce4-terminal cannot open a pty under gVisor (docs/desktop.md)
    terminal = os.environ.get("DESKTOP_TERMINAL", "xterm")
    flag = "-t" if terminal == "st" else "-T"
    command = f"setsid -f {terminal} {flag} {TERMINAL_TITLE} >/dev/null 2>&1"
    launched = sandbox.process.execute(command=command)
    seen: dict[str, Any] = {"launched": launched.exit_code, "window": None}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        mine = [w for w in desktop.windows() if w.title == TERMINAL_TITLE]
        if mine and mine[0].focused:
            w = mine[0]
            seen["window"] = {"title": w.title, "focused": w.focused, "class": w.window_class,
                              "width": w.width, "pid": w.pid}  # fmt: skip
            break
        time.sleep(0.2)
    else:
        seen["windows"] = [[w.title, w.focused] for w in desktop.windows()]
    time.sleep(0.5)  # the shell inside the terminal reads its first line
    seen["type"] = desktop.type_text(text=f"touch {marker}")
    seen["press"] = desktop.press_key(key="Return")
    seen["file"] = False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not seen["file"]:
        seen["file"] = sandbox.process.execute(command=f"test -f {marker}").exit_code == 0
        time.sleep(0.2)
    (out / "after-typing.png").write_bytes(desktop.screenshot())
    seen["hotkey"] = desktop.hotkey(keys=["ctrl", "l"])
    return seen


def editor(client: Leap0Client, sid: str, out: Path) -> dict[str, Any]:
    """Keys into an X editor (xedit, no pty needed): typed text, Return and the save hotkey
    (ctrl+x ctrl+s) must land in the file it saves."""
    sandbox = client.sandboxes.get(sid)
    desktop = sandbox.desktop
    path = "/tmp/typed-into-xedit.txt"
    sandbox.process.execute(command=f"rm -f {path}")
    sandbox.process.execute(command=f"setsid -f xedit -title {EDITOR_TITLE} {path} >/dev/null 2>&1")
    seen: dict[str, Any] = {"window": None}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        mine = [w for w in desktop.windows() if w.title == EDITOR_TITLE]
        if mine and mine[0].focused:
            seen["window"] = {"title": mine[0].title, "focused": True, "class": mine[0].window_class}
            break
        time.sleep(0.2)
    else:
        seen["windows"] = [[w.title, w.focused] for w in desktop.windows()]
    seen["type"] = desktop.type_text(text="hello from the keyboard")
    seen["press"] = desktop.press_key(key="Return")
    seen["hotkey"] = [desktop.hotkey(keys=["ctrl", "x"]), desktop.hotkey(keys=["ctrl", "s"])]
    seen["content"] = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and seen["content"] is None:
        done = sandbox.process.execute(command=f"cat {path}")
        if done.exit_code == 0:
            seen["content"] = done.stdout
        time.sleep(0.2)
    desktop.hotkey(keys=["ctrl", "x"])  # leave xedit (ctrl+x ctrl+c)
    desktop.hotkey(keys=["ctrl", "c"])
    return seen


def pointer(client: Leap0Client, sid: str, out: Path) -> dict[str, Any]:
    desktop = client.sandboxes.get(sid).desktop
    seen: dict[str, Any] = {}
    p = desktop.move_pointer(x=123, y=234)
    seen["move"] = [p.x, p.y]
    p = desktop.pointer_position()
    seen["position"] = [p.x, p.y]
    p = desktop.click(x=700, y=450, button=1)
    seen["click"] = [p.x, p.y]
    p = desktop.click()
    seen["click_here"] = [p.x, p.y]
    p = desktop.drag(from_x=600, from_y=400, to_x=650, to_y=420)
    seen["drag"] = [p.x, p.y]
    p = desktop.scroll(direction="down", amount=3)
    seen["scroll"] = [p.x, p.y]
    return seen


def recording(client: Leap0Client, sid: str, out: Path) -> dict[str, Any]:
    desktop = client.sandboxes.get(sid).desktop
    seen: dict[str, Any] = {}
    started = desktop.start_recording()
    seen["started"] = {"active": started.active, "id": started.id, "mime": started.mime_type}
    seen["second"] = error_of(desktop.start_recording)
    for i in range(6):  # something moves while it records
        desktop.move_pointer(x=100 + 50 * i, y=100 + 30 * i)
        time.sleep(0.3)
    seen["status_while"] = desktop.recording_status().active
    seen["delete_active"] = error_of(lambda: desktop.delete_recording(started.id))
    stopped = desktop.stop_recording()
    seen["stopped"] = {"active": stopped.active, "id": stopped.id, "stopped_at": bool(stopped.stopped_at)}
    seen["stop_again"] = error_of(desktop.stop_recording)
    seen["listed"] = [r.id for r in desktop.recordings()]
    summary = desktop.get_recording(started.id)
    seen["size_bytes"] = summary.size_bytes
    video = desktop.download_recording(started.id)
    (out / "recording.mp4").write_bytes(video)
    seen["downloaded"] = len(video)
    desktop.delete_recording(started.id)
    seen["after_delete"] = error_of(lambda: desktop.get_recording(started.id))
    seen["unknown_download"] = error_of(lambda: desktop.download_recording("rec_nope"))
    return seen


def resize(client: Leap0Client, sid: str, out: Path) -> dict[str, Any]:
    desktop = client.sandboxes.get(sid).desktop
    seen: dict[str, Any] = {}
    changed = desktop.resize_screen(width=1024, height=768)
    seen["resized"] = [changed.width, changed.height]
    desktop.wait_until_ready(timeout=60)
    seen["png"] = png_size(desktop.screenshot())
    seen["bad"] = error_of(lambda: desktop.move_pointer(x=1100, y=10))
    back = desktop.resize_screen(width=1440, height=900)
    seen["back"] = [back.width, back.height]
    desktop.wait_until_ready(timeout=60)
    seen["png_back"] = png_size(desktop.screenshot())
    return seen


def main() -> None:
    base_url, api_key, sandbox_domain, check, sid = sys.argv[1:6]
    out = Path(sys.argv[6]) if len(sys.argv) > 6 else Path(".")
    client = Leap0Client(api_key=api_key, base_url=base_url, sandbox_domain=sandbox_domain)
    checks = {
        "ready": ready,
        "keyboard": keyboard,
        "pointer": pointer,
        "recording": recording,
        "resize": resize,
        "editor": editor,
    }
    try:
        print(json.dumps(checks[check](client, sid, out)))
    finally:
        client.close()


if __name__ == "__main__":
    main()
