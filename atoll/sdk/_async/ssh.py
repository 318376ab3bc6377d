"""``sandbox.ssh``: credentials for the server's SSH gateway (agent-services §4). An access's
``id`` is the SSH user name and its ``password`` is shown only when it is made (or
regenerated); ``ssh_command`` is what a person pastes (``ssh -p PORT ID@HOST``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from atoll._exceptions import InvalidArgument
from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._validation import sandbox_path
from atoll.sdk.models import SandboxRef, json_object


@dataclass(frozen=True)
class SshAccess:
    id: str
    sandbox_id: str
    password: str
    ssh_command: str
    expires_at: str
    created_at: str
    updated_at: str

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> SshAccess:
        return cls(**{name: str(data.get(name) or "") for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class SshValidation:
    valid: bool
    sandbox_id: str


def _access_id(value: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 64:
        raise InvalidArgument("id", f"must be an SSH access id, got {value!r}")
    return quote(value, safe="")


class AsyncSsh:
    """The SSH accesses of one sandbox."""

    def __init__(self, transport: AsyncTransport, sandbox: SandboxRef) -> None:
        self._transport = transport
        self._sandbox = sandbox

    async def create_access(self) -> SshAccess:
        response = await self._transport.request(
            "POST", sandbox_path(self._sandbox, "/ssh/access"), expected_status=201
        )
        return SshAccess.from_wire(json_object(response.content))

    async def regenerate_access(self, id: str) -> SshAccess:
        """A new password (and expiry) for the access; the old password stops working."""
        path = sandbox_path(self._sandbox, f"/ssh/{_access_id(id)}/regen")
        response = await self._transport.request("POST", path)
        return SshAccess.from_wire(json_object(response.content))

    async def validate_access(self, id: str, password: str) -> SshValidation:
        path = sandbox_path(self._sandbox, f"/ssh/{_access_id(id)}/validate")
        response = await self._transport.request("POST", path, json={"password": password})
        data = json_object(response.content)
        return SshValidation(valid=bool(data.get("valid")), sandbox_id=str(data.get("sandbox_id", "")))

    async def delete_access(self, id: str) -> None:
        path = sandbox_path(self._sandbox, f"/ssh/{_access_id(id)}")
        await self._transport.request("DELETE", path, expected_status=204)
