"""One long-lived X11 client connection (python-xlib) for what is read from the display: its size,
screenshots (XGetImage over the connection, encoded by Pillow: no process per shot), the pointer
and the window list. Calls are blocking and serialised by a lock (run them in a thread); a broken
connection (Xvfb restarted) is dropped and reopened by the next call."""

from __future__ import annotations

import io
import threading
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

        def grab(d: Any) -> Image.Image:
            root = d.screen().root
            if region is None:
                geometry = root.get_geometry()
                area = Region(0, 0, int(geometry.width), int(geometry.height))
            else:
                area = region
            raw = root.get_image(area.x, area.y, area.width, area.height, X.ZPixmap, _ALL_PLANES)
            from PIL import Image

            return Image.frombuffer("RGB", (area.width, area.height), raw.data, "raw", "BGRX", 0, 1)

        return self._call(grab)

    def pointer(self) -> tuple[int, int]:
        def read(d: Any) -> tuple[int, int]:
            reply = d.screen().root.query_pointer()
            return int(reply.root_x), int(reply.root_y)

        return self._call(read)

    def windows(self) -> list[dict[str, Any]]:
        """The window manager's client list (``_NET_CLIENT_LIST``), in stacking order of mapping."""
        return self._call(_list_windows)


def encode(image: Image.Image, image_format: str, quality: int | None) -> tuple[bytes, str]:
    """``image`` as PNG (fast compression: screenshots are for agents, latency matters more
    than bytes) or JPEG; returns (bytes, media type)."""
    out = io.BytesIO()
    if image_format == "png":
        image.save(out, format="PNG", compress_level=1)
        return out.getvalue(), "image/png"
    image.save(out, format="JPEG", quality=quality or 80)
    return out.getvalue(), "image/jpeg"


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
