"""The unchanged ``langchain-leap0`` 0.2.0 (deepagents' sandbox backend over the public leap0 SDK)
passes LangChain's standard sandbox suite against a real `atoll serve`: the .venv-leap0 pytest
runs langchain_leap0_suite.py (installed by `make test`); no model and no network beyond loopback."""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests._support.server import ServerProcess

pytestmark = [pytest.mark.privileged, pytest.mark.conformance, pytest.mark.usefixtures("no_leaks")]

ROOT = Path(__file__).resolve().parents[2]
LEAP0_PYTHON = ROOT / ".venv-leap0" / "bin" / "python"
SUITE = Path(__file__).with_name("langchain_leap0_suite.py")

# langchain-tests 1.1.5's SandboxIntegrationTests (18 cases and its no-override check), less the
# one below, plus the large-output case and the /home/user check
EXPECTED_CASES = 20
# Commands in Atoll's sandboxes run as root (uid 0 inside the sandbox's user namespace), and root
# reads a chmod 000 file: `cat` in the sandbox and the filesystem API alike. This case assumes a
# non-root sandbox user; it waits on that decision, not on the backend or the SDK.
NON_ROOT_ONLY = "test_download_error_permission_denied"


def test_langchain_standard_sandbox_suite(server: ServerProcess, tmp_path: Path) -> None:
    assert LEAP0_PYTHON.exists(), "run `make test` (it creates .venv-leap0 with langchain-leap0)"
    report = tmp_path / "report.xml"
    done = subprocess.run(
        # the project's conftest and pytest settings are for the project's interpreter, not this one
        [str(LEAP0_PYTHON), "-m", "pytest", str(SUITE), "-q", "-c", "/dev/null", "--noconftest",
         "--rootdir", str(tmp_path), "-p", "no:cacheprovider", f"--junitxml={report}",
         "-k", f"not {NON_ROOT_ONLY}"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env={**os.environ, "ATOLL_URL": server.base_url, "ATOLL_KEY": server.api_key},
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": EXPECTED_CASES, "failures": 0, "errors": 0, "skipped": 0}, done.stdout[-3000:]
