"""The web dashboard in a real browser: Playwright drives Debian's chromium (installed by
scripts/setup-host.sh; never downloaded) against the session's real server and real sandboxes.

Screenshots of the main pages at 1440x900 and 390x844 go to ``ATOLL_SCREENSHOT_DIR`` when set,
else to the test's tmp dir (pytest keeps the last runs' dirs as artifacts)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._support.server import ServerProcess, side_server

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (bash scripts/setup-host.sh)", allow_module_level=True)
playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (make setup)"
)
if not (Path(__file__).parents[2] / "atoll/dashboard/frontend/node_modules").is_dir():
    pytest.skip("dashboard front-end libraries missing (make setup runs npm ci)", allow_module_level=True)

pytestmark = pytest.mark.privileged
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of this module's own (beside the session's, with host resources of its own): the
    dashboard keeps per-process state (sign-in sessions, live streams) these tests look at.
    ``make test`` builds the templates first, so this one does not build any."""
    own = side_server(
        tmp_path_factory.mktemp("dashboard-server"), "ui", 4, extra_args=("--no-build-template",)
    )
    own.start()
    try:
        yield own
    finally:
        own.delete_everything()
        own.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("ATOLL_SCREENSHOT_DIR") or tmp_path / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


class Page:
    """A browser page that records console errors and failed page loads."""

    def __init__(
        self, browser: Any, server: ServerProcess, viewport: dict[str, int] = DESKTOP, **options: Any
    ) -> None:
        self.context = browser.new_context(viewport=viewport, base_url=server.base_url, **options)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.navigations = 0
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: d.accept())  # hx-confirm before deletes
        self.page.on("framenavigated", self._navigated)

    def _console(self, message: Any) -> None:
        # Chromium aborts what is loading whenever an interface of the host comes or goes
        # (net::ERR_NETWORK_CHANGED): every sandbox's veth does, here the tests' own. Not the
        # page's fault; what the page must show is still waited for and checked.
        if message.type == "error" and "net::ERR_NETWORK_CHANGED" not in message.text:
            self.errors.append(message.text)

    def _navigated(self, frame: Any) -> None:
        if frame == self.page.main_frame:
            self.navigations += 1

    def sign_in(self, key: str) -> Any:
        self.page.goto("/ui/login")
        self.page.fill("#api_key", key)
        with self.page.expect_navigation():
            self.page.click("button[type=submit]")
        return self.page

    def close(self) -> None:
        self.context.close()


def _csp(response: Any) -> str:
    return str(response.headers.get("content-security-policy", ""))


