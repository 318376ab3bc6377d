"""One long-lived X11 client connection (python-xlib) for what is read from the display: its size,
region screenshots, the pointer, the window list and the screen's size by RandR. Calls are
blocking and serialised by a lock (run them in a thread); a broken connection (Xvfb restarted)
is dropped and reopened by the next call.

A full-screen shot is Pillow's own XCB grab (``xcb_get_image`` in C, on a short connection of
its own): no process per shot, and none of python-xlib's reply handling, which grows its receive
buffer by concatenation, copying everything received so far for each chunk read (the 5 MB of a
1440x900 screen: 35 ms a shot under gVisor against 21 ms for Pillow's grab, docs/desktop.md)."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from Xlib import X, Xatom
from Xlib import display as xdisplay
from Xlib import error as xerror

if TYPE_CHECKING:  # Pillow is imported on first use: the supervisor imports this module first
    from PIL import Image

T = TypeVar("T")
_ALL_PLANES = 0xFFFFFFFF


class DisplayUnavailableError(Exception):
    """The X server does not answer (not started yet, or restarting)."""


@dataclass(frozen=True, slots=True)
class Region:
    x: int
    y: int
    width: int
    height: int


class X11:
    def __init__(self, display_name: str) -> None:
        self.display_name = display_name
        self._lock = threading.Lock()
        self._display: Any = None

    def _call(self, fn: Callable[[Any], T]) -> T:
        with self._lock:
            for attempt in (1, 2):  # a stale connection gets one fresh retry
                try:
                    if self._display is None:
                        self._display = xdisplay.Display(self.display_name)
                    return fn(self._display)
                except (xerror.DisplayError, xerror.ConnectionClosedError, OSError) as exc:
                    self._drop()
                    if attempt == 2:
                        raise DisplayUnavailableError(str(exc)) from exc
            raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._display is not None:
            try:
                self._display.close()
            except Exception:
                pass
        self._display = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def size(self) -> tuple[int, int]:
        def read(d: Any) -> tuple[int, int]:
            geometry = d.screen().root.get_geometry()
            return int(geometry.width), int(geometry.height)

        return self._call(read)

    def window_manager_running(self) -> bool:
        def read(d: Any) -> bool:
            atom = d.intern_atom("_NET_SUPPORTING_WM_CHECK")
            prop = d.screen().root.get_full_property(atom, X.AnyPropertyType)
            return prop is not None and len(prop.value) > 0

        return self._call(read)

    def capture(self, region: Region | None) -> Image.Image:
        """The screen (or ``region`` of it, already checked to lie inside) as an RGB image."""
        from PIL import Image, ImageGrab

        if region is None:
            try:
                return ImageGrab.grab(xdisplay=self.display_name)
            except OSError as exc:
                raise DisplayUnavailableError(str(exc)) from exc

        def grab(d: Any) -> Image.Image:
            area = region
            raw = d.screen().root.get_image(area.x, area.y, area.width, area.height, X.ZPixmap, _ALL_PLANES)
            return Image.frombuffer("RGB", (area.width, area.height), raw.data, "raw", "BGRX", 0, 1)

        return self._call(grab)

    def set_size(self, width: int, height: int) -> tuple[int, int]:
        """RandR: the screen to ``width`` x ``height`` (within Xvfb's framebuffer), the way
        ``xrandr --fb`` does it, without a process: a CRTC that would not fit is switched off
        first (Xvfb has one, with the one mode the framebuffer's size; it stays off, as xrandr
        leaves it), the physical size keeps the screen's DPI. Returns the root window's size
        afterwards, which is what says whether it worked (an X error here is not raised)."""

        def apply(d: Any) -> tuple[int, int]:
            screen = d.screen()
            root = screen.root
            d.xrandr_query_version()  # the 1.2 requests below want it negotiated
            resources = root.xrandr_get_screen_resources()
            stamp = resources.config_timestamp
            for crtc in resources.crtcs:
                info = d.xrandr_get_crtc_info(crtc, stamp)
                if info.mode and (info.x + info.width > width or info.y + info.height > height):
                    d.xrandr_set_crtc_config(crtc, stamp, 0, 0, 0, 1, [])  # 1: RR_Rotate_0
            width_mm = max(1, round(width * screen.width_in_mms / max(1, screen.width_in_pixels)))
            height_mm = max(1, round(height * screen.height_in_mms / max(1, screen.height_in_pixels)))
            root.xrandr_set_screen_size(width, height, width_mm, height_mm)
            geometry = root.get_geometry()  # a round trip: the resize has been handled
            return int(geometry.width), int(geometry.height)

        return self._call(apply)

    def pointer(self) -> tuple[int, int]:
        def read(d: Any) -> tuple[int, int]:
            reply = d.screen().root.query_pointer()
            return int(reply.root_x), int(reply.root_y)

        return self._call(read)

    def windows(self) -> list[dict[str, Any]]:
        """The window manager's client list (``_NET_CLIENT_LIST``), in stacking order of mapping."""
        return self._call(_list_windows)


def encode(image: Image.Image, image_format: str, quality: int | None) -> tuple[bytes, str]:
    """``image`` as PNG (``png``) or JPEG; returns (bytes, media type)."""
    if image_format == "png":
        return png(image), "image/png"
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality or 80)
    return out.getvalue(), "image/jpeg"


