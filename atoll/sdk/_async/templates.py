"""``client.templates``: import templates from container images, list, rename and delete them.

``create`` pulls and unpacks the image on the server and returns once the template is ready
(large images take a while: give it a long ``http_timeout``). With ``on_progress`` the server
streams progress events, and the callback sees each one as it happens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeAlias

from atoll._exceptions import MalformedResponseError, error_for_status
from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._templates import (
    BasicCredentialsDict,
    ProgressCallback,
    Template,
    check_credentials,
    check_name,
    check_template_id,
    check_uri,
)
from atoll.sdk.models import json_object

NDJSON = "application/x-ndjson"
_Templates: TypeAlias = "list[Template]"


class AsyncTemplatesClient:
    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    async def create(
        self,
        *,
        name: str,
        uri: str,
        credentials: BasicCredentialsDict | Mapping[str, str] | None = None,
        on_progress: ProgressCallback | None = None,
        http_timeout: float | None = None,
    ) -> Template:
        """Import ``uri`` (``docker://…``, a registry reference, or a local ``oci-archive:``,
        ``docker-archive:``, ``oci:`` or ``dir:`` source under the server's import directory)."""
        body: dict[str, Any] = {"name": check_name(name), "uri": check_uri(uri)}
        if credentials is not None:
            body["credentials"] = check_credentials(credentials)
        if on_progress is None:
            response = await self._transport.request(
                "POST", "/v1/template", json=body, expected_status=201, timeout=http_timeout
            )
            return Template.from_dict(json_object(response.content))
        async with self._transport.stream(
            "POST",
            "/v1/template",
            json=body,
            headers={"accept": NDJSON},
            expected_status=201,
            timeout=http_timeout,
        ) as response:
            async for line in response.aiter_lines():
                if line.strip():
                    result = _event(line, on_progress)
                    if result is not None:
                        return result
        raise MalformedResponseError("the template import stream ended without a result")

    async def list(self, http_timeout: float | None = None) -> _Templates:
        """The system templates and this organisation's own."""
        response = await self._transport.request("GET", "/v1/templates", timeout=http_timeout)
        found = json_object(response.content).get("items")
        return [Template.from_dict(item) for item in found or [] if isinstance(item, Mapping)]

    async def get(self, template_id: str, http_timeout: float | None = None) -> Template:
        response = await self._transport.request(
            "GET", f"/v1/template/{check_template_id(template_id)}", timeout=http_timeout
        )
        return Template.from_dict(json_object(response.content))

    async def rename(self, template_id: str, *, name: str, http_timeout: float | None = None) -> None:
        await self._transport.request(
            "PATCH",
            f"/v1/template/{check_template_id(template_id)}",
            json={"name": check_name(name)},
            expected_status=204,
            timeout=http_timeout,
        )

    async def delete(self, template_id: str, http_timeout: float | None = None) -> None:
        """Delete a template no sandbox uses any more (else ``ConflictError``)."""
        await self._transport.request(
            "DELETE",
            f"/v1/template/{check_template_id(template_id)}",
            expected_status=204,
            timeout=http_timeout,
        )


def _event(line: str, on_progress: ProgressCallback) -> Template | None:
    """Handle one line of the import stream: progress, the result, or the error to raise."""
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise MalformedResponseError(f"bad line in the template import stream: {line[:200]!r}") from exc
    if not isinstance(event, dict):
        raise MalformedResponseError(f"bad line in the template import stream: {line[:200]!r}")
    if isinstance(event.get("template"), dict):
        return Template.from_dict(event["template"])
    error = event.get("error")
    if isinstance(error, dict):
        status = int(error.get("status") or 500)
        raise error_for_status(status)(str(error.get("message") or "import failed"), status_code=status)
    on_progress(str(event.get("phase", "")), str(event.get("message", "")))
    return None
