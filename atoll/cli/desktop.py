"""``atoll sandbox desktop ID``: the noVNC page of a desktop sandbox (template
``system/desktop:v0.1.0``). A browser cannot send the API key, so by default the printed URL is a
presigned one (an unguessable token that opens the desktop's port for ``expires_in`` seconds,
without a key); ``--no-presign`` prints the plain sandbox URL, which needs the key as a bearer
token. The URL is opened in a browser when one is available (``--no-open`` only prints it)."""

from __future__ import annotations

import webbrowser
from typing import Any

DESKTOP_PORT = 6080  # the desktop service's port (atoll.templates.desktop.PORT)


def desktop_url(client: Any, sandbox_id: str, *, presign: bool, expires_in_s: int) -> str:
    sandbox = client.sandboxes.get(sandbox_id)
    if not presign:
        return str(sandbox.desktop.url())
    response = client._transport.request(
        "POST",
        f"/v1/sandbox/{sandbox_id}/presigned-url",
        json={"port": DESKTOP_PORT, "expires_in": expires_in_s},
        expected_status=201,
    )
    return str(response.json()["url"])


def open_in_browser(url: str) -> bool:
    """Whether a browser took the URL (none on a headless host: then it is only printed)."""
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return webbrowser.open(url)
