"""What the API hands back, as plain dataclasses, and the types callers pass in.

Parsing is lenient on purpose: a field the server leaves out takes a neutral default and a state
this SDK does not know yet stays a plain string, so an older SDK keeps working against a newer
server. Only a missing sandbox ``id`` is fatal, because nothing can be done with such an object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Required, TypeAlias, TypedDict, TypeVar, cast

from atoll._exceptions import MalformedResponseError
from atoll._states import State

SandboxState: TypeAlias = State
"""The SDK's name for the one state enum the server also uses (a ``str`` enum)."""


class TransformRuleDict(TypedDict, total=False):
    domain: Required[str]
    inject_headers: dict[str, str]
    strip_headers: list[str]


NetworkMode: TypeAlias = Literal["allow-all", "deny-all", "custom"]


class NetworkPolicyDict(TypedDict, total=False):
    """A sandbox's outbound network policy, exactly as sent on the wire."""

    mode: Required[NetworkMode]
    allow_domains: list[str]
    allow_cidrs: list[str]
    transforms: list[TransformRuleDict]


class HasId(Protocol):
    @property
    def id(self) -> str: ...


SandboxRef: TypeAlias = str | HasId
"""A sandbox id, or any object carrying one in ``.id`` (a handle, ``SandboxData``, a list item)."""

DataT_contra = TypeVar("DataT_contra", contravariant=True)
SandboxT_co = TypeVar("SandboxT_co", covariant=True)
SandboxT = TypeVar("SandboxT")


class SandboxFactory(Protocol[DataT_contra, SandboxT_co]):
    """Turns the raw data the API returned into the object handed to the user."""

    def __call__(self, data: DataT_contra, /) -> SandboxT_co: ...


def json_object(content: bytes) -> dict[str, Any]:
    """The body of a success answer, which the wire protocol says is a JSON object."""
    try:
        value = json.loads(content)
    except ValueError as exc:
        raise MalformedResponseError(f"expected a JSON object, got {content[:200]!r}") from exc
    if not isinstance(value, dict):
        raise MalformedResponseError(f"expected a JSON object, got {type(value).__name__}")
    return value


def parse_state(value: object) -> SandboxState | str:
    if value is None:
        return SandboxState.STARTING
    try:
        return SandboxState(str(value))
    except ValueError:
        return str(value)


def _required_id(data: Mapping[str, Any], what: str) -> str:
    value = data.get("id")
    if not isinstance(value, str) or not value.strip():
        raise MalformedResponseError(f"{what} has no non-empty string 'id' (got {value!r})")
    return value


def _str(data: Mapping[str, Any], key: str, default: str = "") -> str:
    value = data.get(key)
    return value if isinstance(value, str) else default


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _int(data: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    return _int(data, key) if data.get(key) is not None else None


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key)
    return value if isinstance(value, bool) else False


