"""The public leap0 SDK's filesystem, PTY and template services against a real `atoll serve`
(wire-protocol §12 items 15, 17 and 19); the template comes from a local OCI archive."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests._support.images import build_image
from tests._support.server import ServerProcess

pytestmark = [pytest.mark.privileged, pytest.mark.conformance, pytest.mark.usefixtures("no_leaks")]

ROOT = Path(__file__).resolve().parents[2]
LEAP0_PYTHON = ROOT / ".venv-leap0" / "bin" / "python"
SCRIPT = Path(__file__).with_name("leap0_files_pty.py")


def leap0(server: ServerProcess, check: str, arg: str = "") -> Any:
    assert LEAP0_PYTHON.exists(), "run `make test` (it creates .venv-leap0 with leap0==0.8.0)"
    done = subprocess.run(
        [str(LEAP0_PYTHON), str(SCRIPT), server.base_url, server.api_key, check, arg],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_filesystem_round_trip(server: ServerProcess) -> None:
    seen = leap0(server, "filesystem")
    assert seen["bytes"] is True
    assert (seen["text"], seen["head"], seen["tail"]) == ("a\nb\nc\nd\n", "a\nb\n", "d\n")
    assert seen["read_files"] == ["one", "", True]
    assert seen["ls"] == [
        ["bin.dat", False],
        ["m1.txt", False],
        ["m2.txt", False],
        ["m3.bin", False],
        ["t.txt", False],
    ]
    assert seen["stat"] == ["t.txt", "/tmp/c/t.txt", 8, "644", "root", False, True]
    assert seen["exists"] == [True, False]
    assert ["c", "directory"] in seen["tree"]
    assert seen["glob"] == ["/tmp/c/m1.txt", "/tmp/c/m2.txt", "/tmp/c/t.txt"]
    assert seen["grep"] == [["/tmp/c/t.txt", 3, "c"]]
    assert seen["edit_file"] == [1, True]
    assert seen["edit_files"] == [["/tmp/c/t.txt", True]]
    assert seen["after_changes"] == ["600", "nobody", "a\nb\nc\nd\n"]
    assert seen["deleted"] is False
    assert seen["errors"] == [
        "Leap0NotFoundError",
        "Leap0ConflictError",
        "Leap0PermissionError",
        "Leap0ConflictError",
    ]
    # the default template is agent-ready: /home/user is HOME and the workdir (issue 19)
    assert seen["home"] == ["/home/user", "/home/user"]


def test_pty(server: ServerProcess) -> None:
    assert leap0(server, "pty") == {
        "created": ["t", 80, 24, True],
        "echo": True,
        "resized": [100, 30],
        "stty": True,
        "listed": ["t"],
        "after_delete": [],
    }


def test_templates(server: ServerProcess, tmp_path: Path) -> None:
    imports = server.data_dir / "imports"
    imports.mkdir(exist_ok=True)
    archive = imports / "conformance.tar"
    subprocess.run(["tar", "-C", build_image(tmp_path), "-cf", archive, "."], check=True)
    try:
        seen = leap0(server, "templates", f"oci-archive:{archive}")
    finally:
        archive.unlink()
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert seen == {
        "template": [True, "t1", True, False],
        "image_config": [["/bin/httpd"], "/www"],
        "duplicate": "Leap0ConflictError",
        "boot": [True, "hello from an OCI template\n"],
        "delete_in_use": "Leap0ConflictError",
        "deleted": True,
    }
