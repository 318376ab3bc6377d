"""``system/code-interpreter:v0.1.0``: the build's pure logic (hash, cache decision, progress),
the background builder's gate, a sandbox booted from the built template through the real
server, and the real 503 + Retry-After a server answers while the template is being built."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atoll._exceptions import UnavailableError
from atoll.server.template_builds import RETRY_AFTER_S, TemplateBuilds
from atoll.templates import code_interpreter as recipe
from atoll.templates.build import build_lock, mmdebstrap_phase, overlay_users, scaled
from atoll.templates.registry import Template, TemplateRegistry
from atoll.templates.system import SystemTemplate, find
from tests._support import api
from tests._support.server import ServerProcess, spare_server

TEMPLATE = recipe.NAME
TEMPLATES_DIR = Path("/var/lib/atoll/templates")
PYC_CHECK = (
    'import marshal, os; src = "/opt/atoll/code_interpreter/app.py"; '
    'data = open("/opt/atoll/code_interpreter/__pycache__/app.cpython-311.pyc", "rb").read(); '
    "print(marshal.loads(data[16:]).co_filename, "
    'int.from_bytes(data[8:12], "little") == int(os.stat(src).st_mtime) & 0xFFFFFFFF)'
)
IMPORTS = "import numpy, pandas, matplotlib, scipy, PIL, requests, seaborn, ipykernel, jupyter_client"


@pytest.fixture
def service_dir(tmp_path: Path) -> Path:
    """A stand-in for atoll/services/code_interpreter with the files the hash covers."""
    root = tmp_path / "service"
    (root / "__pycache__").mkdir(parents=True)
    (root / "__main__.py").write_text("print('serve')\n")
    (root / "requirements.txt").write_text("numpy==2.0.0\n")
    (root / "package.json").write_text('{"dependencies": {"typescript": "5.9.3"}}\n')
    (root / "package-lock.json").write_text('{"lockfileVersion": 3}\n')
    (root / "__pycache__" / "__main__.cpython-311.pyc").write_bytes(b"\0")
    return root


def _install_fake_template(registry: TemplateRegistry, build_hash: str) -> Path:
    directory = registry.dir_for(TEMPLATE)
    (directory / "rootfs").mkdir(parents=True)
    meta = {"id": recipe.TEMPLATE_ID, "name": TEMPLATE, "port": recipe.PORT, "build_hash": build_hash}
    (directory / "template.json").write_text(json.dumps(meta))
    return directory


# pure logic ------------------------------------------------------------------------------
@pytest.mark.parametrize("changed", ["requirements.txt", "package-lock.json", "__main__.py", "new.py"])
def test_build_hash_covers_the_service_files(service_dir: Path, changed: str) -> None:
    before = recipe.build_hash(service_dir)
    assert recipe.build_hash(service_dir) == before  # stable
    (service_dir / changed).write_text("changed\n")
    assert recipe.build_hash(service_dir) != before


def test_build_hash_ignores_bytecode_and_node_modules(service_dir: Path) -> None:
    before = recipe.build_hash(service_dir)
    (service_dir / "__pycache__" / "other.cpython-311.pyc").write_bytes(b"\1")
    (service_dir / "node_modules" / "typescript").mkdir(parents=True)
    (service_dir / "node_modules" / "typescript" / "index.js").write_text("x")
    assert recipe.build_hash(service_dir) == before
    assert recipe.service_files(service_dir) == [
        Path("__main__.py"),
        Path("package-lock.json"),
        Path("package.json"),
        Path("requirements.txt"),
    ]


def test_cached_build_is_reused_only_while_its_hash_matches(service_dir: Path, tmp_path: Path) -> None:
    registry = TemplateRegistry(tmp_path / "templates")
    assert not recipe.is_current(registry, service_dir)  # missing
    _install_fake_template(registry, recipe.build_hash(service_dir))
    assert recipe.is_current(registry, service_dir)
    # a current template is returned as is: no mmdebstrap, pip or npm runs (they would fail here)
    built = recipe.build_code_interpreter(registry, service_dir=service_dir, cache_dir=tmp_path / "cache")
    assert built.id == recipe.TEMPLATE_ID and built.path == registry.dir_for(TEMPLATE)
    (service_dir / "requirements.txt").write_text("numpy==2.0.1\n")
    assert not recipe.is_current(registry, service_dir)


def test_a_build_without_the_service_files_fails_before_building(service_dir: Path, tmp_path: Path) -> None:
    (service_dir / "package-lock.json").unlink()
    registry = TemplateRegistry(tmp_path / "templates")
    with pytest.raises(FileNotFoundError, match=r"package-lock\.json"):
        recipe.build_code_interpreter(registry, service_dir=service_dir, cache_dir=tmp_path / "cache")
    assert not registry.dir_for(TEMPLATE).with_name(registry.dir_for(TEMPLATE).name + ".building").exists()


def test_progress_parsing() -> None:
    assert mmdebstrap_phase("I: downloading packages with apt...") == (0.10, "downloading packages")
    assert mmdebstrap_phase("I: success in 12.3 seconds") == (1.0, "base system installed")
    assert mmdebstrap_phase("Get:1 http://deb.debian.org ...") is None
    seen: list[tuple[float, str]] = []
    on_line = recipe.pip_progress(2, scaled(lambda f, p: seen.append((f, p)), 0.5, 1.0))
    for line in (
        "Looking in links: /somewhere\n",
        "Collecting numpy==2.4.6 (from -r requirements.txt (line 1))\n",
        "Collecting pandas==3.1.1\n",
        "Collecting six>=1.5\n",  # a transitive one: more than expected
        "Installing collected packages: six, numpy, pandas\n",
        "Successfully installed numpy-2.4.6 pandas-3.1.1 six-1.17.0\n",
    ):
        on_line(line)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and all(0.5 <= f <= 1.0 for f in fractions)
    assert fractions[-1] == 1.0
    assert seen[0][1] == "installing python packages (numpy)"


def test_a_template_sandboxes_run_on_is_never_replaced(tmp_path: Path) -> None:
    rootfs = tmp_path / "templates" / "system--code-interpreter@v0.1.0" / "rootfs"
    mountinfo = tmp_path / "mountinfo"
    lower = f"/var/lib/atoll/helpers:{rootfs}"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime - ext4 /dev/vda rw\n"
        f"85 27 0:56 / /s/a/rootfs rw - overlay overlay rw,lowerdir={lower},upperdir=/u,workdir=/w\n"
        f"86 27 0:57 / /s/b/rootfs rw - overlay overlay rw,lowerdir={rootfs}-old,upperdir=/u,workdir=/w\n"
    )
    assert overlay_users(rootfs, mountinfo) == 1
    assert overlay_users(rootfs.with_name("other"), mountinfo) == 0
    # layers named through links beside the mount point (overlay.mount_overlay)
    rootfs.mkdir(parents=True)
    links = tmp_path / "s" / "c" / "layers"
    links.mkdir(parents=True)
    (links / "0").symlink_to(tmp_path)
    (links / "1").symlink_to(rootfs)
    with mountinfo.open("a") as f:
        options = "rw,lowerdir=layers/0:layers/1,upperdir=layers/upper"
        f.write(f"87 27 0:58 / {tmp_path}/s/c/rootfs rw - overlay overlay {options}\n")
    assert overlay_users(rootfs, mountinfo) == 2
    assert overlay_users(rootfs.with_name("other"), mountinfo) == 0


def test_system_templates_by_name() -> None:
    assert find("system/code-interpreter").name == TEMPLATE
    assert find(TEMPLATE).on_demand
    assert not find("system/debian:bookworm").on_demand
    with pytest.raises(KeyError, match="known"):
        find("system/nope")


def test_gate_reports_progress_then_failure_then_retries(tmp_path: Path) -> None:
    registry = TemplateRegistry(tmp_path / "templates")
    attempts: list[int] = []

    def failing_build(registry: TemplateRegistry, **options: object) -> Template:
        attempts.append(1)
        raise RuntimeError("pip install failed (exit 1):\nno such package")

    fake = SystemTemplate(TEMPLATE, failing_build, lambda r: False, on_demand=True)

    async def scenario() -> None:
        builds = TemplateBuilds(registry, [fake], retry_backoff_s=0.0)
        builds.check("system/debian:bookworm")  # not one of its templates: no opinion
        builds.start()
        with pytest.raises(UnavailableError, match=r"being built \(0%, queued\)") as building:
            builds.check(TEMPLATE)
        builds.check("system/code-interpreter")  # creates name templates with their tag
        assert building.value.retry_after == RETRY_AFTER_S and building.value.status_code == 503
        for _ in range(200):
            await asyncio.sleep(0.01)
            if builds.report().get(TEMPLATE, {}).get("error"):
                break
        assert builds.report()[TEMPLATE]["error"] == "pip install failed (exit 1):"
        with pytest.raises(UnavailableError, match="could not be built"):
            builds.check(TEMPLATE)  # and, the back-off being 0, queues a retry
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(attempts) == 2:
                break
        assert len(attempts) == 2
        await builds.close()

    asyncio.run(scenario())


def test_gate_opens_once_built_and_wakes_the_warm_pool(tmp_path: Path) -> None:
    registry = TemplateRegistry(tmp_path / "templates")
    woken: list[bool] = []

    def quick_build(registry: TemplateRegistry, **options: object) -> Template:
        _install_fake_template(registry, "sha256:x")
        template = registry.get(TEMPLATE)
        assert template is not None
        return template

    fake = SystemTemplate(TEMPLATE, quick_build, lambda r: True, on_demand=True)

    async def scenario() -> None:
        builds = TemplateBuilds(registry, [fake], on_built=lambda: woken.append(True))
        builds.start()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if woken:
                break
        assert woken == [True] and builds.report() == {}
        builds.check(TEMPLATE)  # built: no 503
        await builds.close()

    asyncio.run(scenario())


# with a real server ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def sandbox_id(server: ServerProcess) -> Iterator[str]:
    assert (TEMPLATES_DIR / "system--code-interpreter@v0.1.0" / "template.json").exists(), (
        "make test builds system/code-interpreter:v0.1.0 first (make templates)"
    )
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=300) as http:
        sid = api.create(http, template_name=TEMPLATE)["id"]
        try:
            yield sid
        finally:
            http.delete(f"/v1/sandbox/{sid}/")


@pytest.mark.privileged
@pytest.mark.usefixtures("no_leaks")
def test_sandbox_from_the_template_has_the_stack(http: httpx.Client, sandbox_id: str) -> None:
    command = f"/opt/atoll/venv/bin/python -c '{IMPORTS}; print(\"ok\")'"
    python = api.run(http, sandbox_id, command, timeout=120)
    assert python == {"exit_code": 0, "stdout": "ok\n", "stderr": ""}
    node = api.run(
        http,
        sandbox_id,
        """node -e 'console.log(require("/opt/atoll/code_interpreter/node_modules/typescript").version)'""",
    )
    assert node["exit_code"] == 0 and node["stdout"].strip().count(".") == 2, node
    assert api.run(http, sandbox_id, "pwd")["stdout"] == "/home/user\n"
    caches = "ls -d /root/.cache/pip /root/.npm /home/user/.cache/pip /home/user/.npm 2>/dev/null; true"
    assert api.run(http, sandbox_id, caches)["stdout"] == ""
    shipped = api.run(http, sandbox_id, "ls /opt/atoll/code_interpreter")["stdout"].split()
    assert "__main__.py" in shipped and "node_modules" in shipped
    # bytecode compiled at build time, inside the root filesystem (it names the sandbox's paths)
    # and current (its header records the source's mtime): a first import reads, not compiles
    pyc = api.run(http, sandbox_id, f"/opt/atoll/venv/bin/python -c '{PYC_CHECK}'")
    assert pyc == {"exit_code": 0, "stdout": "/opt/atoll/code_interpreter/app.py True\n", "stderr": ""}


@pytest.mark.privileged
def test_create_while_the_template_builds_is_a_503_with_retry_after(tmp_path: Path) -> None:
    """A server whose templates dir lacks the code interpreter builds it in the background;
    holding the build's lock keeps that build waiting, so the server answers as mid-build."""
    templates_dir = tmp_path / "templates"  # empty: --no-build-template, and no warm pool
    registry = TemplateRegistry(templates_dir)
    spare = spare_server(
        tmp_path / "data",
        *("--templates-dir", str(templates_dir), "--build-templates", "--no-build-template"),
        *("--log-level", "info"),
        tag="b",
    )
    with build_lock(registry.dir_for(TEMPLATE)):
        spare.start()
        try:
            with httpx.Client(base_url=spare.base_url, headers=spare.headers, timeout=60) as http:
                health = http.get("/v1/health").json()
                assert health["templates_building"][TEMPLATE] == {"progress": 0.0, "phase": "queued"}
                r = http.post("/v1/sandbox", json={"template_name": TEMPLATE})
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"] == str(RETRY_AFTER_S)
                assert r.json()["message"] == (
                    f"template {TEMPLATE} is being built (0%, queued); retry later"
                )
                unknown = http.post("/v1/sandbox", json={"template_name": "system/nope:1"})
                assert unknown.status_code == 400  # only templates being built get the 503
            started = time.monotonic()
        finally:
            spare.stop()
        assert time.monotonic() - started < 30  # a waiting build does not hold the shutdown
        assert spare.proc is not None and spare.proc.returncode == 0, spare.log_tail()
    assert not registry.dir_for(TEMPLATE).exists()
    assert f"template {TEMPLATE} is missing: building it in the background" in spare.log_tail(200)
