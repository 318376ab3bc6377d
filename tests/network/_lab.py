"""A little internet for the egress tests and benchmark, entirely on this machine.

One network namespace (``atlab-<instance>``) holds the test hosts, as /32 addresses on its
loopback, in one of two documentation /24s (RFC 5737: never routed on the internet, and not
among the private ranges Atoll closes to sandboxes), picked from the sandbox subnet:
``api``, ``pkg``, ``other``, ``cidr``, ``outside``, the test DNS server, and a local copy of the
cloud-metadata address 169.254.169.254. A veth joins it to the host.

Traffic from the test server's sandbox subnet is policy-routed: to the lab /24 and to the
metadata address via the lab, to the sandbox subnet itself as usual, everything else
``unreachable``. So a sandbox packet can only
ever reach the lab (or this host itself), even if the firewall under test were wrong. The host
itself routes only the lab /24 to the lab (Atoll's resolver and proxy run on the host).

The test CA signs the lab's HTTPS certificate; Atoll is told to trust it for upstream TLS."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.network.ca import CertificateAuthority

ROOT = Path(__file__).resolve().parents[2]
ZONE = "test.internal"
LAB_NETWORKS = ("198.51.100", "203.0.113")  # not 192.0.2.0/24: this machine's own network
METADATA = "169.254.169.254"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@dataclass
class Lab:
    instance: str
    sandbox_subnet: str
    workdir: Path
    third_octet: int = field(init=False)
    proc: subprocess.Popen[str] | None = None

    def __post_init__(self) -> None:
        # one /24 per test server subnet, so that two runs on one host never share a lab
        self.third_octet = int(ipaddress.IPv4Network(self.sandbox_subnet).network_address.packed[1])
        self.workdir.mkdir(parents=True, exist_ok=True)

    # names and addresses -------------------------------------------------------------------
    @property
    def netns(self) -> str:
        return f"atlab-{self.instance}"

    @property
    def host_ifname(self) -> str:
        return f"xlab{self.third_octet}"

    def ip(self, last: int) -> str:
        return f"{LAB_NETWORKS[self.third_octet % len(LAB_NETWORKS)]}.{last}"

    @property
    def network(self) -> str:
        return self.ip(0) + "/24"

    @property
    def gateway(self) -> str:  # the host's end of the lab link
        return self.ip(1)

    @property
    def hosts(self) -> dict[str, str]:
        return {
            "api": self.ip(10),
            "pkg": self.ip(20),
            "other": self.ip(30),
            "cidr": self.ip(41),
            "outside": self.ip(50),
            "dns": self.ip(53),
            "metadata": METADATA,
        }

    @property
    def cidr(self) -> str:  # contains "cidr", not "outside"
        return self.ip(40) + "/29"

    @property
    def records(self) -> dict[str, list[str]]:
        h = self.hosts
        return {
            f"api.{ZONE}": [h["api"]],
            f"pkg.{ZONE}": [h["pkg"]],
            f"a.pkg.{ZONE}": [h["pkg"]],
            f"deep.b.pkg.{ZONE}": [h["pkg"]],
            f"other.{ZONE}": [h["other"]],
            f"alias.{ZONE}": [h["api"]],  # another name on api's address
            f"cidr.{ZONE}": [h["cidr"]],
            f"meta.{ZONE}": [METADATA],  # an allowed name must not open the metadata address
            f"loop.{ZONE}": ["127.0.0.1"],
            f"gw.{ZONE}": [self.gateway],  # nor the host's own address
        }

    @property
    def table(self) -> int:
        return 20000 + self.third_octet

    @property
    def ca_path(self) -> Path:
        return self.workdir / "lab-ca.pem"

    @property
    def log_path(self) -> Path:
        return self.workdir / "lab.log"

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.stop()  # a leftover of an aborted run
        ca = CertificateAuthority.create("Atoll lab test CA")
        self.ca_path.write_bytes(ca.cert_pem)
        leaf = ca.issue(*self.records, f"*.pkg.{ZONE}", f"*.b.pkg.{ZONE}", *self.hosts.values())
        (self.workdir / "lab.pem").write_bytes(leaf.cert_pem)
        (self.workdir / "lab.key").write_bytes(leaf.key_pem)
        self.log_path.write_text("")
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.host_ifname, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        sh("ip", "addr", "add", f"{self.gateway}/30", "dev", self.host_ifname)
        sh("ip", "link", "set", self.host_ifname, "up")
        inside = ["ip", "netns", "exec", self.netns]
        sh(*inside, "ip", "link", "set", "lo", "up")
        sh(*inside, "ip", "addr", "add", f"{self.ip(2)}/30", "dev", "eth0")
        sh(*inside, "ip", "link", "set", "eth0", "up")
        for address in self.hosts.values():
            sh(*inside, "ip", "addr", "add", f"{address}/32", "dev", "lo")
        sh(*inside, "ip", "route", "add", "default", "via", self.gateway)
        # the host reaches the lab /24; sandboxes of the test subnet reach the lab and nothing else
        sh("ip", "route", "add", self.network, "via", self.ip(2), "dev", self.host_ifname)
        table = str(self.table)
        sh("ip", "route", "add", self.network, "via", self.ip(2), "dev", self.host_ifname, "table", table)
        sh("ip", "route", "add", f"{METADATA}/32", "via", self.ip(2), "dev", self.host_ifname, "table", table)
        sh("ip", "route", "add", "unreachable", "default", "table", table)
        sh("ip", "rule", "add", "from", self.sandbox_subnet, "lookup", table, "priority", table)
        # ... except what goes to the sandboxes themselves (the host's replies from its veth ends)
        sh("ip", "rule", "add", "to", self.sandbox_subnet, "lookup", "main", "priority", str(self.table - 1))
        config = {
            "records": self.records,
            "dns": self.hosts["dns"],
            "addresses": sorted(self.hosts.values()),
            "cert": str(self.workdir / "lab.pem"),
            "key": str(self.workdir / "lab.key"),
            "log": str(self.log_path),
        }
        (self.workdir / "lab.json").write_text(json.dumps(config))
        self.proc = subprocess.Popen(
            [*inside, sys.executable, "-m", "tests.network._labservers", str(self.workdir / "lab.json")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"lab servers did not start: {line!r}")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        for priority in (self.table, self.table - 1):
            while sh("ip", "rule", "del", "priority", str(priority), check=False).returncode == 0:
                pass
        sh("ip", "route", "flush", "table", str(self.table), check=False)
        sh("ip", "route", "del", self.network, check=False)
        sh("ip", "link", "del", self.host_ifname, check=False)
        sh("ip", "netns", "del", self.netns, check=False)

    # what the lab saw ----------------------------------------------------------------------
    def entries(self, kind: str) -> list[dict[str, Any]]:
        time.sleep(0.05)
        lines = self.log_path.read_text().splitlines() if self.log_path.exists() else []
        return [e for e in (json.loads(line) for line in lines if line.strip()) if e["kind"] == kind]

    def dns_queries(self) -> list[str]:
        return [e["name"] for e in self.entries("dns")]

    def https_requests(self) -> list[dict[str, Any]]:
        return self.entries("https")
