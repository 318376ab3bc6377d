"""Templates' shapes (wire-protocol §6) and argument checks: pure, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Required, TypeAlias, TypedDict

from atoll._exceptions import InvalidArgument

NAME_MAX = 64
URI_MAX = 500
ProgressCallback: TypeAlias = Callable[[str, str], None]
"""Called with (phase, message) while a template is imported: phases "pull", "unpack", "done"."""


class BasicCredentialsDict(TypedDict, total=False):
    """Registry credentials for a private image (the only kind this server accepts)."""

    type: Required[Literal["basic"]]
    username: Required[str]
    password: Required[str]


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    working_dir: str = ""
    user: str = ""
    env: dict[str, str] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageConfig:
        def strings(key: str) -> list[str] | None:
            value = data.get(key)
            return [str(v) for v in value] if isinstance(value, list) else None

        env = data.get("env")
        return cls(
            entrypoint=strings("entrypoint"),
            cmd=strings("cmd"),
            working_dir=str(data.get("working_dir") or ""),
            user=str(data.get("user") or ""),
            env={str(k): str(v) for k, v in env.items()} if isinstance(env, Mapping) else None,
        )


@dataclass(frozen=True)
class Template:
    id: str
    name: str
    digest: str = ""
    image_config: ImageConfig | None = None
    is_system: bool = False
    created_at: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Template:
        config = data.get("image_config")
        return cls(
            id=str(data.get("id", "")),
            name=str(data.get("name", "")),
            digest=str(data.get("digest") or ""),
            image_config=ImageConfig.from_dict(config) if isinstance(config, Mapping) else None,
            is_system=bool(data.get("is_system", False)),
            created_at=str(data.get("created_at") or ""),
        )


def check_name(value: object) -> str:
    name = value.strip() if isinstance(value, str) else None
    if not name or len(name) > NAME_MAX:
        raise InvalidArgument("name", f"must be 1 to {NAME_MAX} characters, got {value!r}")
    if any(c.isspace() for c in name):
        raise InvalidArgument("name", "must not contain whitespace")
    if name.startswith("system/"):
        raise InvalidArgument("name", "names starting with 'system/' are reserved")
    return name


def check_uri(value: object) -> str:
    uri = value.strip() if isinstance(value, str) else None
    if not uri or len(uri) > URI_MAX:
        raise InvalidArgument("uri", f"must be 1 to {URI_MAX} characters, got {value!r}")
    return uri


def check_credentials(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping) or value.get("type") != "basic":
        raise InvalidArgument("credentials", "must be {'type': 'basic', 'username': ..., 'password': ...}")
    username, password = value.get("username"), value.get("password")
    if not isinstance(username, str) or not username or not isinstance(password, str):
        raise InvalidArgument("credentials", "basic credentials need a username and a password")
    return {"type": "basic", "username": username, "password": password}


def check_template_id(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or "/" in value:
        raise InvalidArgument("template_id", f"must be a template id, got {value!r}")
    return value.strip()
