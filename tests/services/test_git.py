"""``sandbox.git`` (agent-services §2) through the public leap0 0.8.0 SDK, against a git server
the test builds: ``git http-backend`` behind basic auth (``_git_server.py``) inside a test
network namespace (``tests/network/_lab.py``), reached by a sandbox whose ``custom`` egress
policy allows the lab's CIDR. After the session no password is anywhere in the sandbox: not in
its files, its processes' environments or argument lists, nor in the server's log."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import atoll
from atoll.server import git
from tests._support import api
from tests._support.server import INSTANCE, ServerProcess
from tests.network._lab import Lab

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]

ROOT = Path(__file__).resolve().parents[2]
LEAP0_PYTHON = ROOT / ".venv-leap0" / "bin" / "python"
SCRIPT = Path(__file__).with_name("leap0_git.py")
USER = "agent"
PASSWORD = "hgs-s3cret-7f3a9c"
# a pattern that finds PASSWORD without matching itself (the grep's own argument list)
PATTERN = PASSWORD[:-1] + f"[{PASSWORD[-1]}]"
GIT_PORT = 8418


def sh(*argv: str, cwd: Path | None = None) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, cwd=cwd).stdout


@pytest.fixture(scope="module")
def git_server(server: ServerProcess) -> Iterator[tuple[Lab, Path]]:
    """The lab with a bare repository (one commit on main) served over smart HTTP."""
    workdir = Path(tempfile.mkdtemp(prefix="atoll-git-", dir="/var/tmp"))
    lab = Lab(f"{INSTANCE}git"[:12], server.subnet, workdir / "lab")
    lab.start()
    proc = None
    try:
        bare = workdir / "repos" / "project.git"
        sh("git", "init", "--quiet", "--bare", "--initial-branch=main", str(bare))
        seed = workdir / "seed"
        sh("git", "init", "--quiet", "--initial-branch=main", str(seed))
        (seed / "README.md").write_text("hello\n")
        ident = ["-c", "user.name=Test", "-c", "user.email=test@example.com"]
        sh("git", *ident, "add", "README.md", cwd=seed)
        sh("git", *ident, "commit", "--quiet", "-m", "initial", cwd=seed)
        sh("git", "push", "--quiet", str(bare), "main", cwd=seed)
        argv = [
            "ip", "netns", "exec", lab.netns, sys.executable, "-m", "tests.services._git_server",
            lab.hosts["cidr"], str(GIT_PORT), str(workdir / "repos"), USER, PASSWORD,
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield lab, bare
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def leap0_git(server: ServerProcess, sandbox_id: str, url: str) -> Any:
    assert LEAP0_PYTHON.exists(), "run `make test` (it creates .venv-leap0 with leap0==0.8.0)"
    argv = [str(LEAP0_PYTHON), str(SCRIPT), server.base_url, server.api_key, sandbox_id, url, USER, PASSWORD]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_git_session_through_leap0(
    server: ServerProcess, http: httpx.Client, git_server: tuple[Lab, Path]
) -> None:
    lab, bare = git_server
    sid = api.create(http, network_policy={"mode": "custom", "allow_cidrs": [lab.cidr]})["id"]
    try:
        seen = leap0_git(server, sid, f"http://{lab.hosts['cidr']}:{GIT_PORT}/project.git")
        code, output = seen["wrong_password"]
        assert code != 0 and "Authentication failed" in output, output
        assert seen["clone"][0] == 0, seen["clone"]
        assert seen["create_branch"][0] == 0, seen["create_branch"]
        assert seen["edit"] == "/home/user\n"
        code, output = seen["status"]
        assert code == 0 and "# branch.head feature" in output and "? new.txt" in output, output
        assert seen["add"][0] == 0
        assert "+hello" in seen["diff_staged"][1]
        sha, code, output = seen["commit"]
        assert code == 0 and "add new.txt" in output, output
        assert sha == seen["head"].strip() and len(sha) == 40
        assert seen["push"][0] == 0, seen["push"]
        # the server has it: the sha is real
        assert sh("git", "--git-dir", str(bare), "rev-parse", "feature").strip() == sha
        assert sha in seen["log"][1] and "Author: Agent <agent@example.com>" in seen["log"][1]
        assert "add new.txt" in seen["show"][1] and "+hello" in seen["show"][1]
        assert "+hello" in seen["diff_main"][1]
        assert "+more" in seen["diff_unstaged"][1] and seen["diff_unstaged"][0] == 0
        assert seen["reset"][0] == 0 and seen["staged_after_reset"] == [0, ""]
        assert seen["checkout_main"][0] == 0, seen["checkout_main"]
        assert seen["pull"][0] == 0, seen["pull"]
        assert seen["pulled_file"] == "hello\n"
        assert "feature" in seen["branches"][1] and "remotes/origin/feature" in seen["branches"][1]
        assert seen["delete_branch"][0] == 0, seen["delete_branch"]
        assert "feature" not in seen["branches_after"][1] and "main" in seen["branches_after"][1]
        code, output = seen["not_a_repo"]
        assert code != 0 and "not a git repository" in output, output

        # the password is nowhere: files (.git/config, credential stores), environments, processes
        files = api.run(
            http, sid, f"grep -rlsI '{PATTERN}' / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev",
            timeout=120,
        )  # fmt: skip
        assert files["exit_code"] == 1 and files["stdout"] == "", files
        environ = api.run(http, sid, f"cat /proc/[0-9]*/environ | tr '\\0' '\\n' | grep -c '{PATTERN}'")
        assert environ["stdout"].strip() == "0", environ
        listing = api.run(http, sid, f"ps -eo args | grep -c '{PATTERN}'")
        assert listing["stdout"].strip() == "0", listing
        config = api.run(http, sid, "cat /home/user/repo/.git/config; ls -a /home/user")
        assert "helper" not in config["stdout"] and ".git-credentials" not in config["stdout"]
        assert PASSWORD not in server.log_path.read_text()
    finally:
        api.delete(http, sid)


@pytest.mark.parametrize(
    ("op", "body", "field"),
    [
        ("status", {"path": ""}, "path"),
        ("diff", {"path": "/x"}, "target"),
        ("clone", {"path": "/x"}, "url"),
        ("clone", {"url": "--upload-pack=touch /x", "path": "/x"}, "url"),
        ("show", {"path": "/x", "revision": "--output=/etc/passwd"}, "revision"),
        ("add", {"path": "/x", "files": []}, "files"),
        ("commit", {"path": "/x"}, "message"),
        ("push", {"path": "/x", "password": "a\nb"}, "password"),
        ("log", {"path": "/x", "max_count": "3"}, "max_count"),
        ("branches", {"path": "/x", "branch_type": "some"}, "branch_type"),
    ],
)
def test_bad_bodies_name_the_field(http: httpx.Client, op: str, body: dict[str, Any], field: str) -> None:
    sid = api.create(http)["id"]
    try:
        r = http.post(f"/v1/sandbox/{sid}/git/{op}", json=body)
        assert r.status_code == 400, r.text
        assert any(field in str(e.get("field")) for e in r.json()["errors"]), r.json()
    finally:
        api.delete(http, sid)


def test_unknown_sandbox_is_404(http: httpx.Client) -> None:
    r = http.post("/v1/sandbox/no-such-sandbox/git/status", json={"path": "/x"})
    assert r.status_code == 404, r.text


# the scripts, without a sandbox ---------------------------------------------------------------
def test_credentials_never_in_the_script() -> None:
    body = git.RemoteBody(path="/r", remote="origin", branch="main", username="u", password="p4ss-word")
    for plan in (git.push(body), git.pull(body)):
        assert "p4ss-word" not in plan.script() and "p4ss-word" not in json.dumps(plan.env)
        assert plan.credential == "username=u\npassword=p4ss-word\n"
        assert plan.script().startswith("exec 3<&0 </dev/null 2>&1\n")
    clone = git.clone(git.CloneBody(url="https://h/r.git", path="r", password="tok"))
    assert clone.credential == "username=x-access-token\npassword=tok\n"
    assert git.clone(git.CloneBody(url="https://h/r.git", path="r")).credential is None


def test_values_stay_arguments() -> None:
    plan = git.add(git.AddBody(path="/r", files=["-A", "a b; rm -rf /"]))
    assert plan.commands == [["git", "-C", "/r", "add", "--", "-A", "a b; rm -rf /"]]
    assert "'a b; rm -rf /'" in plan.script()
    commit = git.commit(git.CommitBody(path="/r", message="$(reboot)", author="A", email="a@x"))
    assert commit.commands[0][-2:] == ["--message", "$(reboot)"] and "'$(reboot)'" in commit.script()


# Atoll's own SDK, sync and async, on a local repository ---------------------------------------
def test_atoll_sdk_git(server: ServerProcess, http: httpx.Client) -> None:
    sid = api.create(http)["id"]
    try:
        with atoll.Client(api_key=server.api_key, base_url=server.base_url) as client:
            sandbox = client.sandboxes.get(sid)
            sandbox.process.execute(command="git init -q --initial-branch=main r && echo x > r/f")
            assert sandbox.git.add("r", ["f"]).exit_code == 0
            made = sandbox.git.commit("r", "first", author="A", email="a@example.com")
            assert made.result.exit_code == 0 and made.sha is not None and len(made.sha) == 40
            assert "# branch.head main" in sandbox.git.status("r").output
            missing = sandbox.git.status("nowhere")
            assert missing.exit_code != 0 and "nowhere" in missing.output

        async def run_async() -> str:
            async with atoll.AsyncClient(api_key=server.api_key, base_url=server.base_url) as client:
                sandbox = await client.sandboxes.get(sid)
                return (await sandbox.git.log("r", max_count=1)).output

        assert made.sha in asyncio.run(run_async())
    finally:
        api.delete(http, sid)
