"""The bridge a language server runs behind inside a sandbox (see ``bridge.py``)."""

from __future__ import annotations

from importlib import resources


def source() -> str:
    """The bridge's source, sent into the sandbox at ``lsp/start``."""
    return resources.files(__package__).joinpath("bridge.py").read_text(encoding="utf-8")
