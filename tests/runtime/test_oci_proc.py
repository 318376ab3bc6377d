"""The OCI bundle's /proc and /sys: masked host files and LXCFS binds, as plain values. (What a
sandbox really reads is tests/security/test_escape_procfs.py.)"""

from __future__ import annotations

from pathlib import Path

from atoll.runtime import lxcfs, oci_config
from atoll.runtime.spec import SandboxSpec

SPEC = SandboxSpec(
    sandbox_id="sbx1",
    lower_dirs=(Path("/l"),),
    sandbox_dir=Path("/s/sbx1"),
    vcpu=1,
    memory_mib=512,
    pids_limit=256,
    netns_path=None,
)


def test_host_describing_files_are_masked() -> None:
    masked = oci_config.build(SPEC, cgroups_path="/p/sbx1")["linux"]["maskedPaths"]
    for path in (
        "/proc/kpageflags", "/proc/kpagecount", "/proc/kpagecgroup", "/proc/slabinfo", "/proc/vmallocinfo",
        "/proc/pagetypeinfo", "/proc/config.gz", "/sys/kernel/vmcoreinfo", "/proc/fs/ext4", "/proc/kallsyms",
    ):  # fmt: skip
        assert path in masked


def test_lxcfs_files_are_bound_read_only_after_proc() -> None:
    binds = [(Path("/run/atoll/x/lxcfs/proc/meminfo"), "/proc/meminfo")]
    mounts = oci_config.build(SPEC, cgroups_path="/p/sbx1", proc_binds=binds)["mounts"]
    destinations = [m["destination"] for m in mounts]
    assert destinations.index("/proc/meminfo") > destinations.index("/proc")
    bound = mounts[destinations.index("/proc/meminfo")]
    assert bound["source"] == "/run/atoll/x/lxcfs/proc/meminfo"
    assert {"bind", "ro", "nosuid", "nodev", "noexec"} <= set(bound["options"])
    assert "/proc/meminfo" not in [
        m["destination"] for m in oci_config.build(SPEC, cgroups_path="/p")["mounts"]
    ]


def test_no_binds_without_a_serving_lxcfs(tmp_path: Path) -> None:
    assert lxcfs.binds(tmp_path) == []  # nothing mounted there: sandboxes see /proc's own files
    (tmp_path / "lxcfs" / "proc").mkdir(parents=True)
    (tmp_path / "lxcfs" / "proc" / "meminfo").write_text("MemTotal: 1 kB\n")
    assert [inside for _, inside in lxcfs.binds(tmp_path)] == [f"/proc/{n}" for n in lxcfs.PROC_FILES]