def _mounts(data: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    # None (key absent) and [] (no mounts) are different answers; keep them apart.
    value = data.get("mounts")
    if not isinstance(value, list):
        return None
    return [dict(item) for item in value if isinstance(item, Mapping)]


def _network_policy(data: Mapping[str, Any]) -> NetworkPolicyDict | None:
    value = data.get("network_policy")
    # Echoed back as we sent it; the client validated it on the way out.
    return cast(NetworkPolicyDict, value) if isinstance(value, dict) else None


@dataclass(frozen=True, slots=True)
class SandboxData:
    """A sandbox as returned by create, pause, stop, start (and snapshot restore)."""

    id: str
    template_id: str = ""
    vcpu: int = 0
    memory: int = 0
    disk: int = 0
    timeout: int = 0
    state: SandboxState | str = SandboxState.STARTING
    auto_pause: bool = False
    created_at: str = ""
    network_policy: NetworkPolicyDict | None = None
    mounts: list[dict[str, Any]] | None = None
    # why a sandbox is ``failed`` (or fell back after a timed-out transition); None otherwise
    state_reason: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SandboxData:
        return cls(
            id=_required_id(data, "sandbox"),
            template_id=_str(data, "template_id"),
            vcpu=_int(data, "vcpu"),
            memory=_int(data, "memory"),
            disk=_int(data, "disk"),
            timeout=_int(data, "timeout"),
            state=parse_state(data.get("state")),
            auto_pause=_bool(data, "auto_pause"),
            created_at=_str(data, "created_at"),
            network_policy=_network_policy(data),
            mounts=_mounts(data),
            state_reason=_opt_str(data, "state_reason"),
        )


@dataclass(frozen=True, slots=True)
class SandboxStatus:
    """A sandbox as returned by get: the same as ``SandboxData`` minus ``network_policy``."""

    id: str
    template_id: str = ""
    vcpu: int = 0
    memory: int = 0
    disk: int = 0
    timeout: int = 0
    state: SandboxState | str = SandboxState.STARTING
    auto_pause: bool = False
    created_at: str = ""
    mounts: list[dict[str, Any]] | None = None
    state_reason: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SandboxStatus:
        return cls(
            id=_required_id(data, "sandbox"),
            template_id=_str(data, "template_id"),
            vcpu=_int(data, "vcpu"),
            memory=_int(data, "memory"),
            disk=_int(data, "disk"),
            timeout=_int(data, "timeout"),
            state=parse_state(data.get("state")),
            auto_pause=_bool(data, "auto_pause"),
            created_at=_str(data, "created_at"),
            mounts=_mounts(data),
            state_reason=_opt_str(data, "state_reason"),
        )


@dataclass(frozen=True, slots=True)
class SandboxListItem:
    """One row of ``sandboxes.list``; ``timeout_at`` is a unix time in seconds."""

    id: str
    template_id: str = ""
    state: SandboxState | str = SandboxState.STARTING
    pod_id: str | None = None
    launch_time: str | None = None
    state_change_time: str | None = None
    timeout_at: int | None = None
    created_at: str = ""
    state_reason: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SandboxListItem:
        return cls(
            id=_required_id(data, "sandbox list item"),
            template_id=_str(data, "template_id"),
            state=parse_state(data.get("state")),
            pod_id=_opt_str(data, "pod_id"),
            launch_time=_opt_str(data, "launch_time"),
            state_change_time=_opt_str(data, "state_change_time"),
            timeout_at=_opt_int(data, "timeout_at"),
            created_at=_str(data, "created_at"),
            state_reason=_opt_str(data, "state_reason"),
        )


@dataclass(frozen=True, slots=True)
class SandboxList:
    """One page of sandboxes; ``total_items`` counts every page."""

    items: list[SandboxListItem]
    total_items: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SandboxList:
        raw_items = data.get("items")
        rows = raw_items if isinstance(raw_items, list) else []
        items = [SandboxListItem.from_dict(row) for row in rows if isinstance(row, Mapping)]
        return cls(items=items, total_items=_int(data, "total_items", len(items)))


@dataclass(frozen=True, slots=True)
class ProcessResult:
    exit_code: int
    stdout: str
    stderr: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProcessResult:
        return cls(
            exit_code=_int(data, "exit_code"),
            stdout=_str(data, "stdout"),
            stderr=_str(data, "stderr"),
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A named checkpoint of a sandbox (memory and disk), restorable into new sandboxes."""

    id: str
    name: str
    template_id: str = ""
    vcpu: int = 0
    memory: int = 0
    disk: int = 0
    state: str | None = None
    size_bytes: int = 0  # blocks the copy uses on the host, not the sum of file sizes
    inodes: int = 0
    source_sandbox_id: str | None = None
    network_policy: NetworkPolicyDict | None = None
    created_at: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise MalformedResponseError("snapshot response has no name")
        return cls(
            id=_required_id(data, "snapshot"),
            name=name,
            template_id=_str(data, "template_id"),
            vcpu=_int(data, "vcpu"),
            memory=_int(data, "memory"),
            disk=_int(data, "disk"),
            state=_opt_str(data, "state"),
            size_bytes=_int(data, "size_bytes"),
            inodes=_int(data, "inodes"),
            source_sandbox_id=_opt_str(data, "source_sandbox_id"),
            network_policy=_network_policy(data),
            created_at=_str(data, "created_at"),
        )


@dataclass(frozen=True, slots=True)
class SnapshotList:
    items: list[Snapshot]
    total_items: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SnapshotList:
        if "items" not in data or "total_items" not in data:
            raise MalformedResponseError("snapshot list response needs items and total_items")
        raw_items = data.get("items")
        rows = raw_items if isinstance(raw_items, list) else []
        items = [Snapshot.from_dict(row) for row in rows if isinstance(row, Mapping)]
        return cls(items=items, total_items=_int(data, "total_items", len(items)))
