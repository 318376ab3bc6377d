"""The escape suite's fixtures and its report: every test marked ``attempt("...")`` is one thing
code inside a sandbox tries; at the end of the run a table lists each attempt and its outcome
(blocked, and by what, or ESCAPED), so a run's output is the suite's record."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests._support import api
from tests._support.server import INSTANCE, SUBNET, ServerProcess
from tests.security._trap import Trap


@dataclass
class Outcome:
    attempt: str
    result: str  # "blocked", "ESCAPED", "expected failure", "skipped", "error"
    how: str


OUTCOMES: dict[str, Outcome] = {}
HOW_KEY = "blocked_by"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "attempt(text): one escape attempt of the security suite")


class Blocked:
    """What a test calls to say how the attempt was stopped (shown in the table)."""

    def __init__(self, item: pytest.Item) -> None:
        self.item = item

    def __call__(self, how: str) -> None:
        self.item.user_properties.append((HOW_KEY, how))


@pytest.fixture
def blocked(request: pytest.FixtureRequest) -> Blocked:
    return Blocked(request.node)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    marker = item.get_closest_marker("attempt")
    if marker is None:
        return report
    hows = [value for key, value in item.user_properties if key == HOW_KEY]
    attempt = str(marker.args[0])
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        attempt += f" [{callspec.id}]"
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail"):
            outcome = Outcome(attempt, "expected failure", str(report.wasxfail))
        elif report.skipped:
            outcome = Outcome(attempt, "skipped", _reason(report))
        elif report.passed:
            outcome = Outcome(attempt, "blocked", "; ".join(hows) or "refused")
        elif report.when == "setup":
            outcome = Outcome(attempt, "error", "setup failed")
        else:
            outcome = Outcome(attempt, "ESCAPED", _first_line(report))
        OUTCOMES[item.nodeid] = outcome
    elif report.when == "teardown" and report.failed and item.nodeid in OUTCOMES:
        OUTCOMES[item.nodeid].how += " (then the leak check failed)"
    return report


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _first_line(report: pytest.TestReport) -> str:
    text = report.longreprtext.strip().splitlines()
    failed = [line for line in text if line.startswith("E ")]
    return (failed[0][1:].strip() if failed else (text[-1] if text else "failed"))[:100]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not OUTCOMES:
        return
    rows = sorted(OUTCOMES.values(), key=lambda o: o.attempt.lower())
    width = max(len(o.attempt) for o in rows)
    terminalreporter.section("escape attempts from inside a sandbox")
    terminalreporter.write_line(f"{'attempt':<{width}}  {'outcome':<16}  how")
    for o in rows:
        terminalreporter.write_line(f"{o.attempt:<{width}}  {o.result:<16}  {o.how}")
    escaped = sum(o.result == "ESCAPED" for o in rows)
    blocked = sum(o.result == "blocked" for o in rows)
    terminalreporter.write_line(f"{len(rows)} attempts: {blocked} blocked, {escaped} escaped")


# sandboxes ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair(server: ServerProcess) -> Iterator[tuple[str, str]]:
    """Two sandboxes shared by a module's attempts that leave them intact."""
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        a, b = api.create(http)["id"], api.create(http)["id"]
        yield a, b
        for sid in (a, b):
            http.delete(f"/v1/sandbox/{sid}/")


@pytest.fixture
def victim(http: httpx.Client) -> Iterator[str]:
    """A sandbox of its own, for an attempt that may wreck it."""
    sid = api.create(http)["id"]
    yield sid
    http.delete(f"/v1/sandbox/{sid}/")


@pytest.fixture(scope="module")
def trap() -> Iterator[Trap]:
    """The metadata trap and its policy routing, only while a module's attempts need it."""
    trap = Trap(INSTANCE, SUBNET, Path(tempfile.mkdtemp(prefix="atoll-trap-", dir="/var/tmp")))
    trap.start()
    try:
        yield trap
    finally:
        trap.stop()
        shutil.rmtree(trap.workdir, ignore_errors=True)
