"""Egress paths, next to the same transfer from the host itself, in one run.

Builds the tests' little internet (tests/network/_lab.py: test hosts in a namespace of this
machine, nothing else is ever contacted), starts an egress-enabled `atoll serve` (the network
tests' instance settings), and measures from the host and from sandboxes with:
- allow-all (forwarded by the kernel, policy chain only),
- custom CIDR (forwarded by the kernel, CIDR set lookup),
- custom domain (TCP through the egress proxy: SNI/Host checks, opaque relay),
- a transform (TLS terminated by the proxy, headers injected, upstream TLS verified):
TCP connect + 1-byte echo, a raw TCP download, new HTTPS connections, an HTTPS download.
Also the cost of attaching/detaching a sandbox's rules (one libnftables batch each) and of a
create with each policy.

    python bench/egress.py [--tcp-mib 1024] [--tls-mib 256] [--connections 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atoll.network import egress_rules, firewall
from atoll.network.nftables import Nft
from atoll.network.policy import EgressPolicy
from bench._stats import row
from tests._support import api
from tests.network._lab import ZONE, Lab
from tests.network.conftest import NET_INSTANCE, NET_SUBNET, EgressServer

CLIENT = Path(__file__).with_name("_egress_client.py")
HOST_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
API = f"api.{ZONE}"
MIB = 1 << 20
RETRIED = [0]  # connection attempts the client made again after 1 s without an answer


def counted(result: dict[str, Any]) -> dict[str, Any]:
    RETRIED[0] += int(result.get("retries", 0))
    return result


def on_host(*args: str) -> dict[str, Any]:
    out = subprocess.run([HOST_PYTHON, str(CLIENT), *args], capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out)
    return counted(result)


def in_sandbox(http: httpx.Client, sid: str, *args: str) -> dict[str, Any]:
    result = api.run(
        http, sid, "python3 /tmp/client.py " + " ".join(shlex.quote(a) for a in args), timeout=900
    )
    assert result["exit_code"] == 0, result
    data: dict[str, Any] = json.loads(result["stdout"])
    return counted(data)


def throughput(runs: list[dict[str, Any]]) -> float:
    """Median MB/s (10^6 bytes) over the runs."""
    return statistics.median(r["bytes"] / r["seconds"] / 1e6 for r in runs)


def rule_cost(cycles: int) -> list[str]:
    """Attach + detach batches on a scratch table that matches no interface."""
    nft = Nft()
    scratch = "egbenchscratch"
    table = firewall.table_name(scratch)
    nft.run(
        firewall.ruleset(
            instance=scratch, subnet="10.255.252.0/22", iface_prefix="zzqzq", dns_port=1, proxy_port=2
        )
    )
    lines = []
    try:
        policies = {
            "allow-all": EgressPolicy.from_wire(None),
            "custom CIDR": EgressPolicy.from_wire({"mode": "custom", "allow_cidrs": ["192.0.2.0/24"]}),
            "custom domains + transform": EgressPolicy.from_wire(
                {"mode": "custom", "allow_domains": ["a.example"], "transforms": [{"domain": "b.example"}]}
            ),
        }
        for name, policy in policies.items():
            attach, detach = [], []
            for i in range(cycles):
                index = 1 + i % 200
                start = time.perf_counter()
                nft.run(
                    egress_rules.attach(
                        table, index=index, ifname=f"zzqzq{index}", policy=policy, proxy_port=2
                    )
                )
                attach.append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                nft.run(
                    egress_rules.detach(
                        table, index=index, ifname=f"zzqzq{index}", **egress_rules.objects(policy)
                    )
                )
                detach.append((time.perf_counter() - start) * 1000)
            lines.append(row(f"attach rules: {name}", attach))
            lines.append(row(f"detach rules: {name}", detach))
        learn = []
        nft.run(
            egress_rules.attach(
                table, index=1, ifname="zzqzq1", policy=policies["custom domains + transform"], proxy_port=2
            )
        )
        for i in range(cycles):
            start = time.perf_counter()
            nft.run(egress_rules.learn(table, index=1, addresses=[(f"192.0.2.{i % 250 + 1}", 300)]))
            learn.append((time.perf_counter() - start) * 1000)
        lines.append(row("learn one DNS answer (set add)", learn))
    finally:
        nft.run(f"delete table inet {table}")
        nft.close()
    return lines


class PlainNetns:
    """A namespace routed through the host to the lab with no Atoll rules at all: the same kernel
    forwarding path a sandbox takes, to tell Atoll's cost from the forwarding's."""

    def __init__(self, lab: Lab) -> None:
        self.name = f"{lab.netns}-p"
        self.ifname = f"xlp{lab.third_octet}"
        self.host_ip, self.inner_ip = lab.ip(65), lab.ip(66)

    def sh(self, *argv: str, check: bool = True) -> None:
        subprocess.run(argv, capture_output=True, check=check)

    def start(self) -> None:
        self.stop()
        self.sh("ip", "netns", "add", self.name)
        self.sh("ip", "link", "add", self.ifname, "type", "veth", "peer", "name", "eth0", "netns", self.name)
        self.sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.ifname)
        self.sh("ip", "link", "set", self.ifname, "up")
        inside = ("ip", "netns", "exec", self.name)
        self.sh(*inside, "ip", "link", "set", "lo", "up")
        self.sh(*inside, "ip", "addr", "add", f"{self.inner_ip}/30", "dev", "eth0")
        self.sh(*inside, "ip", "link", "set", "eth0", "up")
        self.sh(*inside, "ip", "route", "add", "default", "via", self.host_ip)

    def stop(self) -> None:
        self.sh("ip", "link", "del", self.ifname, check=False)
        self.sh("ip", "netns", "del", self.name, check=False)

    def run(self, *args: str) -> dict[str, Any]:
        argv = ["ip", "netns", "exec", self.name, HOST_PYTHON, str(CLIENT), *args]
        result: dict[str, Any] = json.loads(
            subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        )
        return counted(result)


def interleaved(paths: dict[str, Any], repeat: int) -> dict[str, float]:
    """Median MB/s per path, the paths taking turns (A B C A B C ...) so that load from
    anything else on the host falls on all of them alike."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    for _ in range(repeat):
        for name, once in paths.items():
            runs[name].append(once())
    return {name: throughput(r) for name, r in runs.items()}


