"""Dashboard: first contentful paint of the sandboxes list with many sandboxes, and how long a
state change takes to reach an open list page.

Starts its own `atoll serve` (over-commit raised, as bench/density.py does, so the budget admits
N idle sandboxes), creates N sandboxes, signs a headless Debian chromium in, loads `/` ten times
(FCP from the browser's own paint timing), then pauses and resumes sandboxes through the API and
times each change until the open page shows it (pushed by server-sent events).

    python bench/dashboard.py [--sandboxes 500]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("ATOLL_TEST_INSTANCE", "bench")
os.environ.setdefault("ATOLL_TEST_IFACE_PREFIX", "atb")
os.environ.setdefault("ATOLL_TEST_SUBNET", "10.241.0.0/16")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from playwright.sync_api import Page, sync_playwright

from bench._stats import row
from tests._support.server import ServerProcess

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip
FCP = "() => performance.getEntriesByName('first-contentful-paint').map(e => e.startTime)[0] || null"


def create(http: httpx.Client) -> str:
    r = http.post("/v1/sandbox", json={"memory": 512, "timeout": 3600})
    r.raise_for_status()
    return str(r.json()["id"])


TTFB = "() => performance.getEntriesByType('navigation')[0].responseStart"


def first_paints(page: Page, loads: int = 10, path: str = "/") -> tuple[list[float], list[float]]:
    """FCP of ``path`` and, to tell the server's part from the browser's, its time to first byte
    (the first load, with a cold cache, is not counted: a person's second visit is the norm)."""
    page.goto(path, wait_until="load")
    paints, firsts = [], []
    for _ in range(loads):
        page.goto(path, wait_until="load")
        page.wait_for_function(FCP)
        paints.append(float(page.evaluate(FCP)))
        firsts.append(float(page.evaluate(TTFB)))
    return paints, firsts


def change_latency(page: Page, http: httpx.Client, ids: list[str], changes: int = 10) -> list[float]:
    page.goto("/")
    times = []
    for sid in ids[-changes:]:  # the newest: the list shows the newest 100
        for action, state in (("pause", "paused"), ("resume", "running")):
            if action == "pause":
                http.post(f"/v1/sandbox/{sid}/pause").raise_for_status()
            else:
                http.get(f"/v1/sandbox/{sid}/system/workdir").raise_for_status()  # any request resumes
            done = time.perf_counter()
            page.wait_for_selector(f"#row-{sid}[data-state={state}]", timeout=30_000)
            times.append((time.perf_counter() - done) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sandboxes", type=int, default=500)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="atoll-bench-", dir="/var/tmp"))
    server = ServerProcess(
        data_dir=scratch / "server",
        host="127.0.0.1",
        extra_args=("--memory-overcommit", "64", "--cpu-overcommit", "1024"),
    )
    ids: list[str] = []
    try:
        server.start()
        with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=300) as http:
            try:
                paints, firsts, floor, changes = measure(server, http, ids, args.sandboxes)
            finally:  # never leave the sandboxes behind, whatever failed
                with ThreadPoolExecutor(max_workers=8) as pool:
                    list(pool.map(lambda sid: http.delete(f"/v1/sandbox/{sid}/"), ids))
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"# dashboard benchmark, {args.sandboxes} sandboxes (the list shows the newest 100)")
    print(row(f"sandboxes list first contentful paint, {args.sandboxes} sandboxes", paints))
    print(row("sandboxes list time to first byte", firsts))
    print(row("host page first contentful paint (no list: the browser's floor)", floor))
    print(row("state change (pause/resume via API) -> open list page", changes))


def measure(
    server: ServerProcess, http: httpx.Client, ids: list[str], count: int
) -> tuple[list[float], list[float], list[float], list[float]]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        for sid in pool.map(lambda _: create(http), range(count)):
            ids.append(sid)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        # bypass_csp: the measuring scripts are evaluated in the page, which its CSP forbids
        context = browser.new_context(base_url=server.base_url, bypass_csp=True)
        page = context.new_page()
        page.goto("/ui/login")
        page.fill("#api_key", server.api_key)
        with page.expect_navigation():
            page.click("button[type=submit]")
        paints, firsts = first_paints(page)
        # the floor: a page of the same layout and assets without the list
        floor, _ = first_paints(page, path="/ui/host")
        changes = change_latency(page, http, ids)
        browser.close()
    return paints, firsts, floor, changes


if __name__ == "__main__":
    main()
