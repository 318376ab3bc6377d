"""Templates from container images (wire-protocol §6), end to end on a real server. The images
are built here with ``umoci`` from the host's static busybox: no test pulls from a registry."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

import atoll
from tests._support import api
from tests._support.images import build_image, sh
from tests._support.server import SANDBOX_DOMAIN, ServerProcess

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]


@pytest.fixture(scope="module")
def images(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The same image as an OCI archive, a docker archive and an OCI directory, in the server's
    import directory (the only place local sources may come from)."""
    imports = server.data_dir / "imports"
    imports.mkdir(exist_ok=True)
    layout = build_image(tmp_path_factory.mktemp("image"))
    sh("tar", "-C", layout, "-cf", imports / "web.tar", ".")
    sh("skopeo", "copy", f"oci:{layout}:latest", f"docker-archive:{imports / 'web-docker.tar'}:web:latest")
    shutil.copytree(layout, imports / "web-layout")
    return {
        "oci-archive": f"oci-archive:{imports / 'web.tar'}",
        "docker-archive": f"docker-archive:{imports / 'web-docker.tar'}",
        "oci": f"oci:{imports / 'web-layout'}:latest",
    }


@pytest.fixture
def cleanup(http: httpx.Client) -> Iterator[None]:
    yield
    for item in http.get("/v1/templates").json()["items"]:
        if not item["is_system"]:
            http.delete(f"/v1/template/{item['id']}")


def wait_http(url: str, headers: dict[str, str] | None = None, timeout: float = 20) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(url, headers=headers, timeout=2, trust_env=False)
            if r.status_code == 200:
                return r
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never answered")
        time.sleep(0.1)


@pytest.mark.usefixtures("cleanup")
def test_template_from_an_oci_archive_serves_on_its_port(
    http: httpx.Client, server: ServerProcess, images: dict[str, str]
) -> None:
    r = http.post("/v1/template", json={"name": "web", "uri": images["oci-archive"]})
    assert r.status_code == 201, r.text
    template = r.json()
    assert template["id"] and template["name"] == "web" and template["is_system"] is False
    assert template["digest"].startswith("sha256:") and template["created_at"]
    assert template["image_config"] == {
        "entrypoint": ["/bin/httpd"],
        "cmd": ["-f", "-p", "8080", "-h", "/www"],
        "working_dir": "/www",
        "user": "app",
        "env": {"PORT": "8080", "GREETING": "hi"},
    }
    sandbox = api.create(http, template_name="web")
    sid = sandbox["id"]
    try:
        assert sandbox["template_id"] == template["id"]
        # the image's entrypoint+cmd is the sandbox's main process, answering on PORT ...
        ip = api.sandbox_ip(http, sid)
        assert wait_http(f"http://{ip}:8080/").text == "hello from an OCI template\n"
        # ... and through the router, where a URL without a port goes to the template's PORT
        host = {"host": f"{sid}.{SANDBOX_DOMAIN}:{server.router_port}", **server.headers}
        assert wait_http(f"{server.router_url}/", host).text == "hello from an OCI template\n"
        assert api.run(http, sid, "echo $GREETING $PORT; pwd")["stdout"] == "hi 8080\n/www\n"
        assert http.get(f"/v1/sandbox/{sid}/system/workdir").json() == {"workdir": "/www"}
        assert http.get(f"/v1/sandbox/{sid}/system/user-home-dir").json() == {"user_home_dir": "/home/app"}
        # the image's dangling resolv.conf link became a plain file for the runtime's bind mount
        assert api.run(http, sid, "ls -l /etc/resolv.conf")["stdout"].startswith("-")
        # in use: it cannot be deleted, and a rename does not disturb the sandbox
        assert http.delete(f"/v1/template/{template['id']}").status_code == 409
        assert http.patch(f"/v1/template/{template['id']}", json={"name": "web-v2"}).status_code == 204
        assert api.run(http, sid, "cat /www/index.html")["exit_code"] == 0
        assert http.post("/v1/sandbox", json={"template_name": "web"}).status_code == 400
        second = api.create(http, template_name="web-v2")["id"]
        api.delete(http, second)
    finally:
        api.delete(http, sid)
    assert http.delete(f"/v1/template/{template['id']}").status_code == 204
    assert http.get(f"/v1/template/{template['id']}").status_code == 404
    assert not (server.data_dir / "user-templates" / template["id"]).exists()


