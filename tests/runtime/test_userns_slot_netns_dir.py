"""A slot's network namespace is bound on ``/run/netns/<name>``. On a host where nothing has made
``/run/netns`` a mount point yet, ``ip netns add`` (by anyone, later) turns it into one over the
old directory: a bind made before that is hidden under it, can no longer be undone ("not
mounted" on umount, EBUSY on unlink) and blocks the name for every later server start. The slot
makes ``/run/netns`` a shared mount point first, as ``ip`` does.

Run in a mount namespace of its own with a fresh tmpfs on ``/run``, so the host's ``/run/netns``
is never touched."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.privileged

CHILD = textwrap.dedent(
    """
    import subprocess
    from pathlib import Path

    from atoll.runtime import userns_slot
    from atoll.runtime.userns import RANGE_SIZE, IdRange

    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
    slot = Path("/run/netns/atoll-slot-test")
    userns_slot.create(slot, IdRange(3_000_000_000, RANGE_SIZE))
    subprocess.run(["ip", "netns", "add", "atoll-plain-test"], check=True)  # iproute2's own setup
    assert userns_slot._bound(slot), "the slot's netns bind was hidden by ip's mount point"
    subprocess.run(["ip", "netns", "del", "atoll-plain-test"], check=True)
    userns_slot.remove(slot)
    assert not slot.exists(), "the slot's bind could not be undone"
    print("ok")
    """
)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_a_slot_survives_ip_netns_add_on_a_host_without_a_netns_mount_point() -> None:
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
