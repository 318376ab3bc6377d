"""Escape attempts from inside a sandbox. Every network target is on this machine: the host's
own veth address, the test server's port, another test sandbox."""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._support import api
from tests._support.server import ServerProcess

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]

CONNECT = (
    'python3 -c "import socket,sys; s=socket.socket(); s.settimeout(2); '
    "print('open' if s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0 else 'closed')\" {host} {port}"
)


@pytest.fixture(scope="module")
def pair(server: ServerProcess) -> Iterator[tuple[str, str]]:
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        a, b = api.create(http)["id"], api.create(http)["id"]
        yield a, b
        for sid in (a, b):
            http.delete(f"/v1/sandbox/{sid}/")


def gateway(http: httpx.Client, sid: str) -> str:
    out = api.run(http, sid, "awk '$2==\"00000000\" {print $3}' /proc/net/route")["stdout"].strip()
    return socket.inet_ntoa(bytes.fromhex(out)[::-1])


def host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    return [
        line.split()[3].split("/")[0] for line in out.splitlines() if not line.split()[1].startswith("att")
    ]


def test_pid1_is_the_sandbox_init_and_host_processes_are_invisible(
    http: httpx.Client, pair: tuple[str, str]
) -> None:
    out = api.run(http, pair[0], "cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'")[
        "stdout"
    ]
    first, count = out.splitlines()
    assert first.strip() == "/.atoll/init -P"
    assert int(count) < 10  # init, the shell, ls, grep: not the host's hundreds


def test_host_files_are_invisible(http: httpx.Client, pair: tuple[str, str]) -> None:
    marker = Path("/tmp") / f"atoll-host-marker-{uuid.uuid4().hex}"
    marker.write_text("host secret")
    try:
        result = api.run(
            http, pair[0], f"cat {marker} /proc/1/root{marker} 2>&1; ls /proc/1/root/var/lib/atoll 2>&1"
        )
        assert "host secret" not in result["stdout"]
        assert result["exit_code"] != 0
    finally:
        marker.unlink()


def test_mount_and_namespace_escapes_fail(http: httpx.Client, pair: tuple[str, str]) -> None:
    for command in (
        "mount -t tmpfs none /mnt",
        "mount --bind / /mnt",
        "unshare -m true",
        "unshare -U true",
        "nsenter -t 1 -m true",
        "python3 -c 'import ctypes; libc=ctypes.CDLL(None); exit(0 if libc.unshare(0x00020000)==0 else 1)'",
    ):
        result = api.run(http, pair[0], command)
        assert result["exit_code"] != 0, command


def test_capabilities_are_minimal(http: httpx.Client, pair: tuple[str, str]) -> None:
    status = api.run(http, pair[0], "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status")[
        "stdout"
    ]
    fields = dict(line.split(":\t") for line in status.strip().splitlines())
    cap_eff = int(fields["CapEff"], 16)
    cap_sys_admin, cap_net_raw, cap_sys_ptrace, cap_sys_module = 1 << 21, 1 << 13, 1 << 19, 1 << 16
    for cap in (cap_sys_admin, cap_net_raw, cap_sys_ptrace, cap_sys_module):
        assert not cap_eff & cap
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # filter mode


def test_raw_sockets_and_kernel_interfaces_fail(http: httpx.Client, pair: tuple[str, str]) -> None:
    script = (
        "import socket\n"
        "try:\n"
        "    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP); print('raw ok')\n"
        "except PermissionError: print('raw denied')\n"
    )
    assert api.run(http, pair[0], f'python3 -c "{script}"')["stdout"] == "raw denied\n"
    for command in (
        "echo 1 > /proc/sys/kernel/sysrq",
        "hostname evil",
        "date -s '2001-01-01'",
        "cat /proc/kcore",
    ):
        assert api.run(http, pair[0], command)["exit_code"] != 0, command


def test_control_plane_and_host_services_are_unreachable(
    http: httpx.Client, pair: tuple[str, str], server: ServerProcess
) -> None:
    # the test server listens on 0.0.0.0, so only the firewall stands between sandbox and API
    targets = [gateway(http, pair[0]), *host_addresses()]
    for host in targets:
        if host.startswith("127."):
            continue  # a sandbox's 127.0.0.1 is its own loopback
        out = api.run(http, pair[0], CONNECT.format(host=host, port=server.port))["stdout"]
        assert out == "closed\n", f"control plane reachable at {host}:{server.port}"
    # and the sandbox's own loopback is not the host's
    assert api.run(http, pair[0], CONNECT.format(host="127.0.0.1", port=server.port))["stdout"] == "closed\n"


def test_other_sandboxes_are_unreachable(http: httpx.Client, pair: tuple[str, str]) -> None:
    a, b = pair
    api.run(http, b, "nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
    b_ip = api.sandbox_ip(http, b)
    # the host can reach b's server (so it is up) ...
    for _ in range(50):
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((b_ip, 8000)) == 0:
                break
        import time

        time.sleep(0.1)
    else:
        pytest.fail("the in-sandbox server never came up")
    # ... but a cannot
    assert api.run(http, a, CONNECT.format(host=b_ip, port=8000))["stdout"] == "closed\n"
