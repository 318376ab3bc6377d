"""Importing a template from the dashboard, with progress, from a local OCI archive (built with
umoci from the host's busybox: no registry is involved)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._support.images import build_image, sh
from tests._support.server import ServerProcess
from tests.dashboard import test_dashboard as base
from tests.dashboard.test_dashboard import Page, _csp

# this module's fixtures are the dashboard module's (a server of its own, one browser)
server, browser, shots = base.server, base.browser, base.shots


def test_import_a_template_with_progress(
    browser: Any,
    server: ServerProcess,
    http: httpx.Client,
    shots: Path,
    tmp_path: Path,
) -> None:
    if shutil.which("umoci") is None or shutil.which("skopeo") is None:
        pytest.skip("umoci and skopeo are needed (scripts/setup-host.sh installs them)")
    layout = build_image(tmp_path / "image")
    imports = server.data_dir / "imports"
    imports.mkdir(parents=True, exist_ok=True)
    archive = imports / "dashboard-web.tar"
    sh("tar", "-C", layout, "-cf", archive, ".")
    ui = Page(browser, server)
    try:
        page = ui.sign_in(server.api_key)
        response = page.goto("/ui/templates")
        assert "script-src 'self'" in _csp(response)

        # refused before anything is pulled: a path outside the import directory
        page.fill("#import-form input[name=name]", "from-outside")
        page.fill("#import-form input[name=uri]", "oci-archive:/etc/passwd")
        page.click("#import-form button[type=submit]")
        page.wait_for_selector("#import-progress[data-done=error]")
        assert "failed:" in page.locator("#import-progress").inner_text()

        loaded = ui.navigations
        page.fill("#import-form input[name=name]", "dash-web")
        page.fill("#import-form input[name=uri]", f"oci-archive:{archive}")
        page.click("#import-form button[type=submit]")
        page.wait_for_selector("#import-progress[data-done=ok]", timeout=180_000)
        steps = page.locator("#import-progress li").all_inner_texts()
        assert len(steps) >= 2, steps  # progress lines before the result
        assert steps[-1] == "imported dash-web (ready)"
        page.locator("tr[data-template='dash-web']").wait_for()  # the list refreshed in place
        assert ui.navigations == loaded
        page.screenshot(path=str(shots / "templates-import-1440.png"), full_page=True)
        listed = {t["name"]: t for t in http.get("/v1/templates").json()["items"]}
        assert listed["dash-web"]["state"] == "ready"
        assert "from-outside" not in listed

        # a second import under the same name: the API's conflict, shown in the page
        page.click("#import-form button[type=submit]")
        page.wait_for_selector("#import-progress[data-done=error]")
        assert ui.errors == [], f"console errors: {ui.errors}"
        # no CSRF token, no import
        forged = ui.context.request.post(
            "/ui/templates/import", form={"name": "x", "uri": f"oci-archive:{archive}"}
        )
        assert forged.status == 403
    finally:
        ui.close()
        for t in http.get("/v1/templates").json()["items"]:
            if t["name"] == "dash-web":
                http.delete(f"/v1/template/{t['id']}")
