"""The in-sandbox code interpreter service (atoll/services/code_interpreter), run on the host the
way the template runs it: ``<venv>/bin/python -m code_interpreter`` with ``PYTHONPATH`` at a copy
of the package (``/opt/atoll`` in the sandbox), ``node_modules`` beside ``ts_runner.js``, and a
loopback ``PORT``. Its venv (from requirements.txt) and node_modules (``npm ci``) are built once
and cached under /var/tmp, keyed by the hash of the files they come from."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._support.server import free_port

SERVICE_SRC = Path(__file__).resolve().parents[2] / "atoll" / "services" / "code_interpreter"
CACHE_ROOT = Path("/var/tmp")
NODE = shutil.which("node")
NPM = shutil.which("npm")
MAX_CONTEXTS = 5


# ---- the cached venv and node_modules ----------------------------------------------------------
def _cached(kind: str, key: str, build: Callable[[Path], None]) -> Path:
    """``/var/tmp/atoll-ci-<kind>/<key>``, built once under a lock (other runs may build it too)."""
    root = CACHE_ROOT / f"atoll-ci-{kind}"
    root.mkdir(parents=True, exist_ok=True)
    target = root / key
    done = target / ".complete"
    if done.exists():
        return target
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)  # a build that was cut short
            target.mkdir()
            build(target)
            done.touch()
    return target


def _hash(*paths: Path, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _build_venv(target: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(SERVICE_SRC / "requirements.txt")], check=True, timeout=1800)


def _build_node_modules(target: Path) -> None:
    assert NPM is not None
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(SERVICE_SRC / name, target / name)
    subprocess.run(
        [NPM, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=target, check=True, timeout=600
    )


# ---- the running service -----------------------------------------------------------------------
class Service:
    def __init__(
        self, base_url: str, proc: subprocess.Popen[bytes], run_dir: Path, home: Path, opt: Path
    ) -> None:
        self.base_url = base_url
        self.proc = proc
        self.run_dir = run_dir
        self.home = home
        self.opt = opt
        self.http = httpx.Client(base_url=base_url, timeout=60)

    def execute(self, code: str, **fields: Any) -> dict[str, Any]:
        response = self.http.post("/execute", json={"code": code, **fields})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def stream(self, code: str, **fields: Any) -> list[tuple[float, dict[str, Any]]]:
        """The SSE events of /execute/async, each with the time it arrived."""
        start = time.monotonic()
        events: list[tuple[float, dict[str, Any]]] = []
        with self.http.stream("POST", "/execute/async", json={"code": code, **fields}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data:"):
                    events.append((time.monotonic() - start, json.loads(line[5:])))
        return events


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@contextlib.contextmanager
def running_service(base: Path) -> Iterator[Service]:
    """The service as the template starts it, in ``base``; stopped with SIGTERM, leaving nothing."""
    venv = _cached("venv", _hash(SERVICE_SRC / "requirements.txt", extra=sys.version), _build_venv)
    opt, home, run_dir = base / "opt", base / "home", base / "run"
    home.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "node_modules")
    shutil.copytree(SERVICE_SRC, opt / "code_interpreter", ignore=ignore)
    if NODE is not None and NPM is not None:
        lock = SERVICE_SRC / "package-lock.json"
        node_dir = _cached("node", _hash(SERVICE_SRC / "package.json", lock), _build_node_modules)
        (opt / "code_interpreter" / "node_modules").symlink_to(node_dir / "node_modules")
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "PORT": str(port),
        "HOST": "127.0.0.1",  # tests stay on loopback; the sandbox default is 0.0.0.0
        "PYTHONPATH": str(opt),
        "ATOLL_CI_RUN_DIR": str(run_dir),
        "ATOLL_CI_CWD": str(home),  # the sandbox's is /home/user
        "MPLCONFIGDIR": str(base / "mpl"),
        "ATOLL_CI_MAX_CONTEXTS": str(MAX_CONTEXTS),
    }
    proc = subprocess.Popen([str(venv / "bin" / "python"), "-m", "code_interpreter"], cwd=home, env=env)
    svc = Service(f"http://127.0.0.1:{port}", proc, run_dir, home, opt)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "the service exited at start"
            try:
                if svc.http.get("/healthz", timeout=2).json() == {"status": "ok"}:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not answer /healthz within 60 s"
            time.sleep(0.1)
        yield svc
    finally:
        svc.http.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    # nothing left behind: no kernel, no node runner, no sockets or connection files
    assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its clean shutdown
    time.sleep(0.2)
    assert _processes_mentioning(str(run_dir)) == []
    assert _processes_mentioning(str(opt / "code_interpreter" / "ts_runner.js")) == []
    assert not any(run_dir.iterdir())


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("ci")) as svc:
        yield svc


@pytest.fixture
def node() -> None:
    if NODE is None or NPM is None:
        pytest.skip(
            "node/npm not installed: TypeScript contexts cannot run (scripts/setup-host.sh installs nodejs)"
        )


def _png_size(item: dict[str, Any]) -> tuple[int, int]:
    data = base64.b64decode(item["png"])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# ---- Python ------------------------------------------------------------------------------------
def test_health(service: Service) -> None:
    assert service.http.get("/healthz").json() == {"status": "ok"}


def test_state_is_kept_in_a_context(service: Service) -> None:
    first = service.execute("x = 1")
    assert first["error"] is None and first["items"] == []
    second = service.execute("x + 1", context_id=first["context_id"])
    assert second["context_id"] == first["context_id"]
    assert [i["text"] for i in second["items"] if i["is_primary"]] == ["2"]
    assert second["execution_count"] == first["execution_count"] + 1
    # without context_id: the language's default context, the same one
    assert service.execute("x + 1")["context_id"] == first["context_id"]


def test_contexts_crud_and_isolation(service: Service) -> None:
    http = service.http
    made = http.post("/contexts", json={"language": "python", "cwd": str(service.opt)})
    assert made.status_code == 201
    ctx = made.json()
    assert (
        set(ctx) == {"id", "language", "cwd"}
        and ctx["language"] == "python"
        and ctx["cwd"] == str(service.opt)
    )
    try:
        assert ctx["id"] in [c["id"] for c in http.get("/contexts").json()["items"]]
        assert http.get(f"/contexts/{ctx['id']}").json() == ctx
        cwd = service.execute("import os; os.getcwd()", context_id=ctx["id"])
        assert cwd["items"][0]["text"] == repr(str(service.opt))
        # state is per context: what one defines, another does not see
        service.execute("only_here = 5", context_id=ctx["id"])
        other = service.execute("only_here")
        assert other["error"]["name"] == "NameError"
        assert service.execute("only_here", context_id=ctx["id"])["items"][0]["text"] == "5"
    finally:
        assert http.delete(f"/contexts/{ctx['id']}").status_code == 204
    gone = http.get(f"/contexts/{ctx['id']}")
    assert gone.status_code == 404 and "message" in gone.json()
    assert http.delete(f"/contexts/{ctx['id']}").status_code == 404
    missing = http.post("/execute", json={"code": "1", "context_id": ctx["id"]})
    assert missing.status_code == 404 and "message" in missing.json()
    default_cwd = service.execute("import os; os.getcwd()")["items"][0]["text"]
    assert default_cwd == repr(str(service.home))


def test_contexts_run_concurrently(service: Service) -> None:
    ctx = service.http.post("/contexts", json={"language": "py"}).json()
    try:
        results: list[dict[str, Any]] = []
        threads = [
            threading.Thread(
                target=lambda c=c: results.append(service.execute("import time; time.sleep(1.5)", **c))
            )
            for c in ({}, {"context_id": ctx["id"]})
        ]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert time.monotonic() - start < 2.7  # not one after the other (3 s)
        assert [r["error"] for r in results] == [None, None]
    finally:
        service.http.delete(f"/contexts/{ctx['id']}")


def test_stdout_stderr_and_error(service: Service) -> None:
    out = service.execute("import sys; print('hi'); print('oops', file=sys.stderr)")
    assert out["logs"] == {"stdout": ["hi\n"], "stderr": ["oops\n"]}
    child = service.execute("import subprocess; subprocess.run(['echo', 'from a child'])")
    assert "".join(child["logs"]["stdout"]) == "from a child\n"
    failed = service.execute("def f():\n    return 1/0\nf()")
    err = failed["error"]
    assert err["name"] == "ZeroDivisionError" and err["value"] == "division by zero"
    assert isinstance(err["traceback"], str) and "ZeroDivisionError" in err["traceback"]
    assert "return 1/0" in err["traceback"] and "\x1b[" not in err["traceback"]


def test_rich_outputs(service: Service) -> None:
    frame = service.execute("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    (item,) = frame["items"]
    assert item["is_primary"] and "<table" in item["html"] and "a" in item["text"]
    # a figure left open becomes a png of the figure's size at the end of the cell
    plot = service.execute(
        "import matplotlib.pyplot as plt\nfig = plt.figure(figsize=(4, 3), dpi=100)\nplt.plot([1, 3, 2]);"
    )
    pngs = [i for i in plot["items"] if i["png"]]
    assert len(pngs) == 1 and _png_size(pngs[0]) == (400, 300)
    shown = service.execute("plt.figure(figsize=(2, 2), dpi=50); plt.plot([1, 2]); plt.show()")
    assert [_png_size(i) for i in shown["items"] if i["png"]] == [(100, 100)]
    assert service.execute("len(plt.get_fignums())")["items"][0]["text"] == "0"  # closed after display
    display = service.execute(
        "from IPython.display import display, HTML, Markdown, Latex, JSON, SVG\n"
        "display(HTML('<b>b</b>'), Markdown('*m*'), Latex('$x$'), JSON({'k': 1}))\n"
        "SVG('<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>')"
    )
    items = display["items"]
    assert len(items) == 5 and items[0]["html"] == "<b>b</b>" and items[1]["markdown"] == "*m*"
    assert items[2]["latex"] == "$x$" and items[3]["json"] == {"k": 1}
    assert items[4]["is_primary"] and items[4]["svg"].startswith("<svg")


def test_env_vars_apply_to_one_execution(service: Service) -> None:
    seen = service.execute("import os; os.environ['ATOLL_T']", env_vars={"ATOLL_T": "v 1"})
    assert seen["items"][0]["text"] == "'v 1'"
    assert service.execute("os.environ.get('ATOLL_T')")["items"] == []
    assert service.execute("'_atoll_saved_environ' in globals()")["items"][0]["text"] == "False"


def test_timeout_interrupts_and_the_context_survives(service: Service) -> None:
    service.execute("kept = 7")
    start = time.monotonic()
    result = service.execute("while True: pass", timeout_ms=500)
    assert time.monotonic() - start < 3
    assert result["error"]["name"] == "TimeoutError"
    assert service.execute("kept")["items"][0]["text"] == "7"


def test_dead_kernel_is_an_error_then_restarted(service: Service) -> None:
    ctx = service.http.post("/contexts", json={"language": "python"}).json()
    try:
        service.execute("lost = 1", context_id=ctx["id"])
        died = service.execute("import os; os._exit(1)", context_id=ctx["id"])
        assert died["error"]["name"] == "KernelDied" and "restarted" in died["error"]["value"]
        after = service.execute("1 + 1", context_id=ctx["id"])
        assert after["items"][0]["text"] == "2" and "restarted" in after["logs"]["stderr"][0]
        assert service.execute("lost", context_id=ctx["id"])["error"]["name"] == "NameError"
    finally:
        service.http.delete(f"/contexts/{ctx['id']}")


def test_output_beyond_the_cap_is_cut(service: Service) -> None:
    big = service.execute("for _ in range(48): print('x' * 65535)")  # 3 MiB
    text = "".join(big["logs"]["stdout"])
    assert len(text) < (1 << 20) + 200
    assert "[output truncated: 2097152 bytes dropped]" in text
    assert service.http.get("/healthz").status_code == 200
    # a value whose repr is beyond the rich-output cap: its text, cut, is still the result
    huge = service.execute("'y' * (11 << 20)")
    (item,) = huge["items"]
    assert item["is_primary"] and len(item["text"]) <= 10 << 20 and "[output truncated:" in item["text"]


def test_stream_events_arrive_as_produced(service: Service) -> None:
    service.execute("streamed_state = 'shared'")
    events = service.stream("import time\nprint('a', flush=True)\ntime.sleep(0.6)\nprint(streamed_state)")
    kinds = [e["type"] for _, e in events]
    assert kinds == ["stdout", "stdout", "exit"]
    assert [e["data"] for _, e in events[:2]] == ["a\n", "shared\n"]
    assert events[1][0] - events[0][0] > 0.4  # the first print came before the sleep ended
    assert events[-1][1]["code"] == 0
    failed = service.stream("1/0")
    assert [e["type"] for _, e in failed] == ["error", "exit"]
    assert "ZeroDivisionError" in failed[0][1]["data"] and failed[1][1]["code"] == 1


def test_stream_disconnect_interrupts_the_cell(service: Service) -> None:
    with service.http.stream(
        "POST", "/execute/async", json={"code": "import time\nprint('go', flush=True)\ntime.sleep(60)"}
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                break
    start = time.monotonic()
    assert service.execute("'free'")["items"][0]["text"] == "'free'"
    assert time.monotonic() - start < 5


# ---- TypeScript / JavaScript -------------------------------------------------------------------
@pytest.mark.parametrize("language", ["typescript", "ts", "javascript", "js", "node", "bun"])
def test_typescript_languages(service: Service, node: None, language: str) -> None:
    result = service.execute("const x: number = 41; x + 1", language=language)
    assert result["error"] is None, result["error"]
    assert [i["text"] for i in result["items"] if i["is_primary"]] == ["42"]


def test_typescript_context(service: Service, node: None) -> None:
    made = service.http.post("/contexts", json={"language": "ts"})
    assert made.status_code == 201 and made.json()["language"] == "typescript"
    cid = made.json()["id"]
    try:
        logged = service.execute("let n = 2; console.log('n is', n); console.error('e')", context_id=cid)
        assert logged["logs"] == {"stdout": ["n is 2\n"], "stderr": ["e\n"]} and logged["items"] == []
        child = service.execute(
            "require('child_process').execSync('echo from a child', {stdio: 'inherit'})", context_id=cid
        )
        assert child["logs"]["stdout"] == ["from a child\n"]
        obj = service.execute("({a: n, b: [1, 2]})", context_id=cid)
        assert obj["items"][0]["text"] == "{ a: 2, b: [ 1, 2 ] }" and obj["items"][0]["json"] == {
            "a": 2,
            "b": [1, 2],
        }
        awaited = service.execute("const v = await Promise.resolve(40); v + n", context_id=cid)
        assert awaited["items"][0]["text"] == "42"
        assert service.execute("v", context_id=cid)["items"][0]["text"] == "40"
        failed = service.execute("throw new TypeError('bad')", context_id=cid)
        assert failed["error"]["name"] == "TypeError" and failed["error"]["value"] == "bad"
        start = time.monotonic()
        timed = service.execute("while (true) {}", context_id=cid, timeout_ms=500)
        assert timed["error"]["name"] == "TimeoutError" and time.monotonic() - start < 3
        assert service.execute("n", context_id=cid)["items"][0]["text"] == "2"
        env = service.execute("process.env.ATOLL_T", context_id=cid, env_vars={"ATOLL_T": "ts"})
        assert env["items"][0]["text"] == "'ts'"
        assert service.execute("process.env.ATOLL_T", context_id=cid)["items"] == []
        events = service.stream(
            "console.log('a'); await new Promise(r => setTimeout(r, 500)); console.log('b')", context_id=cid
        )
        assert [e["type"] for _, e in events] == ["stdout", "stdout", "exit"]
        assert events[1][0] - events[0][0] > 0.3
        died = service.execute("process.exit(3)", context_id=cid)
        assert died["error"]["name"] == "KernelDied"
        assert service.execute("1 + 1", context_id=cid)["items"][0]["text"] == "2"
    finally:
        service.http.delete(f"/contexts/{cid}")


def test_many_tiny_writes_stay_bounded(service: Service, node: None) -> None:
    result = service.execute("for (let i = 0; i < 100000; i++) console.log(i)", language="ts")
    stdout = result["logs"]["stdout"]
    assert len(stdout) <= 2000  # joined, not 100000 entries
    assert "".join(stdout) == "".join(f"{i}\n" for i in range(100000))
    events = service.stream("for (let i = 0; i < 100000; i++) console.log(i)", language="ts")
    assert "".join(e["data"] for _, e in events[:-1]) == "".join(f"{i}\n" for i in range(100000))


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "code"),
        ({"code": 1}, "code"),
        ({"code": "1", "language": "cobol"}, "language"),
        ({"code": "1", "language": 3}, "language"),
        ({"code": "1", "context_id": 5}, "context_id"),
        ({"code": "1", "timeout_ms": 0}, "timeout_ms"),
        ({"code": "1", "timeout_ms": "10"}, "timeout_ms"),
        ({"code": "1", "timeout_ms": True}, "timeout_ms"),
        ({"code": "1", "env_vars": ["A"]}, "env_vars"),
        ({"code": "1", "env_vars": {"A": 1}}, "env_vars"),
        ({"code": "1", "env_vars": {"A=B": "1"}}, "env_vars"),
        ({"code": "1", "env_vars": {f"K{i}": "v" for i in range(300)}}, "env_vars"),
        ({"code": "x" * ((1 << 20) + 1)}, "code"),
    ],
)
def test_bad_execute_bodies(service: Service, body: dict[str, Any], field: str) -> None:
    response = service.http.post("/execute", json=body)
    assert response.status_code == 400
    payload = response.json()
    assert payload["message"] and field in [e["field"] for e in payload["errors"]]


@pytest.mark.parametrize(
    ("path", "content", "status"),
    [
        ("/execute", b"{not json", 400),
        ("/execute", b"[1, 2]", 400),
        ("/execute/async", b"{}", 400),
        ("/contexts", b'{"language": "cobol"}', 400),
        ("/contexts", b'{"language": "python", "cwd": "relative"}', 400),
        ("/contexts", b'{"language": "python", "cwd": "/no/such/dir"}', 400),
        ("/execute", b"{" + b" " * (5 << 20) + b"}", 413),
        ("/execute/async", b'{"code": "1", "context_id": "no-such-context"}', 404),
        ("/contexts", b"{}", 201),  # python by default
    ],
)
def test_bad_bodies_and_sizes(service: Service, path: str, content: bytes, status: int) -> None:
    response = service.http.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status
    if status == 201:
        assert response.json()["language"] == "python"
        assert service.http.delete(f"/contexts/{response.json()['id']}").status_code == 204
    else:
        assert "message" in response.json()


def test_unknown_routes_answer_json(service: Service) -> None:
    assert service.http.get("/nope").status_code == 404
    assert "message" in service.http.get("/nope").json()
    assert service.http.get("/execute").status_code == 405


def test_context_limit(service: Service) -> None:
    language = "ts" if NODE is not None and NPM is not None else "python"  # node starts faster
    made = []
    try:
        while len(service.http.get("/contexts").json()["items"]) < MAX_CONTEXTS:
            response = service.http.post("/contexts", json={"language": language})
            assert response.status_code == 201
            made.append(response.json()["id"])
        refused = service.http.post("/contexts", json={"language": language})
        assert refused.status_code == 409 and "at most 5" in refused.json()["message"]
    finally:
        for cid in made:
            assert service.http.delete(f"/contexts/{cid}").status_code == 204
    assert service.http.post("/contexts", json={"language": "cobol"}).status_code == 400


def test_a_stop_interrupts_running_cells(tmp_path: Path) -> None:
    """SIGTERM: a running cell ends with an error result (200), not a cut connection, and the
    service exits within its graceful shutdown."""
    results: list[httpx.Response] = []
    started = tmp_path / "started"
    code = f"import time; open({str(started)!r}, 'w').close(); time.sleep(60)"
    with running_service(tmp_path) as svc:

        def call() -> None:
            with httpx.Client(base_url=svc.base_url, timeout=30) as http:
                results.append(http.post("/execute", json={"code": code}))

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 10
        while not started.exists():
            assert time.monotonic() < deadline, "the cell did not start"
            time.sleep(0.05)
        stopped_at = time.monotonic()
    caller.join(timeout=30)
    assert time.monotonic() - stopped_at < 8
    (response,) = results
    assert response.status_code == 200
    assert response.json()["error"]["name"] == "KeyboardInterrupt"
