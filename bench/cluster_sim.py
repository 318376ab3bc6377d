"""Placement simulation (issue #22): the real placement code (``atoll.cluster.placement``) and a
real PostgreSQL, no sandboxes. 1,000 nodes of mixed sizes register (templates cached, warm
pools), then one process places 100,000 sandboxes of mixed sizes, templates and organisations
(a few organisations own most of them, as in life) from ``--concurrency`` connections at once;
with ``--heartbeat-interval-s 2`` every node also heartbeats as real nodes do (default 0: none).

Printed: creates per second the one process sustains, database statements and transactions
per create (counted with SQLAlchemy's cursor and commit events), the CPU a create costs this
process and the PostgreSQL server (what compares on a shared host), placement time p50/p99 (and
for the first and last tenth, so a slowdown as the tables grow shows), and how well the rules
held: the share placed on a node with the template cached and with a warm sandbox ready, the
most sandboxes of one organisation on one node, and the spread of node utilisation.

    python bench/cluster_sim.py [--nodes 1000] [--sandboxes 100000] [--concurrency 16]
                                [--database-url postgresql+psycopg://...]

Without ``--database-url`` it starts a throwaway PostgreSQL (Debian's binaries, as the tests
do: tests/_support/postgres.py; fsync off, so commits cost no disk flush) and removes it after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("ATOLL_TEST_INSTANCE", "bench")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import bindparam, event, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from atoll._exceptions import ClusterCapacityExhausted
from atoll.cluster.placement import PlacementPolicy, PlacementRequest, Placer
from atoll.cluster.registry import UP
from atoll.store import db
from atoll.store.models import NodeRow, PlacementRow, utcnow
from bench._stats import percentile
from tests._support.postgres import running_postgres

TARGET_CREATES_PER_S = 500
HEARTBEAT_CONNECTIONS = 4
TEMPLATES = [f"system/t{i}:v1" for i in range(20)]  # t0 most popular
SIZES_VCPU = ([1, 2, 4], [70, 25, 5])
SIZES_MIB = ([512, 1024, 2048, 4096], [40, 35, 20, 5])


@dataclass
class Counts:
    statements: int = 0
    commits: int = 0

    def attach(self, engine: AsyncEngine) -> None:
        event.listen(engine.sync_engine, "before_cursor_execute", self._statement)
        event.listen(engine.sync_engine, "commit", self._commit)

    def _statement(self, *_: Any) -> None:
        self.statements += 1

    def _commit(self, *_: Any) -> None:
        self.commits += 1


@dataclass
class Outcome:
    latencies_s: list[float] = field(default_factory=list)
    placed: int = 0
    refused: int = 0


def server_cpu_s(data_dir: Path) -> float:
    """CPU seconds the PostgreSQL server of ``data_dir`` and its live backends have used (this
    host's shares are split with whatever else runs: the CPU per create is what compares)."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(stat.parent.name) == postmaster or int(fields[1]) == postmaster:  # fields[1]: ppid
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _zipf_weights(n: int, s: float = 1.0) -> list[float]:
    return [1 / (k**s) for k in range(1, n + 1)]


async def register_nodes(engine: AsyncEngine, count: int, rng: random.Random) -> None:
    """One insert of every node: what ``NodeRegistry.register`` writes, without a round trip each."""
    popularity = _zipf_weights(len(TEMPLATES), 0.8)
    rows = []
    for i in range(count):
        cpus = rng.choice([16, 32, 64])
        cached = sorted(set(rng.choices(TEMPLATES, popularity, k=rng.randint(2, 10))))
        warm = {t: rng.randint(1, 4) for t in cached if rng.random() < 0.3}
        rows.append(
            {
                "id": f"node-{i:04d}", "role": "node", "hostname": f"host-{i}",
                "address": f"http://10.0.{i // 250}.{i % 250}:7700", "state": UP,
                "vcpu_budget": cpus * 128, "memory_mib_budget": cpus * 4096 * 8,
                "cpus": cpus, "memory_mib": cpus * 4096, "templates": cached, "pools": warm,
                "health": {"status": "ok"}, "started_at": utcnow(), "heartbeat_at": utcnow(),
            }
        )  # fmt: skip
    async with engine.begin() as connection:
        await connection.execute(insert(NodeRow), rows)
    # the planner's statistics of the new table now, as autovacuum would take them within a
    # minute on a live cluster (every heartbeat updates the table): without any, it guesses one
    # row per table and scans nodes by index rather than sequentially
    async with engine.connect() as connection:
        await connection.execute(text("ANALYZE nodes"))
        await connection.commit()


async def heartbeats(engine: AsyncEngine, node_ids: list[str], interval_s: float, stop: asyncio.Event) -> int:
    """Every node's heartbeat (``NodeRegistry.heartbeat``'s UPDATE, one transaction each) every
    ``interval_s``, spread evenly over the interval as independent nodes' would be, from
    ``HEARTBEAT_CONNECTIONS`` connections; how many were sent (fewer than asked when the host
    cannot keep up)."""
    sent = 0
    statement = (
        update(NodeRow)
        .where(NodeRow.id == bindparam("node"))
        .values(heartbeat_at=func.clock_timestamp(), state=UP, vcpu_used=0, memory_mib_used=0)
    )

    async def beat(share: list[str]) -> None:
        nonlocal sent
        pause_s = interval_s / len(share)
        next_at = time.perf_counter()
        while not stop.is_set():
            for node_id in share:
                if stop.is_set():
                    return
                async with engine.begin() as connection:
                    await connection.execute(statement, {"node": node_id})
                sent += 1
                next_at += pause_s
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    shares = [node_ids[i::HEARTBEAT_CONNECTIONS] for i in range(HEARTBEAT_CONNECTIONS)]
    await asyncio.gather(*(beat(share) for share in shares if share))
    return sent


async def place_all(placer: Placer, requests: list[PlacementRequest], concurrency: int) -> Outcome:
    outcome = Outcome()
    queue = iter(requests)

    async def worker() -> None:
        for request in queue:  # one shared iterator: each request taken once
            start = time.perf_counter()
            try:
                await placer.place(request)
                outcome.placed += 1
            except ClusterCapacityExhausted:
                outcome.refused += 1
            outcome.latencies_s.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcome


def make_requests(count: int, orgs: int, rng: random.Random) -> list[PlacementRequest]:
    org_weights = _zipf_weights(orgs)
    template_weights = _zipf_weights(len(TEMPLATES), 0.8)
    org_ids = rng.choices([f"org-{i:03d}" for i in range(orgs)], org_weights, k=count)
    templates = rng.choices(TEMPLATES, template_weights, k=count)
    vcpus = rng.choices(*SIZES_VCPU, k=count)
    memory = rng.choices(*SIZES_MIB, k=count)
    return [
        PlacementRequest(f"sbx_{i:08d}", org_ids[i], templates[i], vcpus[i], memory[i]) for i in range(count)
    ]


async def quality(engine: AsyncEngine, policy: PlacementPolicy) -> dict[str, float]:
    """How well the rules held over everything placed."""
    async with engine.connect() as connection:
        nodes = {
            r.id: r
            for r in (
                await connection.execute(
                    select(
                        NodeRow.id, NodeRow.cpus, NodeRow.memory_mib, NodeRow.vcpu_reserved,
                        NodeRow.memory_mib_reserved, NodeRow.templates, NodeRow.pools,
                    )
                )
            ).all()
        }  # fmt: skip
        placements = (
            await connection.execute(select(PlacementRow.node_id, PlacementRow.org_id, PlacementRow.template))
        ).all()
    cached = sum(1 for p in placements if p.template in nodes[p.node_id].templates)
    warm = sum(1 for p in placements if nodes[p.node_id].pools.get(p.template, 0) > 0)
    per_org_node = Counter((p.org_id, p.node_id) for p in placements)
    biggest_org, biggest_count = Counter(p.org_id for p in placements).most_common(1)[0]
    utilisation = sorted(n.vcpu_reserved / (n.cpus * policy.cpu_overcommit) for n in nodes.values())
    over = sum(
        1
        for n in nodes.values()
        if n.vcpu_reserved > n.cpus * policy.cpu_overcommit
        or n.memory_mib_reserved > n.memory_mib * policy.memory_overcommit
    )
    return {
        "cached": cached / max(1, len(placements)),
        "warm": warm / max(1, len(placements)),
        "max_per_org_node": max(per_org_node.values(), default=0),
        "biggest_org": float(biggest_count),
        "biggest_org_nodes": float(sum(1 for (o, _) in per_org_node if o == biggest_org)),
        "util_min": utilisation[0],
        "util_p50": percentile(utilisation, 50),
        "util_max": utilisation[-1],
        "overbooked": float(over),
    }


async def simulate(url: str, args: argparse.Namespace, server_cpu: Callable[[], float] | None) -> None:
    rng = random.Random(args.seed)
    db.upgrade(url)
    # the pool holds one connection per placer, checked at checkout as the servers' are
    engine = db.make_engine(url, pool_size=args.concurrency)
    beat_engine = create_async_engine(db.check_url(url), pool_size=HEARTBEAT_CONNECTIONS, max_overflow=0)
    policy = PlacementPolicy(cpu_overcommit=args.cpu_overcommit, memory_overcommit=args.memory_overcommit)
    placer = Placer(engine, policy)
    try:
        await register_nodes(engine, args.nodes, rng)
        requests = make_requests(args.sandboxes, args.orgs, rng)
        node_ids = [f"node-{i:04d}" for i in range(args.nodes)]
        counts = Counts()
        counts.attach(engine)
        stop = asyncio.Event()
        beating = None
        if args.heartbeat_interval_s > 0:
            beating = asyncio.create_task(heartbeats(beat_engine, node_ids, args.heartbeat_interval_s, stop))
        start, cpu_start = time.perf_counter(), time.process_time()
        server_start = server_cpu() if server_cpu else 0.0
        outcome = await place_all(placer, requests, args.concurrency)
        wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        server_s = server_cpu() - server_start if server_cpu else None
        stop.set()
        beats = await beating if beating is not None else 0
        rules = await quality(engine, policy)
    finally:
        await engine.dispose()
        await beat_engine.dispose()

    total = outcome.placed + outcome.refused
    ms = [s * 1000 for s in outcome.latencies_s]
    tenth = max(1, len(ms) // 10)
    rate = total / wall_s
    print(
        f"cluster placement simulation: {args.nodes} nodes, {total} creates, {args.orgs} organisations, "
        f"concurrency {args.concurrency}, over-commit cpu {args.cpu_overcommit}x memory "
        f"{args.memory_overcommit}x, heartbeats {beats} ({beats / wall_s:.0f}/s)"
    )
    print(
        f"  placed {outcome.placed}, refused (no room anywhere) {outcome.refused}, in {wall_s:.1f} s: "
        f"{rate:.0f} creates/s (target >= {TARGET_CREATES_PER_S}: "
        f"{'met' if rate >= TARGET_CREATES_PER_S else 'NOT met'})"
    )
    print(
        f"  database per create: {counts.statements / total:.2f} statements, "
        f"{counts.commits / total:.2f} transactions (commits)"
    )
    server = f"{server_s / total * 1000:.2f} ms" if server_s is not None else "not measured (external server)"
    print(
        f"  CPU per create: this process {cpu_s / total * 1000:.2f} ms, PostgreSQL {server}; "
        f"host load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"  placement time: p50 {percentile(ms, 50):.2f} ms, p99 {percentile(ms, 99):.2f} ms, "
        f"max {max(ms):.1f} ms; first tenth p50/p99 {percentile(ms[:tenth], 50):.2f}/"
        f"{percentile(ms[:tenth], 99):.2f} ms, last tenth {percentile(ms[-tenth:], 50):.2f}/"
        f"{percentile(ms[-tenth:], 99):.2f} ms"
    )
    print(
        f"  rules: {rules['cached']:.1%} on a node with the template cached, {rules['warm']:.1%} on one "
        f"with a warm sandbox of it; the biggest organisation's {rules['biggest_org']:.0f} sandboxes on "
        f"{rules['biggest_org_nodes']:.0f} nodes, at most {rules['max_per_org_node']:.0f} of one "
        f"organisation on one node; node vCPU use min/p50/max {rules['util_min']:.0%}/"
        f"{rules['util_p50']:.0%}/{rules['util_max']:.0%}; nodes over budget: {rules['overbooked']:.0f}"
    )


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--sandboxes", type=int, default=100_000)
    parser.add_argument("--orgs", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16, help="placements in flight (connections)")
    parser.add_argument("--cpu-overcommit", type=float, default=4.0)
    parser.add_argument("--memory-overcommit", type=float, default=1.0)
    parser.add_argument("--heartbeat-interval-s", type=float, default=0.0, help="0: no heartbeats")
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: a throwaway server)")
    args = parser.parse_args()
    if args.database_url:
        asyncio.run(simulate(args.database_url, args, None))
        return
    with running_postgres() as postgres:
        url = postgres.create_database("cluster_sim")
        asyncio.run(simulate(url, args, lambda: server_cpu_s(postgres.data_dir)))


if __name__ == "__main__":
    main()
