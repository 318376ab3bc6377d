"""The gVisor backend's bundle and exec protocol, as plain values (no runsc needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atoll.runtime import agent, gvisor, gvisor_exec, oci_config
from atoll.runtime.spec import SandboxSpec


def spec(netns: Path | None = Path("/run/netns/x"), pids: int = 256) -> SandboxSpec:
    return SandboxSpec(
        sandbox_id="sbx1",
        lower_dirs=(Path("/l"),),
        sandbox_dir=Path("/s/sbx1"),
        vcpu=1,
        memory_mib=512,
        pids_limit=pids,
        netns_path=netns,
    )


def config(s: SandboxSpec, *, own_tmp: bool = True) -> dict[str, Any]:
    built = oci_config.build(s, cgroups_path="/p/sbx1", init_args=gvisor_exec.agent_args(None))
    return gvisor.adapt_config(built, s, own_tmp=own_tmp)


def test_processes_are_limited_inside_and_the_host_cgroup_leaves_room_for_the_sentry() -> None:
    c = config(spec(pids=256))
    assert c["linux"]["resources"]["pids"] == {"limit": 1024}
    assert {"type": "RLIMIT_NPROC", "hard": 256, "soft": 256} in c["process"]["rlimits"]
    assert config(spec(pids=4096))["linux"]["resources"]["pids"] == {"limit": 8192}


def test_seccomp_fits_the_sentrys_emulation() -> None:
    rules = config(spec())["linux"]["seccomp"]["syscalls"]
    clone3 = [r for r in rules if r["names"] == ["clone3"]]
    assert clone3 == [{"names": ["clone3"], "action": "SCMP_ACT_TRACE"}]  # ENOSYS: glibc falls back
    assert not any("syslog" in r["names"] for r in rules)  # dmesg reads the sentry's own log
    assert any("unshare" in r["names"] for r in rules)  # the rest of the filter stays


def test_network_namespace_and_tmp() -> None:
    with_netns = config(spec())
    assert {"type": "network", "path": "/run/netns/x"} in with_netns["linux"]["namespaces"]
    assert not any(n["type"] == "network" for n in config(spec(netns=None))["linux"]["namespaces"])
    tmp = [m for m in with_netns["mounts"] if m["destination"] == "/tmp"]
    assert tmp == [
        {"destination": "/tmp", "type": "bind", "source": "/s/sbx1/rootfs/tmp", "options": ["rbind", "rw"]}
    ]
    assert not any(m["destination"] == "/tmp" for m in config(spec(), own_tmp=False)["mounts"])


def test_pid_1_is_the_agent_on_the_loopback_supervising_the_main_process() -> None:
    argv = gvisor_exec.agent_args(("python3", "app.py"))
    assert argv == [agent.AGENT_PATH, "--tcp", str(gvisor_exec.AGENT_PORT), "--", "python3", "app.py"]
    assert gvisor_exec.agent_args(None) == [agent.AGENT_PATH, "--tcp", str(gvisor_exec.AGENT_PORT)]


def test_ip_batch_output_is_split_into_documents() -> None:
    assert gvisor._decode_all('[{"a":1}]\n[{"b":2}]\n') == [[{"a": 1}], [{"b": 2}]]
    assert gvisor._decode_all("") == [[], []]


def test_open_connections_are_counted_from_proc_net_tcp() -> None:
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   3: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 2\n"
        "   5: 0A00000E:1F90 0A00000D:CB2C 01 00000000:00000000 00:00000000 00000000     0        0 9 2\n"
        "   6: 0A00000E:1F90 0A00000D:CB2E 08 00000000:00000000 00:00000000 00000000     0        0 9 2\n"
        "   7: 00000000:0000 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 9 2\n"
        "  sl  local_address                         remote_address                        st tx_queue\n"
    )
    assert gvisor.count_open_connections(table) == 2  # ESTABLISHED and CLOSE_WAIT; not LISTEN, CLOSE
    assert gvisor.count_open_connections("") == 0


def test_the_exec_channels_own_connection_is_not_counted() -> None:
    """The listing runs through the agent: its own connection to 127.0.0.1:AGENT_PORT is left out."""
    agent_side = (
        f"   4: {gvisor.AGENT_ADDRESS} 0100007F:D431 01 00000000:00000000 00:00000000 00000000 0 0 7 2\n"
    )
    client_side = (
        f"   5: 0100007F:D431 {gvisor.AGENT_ADDRESS} 01 00000000:00000000 00:00000000 00000000 0 0 8 2\n"
    )
    assert gvisor.count_open_connections(agent_side, ignore_local=gvisor.AGENT_ADDRESS) == 0
    # a process of the sandbox that holds a connection to the agent still counts
    assert gvisor.count_open_connections(agent_side + client_side, ignore_local=gvisor.AGENT_ADDRESS) == 1
    assert gvisor.AGENT_ADDRESS == "0100007F:C33F"  # 127.0.0.1:49983
