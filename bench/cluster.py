"""The cluster path's cost (issue #22): create -> first exec and creates per second through an
API replica (``atoll serve --role api``) placing on one node and on three nodes (``atoll node
run``), next to the single process (``atoll serve`` on SQLite) as the baseline and on PostgreSQL
(the store's share of the overhead), in one run.

Everything runs on this one machine: the replica, the nodes, PostgreSQL and the baseline server
share its CPUs, so the figures are the overhead of the cluster path (placement in PostgreSQL, the
forwarding hop, PostgreSQL as the store), not the capacity of three hosts. The three setups are
started side by side and their samples interleaved (the order rotates each round), so load on
the host weighs on all alike. Creates per second: ``--burst`` creates, ``--concurrency`` at once,
through each setup in turn, three rounds (the median round is reported); the sandboxes are
deleted between rounds, untimed.

    python bench/cluster.py [--runs 40] [--burst 24] [--concurrency 6]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stats import row
from tests._support.cluster import NodeProcess
from tests._support.postgres import running_postgres
from tests._support.server import ServerProcess, side_server

# the single process twice: on SQLite (the baseline) and on PostgreSQL (what of the cluster's
# overhead is the store alone, not placement and the forwarding hop)
SETUPS = ("one process", "one process, PostgreSQL", "cluster, 1 node", "cluster, 3 nodes")
ROUNDS = 3


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def create_then_exec(http: httpx.Client) -> float:
    start = time.perf_counter()
    created = http.post("/v1/sandbox", json={})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    out = http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": "echo hi"}).json()
    taken = ms(start)
    assert out["stdout"] == "hi\n", out
    http.delete(f"/v1/sandbox/{sid}/").raise_for_status()
    return taken


def creates_per_second(http: httpx.Client, burst: int, concurrency: int) -> float:
    def one(_: int) -> str:
        created = http.post("/v1/sandbox", json={})
        assert created.status_code == 201, created.text
        return str(created.json()["id"])

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        made = list(pool.map(one, range(burst)))
    rate = burst / (time.perf_counter() - start)
    for sid in made:
        http.delete(f"/v1/sandbox/{sid}/")
    return rate


@contextlib.contextmanager
def setups(scratch: Path) -> Iterator[dict[str, ServerProcess]]:
    """The three setups, started; their entry points (the baseline server, the two replicas)."""
    with running_postgres() as postgres, contextlib.ExitStack() as stack:

        def started(server: ServerProcess) -> ServerProcess:
            server.start()
            stack.callback(server.stop)
            return server

        entries = {SETUPS[0]: started(side_server(scratch / "one", "h", 20))}
        one_on_postgres = ("--database-url", postgres.create_database())
        entries[SETUPS[1]] = started(side_server(scratch / "one-pg", "i", 34, extra_args=one_on_postgres))
        index = 21
        for name, nodes in ((SETUPS[2], 1), (SETUPS[3], 3)):
            url = postgres.create_database()
            common = ("--database-url", url)
            for n in range(nodes):
                like = side_server(scratch / f"nodes{nodes}-{n}", "cdefgh"[index - 21], index)
                fields = ("data_dir", "instance", "iface_prefix", "subnet", "host")
                node_id = ("--node-id", f"node-{index}")
                started(NodeProcess(**{k: getattr(like, k) for k in fields}, extra_args=(*common, *node_id)))
                index += 1
            tag = "ab"[nodes // 3]
            entries[name] = started(
                side_server(scratch / f"api-{nodes}", tag, 30 + nodes, extra_args=(*common, "--role", "api"))
            )
        yield entries


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--burst", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=6)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="atoll-bench-cluster-", dir="/var/tmp"))
    latency: dict[str, list[float]] = {name: [] for name in SETUPS}
    rates: dict[str, list[float]] = {name: [] for name in SETUPS}
    try:
        with setups(scratch) as entries:
            clients = {
                name: httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120)
                for name, server in entries.items()
            }
            for client in clients.values():  # each setup's first create (templates cached, pools filled)
                create_then_exec(client)
            for n in range(args.runs):
                for name in SETUPS[n % len(SETUPS) :] + SETUPS[: n % len(SETUPS)]:
                    latency[name].append(create_then_exec(clients[name]))
            for n in range(ROUNDS):
                for name in SETUPS[n % len(SETUPS) :] + SETUPS[: n % len(SETUPS)]:
                    rates[name].append(creates_per_second(clients[name], args.burst, args.concurrency))
            for client in clients.values():
                client.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"# cluster path: {args.runs} interleaved create -> first exec per setup; creates/s: {args.burst}")
    print(f"# creates, {args.concurrency} at once, median of {ROUNDS} rounds; all on this one machine")
    baseline = latency[SETUPS[0]]
    for name in SETUPS:
        print(row(f"[{name}] create -> first exec", latency[name], None if name == SETUPS[0] else baseline))
    for name in SETUPS:
        rate = statistics.median(rates[name])
        ratio = "" if name == SETUPS[0] else f"  ({rate / statistics.median(rates[SETUPS[0]]):.2f}x baseline)"
        rounds = ", ".join(f"{r:.1f}" for r in rates[name])
        print(f"[{name}] creates/s{'':<18} {rate:8.1f} (rounds: {rounds}){ratio}")


if __name__ == "__main__":
    main()
