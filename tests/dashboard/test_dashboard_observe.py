"""One sandbox, observed in a real browser: CPU and memory graphs fed by the metrics route,
its processes and a process's output, and the desktop view (only for desktop sandboxes)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._support.server import ServerProcess
from tests.dashboard import test_dashboard as base
from tests.dashboard.test_dashboard import Page, _csp

# this module's fixtures are the dashboard module's (a server of its own, one browser)
server, browser, shots = base.server, base.browser, base.shots

DESKTOP_TEMPLATE = "system/desktop:v0.1.0"
SCRIPT = "echo out-line; echo err-line >&2; sleep 2; echo last-line; exit 3"


def test_graphs_processes_and_output(
    browser: Any,
    server: ServerProcess,
    http: httpx.Client,
    shots: Path,
    no_leaks: None,
) -> None:
    sandbox_id = http.post("/v1/sandbox", json={"memory": 512}).json()["id"]
    ui = Page(browser, server)
    try:
        sleeper = http.post(
            f"/v1/sandbox/{sandbox_id}/process/start", json={"command": "sleep 300", "tag": "sleeper"}
        ).json()["pid"]
        page = ui.sign_in(server.api_key)
        response = page.goto(f"/ui/sandboxes/{sandbox_id}")
        csp = _csp(response)
        assert "script-src 'self'" in csp and "frame-src" not in csp  # no desktop: no frames
        assert page.locator("#open-desktop").count() == 0

        # graphs: uPlot draws what the metrics route samples (every metrics_interval_s)
        page.wait_for_selector("#chart-cpu canvas")
        page.wait_for_selector("#chart-mem canvas")
        page.wait_for_selector("#metrics[data-samples]", timeout=60_000)
        latest = page.locator("#metrics-latest").inner_text()
        assert re.search(r"CPU [\d.]+ % · memory [\d.]+ / 512 MiB", latest), latest
        api_samples = http.get(f"/v1/sandbox/{sandbox_id}/metrics").json()["items"]
        assert api_samples, "the page showed samples the API does not have"

        # processes: the one started through the API is listed, running, with its tag
        row = page.locator(f"#processes tr.process[data-pid='{sleeper}']")
        row.wait_for()
        assert "sleeper" in row.inner_text() and "running" in row.inner_text()

        # a new one shows up at the next refresh; its output streams into the page
        pid = http.post(f"/v1/sandbox/{sandbox_id}/process/start", json={"command": SCRIPT}).json()["pid"]
        started = page.locator(f"#processes tr.process[data-pid='{pid}']")
        started.wait_for(timeout=20_000)
        started.locator("button.show-output").click()
        output = page.locator("#process-output-text")
        page.wait_for_selector("#process-output[data-ended='3']", timeout=30_000)
        text = output.inner_text()
        assert "out-line" in text and "err-line" in text and "last-line" in text
        assert text.count("out-line") == 1  # no replay after the end
        assert page.locator("#process-output-text .stderr", has_text="err-line").count() == 1
        page.locator(f"#processes tr.process[data-pid='{pid}']", has_text="exit 3").wait_for(timeout=20_000)
        page.screenshot(path=str(shots / "sandbox-observe-1440.png"), full_page=True)

        # a desktop view is only for desktop sandboxes
        csrf = page.locator("meta[name=csrf-token]").get_attribute("content")
        refused = ui.context.request.post(
            f"/ui/sandboxes/{sandbox_id}/desktop", headers={"x-csrf-token": csrf, "hx-request": "true"}
        )
        assert "has no desktop" in refused.text()
        # another org's (or an unknown) sandbox's metrics and processes are 404
        assert ui.context.request.get("/ui/sandboxes/sbxnone/metrics").status == 404
        assert ui.context.request.get("/ui/sandboxes/sbxnone/processes").status == 404
        assert ui.errors == [], f"console errors: {ui.errors}"
    finally:
        ui.close()
        http.delete(f"/v1/sandbox/{sandbox_id}")


def test_desktop_view(
    browser: Any,
    server: ServerProcess,
    http: httpx.Client,
    shots: Path,
    no_leaks: None,
) -> None:
    ready = {t["name"] for t in http.get("/v1/templates").json()["items"] if t["state"] == "ready"}
    if DESKTOP_TEMPLATE not in ready:
        pytest.skip(f"{DESKTOP_TEMPLATE} is not built here (atoll template build system/desktop)")
    sandbox_id = http.post(
        "/v1/sandbox", json={"template_name": DESKTOP_TEMPLATE, "memory": 2048, "vcpu": 2}
    ).json()["id"]
    # the test server's sandbox URLs are HTTPS with a certificate of its own making
    ui = Page(browser, server, ignore_https_errors=True)
    try:
        page = ui.sign_in(server.api_key)
        response = page.goto(f"/ui/sandboxes/{sandbox_id}")
        assert "frame-src" in _csp(response) and "script-src 'self'" in _csp(response)
        page.click("#open-desktop")
        frame = page.locator("#desktop-frame")
        frame.wait_for()
        assert re.match(r"https?://[^/]+\.sbx\.localhost:\d+/$", frame.get_attribute("src") or "")
        page.frame_locator("#desktop-frame").locator("canvas, #noVNC_container").first.wait_for(
            timeout=60_000
        )
        page.screenshot(path=str(shots / "sandbox-desktop-1440.png"))
        # noVNC (in the frame, another site) reads localStorage for its settings, which a fresh
        # browser context denies to third-party frames; it goes on without them
        ours = [e for e in ui.errors if "'localStorage'" not in e]
        assert ours == [], f"console errors: {ours}"
    finally:
        ui.close()
        http.delete(f"/v1/sandbox/{sandbox_id}")