def test_sign_in_create_terminal_files_pause_delete(
    browser: Any, server: ServerProcess, http: httpx.Client, shots: Path, no_leaks: None
) -> None:
    ui = Page(browser, server)
    page = ui.page
    try:
        response = page.goto("/ui/login")
        assert "script-src 'self'" in _csp(response)
        page.screenshot(path=str(shots / "login-1440.png"))
        ui.sign_in(server.api_key)
        session = next(c for c in page.context.cookies() if c["name"] == "atoll_session")
        assert session["httpOnly"] and session["sameSite"] == "Strict"
        assert server.api_key not in session["value"]
        assert page.locator("h1").first.inner_text().startswith("Sandboxes")

        # the form says what the API would say about a bad value, and creates nothing
        page.fill("input[name=memory]", "513")
        page.click("#create-form button[type=submit]")
        refused = page.locator("#flash .message.error")
        refused.wait_for()
        assert "memory: must be an even number of MiB between 512 and 8192" in refused.inner_text()
        assert http.get("/v1/sandboxes").json()["total_items"] == 0

        # create from the form: the new row arrives as running without a reload
        loaded = ui.navigations
        page.fill("input[name=memory]", "512")
        page.fill("textarea[name=env_vars]", "GREETING=hello")
        page.click("#create-form button[type=submit]")
        created = page.locator("#flash .message.ok")
        created.wait_for()
        sandbox_id = re.search(r"created (\S+)", created.inner_text()).group(1)  # type: ignore[union-attr]
        row = page.locator(f"#row-{sandbox_id}")
        page.wait_for_selector(f"#row-{sandbox_id}[data-state=running]")
        assert ui.navigations == loaded, "the list must update without reloading"
        assert http.get(f"/v1/sandbox/{sandbox_id}").json()["memory"] == 512
        page.screenshot(path=str(shots / "sandboxes-1440.png"))

        # its page: a terminal over the PTY WebSocket
        with page.expect_navigation():
            row.locator("a").first.click()
        assert "script-src 'self'" in _csp(page.request.get(f"/ui/sandboxes/{sandbox_id}"))
        page.click("#presigned-form button")
        page.locator("#presigned .message").wait_for()
        assert re.search(r"https?://\S+\.sbx\.localhost:\d+", page.locator("#presigned").inner_text())
        page.click("#open-terminal")
        page.wait_for_selector("#terminal .xterm-rows")
        # (locators, not wait_for_function: the page's CSP refuses the eval that one needs)
        lines = page.locator("#terminal .xterm-rows > div")
        lines.filter(has_text=re.compile(r"\S")).first.wait_for()  # the shell's prompt
        page.locator("#terminal .xterm-helper-textarea").focus()
        page.keyboard.type("echo hi\n")
        lines.filter(has_text=re.compile(r"^\s*hi\s*$")).first.wait_for()

        # files: upload one and see it listed, then view it
        page.wait_for_selector("#files .files")
        page.set_input_files(
            "#upload-input",
            files=[{"name": "hello.txt", "mimeType": "text/plain", "buffer": b"hello dashboard\n"}],
        )
        listed = page.locator('#files tr.file[data-name="hello.txt"]')
        listed.wait_for()
        listed.locator("a").first.click()
        page.wait_for_selector("#viewer pre")
        assert page.locator("#viewer pre").inner_text() == "hello dashboard\n"
        page.screenshot(path=str(shots / "sandbox-1440.png"), full_page=True)
        page.set_viewport_size(PHONE)
        page.locator("header.top").scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "sandbox-390.png"))
        page.set_viewport_size(DESKTOP)

        # back to the list: pause from there and watch the state change live, then delete
        page.goto("/")
        loaded = ui.navigations
        page.locator(f"#row-{sandbox_id} button", has_text="Pause").click()
        page.wait_for_selector(f"#row-{sandbox_id}[data-state=paused]")
        assert http.get(f"/v1/sandbox/{sandbox_id}").json()["state"] == "paused"
        page.locator(f"#row-{sandbox_id} button", has_text="Delete").click()
        page.wait_for_selector(f"#row-{sandbox_id}", state="detached")
        assert ui.navigations == loaded
        assert http.get(f"/v1/sandbox/{sandbox_id}").status_code == 404
        assert ui.errors == [], f"console errors: {ui.errors}"
    finally:
        ui.close()


def test_wrong_key_is_refused(browser: Any, server: ServerProcess) -> None:
    ui = Page(browser, server)
    page = ui.page
    try:
        page.goto("/ui/login")
        page.fill("#api_key", "atl_wrong_key")
        with page.expect_response(
            lambda r: r.url.endswith("/ui/login") and r.request.method == "POST"
        ) as sent:
            page.click("button[type=submit]")
        assert sent.value.status == 401
        assert page.locator("#login-error").inner_text() == "invalid API key"
        assert all(c["name"] != "atoll_session" for c in page.context.cookies())
        assert page.goto("/").url.endswith("/ui/login")  # still signed out
    finally:
        ui.close()


def test_phone_screenshots_and_sign_out(browser: Any, server: ServerProcess, shots: Path) -> None:
    ui = Page(browser, server, PHONE)
    try:
        page = ui.sign_in(server.api_key)
        page.screenshot(path=str(shots / "sandboxes-390.png"), full_page=True)
        for path, name in (
            ("/ui/templates", "templates"),
            ("/ui/snapshots", "snapshots"),
            ("/ui/host", "host"),
        ):
            response = page.goto(path)
            assert response.status == 200 and "script-src 'self'" in _csp(response)
            page.screenshot(path=str(shots / f"{name}-390.png"), full_page=True)
        page.goto("/ui/keys")
        with page.expect_navigation():
            page.click("form[action='/ui/keys'] button")
        new_key = page.locator("#new-key").inner_text()
        page.screenshot(path=str(shots / "keys-390.png"))
        assert (
            httpx.get(f"{server.base_url}/v1/sandboxes", headers={"authorization": new_key}).status_code
            == 200
        )
        with page.expect_navigation():
            page.click(".signout button")
        assert page.url.endswith("/ui/login")
        assert page.goto("/").url.endswith("/ui/login")  # the session is gone
        assert ui.errors == [], f"console errors: {ui.errors}"
    finally:
        ui.close()


