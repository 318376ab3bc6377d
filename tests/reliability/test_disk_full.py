"""A full data filesystem never turns into an I/O error in someone else's sandbox (issue 15,
finding 2): sandbox disks are over-committed only up to a ratio of what the data filesystem can
back (503 with Retry-After past it), and as free space nears the reserve the heaviest writer is
clamped (ENOSPC in its own disk) before the filesystem fills. Runs a real server whose data
directory is a small ext4 filesystem of its own (a loop file), mounted ``errors=remount-ro``
like a production one, so a filesystem that filled would show as read-only."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atoll.runtime.disk import DiskPool
from atoll.runtime.disk_space import DiskUse, HostSpace
from atoll.server.disk_budget import MIB, refusal
from atoll.server.disk_watermark import plan
from tests._support import api
from tests._support.leaks import assert_no_leaks
from tests._support.server import INSTANCE, spare_server

FS_MIB = 3072
DISK_MIB = 4096  # each sandbox's disk is larger than the whole data filesystem: over-committed
RESERVE_MIB = 384
# the filesystem backs ~2,450 MiB of disks (free less the reserve): 3.5 times that admits two
# 4 GiB disks (8,192 MiB) but not a third (12,288 MiB)
RATIO = 3.5
SERVE_ARGS = (
    "--no-build-template",
    "--disk-mib", str(DISK_MIB),
    "--disk-pool-size", "0",  # pooled disks would count as committed before any create
    "--disk-reserve-mib", str(RESERVE_MIB),
    "--disk-overcommit-ratio", str(RATIO),
)  # fmt: skip


@contextlib.contextmanager
def small_data_fs(size_mib: int) -> Iterator[Path]:
    """A fresh ext4 filesystem of ``size_mib`` on a loop file, mounted as a data directory."""
    base = Path(tempfile.mkdtemp(prefix=f"atoll-test-{INSTANCE}-diskfull-", dir="/var/tmp"))
    image, mount_point = base / "fs.img", base / "data"
    mount_point.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_mib * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, timeout=120)
    subprocess.run(
        ["mount", "-o", "loop,errors=remount-ro", str(image), str(mount_point)], check=True, timeout=60
    )
    try:
        yield mount_point
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def mount_options(mount_point: Path) -> list[str]:
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == str(mount_point):
                return fields[3].split(",")
    raise AssertionError(f"{mount_point} is not mounted")


def refused_create(http: httpx.Client) -> httpx.Response:
    r = http.post("/v1/sandbox", json={})
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) > 0
    return r


@pytest.mark.privileged
def test_filler_is_clamped_and_others_keep_writing() -> None:
    with small_data_fs(FS_MIB) as data_dir:
        server = spare_server(data_dir, *SERVE_ARGS, tag="d")
        server.start()
        try:
            with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=300) as http:
                filler = api.create(http)["id"]
                victim = api.create(http)["id"]
                # a third disk would put 12 GiB on a filesystem that backs ~2.4 GiB, 3.5 times over
                r = refused_create(http)
                assert "disk_overcommit_ratio" in r.json()["message"], r.text

                # the filler writes far more than the filesystem holds: it is stopped in its own disk
                out = api.run(
                    http,
                    filler,
                    "dd if=/dev/urandom of=/var/fill bs=1M count=6000 2>&1; echo rc=$?",
                    timeout=240,
                )
                text = out["stdout"] + out["stderr"]
                assert "No space left on device" in text and "rc=1" in text, text
                written_mib = int(api.run(http, filler, "du -m /var/fill | cut -f1")["stdout"])
                assert written_mib < FS_MIB - RESERVE_MIB, written_mib
                assert (data_dir / "sandboxes" / filler / "disk" / ".atoll-ballast").exists()
                assert "clamped" in server.log_tail(200)
                # ... and still runs: it can read, and delete what it wrote
                assert api.run(http, filler, "echo alive")["stdout"] == "alive\n"

                # another tenant's 20 MB write and sync succeed and read back intact
                out = api.run(
                    http,
                    victim,
                    "head -c 20000000 /dev/urandom > /var/victim && sync && sha256sum /var/victim",
                    timeout=120,
                )
                assert out["exit_code"] == 0, out
                digest = out["stdout"].split()[0]
                subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)
                out = api.run(http, victim, "sha256sum /var/victim; wc -c < /var/victim")
                assert out["stdout"].split()[0] == digest and out["stdout"].split()[-1] == "20000000", out
                assert not (data_dir / "sandboxes" / victim / "disk" / ".atoll-ballast").exists()

                # the data filesystem never filled: still read-write, room left for the server
                assert "rw" in mount_options(data_dir) and "ro" not in mount_options(data_dir)
                free = os.statvfs(data_dir)
                assert free.f_bavail * free.f_frsize > 64 * MIB
                for sid in (filler, victim):
                    assert "rw" in mount_options(data_dir / "sandboxes" / sid / "disk")

                # nothing new while the filesystem is this full
                r = refused_create(http)
                assert "nearly full" in r.json()["message"] or "over-committed" in r.json()["message"], r.text

                # the filler deletes what it wrote: the room is back, the clamp lifted
                api.run(http, filler, "rm -f /var/fill && sync")
                ballast = data_dir / "sandboxes" / filler / "disk" / ".atoll-ballast"
                deadline = time.monotonic() + 20
                while ballast.exists() and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert not ballast.exists()
                out = api.run(http, filler, "head -c 10000000 /dev/zero > /var/again && sync && echo ok")
                assert out["stdout"] == "ok\n", out
                for sid in (filler, victim):
                    api.delete(http, sid)
            assert_no_leaks(server)
        finally:
            server.delete_everything()
            server.stop()


def _disk(
    name: str, *, image_mib: int, used_mib: int, size_mib: int = 10240, clamped: bool = False
) -> DiskUse:
    return DiskUse(
        sandbox_dir=Path("/data/sandboxes") / name,
        size_bytes=size_mib * MIB,
        image_bytes=image_mib * MIB,
        used_bytes=used_mib * MIB,
        clamped=clamped,
    )


def _space(free_mib: int, *disks: DiskUse) -> HostSpace:
    return HostSpace(total_bytes=100_000 * MIB, free_bytes=free_mib * MIB, disks=disks)


def test_admission_arithmetic() -> None:
    # 300 idle 10 GiB disks (~8 MiB each) on a filesystem with 70 GiB free: fit at the default 50
    idle = tuple(_disk(f"s{i}", image_mib=8, used_mib=8) for i in range(300))
    space = _space(70 * 1024, *idle)
    kwargs = {"pending_new_bytes": 0, "ratio": 50.0, "reserve_bytes": 1024 * MIB}
    assert refusal(space, new_bytes=10240 * MIB, **kwargs) is None  # type: ignore[arg-type]
    # at ratio 10 the same host backs ~70 of them
    reason = refusal(space, new_bytes=10240 * MIB, **{**kwargs, "ratio": 10.0})  # type: ignore[arg-type]
    assert reason is not None and "disk_overcommit_ratio" in reason
    # disks admitted but not made yet count too
    small = _space(20 * 1024)
    one = {"ratio": 1.0, "reserve_bytes": 1024 * MIB}
    assert refusal(small, new_bytes=10240 * MIB, pending_new_bytes=0, **one) is None  # type: ignore[arg-type]
    assert refusal(small, new_bytes=10240 * MIB, pending_new_bytes=10240 * MIB, **one) is not None  # type: ignore[arg-type]
    # near the reserve nothing starts, not even a disk that exists
    full = _space(1500, _disk("a", image_mib=5000, used_mib=5000))
    reason = refusal(full, new_bytes=0, **kwargs)  # type: ignore[arg-type]
    assert reason is not None and "disk_reserve_mib" in reason
    # page cache not yet written counts against free space: 3 GiB free, 2.5 GiB of it pending
    dirty = _space(3072, _disk("a", image_mib=100, used_mib=2660))
    assert refusal(dirty, new_bytes=0, **kwargs) is not None  # type: ignore[arg-type]


def test_watermark_plan() -> None:
    reserve = 1024 * MIB
    heavy, light = _disk("heavy", image_mib=9000, used_mib=9000), _disk("light", image_mib=50, used_mib=60)
    assert plan(_space(4000, heavy, light), {}, reserve).clamp == ()  # above twice the reserve
    # nearing the reserve: the heaviest only, never the light writer
    decided = plan(_space(1800, heavy, light), {light.sandbox_dir: 0}, reserve)
    assert decided.clamp == (heavy.sandbox_dir,)
    # the heaviest already clamped: the light writer is left alone while above the reserve
    clamped = _disk("heavy", image_mib=9000, used_mib=9000, clamped=True)
    assert plan(_space(1800, clamped, light), {light.sandbox_dir: 0}, reserve).clamp == ()
    # inside the reserve: every disk still growing stops too
    assert plan(_space(900, clamped, light), {light.sandbox_dir: 0}, reserve).clamp == (light.sandbox_dir,)
    # room again: every clamp lifted
    assert plan(_space(3500, clamped, light), {}, reserve).unclamp == (clamped.sandbox_dir,)


def test_pool_sweep_removes_trees_of_any_depth(tmp_path: Path) -> None:
    """A crashed server's pooled disk directory may hold a sandbox-made tree deeper than
    Python's recursion limit (``shutil.rmtree`` recursed, and gave up silently)."""
    pool_dir = tmp_path / "disk-pool"
    deep = pool_dir / "leftover"
    deep.mkdir(parents=True)
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(1500):  # relative to the level above: paths this deep pass PATH_MAX
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    pool = DiskPool(pool_dir, size_mib=16, blank_dir=tmp_path / "blank", target_size=0)
    removed = pool._sweep()
    assert removed == ["pooled disk leftover"]
    assert list(pool_dir.iterdir()) == []
