"""Without its npm libraries (before `make setup`) the dashboard still serves pages that say how
to install them, and the library URLs answer 404 with the same hint instead of failing."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.requests import Request

from atoll.dashboard import web


@pytest.fixture
def missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(web, "NODE_MODULES", tmp_path / "node_modules")


def _request() -> Request:
    return Request({"type": "http", "method": "GET", "path": "/ui/login", "headers": [], "query_string": b""})


def test_pages_say_how_to_install_the_libraries(missing: None, caplog: pytest.LogCaptureFixture) -> None:
    assert not web.frontend_installed()
    web.warn_if_missing()
    assert "npm ci" in caplog.text
    page = web.render(_request(), "login.html", csrf="t", error=None, session=None)
    assert page.status_code == 200
    assert "npm ci" in bytes(page.body).decode()
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_library_urls_answer_404_with_the_hint(missing: None) -> None:
    response = web.vendor_file("htmx.min.js")
    assert response.status_code == 404
    assert b"npm ci" in bytes(response.body)
    assert web.vendor_file("../../../etc/passwd").status_code == 404  # only the listed files