def measure(
    http: httpx.Client,
    lab: Lab,
    sandboxes: dict[str, str],
    plain: PlainNetns,
    args: argparse.Namespace,
    n: str,
    tcp_bytes: str,
    tls_bytes: str,
) -> None:
    api_ip = lab.hosts["api"]

    def box(name: str, *a: str) -> Any:
        return lambda: in_sandbox(http, sandboxes[name], *a)

    print(f"Egress benchmark: lab host {api_ip}, sandboxes with 2 vCPU, the same client everywhere")
    print("  host = the client on the host; plain netns = a namespace forwarded by the host, no Atoll rules")
    print()
    print(f"TCP connect + 1-byte echo, sequential (n={n})")
    on_host("connect", api_ip, "7", "10")  # warm-up, as for every path
    base = on_host("connect", api_ip, "7", n)["ms"]
    print(row("host", base))
    print(row("plain netns (no Atoll)", plain.run("connect", api_ip, "7", n)["ms"], base))
    for name in ("allow-all", "custom CIDR", "custom domain"):
        in_sandbox(http, sandboxes[name], "connect", api_ip, "7", "10")
        print(
            row(f"sandbox {name}", in_sandbox(http, sandboxes[name], "connect", api_ip, "7", n)["ms"], base)
        )

    print()
    print(f"TCP download of {args.tcp_mib} MiB (median of {args.repeat}, interleaved)")
    rates = interleaved(
        {
            "host": lambda: on_host("bulk", api_ip, "9000", tcp_bytes),
            "plain netns (no Atoll)": lambda: plain.run("bulk", api_ip, "9000", tcp_bytes),
            **{
                f"sandbox {name}": box(name, "bulk", api_ip, "9000", tcp_bytes)
                for name in ("allow-all", "custom CIDR", "custom domain")
            },
        },
        args.repeat,
    )
    for name, mbs in rates.items():
        print(f"{name:<34} {mbs:9.0f} MB/s  ({100 * mbs / rates['host']:5.1f}% of host)")

    tls_n = str(max(10, args.connections // 2))
    print()
    print(f"HTTPS: new connection + GET /, sequential (n={tls_n})")
    base = on_host("tls-connect", api_ip, "443", API, tls_n)["ms"]
    print(row("host", base))
    allow = in_sandbox(http, sandboxes["allow-all"], "tls-connect", api_ip, "443", API, tls_n)["ms"]
    print(row("sandbox allow-all (opaque TLS)", allow, base))
    in_sandbox(http, sandboxes["transform"], "tls-connect", api_ip, "443", API, "5", "verify")
    transform_ms = in_sandbox(
        http, sandboxes["transform"], "tls-connect", api_ip, "443", API, tls_n, "verify"
    )["ms"]
    print(row("sandbox transform (terminated)", transform_ms, base))

    print()
    print(f"HTTPS download of {args.tls_mib} MiB (median of {args.repeat}, interleaved)")
    rates = interleaved(
        {
            "host": lambda: on_host("tls-bulk", api_ip, "443", API, tls_bytes),
            "sandbox allow-all (opaque TLS)": box("allow-all", "tls-bulk", api_ip, "443", API, tls_bytes),
            "sandbox transform (terminated)": box(
                "transform", "tls-bulk", api_ip, "443", API, tls_bytes, "verify"
            ),
        },
        args.repeat,
    )
    for name, mbs in rates.items():
        print(f"{name:<34} {mbs:9.0f} MB/s  ({100 * mbs / rates['host']:5.1f}% of host)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tcp-mib", type=int, default=1024)
    parser.add_argument("--tls-mib", type=int, default=256)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--creates", type=int, default=10)
    args = parser.parse_args()

    lab = Lab(NET_INSTANCE, NET_SUBNET, Path(tempfile.mkdtemp(prefix="atoll-bench-lab-", dir="/var/tmp")))
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-bench-egress-", dir="/var/tmp"))
    server = EgressServer(data_dir=data_dir, lab=lab)
    lab.start()
    try:
        server.start()
        with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=900) as http:
            run(http, lab, args)
    finally:
        try:
            with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=60) as http:
                for item in http.get("/v1/sandboxes", params={"page-size": 100}).json().get("items", []):
                    http.delete(f"/v1/sandbox/{item['id']}/")
        except httpx.HTTPError:
            pass
        server.stop()
        lab.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(lab.workdir, ignore_errors=True)


