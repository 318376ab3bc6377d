"""API keys in the dashboard: create (shown once), list by prefix, revoke; a revoked key is
refused at once by the API and ends the dashboard sessions signed in with it."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

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


def test_keys_have_names(browser: Any, server: ServerProcess) -> None:
    ui = Page(browser, server)
    try:
        page = ui.sign_in(server.api_key)
        page.goto("/ui/keys")
        page.fill("#key-name", "ci  robot")
        with page.expect_navigation():
            page.click("form[action='/ui/keys'] button")
        new_key = page.locator("#new-key").inner_text()
        row = page.locator("tr[data-key-id]", has_text=new_key[:8])
        key_id = row.get_attribute("data-key-id")
        name = page.locator(f"tr[data-key-id='{key_id}'] input[name=name]")
        assert name.input_value() == "ci robot"  # spaces folded
        # renamed in its row; kept across a reload
        name.fill("nightly")
        with page.expect_navigation():
            page.locator(f"tr[data-key-id='{key_id}'] button", has_text="Save").click()
        assert f"renamed {key_id}" in page.locator(".message.ok").inner_text()
        page.goto("/ui/keys")
        assert page.locator(f"tr[data-key-id='{key_id}'] input[name=name]").input_value() == "nightly"
        # too long: 400 naming the field, nothing changed; an unknown key: the 404 page
        csrf = page.locator("input[name=csrf]").first.get_attribute("value")
        long = ui.context.request.post(f"/ui/keys/{key_id}/name", form={"csrf": csrf, "name": "x" * 65})
        assert long.status == 400 and "name" in long.text() and "at most 64 characters" in long.text()
        refused = ui.context.request.post("/ui/keys", form={"csrf": csrf, "name": "y" * 65})
        assert refused.status == 400 and "at most 64 characters" in refused.text()
        forged = ui.context.request.post(f"/ui/keys/{key_id}/name", form={"csrf": "wrong", "name": "z"})
        assert forged.status == 403
        missing = ui.context.request.post(
            "/ui/keys/key_0000000000000000/name", form={"csrf": csrf, "name": "a"}
        )
        assert missing.status == 404
        page.goto("/ui/keys")
        assert page.locator(f"tr[data-key-id='{key_id}'] input[name=name]").input_value() == "nightly"
        assert ui.errors == [], f"console errors: {ui.errors}"
    finally:
        ui.close()


class Streamed:
    """An SSE response read in a thread until it ends; ``ended`` is when (monotonic)."""

    def __init__(self, client: httpx.Client, url: str, **params: str) -> None:
        self.ended: float | None = None
        self.response = client.send(client.build_request("GET", url, params=params), stream=True)
        assert self.response.status_code == 200, self.response.read()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for _ in self.response.iter_raw():
                pass
        except httpx.HTTPError:
            pass
        self.ended = time.monotonic()

    def close(self) -> None:
        self.response.close()


def _ws(server: ServerProcess, path: str, key: str) -> Any:
    url = f"ws://127.0.0.1:{server.port}{path}"
    return ws_connect(url, additional_headers={"authorization": f"Bearer {key}"}, open_timeout=30)


def _closed_code(socket: Any, within_s: float) -> int | None:
    """The close code the server sends within ``within_s`` (output before it is skipped)."""
    deadline = time.monotonic() + within_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            socket.recv(timeout=left)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None
        except TimeoutError:
            return None
    return None


def test_revoking_a_key_ends_its_streams(browser: Any, server: ServerProcess, no_leaks: None) -> None:
    """The terminal and process WebSockets and the SSE streams a key opened end when it is
    revoked (WebSockets with 1008); what another key opened goes on."""
    ui = Page(browser, server)
    page = ui.sign_in(server.api_key)
    page.goto("/ui/keys")
    page.fill("#key-name", "to revoke")
    with page.expect_navigation():
        page.click("form[action='/ui/keys'] button")
    key = page.locator("#new-key").inner_text()
    key_id = page.locator("tr[data-key-id]", has_text=key[:8]).get_attribute("data-key-id")
    mine = httpx.Client(base_url=server.base_url, headers={"authorization": key}, timeout=120)
    admin = httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120)
    opened: list[Streamed] = []
    sid = None
    with contextlib.ExitStack() as sockets:
        try:
            r = mine.post("/v1/sandbox", json={"memory": 512})
            assert r.status_code == 201, r.text
            sid = r.json()["id"]
            r = mine.post(f"/v1/sandbox/{sid}/process/start", json={"command": "sleep 600", "stdin": True})
            assert r.status_code == 201, r.text
            pid = r.json()["pid"]
            r = mine.post(f"/v1/sandbox/{sid}/pty", json={"id": "revoked"})
            assert r.status_code == 201, r.text
            pty = sockets.enter_context(_ws(server, f"/v1/sandbox/{sid}/pty/revoked/connect", key))
            process = sockets.enter_context(_ws(server, f"/v1/sandbox/{sid}/process/{pid}/connect", key))
            other = sockets.enter_context(
                _ws(server, f"/v1/sandbox/{sid}/process/{pid}/connect", server.api_key)
            )
            events = Streamed(mine, f"/v1/sandbox/{sid}/process/{pid}/events")
            watch = Streamed(mine, f"/v1/sandbox/{sid}/filesystem/watch", path="/tmp")
            other_watch = Streamed(admin, f"/v1/sandbox/{sid}/filesystem/watch", path="/tmp")
            opened += [events, watch, other_watch]
            assert _closed_code(pty, 0.5) is None and _closed_code(process, 0.5) is None  # open

            with page.expect_navigation():
                page.locator(f"tr[data-key-id='{key_id}'] button", has_text="Revoke").click()
            revoked = time.monotonic()
            assert _closed_code(pty, 5) == 1008
            assert _closed_code(process, 5) == 1008
            for stream in (events, watch):
                while stream.ended is None and time.monotonic() - revoked < 5:
                    time.sleep(0.05)
                assert stream.ended is not None, "an SSE stream of the revoked key is still open"
            # the other key's streams go on
            assert _closed_code(other, 1.0) is None
            assert other_watch.ended is None
            assert ui.errors == [], f"console errors: {ui.errors}"
        finally:
            for each in opened:
                each.close()
            if sid is not None:
                admin.delete(f"/v1/sandbox/{sid}/")
            mine.close()
            admin.close()
            ui.close()
