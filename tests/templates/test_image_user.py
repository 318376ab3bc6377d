"""The image's ``USER`` applied: an imported image whose config says ``USER 1000`` runs its main
process, its commands and its terminals as uid 1000 (with the groups its /etc/passwd and
/etc/group give that user, and its HOME), on either backend; the filesystem API still reads
and writes its files. Images are local archives built here (``tests._support.images``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect

from tests._support import api
from tests._support.images import build_image, sh
from tests._support.server import ServerProcess

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]

# the uid of every process named httpd (the image's main process)
MAIN_UID = "awk '/^Name:/ {n=$2} /^Uid:/ {if (n == \"httpd\") print $2}' /proc/[0-9]*/status"


def archive(server: ServerProcess, work: pytest.TempPathFactory, user: str) -> str:
    imports = server.data_dir / "imports"
    imports.mkdir(exist_ok=True)
    layout = build_image(work.mktemp("image"), user=user)
    name = f"user-{user.replace(':', '-')}.tar"
    sh("tar", "-C", layout, "-cf", imports / name, ".")
    return f"oci-archive:{imports / name}"


@pytest.fixture(scope="module")
def uid_template(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    uri = archive(server, tmp_path_factory, "1000")
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=300) as http:
        r = http.post("/v1/template", json={"name": "as-1000", "uri": uri})
        assert r.status_code == 201, r.text
        assert r.json()["image_config"]["user"] == "1000"
        yield "as-1000"
        http.delete(f"/v1/template/{r.json()['id']}")


def terminal_says(server: ServerProcess, sid: str, http: httpx.Client, command: bytes) -> bytes:
    r = http.post(f"/v1/sandbox/{sid}/pty", json={"id": "u", "cols": 80, "rows": 24, "cwd": "/"})
    assert r.status_code == 201, r.text
    url = server.base_url.replace("http://", "ws://") + f"/v1/sandbox/{sid}/pty/u/connect"
    seen = b""
    with connect(url, additional_headers=server.headers, open_timeout=30) as conn:
        conn.send(command + b"; echo END-$((6*7))\n")
        deadline = time.monotonic() + 20
        while b"END-42" not in seen and time.monotonic() < deadline:  # only the output says 42
            message = conn.recv(timeout=max(deadline - time.monotonic(), 0.1))
            seen += message if isinstance(message, bytes) else message.encode()
    assert http.delete(f"/v1/sandbox/{sid}/pty/u").status_code == 204
    return seen


def test_user_1000_runs_everything(http: httpx.Client, server: ServerProcess, uid_template: str) -> None:
    sid = api.create(http, template_name=uid_template)["id"]
    try:
        out = api.run(http, sid, "id -u; id -g; id -G; echo $HOME")
        assert out["stdout"].split("\n")[:4] == ["1000", "1000", "1000 50", "/home/app"], out
        # the main process (httpd from the image's entrypoint) and PID 1, which starts commands
        deadline = time.monotonic() + 20
        while not (main := api.run(http, sid, MAIN_UID)["stdout"].split()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert main and set(main) == {"1000"}, main
        assert api.run(http, sid, "awk '/^Uid:/ {print $2}' /proc/1/status")["stdout"] == "1000\n"
        # a root-only place stays closed: the user is not root in disguise
        denied = api.run(http, sid, "echo x > /www/planted")
        assert denied["exit_code"] != 0, denied
        # terminals too
        said = terminal_says(server, sid, http, b"id -u; id -g; id -G")
        # with its supplementary groups on either runtime (crun: a process file, docs/security.md)
        assert b"\r\n1000\r\n1000\r\n1000 50\r\n" in said, said
        # the filesystem API still reads and writes: a file the user made, one it hands the user
        assert api.run(http, sid, "echo mine > /home/app/mine.txt")["exit_code"] == 0
        r = http.post(f"/v1/sandbox/{sid}/filesystem/read-file", json={"path": "/home/app/mine.txt"})
        assert r.status_code == 200 and r.content == b"mine\n", r.text
        stat = http.post(f"/v1/sandbox/{sid}/filesystem/stat", json={"path": "/home/app/mine.txt"})
        assert stat.status_code == 200 and stat.json()["owner"] == "app", stat.text
        r = http.post(
            f"/v1/sandbox/{sid}/filesystem/write-file",
            params={"path": "/home/app/from-api.txt"},
            content=b"from the API\n",
            headers={"content-type": "application/octet-stream"},
        )
        assert r.status_code == 204, r.text
        assert api.run(http, sid, "cat /home/app/from-api.txt")["stdout"] == "from the API\n"
        listed = http.post(f"/v1/sandbox/{sid}/filesystem/ls", json={"path": "/home/app"})
        assert listed.status_code == 200, listed.text
        assert {"mine.txt", "from-api.txt"} <= {item["name"] for item in listed.json()["items"]}, listed.text
        # paused (checkpointed where the runtime can) and resumed by the next command: still the user
        assert http.post(f"/v1/sandbox/{sid}/pause").status_code == 201
        assert api.run(http, sid, "id -u; cat /home/app/mine.txt")["stdout"] == "1000\nmine\n"
        if server.runtime != "runsc":  # (gVisor's agent listens on a port: there is no fallback)
            # the runtime's own exec, when the agent cannot take a command (its socket gone): the
            # user with its supplementary groups on runc and crun (a process file, docs/security.md)
            api.run(http, sid, "rm -f /.atoll/run/agent.sock")
            out = api.run(http, sid, "id -u; id -g; id -G; ls /.atoll/run")["stdout"].split("\n")
            assert out[:3] == ["1000", "1000", "1000 50"] and any(n.endswith(".out") for n in out[3:]), out
    finally:
        api.delete(http, sid)


def test_named_user_and_group(
    http: httpx.Client, server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``name:group`` resolved through the image's files; an unknown name refuses the import."""
    uri = archive(server, tmp_path_factory, "app:staff")
    r = http.post("/v1/template", json={"name": "app-staff", "uri": uri})
    assert r.status_code == 201, r.text
    tid = r.json()["id"]
    try:
        sid = api.create(http, template_name="app-staff")["id"]
        try:
            out = api.run(http, sid, "id -u; id -g; id -G")
            assert out["stdout"] == "1000\n50\n50\n", out  # an explicit group: no supplementary ones
        finally:
            api.delete(http, sid)
    finally:
        assert http.delete(f"/v1/template/{tid}").status_code == 204
    bad = http.post("/v1/template", json={"name": "ghost", "uri": archive(server, tmp_path_factory, "ghost")})
    assert bad.status_code == 400, bad.text
    assert [e["field"] for e in bad.json()["errors"]] == ["uri"] and "ghost" in bad.json()["message"]
    names = [t["name"] for t in http.get("/v1/templates").json()["items"]]
    assert "ghost" not in names
