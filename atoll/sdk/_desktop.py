"""The desktop's models (agent-services §5) and argument checks, shared by the async and sync
``sandbox.desktop`` clients. Parsing is lenient (missing fields take defaults), as for the other
services: the wire may grow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from atoll._exceptions import InvalidArgument

DESKTOP_TEMPLATE = "system/desktop:v0.1.0"
PROCESS_NAMES = ("xvfb", "xfce4", "x11vnc", "novnc")
SCROLL_DIRECTIONS = ("up", "down", "left", "right")
IMAGE_FORMATS = ("png", "jpg", "jpeg")


def _int(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _str(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class DisplayInfo:
    display: str = ""
    width: int = 0
    height: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DisplayInfo:
        return cls(_str(data, "display"), _int(data, "width"), _int(data, "height"))


@dataclass(frozen=True, slots=True)
class DesktopWindow:
    id: str = ""
    title: str = ""
    window_class: str = ""
    pid: int = 0
    x: int = 0
    y: int = 0
    width: int = 0
    height: int = 0
    desktop: int = 0
    host: str = ""
    focused: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DesktopWindow:
        return cls(
            id=_str(data, "id"),
            title=_str(data, "title"),
            window_class=_str(data, "class"),
            pid=_int(data, "pid"),
            x=_int(data, "x"),
            y=_int(data, "y"),
            width=_int(data, "width"),
            height=_int(data, "height"),
            desktop=_int(data, "desktop"),
            host=_str(data, "host"),
            focused=data.get("focused") is True,
        )


@dataclass(frozen=True, slots=True)
class PointerPosition:
    x: int = 0
    y: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PointerPosition:
        return cls(_int(data, "x"), _int(data, "y"))


@dataclass(frozen=True, slots=True)
class RecordingStatus:
    id: str = ""
    active: bool = False
    started_at: str = ""
    stopped_at: str = ""
    download: str = ""
    mime_type: str = ""
    file_name: str = ""
    display: str = ""
    resolution: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecordingStatus:
        names = (
            "id",
            "started_at",
            "stopped_at",
            "download",
            "mime_type",
            "file_name",
            "display",
            "resolution",
        )
        return cls(active=data.get("active") is True, **{name: _str(data, name) for name in names})


@dataclass(frozen=True, slots=True)
class RecordingSummary:
    id: str = ""
    file_name: str = ""
    download: str = ""
    mime_type: str = ""
    size_bytes: int = 0
    created_at: str = ""
    active: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecordingSummary:
        names = ("id", "file_name", "download", "mime_type", "created_at")
        return cls(
            size_bytes=_int(data, "size_bytes"),
            active=data.get("active") is True,
            **{name: _str(data, name) for name in names},
        )


@dataclass(frozen=True, slots=True)
class DesktopProcess:
    name: str = ""
    running: bool = False
    pid: int = 0
    stdout_log: str = ""
    stderr_log: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DesktopProcess:
        return cls(
            _str(data, "name"), data.get("running") is True, _int(data, "pid"),
            _str(data, "stdout_log"), _str(data, "stderr_log"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DesktopStatus:
    status: str = ""  # running | degraded | stopped
    items: list[DesktopProcess] = field(default_factory=list)
    running: int = 0
    total: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DesktopStatus:
        raw = data.get("items")
        items = (
            [DesktopProcess.from_dict(i) for i in raw if isinstance(i, dict)] if isinstance(raw, list) else []
        )
        return cls(_str(data, "status"), items, _int(data, "running"), _int(data, "total"))

    @property
    def ready(self) -> bool:
        return self.status == "running" or (self.total > 0 and self.running >= self.total)


def check_process(name: str) -> str:
    if name not in PROCESS_NAMES:
        raise InvalidArgument("process", f"must be one of {', '.join(PROCESS_NAMES)}, not {name!r}")
    return name


def check_coordinate(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InvalidArgument(name, f"must be an integer >= 0, not {value!r}")


def check_button(button: int | None) -> None:
    if button is not None and button not in (1, 2, 3):
        raise InvalidArgument("button", f"must be 1, 2 or 3, not {button!r}")


def screenshot_params(
    image_format: str | None, quality: int | None, region: tuple[int, int, int, int] | None
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if image_format is not None:
        if image_format not in IMAGE_FORMATS:
            raise InvalidArgument("image_format", f"must be one of {', '.join(IMAGE_FORMATS)}")
        params["format"] = image_format
    if quality is not None:
        if not 1 <= quality <= 100:
            raise InvalidArgument("quality", "must be between 1 and 100")
        params["quality"] = quality
    if region is not None:
        for name, value in zip(("x", "y", "width", "height"), region, strict=True):
            check_coordinate(name, value)
            params[name] = value
    return params