def run(http: httpx.Client, lab: Lab, args: argparse.Namespace) -> None:
    policies: dict[str, dict[str, Any] | None] = {
        "allow-all": None,
        "custom CIDR": {"mode": "custom", "allow_cidrs": [lab.network]},
        "custom domain": {"mode": "custom", "allow_domains": [API]},
        "transform": {
            "mode": "custom",
            "transforms": [{"domain": API, "inject_headers": {"Authorization": "Bearer bench"}}],
        },
    }
    creates: dict[str, list[float]] = {}
    sandboxes: dict[str, str] = {}
    for name, policy in policies.items():
        creates[name] = []
        for _ in range(args.creates):
            body: dict[str, Any] = {"vcpu": 2, **({"network_policy": policy} if policy else {})}
            start = time.perf_counter()
            sid = api.create(http, **body)["id"]
            creates[name].append((time.perf_counter() - start) * 1000)
            if name in sandboxes:
                api.delete(http, sid)
            else:
                sandboxes[name] = sid
        api.run(
            http, sandboxes[name], f"cat > /tmp/client.py <<'CLIENT_EOF'\n{CLIENT.read_text()}\nCLIENT_EOF"
        )
    for name in ("custom domain", "transform"):  # learn api's address
        assert api.run(http, sandboxes[name], f"getent hosts {API}")["exit_code"] == 0

    n, tcp_bytes, tls_bytes = str(args.connections), str(args.tcp_mib * MIB), str(args.tls_mib * MIB)
    plain = PlainNetns(lab)
    plain.start()
    try:
        measure(http, lab, sandboxes, plain, args, n, tcp_bytes, tls_bytes)
    finally:
        plain.stop()

    print()
    print(f"Create -> running, by policy (n={args.creates})")
    for name, samples in creates.items():
        print(row(f"create, {name}", samples, creates["allow-all"]))
    print(f"(connection attempts retried after 1 s without an answer, all paths: {RETRIED[0]})")
    print()
    print("Per-sandbox rules (libnftables batch, scratch table)")
    for line in rule_cost(500):
        print(line)


if __name__ == "__main__":
    main()