def png(image: Image.Image) -> bytes:
    """An RGB ``image`` as PNG, for speed over size: no row filter (type 0) and zlib's fastest
    level. Pillow's PNG writer picks a filter per row by trying all five, which made it 20 ms of
    a 1440x900 shot under gVisor against 8 ms for this at about the same size (42 KB of a
    desktop; docs/desktop.md)."""
    width, height = image.size
    pixels = memoryview((image if image.mode == "RGB" else image.convert("RGB")).tobytes())
    stride = width * 3
    rows = bytearray((stride + 1) * height)  # each row: its filter type (0), then its pixels
    for y in range(height):
        start = y * (stride + 1) + 1
        rows[start : start + stride] = pixels[y * stride : (y + 1) * stride]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"".join((
        b"\x89PNG\r\n\x1a\n",
        _chunk(b"IHDR", header),
        _chunk(b"IDAT", zlib.compress(rows, 1)),
        _chunk(b"IEND", b""),
    ))  # fmt: skip


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _cardinal(d: Any, window: Any, name: str) -> int | None:
    prop = window.get_full_property(d.intern_atom(name), X.AnyPropertyType)
    if prop is None or len(prop.value) == 0:
        return None
    return int(prop.value[0])


def _text(d: Any, window: Any, name: str | int) -> str:
    atom = d.intern_atom(name) if isinstance(name, str) else name
    prop = window.get_full_property(atom, X.AnyPropertyType)
    if prop is None:
        return ""
    value = prop.value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\0")
    return str(value)


def _list_windows(d: Any) -> list[dict[str, Any]]:
    root = d.screen().root
    clients = root.get_full_property(d.intern_atom("_NET_CLIENT_LIST"), X.AnyPropertyType)
    active = _cardinal(d, root, "_NET_ACTIVE_WINDOW")
    items: list[dict[str, Any]] = []
    for wid in list(clients.value) if clients is not None else []:
        window = d.create_resource_object("window", int(wid))
        try:
            geometry = window.get_geometry()
            origin = root.translate_coords(window, 0, 0)
            wm_class = window.get_wm_class()
            desktop = _cardinal(d, window, "_NET_WM_DESKTOP")
            items.append({
                "id": f"0x{int(wid):08x}",
                "desktop": desktop if desktop is not None and desktop < 0xFFFFFFFF else 0,
                "pid": _cardinal(d, window, "_NET_WM_PID") or 0,
                "x": int(origin.x),
                "y": int(origin.y),
                "width": int(geometry.width),
                "height": int(geometry.height),
                "class": ".".join(wm_class) if wm_class else "",
                "host": _text(d, window, Xatom.WM_CLIENT_MACHINE),
                "title": _text(d, window, "_NET_WM_NAME") or _text(d, window, Xatom.WM_NAME),
                "focused": active is not None and int(wid) == active,
            })  # fmt: skip
        except (xerror.BadWindow, xerror.BadDrawable):
            continue  # closed while listed
    return items