def test_post_without_csrf_token_is_refused(browser: Any, server: ServerProcess, http: httpx.Client) -> None:
    ui = Page(browser, server)
    try:
        ui.sign_in(server.api_key)
        before = http.get("/v1/sandboxes").json()["total_items"]
        # the session cookie rides along, the token does not: what a forged cross-site form sends
        refused = ui.context.request.post("/ui/sandboxes", form={"template_name": "x", "vcpu": "1"})
        assert refused.status == 403
        assert "CSRF" in refused.text()
        logout = ui.context.request.post("/ui/logout", form={"csrf": "wrong"})
        assert logout.status == 403
        assert http.get("/v1/sandboxes").json()["total_items"] == before
        # and without a session at all, a POST goes to the sign-in page
        anonymous = httpx.post(f"{server.base_url}/ui/sandboxes", data={"vcpu": "1"})
        assert anonymous.status_code == 303 and anonymous.headers["location"] == "/ui/login"
    finally:
        ui.close()


def test_other_orgs_sandbox_is_the_404_page(
    browser: Any, server: ServerProcess, shots: Path, no_leaks: None
) -> None:
    other_key = server.mint_key("org_dashboard_other")
    with httpx.Client(
        base_url=server.base_url, headers={"authorization": f"Bearer {other_key}"}, timeout=120
    ) as other:
        theirs = other.post("/v1/sandbox", json={"memory": 512}).json()["id"]
        ui = Page(browser, server)
        try:
            page = ui.sign_in(server.api_key)
            response = page.goto(f"/ui/sandboxes/{theirs}")
            assert response.status == 404
            assert page.locator("h1").inner_text() == "Not found"
            assert "script-src 'self'" in _csp(response)
            assert theirs not in page.locator("#rows").inner_text() if page.locator("#rows").count() else True
            page.goto("/")
            assert page.locator(f"#row-{theirs}").count() == 0
            # its files and terminal are not reachable either
            files = ui.context.request.get(f"/ui/sandboxes/{theirs}/files")
            assert files.status == 404
        finally:
            ui.close()
            other.delete(f"/v1/sandbox/{theirs}")


def test_terminal_socket_needs_the_session_and_this_origin(server: ServerProcess, http: httpx.Client) -> None:
    """The dashboard's PTY WebSocket rides the session cookie, so only this origin may open it."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with httpx.Client(base_url=server.base_url) as browser_like:
        token = browser_like.get("/ui/login").cookies["atoll_login_csrf"]
        signed = browser_like.post("/ui/login", data={"csrf": token, "api_key": server.api_key})
        assert signed.status_code == 303
        cookie = f"atoll_session={signed.cookies['atoll_session']}"
    url = f"ws://127.0.0.1:{server.port}/ui/sandboxes/sbxnone/pty/pty-x/connect"
    for headers in ({"cookie": cookie, "origin": "http://evil.example"}, {"origin": server.base_url}):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, additional_headers=headers, open_timeout=10).close()
        assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as missing:  # signed in, same origin: the lookup's 404
        connect(
            url, additional_headers={"cookie": cookie, "origin": server.base_url}, open_timeout=10
        ).close()
    assert missing.value.response.status_code == 404


def test_assets_are_versioned_and_not_fetched_again(browser: Any, server: ServerProcess) -> None:
    """The stylesheet blocks the first paint: a second visit must not wait for it (nor for any
    other asset), so assets are linked with their hash and cached for good."""
    ui = Page(browser, server)
    try:
        page = ui.sign_in(server.api_key)
        links = page.locator("link[rel=stylesheet], script[src]")
        urls = [
            links.nth(i).get_attribute("href") or links.nth(i).get_attribute("src")
            for i in range(links.count())
        ]
        assert urls and all(
            re.search(r"^/ui/(static|vendor)/[\w.\-]+\?v=[0-9a-f]{16}$", u or "") for u in urls
        ), urls
        asset = page.request.get(urls[0] or "")
        assert "immutable" in asset.headers["cache-control"]
        stale = page.request.get((urls[0] or "").split("?")[0] + "?v=0000000000000000")
        assert stale.headers["cache-control"] == "no-cache"  # an old link revalidates
        # a later visit takes them from the cache: nothing crosses the network, not even a 304
        # (a revalidated entry has a transferSize: its response's headers)
        sent = "performance.getEntriesByType('resource').filter(e => e.transferSize > 0).map(e => e.name)"
        for path in ("/", "/ui/host"):
            page.goto(path)
            page.wait_for_load_state("load")
            fetched = [u for u in page.evaluate(sent) if "/ui/static/" in u or "/ui/vendor/" in u]
            assert fetched == [], f"{path}: fetched again: {fetched}"
    finally:
        ui.close()