@pytest.mark.usefixtures("cleanup")
def test_local_sources_names_and_errors(
    http: httpx.Client, server: ServerProcess, images: dict[str, str]
) -> None:
    ids = {}
    for name, uri in (("from-docker-archive", images["docker-archive"]), ("from-oci-dir", images["oci"])):
        r = http.post("/v1/template", json={"name": name, "uri": uri})
        assert r.status_code == 201, r.text
        assert r.json()["image_config"]["entrypoint"] == ["/bin/httpd"]
        ids[name] = r.json()["id"]
    listed = http.get("/v1/templates").json()
    names = [item["name"] for item in listed["items"]]
    system = next(item for item in listed["items"] if item["name"] == "system/debian:bookworm")
    assert system["is_system"] is True
    assert all(item["is_system"] for item in listed["items"] if item["name"].startswith("system/"))
    assert {"from-docker-archive", "from-oci-dir"} <= set(names) and listed["total_items"] == len(names)
    system_id = system["id"]
    for body, status in (
        ({"name": "from-oci-dir", "uri": images["oci"]}, 409),  # duplicate name
        ({"name": "system/mine", "uri": images["oci"]}, 400),  # reserved
        ({"name": "has space", "uri": images["oci"]}, 400),
        ({"name": "x" * 65, "uri": images["oci"]}, 400),
        ({"name": "outside", "uri": "oci-archive:/etc/passwd"}, 400),  # not under the import dir
        ({"name": "escape", "uri": f"oci-archive:{server.data_dir}/imports/../atoll.db"}, 400),
        ({"name": "missing", "uri": f"oci-archive:{server.data_dir}/imports/none.tar"}, 400),
        ({"name": "scheme", "uri": "containers-storage:busybox"}, 400),
        ({"name": "creds", "uri": "docker://example.invalid/x", "credentials": {"type": "aws"}}, 400),
        ({"name": "broken", "uri": f"oci-archive:{server.data_dir}/imports/web-layout/index.json"}, 400),
    ):
        r = http.post("/v1/template", json=body)
        assert r.status_code == status, (body, r.text)
    assert http.patch(f"/v1/template/{system_id}", json={"name": "mine"}).status_code == 409
    assert http.delete(f"/v1/template/{system_id}").status_code == 409
    clash = http.patch(f"/v1/template/{ids['from-oci-dir']}", json={"name": "from-docker-archive"})
    assert clash.status_code == 409
    assert http.patch(f"/v1/template/{ids['from-oci-dir']}", json={"name": "system/x"}).status_code == 400
    assert http.patch("/v1/template/tpl-nosuch", json={"name": "y"}).status_code == 404
    # failed imports leave nothing behind
    leftovers = sorted(p.name for p in (server.data_dir / "user-templates").iterdir())
    assert leftovers == sorted(ids.values())


@pytest.mark.usefixtures("cleanup")
def test_templates_belong_to_their_organisation(
    http: httpx.Client, server: ServerProcess, images: dict[str, str]
) -> None:
    tid = http.post("/v1/template", json={"name": "private", "uri": images["oci-archive"]}).json()["id"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "atoll.cli.main",
            "keys",
            "create",
            "--org",
            "org_other",
            "--data-dir",
            str(server.data_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    other = {"authorization": f"Bearer {done.stdout.strip()}"}
    with httpx.Client(base_url=server.base_url, headers=other, timeout=60) as them:
        assert "private" not in [i["name"] for i in them.get("/v1/templates").json()["items"]]
        assert them.get(f"/v1/template/{tid}").status_code == 404
        assert them.delete(f"/v1/template/{tid}").status_code == 404
        assert them.post("/v1/sandbox", json={"template_name": "private"}).status_code == 400
        # the name is theirs to use too
        r = them.post("/v1/template", json={"name": "private", "uri": images["oci-archive"]})
        assert r.status_code == 201
        assert them.delete(f"/v1/template/{r.json()['id']}").status_code == 204


@pytest.mark.usefixtures("cleanup")
def test_sdk_create_with_progress_rename_delete(server: ServerProcess, images: dict[str, str]) -> None:
    events: list[tuple[str, str]] = []
    with atoll.Client(api_key=server.api_key, base_url=server.base_url) as client:
        template = client.templates.create(
            name="sdk", uri=images["oci-archive"], on_progress=lambda p, m: events.append((p, m))
        )
        assert template.name == "sdk" and template.image_config is not None
        assert template.image_config.working_dir == "/www"
        phases = [phase for phase, _ in events]
        assert phases[0] == "pull" and "unpack" in phases and phases[-1] == "done"
        assert any(message.startswith("Copying blob") for _, message in events)
        assert client.templates.get(template.id).digest == template.digest
        client.templates.rename(template.id, name="sdk2")
        assert "sdk2" in [t.name for t in client.templates.list()]
        with pytest.raises(atoll.ConflictError):
            client.templates.create(name="sdk2", uri=images["oci-archive"])
        with pytest.raises(atoll.BadRequestError):
            client.templates.create(name="bad", uri="oci-archive:/etc/passwd", on_progress=lambda p, m: None)
        with pytest.raises(atoll.InvalidArgument):
            client.templates.create(name="system/no", uri=images["oci-archive"])
        client.templates.delete(template.id)
        with pytest.raises(atoll.NotFoundError):
            client.templates.get(template.id)


def test_cli_create_shows_progress(server: ServerProcess, images: dict[str, str], http: httpx.Client) -> None:
    env = {
        "ATOLL_API_KEY": server.api_key,
        "ATOLL_BASE_URL": server.base_url,
        "PATH": "/usr/bin:/bin",
        "COLUMNS": "300",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "atoll.cli.main",
            "template",
            "create",
            "cli",
            images["oci"],
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Copying blob" in done.stdout and "unpacking" in done.stdout and "imported cli" in done.stdout
    tid = json.loads(done.stdout[done.stdout.index("{") :])["id"]
    assert http.delete(f"/v1/template/{tid}").status_code == 204
