"""Lifecycle latency through the real API, next to the bare OCI runtime on the same rootfs.

Starts its own `atoll serve` once per runtime (crun, runc with CRIU, and gVisor's runsc when it
is installed), and for N runs
measures: create -> running, create -> first exec result, exec round trip (`true`), pause,
resume (the first exec after a pause, which resumes the sandbox) and delete. Baselines from the
same run: `crun run` of the same template rootfs on an overlay (bundle prepared beforehand) and
`crun exec ... true` on a running container. With runc and runsc, pause is a checkpoint to disk
(the row says which kind the pauses were).

    python bench/lifecycle.py [--runs 50] [--runtimes crun,runc,runsc]
    python bench/lifecycle.py --userns-compare [--runs 50] [--runtimes crun,runc]
    python bench/lifecycle.py --warm-only [--runs 50] [--runtimes crun,runc]

``--userns-compare`` measures create -> first exec, the exec round trip, pause and resume, on two servers
per OCI runtime started side by side, one with user namespaces (``--userns``) and one without,
their samples interleaved (alternating which goes first) so that load on the host weighs on both
alike. Each round takes a server's exec sample before its create (one after the previous round's
delete would overlap the network pool's refill of the freed slot on that server).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

os.environ.setdefault("ATOLL_TEST_INSTANCE", "bench")
os.environ.setdefault("ATOLL_TEST_IFACE_PREFIX", "atb")
os.environ.setdefault("ATOLL_TEST_SUBNET", "10.241.0.0/16")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atoll.runtime import overlay
from atoll.templates.registry import DEFAULT_TEMPLATE_NAME
from bench._bare import BareBundles
from bench._stats import row
from tests._support.server import ServerProcess, side_server


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def bare_runtime(runs: int, scratch: Path) -> tuple[list[float], list[float]]:
    """`crun run` of `echo hi` on a prepared overlay bundle, and `crun exec true`."""
    bundles = BareBundles(scratch)
    root = scratch / "crun-root"
    run_times, exec_times = [], []
    for i in range(runs + 1):
        spec = bundles.make(f"benchbare{i}", "atoll_bench", init_args=["/bin/echo", "hi"])
        try:
            argv = ["crun", "--root", str(root), "run", "--bundle", str(spec.sandbox_dir), spec.sandbox_id]
            start = time.perf_counter()
            out = subprocess.run(argv, capture_output=True, check=True).stdout
            if i:  # the first run warms caches, as the API's first create does
                run_times.append(ms(start))
            assert out == b"hi\n", out
        finally:
            overlay.unmount(spec.rootfs)
            shutil.rmtree(spec.sandbox_dir, ignore_errors=True)
    # exec baseline on one long-lived bare container
    spec = bundles.make("benchbareexec", "atoll_bench")
    try:
        bundle = str(spec.sandbox_dir)
        argv = ["crun", "--root", str(root), "run", "--detach", "--bundle", bundle, spec.sandbox_id]
        quiet = subprocess.DEVNULL
        subprocess.run(argv, stdin=quiet, stdout=quiet, stderr=quiet, check=True)
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(["crun", "--root", str(root), "exec", spec.sandbox_id, "true"], check=True)
            exec_times.append(ms(start))
    finally:
        subprocess.run(["crun", "--root", str(root), "delete", "--force", spec.sandbox_id], check=False)
        overlay.unmount(spec.rootfs)
    return run_times, exec_times


def warm_pools(http: httpx.Client) -> dict[str, dict[str, int]]:
    """Each template's warm pool, ``{name: {"ready": n, "size": s}}`` (``/v1/health``)."""
    pools: dict[str, dict[str, int]] = http.get("/v1/health").json()["warm_pools"]
    return pools


