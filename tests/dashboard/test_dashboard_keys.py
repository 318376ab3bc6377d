"""API keys in the dashboard: create (shown once), list by prefix, revoke; a revoked key is
refused at once by the API and ends the dashboard sessions signed in with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests._support.server import ServerProcess
from tests.dashboard import test_dashboard as base
from tests.dashboard.test_dashboard import Page, _csp

# this module's fixtures are the dashboard module's (a server of its own, one browser)
server, browser, shots = base.server, base.browser, base.shots


def test_create_list_and_revoke_a_key(browser: Any, server: ServerProcess, shots: Path) -> None:
    ui = Page(browser, server)
    other: Page | None = None
    try:
        page = ui.sign_in(server.api_key)
        response = page.goto("/ui/keys")
        assert response.status == 200 and "script-src 'self'" in _csp(response)
        with page.expect_navigation():
            page.click("form[action='/ui/keys'] button")
        new_key = page.locator("#new-key").inner_text()
        assert new_key.startswith("atl_")
        api = f"{server.base_url}/v1/sandboxes"
        assert httpx.get(api, headers={"authorization": new_key}).status_code == 200
        row = page.locator("tr[data-key-id]", has_text=new_key[:8])
        assert row.count() == 1
        key_id = row.get_attribute("data-key-id")
        page.screenshot(path=str(shots / "keys-1440.png"), full_page=True)

        # shown once: the list shows its prefix only, never the secret
        page.goto("/ui/keys")
        assert page.locator("#new-key").count() == 0
        assert new_key not in page.content()
        assert page.locator(f"tr[data-key-id='{key_id}']").inner_text().count(new_key[:8]) == 1

        # a second browser signed in with the new key
        other = Page(browser, server)
        other.sign_in(new_key)
        assert other.page.goto("/ui/keys").url.endswith("/ui/keys")

        # revoking needs the CSRF token
        forged = ui.context.request.post(f"/ui/keys/{key_id}/revoke", form={"csrf": "wrong"})
        assert forged.status == 403
        assert httpx.get(api, headers={"authorization": new_key}).status_code == 200

        with page.expect_navigation():
            page.locator(f"tr[data-key-id='{key_id}'] button", has_text="Revoke").click()
        assert f"revoked {key_id}" in page.locator(".message.ok").inner_text()
        assert page.locator(f"tr[data-key-id='{key_id}']").count() == 0
        # refused at once: no cache lets it through for a few more seconds
        assert httpx.get(api, headers={"authorization": new_key}).status_code == 401
        assert httpx.get(api, headers={"authorization": server.api_key}).status_code == 200
        # the other browser's session ended with it, and the key no longer signs in
        assert other.page.goto("/ui/keys").url.endswith("/ui/login")
        other.page.fill("#api_key", new_key)
        with other.page.expect_response(lambda r: r.request.method == "POST") as sent:
            other.page.click("button[type=submit]")
        assert sent.value.status == 401
        # an unknown (or another org's) key id is the 404 page
        csrf = page.locator("input[name=csrf]").first.get_attribute("value")
        missing = ui.context.request.post(f"/ui/keys/{key_id}/revoke", form={"csrf": csrf})
        assert missing.status == 404
        assert ui.errors == [], f"console errors: {ui.errors}"
    finally:
        ui.close()
        if other is not None:
            other.close()
