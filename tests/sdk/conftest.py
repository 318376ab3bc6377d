from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK resolves settings from the environment; a developer's own ATOLL_* or OTEL_* variables
    # must not change what these tests see.
    for name in list(os.environ):
        if name.startswith(("ATOLL_", "OTEL_")):
            monkeypatch.delenv(name)