def wait_for_pools(
    http: httpx.Client, names: list[str] | None, timeout_s: float
) -> dict[str, dict[str, int]]:
    """Until the pools of ``names`` (None: all) are full; health polls are not API activity, so
    the refills run meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        pools = warm_pools(http)
        if all(p["ready"] >= p["size"] for name, p in pools.items() if names is None or name in names):
            return pools
        if time.monotonic() > deadline:
            raise RuntimeError(f"the warm pools did not fill: {pools}")
        time.sleep(0.02)


def warm_creates(server: ServerProcess, runs: int) -> list[float]:
    """create -> first exec result when the default template's own pool is full (the sum over
    templates would count the code interpreter's and the desktop's ready ones, and the create
    would then boot cold). Every pool is full before the first run, so no start-up boot of
    another template runs beside the timed ones."""
    times, warm = [], 0
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        wait_for_pools(http, None, timeout_s=300)
        for _ in range(runs):
            size = wait_for_pools(http, [DEFAULT_TEMPLATE_NAME], timeout_s=30)[DEFAULT_TEMPLATE_NAME]["size"]
            start = time.perf_counter()
            sid = http.post("/v1/sandbox", json={}).json()["id"]
            out = http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": "echo hi"}).json()
            times.append(ms(start))
            assert out["stdout"] == "hi\n", out
            # a refill starts only after a lull of 50 ms (atoll.server.activity): one short now
            # is the claim's, not a refill's, and the pool was full before the create
            warm += warm_pools(http)[DEFAULT_TEMPLATE_NAME]["ready"] < size
            http.delete(f"/v1/sandbox/{sid}/")
    WARM_TAKEN[server.runtime] = warm
    return times


def through_api(server: ServerProcess, runs: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {
        k: [] for k in ("create", "create_to_exec", "exec", "pause", "resume_exec", "delete")
    }
    pause_kinds: set[str] = set()
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        warm = http.post("/v1/sandbox", json={}).json()["id"]
        for _ in range(runs):
            start = time.perf_counter()
            created = http.post("/v1/sandbox", json={})
            results["create"].append(ms(start))
            assert created.status_code == 201, created.text
            sid = created.json()["id"]
            out = http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": "echo hi"}).json()
            results["create_to_exec"].append(ms(start))
            assert out["stdout"] == "hi\n", out
            start = time.perf_counter()
            http.delete(f"/v1/sandbox/{sid}/")
            results["delete"].append(ms(start))
        for _ in range(runs):
            start = time.perf_counter()
            http.post(f"/v1/sandbox/{warm}/process/execute", json={"command": "true"}).raise_for_status()
            results["exec"].append(ms(start))
        for _ in range(runs):
            start = time.perf_counter()
            paused = http.post(f"/v1/sandbox/{warm}/pause")
            paused.raise_for_status()
            results["pause"].append(ms(start))
            pause_kinds.add(str(paused.json().get("pause_kind")))
            start = time.perf_counter()
            http.post(f"/v1/sandbox/{warm}/process/execute", json={"command": "true"}).raise_for_status()
            results["resume_exec"].append(ms(start))
        http.delete(f"/v1/sandbox/{warm}/")
    PAUSE_KINDS[server.runtime] = "/".join(sorted(pause_kinds))
    return results


def userns_compare(runtime: str, runs: int, scratch: Path) -> dict[str, dict[str, list[float]]]:
    """create -> first exec, exec round trip, pause and resume, without and with user
    namespaces, interleaved."""
    # side servers (host resources of their own): the bench can run beside a test session
    servers = {
        "off": side_server(scratch / f"off-{runtime}", "o", 6, runtime=runtime, extra_args=("--no-userns",)),
        "on": side_server(scratch / f"on-{runtime}", "n", 7, runtime=runtime, extra_args=("--userns",)),
    }
    figures = ("create_to_exec", "exec", "pause", "resume_exec")
    results: dict[str, dict[str, list[float]]] = {m: {f: [] for f in figures} for m in servers}
    clients: dict[str, httpx.Client] = {}
    warm: dict[str, str] = {}
    try:
        for mode, server in servers.items():
            server.start()
            clients[mode] = httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120)
            assert clients[mode].get("/v1/health").json().get("userns") is (mode == "on")
            warm[mode] = clients[mode].post("/v1/sandbox", json={}).json()["id"]
        for i in range(runs):
            for mode in ("off", "on") if i % 2 else ("on", "off"):
                http = clients[mode]
                # the exec first: right after a delete it would share the server with the
                # network pool's refill of the freed slot (background work of the create figure)
                start = time.perf_counter()
                execute = f"/v1/sandbox/{warm[mode]}/process/execute"
                http.post(execute, json={"command": "true"}).raise_for_status()
                results[mode]["exec"].append(ms(start))
                start = time.perf_counter()
                created = http.post("/v1/sandbox", json={})
                assert created.status_code == 201, created.text
                sid = created.json()["id"]
                out = http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": "echo hi"}).json()
                results[mode]["create_to_exec"].append(ms(start))
                assert out["stdout"] == "hi\n", out
                http.delete(f"/v1/sandbox/{sid}/")
        for i in range(runs):  # pause (a checkpoint on runc) and resume by the next command
            for mode in ("off", "on") if i % 2 else ("on", "off"):
                start = time.perf_counter()
                clients[mode].post(f"/v1/sandbox/{warm[mode]}/pause").raise_for_status()
                results[mode]["pause"].append(ms(start))
                start = time.perf_counter()
                execute = f"/v1/sandbox/{warm[mode]}/process/execute"
                clients[mode].post(execute, json={"command": "true"}).raise_for_status()
                results[mode]["resume_exec"].append(ms(start))
    finally:
        for mode, server in servers.items():
            if mode in clients:
                clients[mode].delete(f"/v1/sandbox/{warm.get(mode, 'none')}/")
                clients[mode].close()
            server.stop()
    return results


def main_userns_compare(runs: int, runtimes: str) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="atoll-bench-", dir="/var/tmp"))
    results = {}
    try:
        for runtime in runtimes.split(","):
            if runtime != "runsc":  # gVisor maps ids in its own kernel: no --userns
                results[runtime] = userns_compare(runtime, runs, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"# user namespaces off vs on, {runs} interleaved runs per figure, default template")
    for runtime, modes in results.items():
        names = {
            "create_to_exec": "create -> first exec", "exec": "exec round trip",
            "pause": "pause", "resume_exec": "resume + exec",
        }  # fmt: skip
        for figure, name in names.items():
            print(row(f"[{runtime}] {name}, userns off", modes["off"][figure]))
            print(row(f"[{runtime}] {name}, userns on", modes["on"][figure], modes["off"][figure]))


PAUSE_KINDS: dict[str, str] = {}  # runtime -> how its pauses went (checkpoint, freeze)
WARM_TAKEN: dict[str, int] = {}  # runtime -> how many of the warm figure's creates took a warm one


def default_runtimes() -> str:
    """crun and runc, and runsc (gVisor) when it is installed (scripts/setup-gvisor.sh)."""
    return "crun,runc,runsc" if shutil.which("runsc") else "crun,runc"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--runtimes", default=default_runtimes())
    parser.add_argument(
        "--userns-compare", action="store_true", help="only create->exec and exec, userns off vs on"
    )
    parser.add_argument("--warm-only", action="store_true", help="only the warm pool figure and its baseline")
    args = parser.parse_args()
    if args.userns_compare:
        main_userns_compare(args.runs, args.runtimes)
        return
    scratch = Path(tempfile.mkdtemp(prefix="atoll-bench-", dir="/var/tmp"))
    results: dict[str, dict[str, list[float]]] = {}
    try:
        bare_run, bare_exec = bare_runtime(args.runs, scratch)
        for runtime in args.runtimes.split(","):
            results[runtime] = {}
            if not args.warm_only:
                server = ServerProcess(
                    data_dir=scratch / f"server-{runtime}", host="127.0.0.1", runtime=runtime
                )
                try:
                    server.start()
                    results[runtime] = through_api(server, args.runs)
                finally:
                    server.stop()
            warm = ServerProcess(
                data_dir=scratch / f"warm-{runtime}",
                host="127.0.0.1",
                runtime=runtime,
                extra_args=("--warm-pool-size", "2"),
            )
            try:
                warm.start()
                results[runtime]["warm"] = warm_creates(warm, args.runs)
            finally:
                warm.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"# lifecycle benchmark, {args.runs} runs per figure, default template")
    print(row("baseline: crun run (echo hi)", bare_run))
    print(row("baseline: crun exec true", bare_exec))
    for runtime, api in results.items():
        taken = (
            f"# [{runtime}] warm pool: {WARM_TAKEN[runtime]} of {len(api['warm'])} creates took a warm one"
        )
        if args.warm_only:
            print(row(f"[{runtime}] warm pool: create -> first exec", api["warm"], bare_run))
            print(taken)
            continue
        pause = PAUSE_KINDS.get(runtime, "freeze")
        print(row(f"[{runtime}] create -> running", api["create"], bare_run))
        print(row(f"[{runtime}] create -> first exec", api["create_to_exec"], bare_run))
        print(row(f"[{runtime}] warm pool: create -> first exec", api["warm"], bare_run))
        print(row(f"[{runtime}] exec round trip (true)", api["exec"], bare_exec))
        print(row(f"[{runtime}] pause ({pause})", api["pause"]))
        print(row(f"[{runtime}] resume + exec (true)", api["resume_exec"], bare_exec))
        print(row(f"[{runtime}] delete", api["delete"]))
        print(taken)


if __name__ == "__main__":
    main()
