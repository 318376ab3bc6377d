"""What importing a part of Atoll loads: the router stands without the server (it declares the
little it needs as protocols), and the server side never loads the SDK (``atoll`` imports it
lazily). Each check runs in a fresh interpreter, so nothing imported by other tests counts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _loaded(module: str, prefixes: tuple[str, ...]) -> list[str]:
    code = (
        f"import sys, {module}\n"
        f"print(','.join(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return [name for name in result.stdout.strip().split(",") if name]


def test_the_router_does_not_load_the_server() -> None:
    assert _loaded("atoll.router", ("atoll.server", "atoll.cli", "atoll.sdk")) == []


def test_the_server_does_not_load_the_sdk() -> None:
    assert _loaded("atoll.server.app", ("atoll.sdk",)) == []


def test_the_sdk_still_loads_on_first_use() -> None:
    code = (
        "import sys, atoll\n"
        "assert 'atoll.sdk' not in sys.modules\n"
        "print(atoll.Client.__module__, atoll.__version__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    module, version = result.stdout.split()
    assert module.startswith("atoll.sdk.") and version
