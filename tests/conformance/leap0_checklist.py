"""Runs under Python 3.12 with the public leap0==0.8.0 SDK (never imported by pytest itself): the
wire-protocol §12 items that ``leap0_client.py`` and ``leap0_files_pty.py`` do not cover.

Usage: leap0_checklist.py BASE_URL API_KEY CHECK [ARG]
Prints one JSON object with what the SDK observed for CHECK."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from leap0 import Leap0Client
from leap0.models.errors import Leap0Error, Leap0NotFoundError


def state(obj: Any) -> str:
    value = obj.state
    return str(value.value if hasattr(value, "value") else value)


def error(exc: Leap0Error) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "status": exc.status_code,
        "retryable": exc.retryable,
        "message": exc.error_message,
        "retry_after": (exc.headers or {}).get("retry-after") or (exc.headers or {}).get("Retry-After"),
    }


def attempt(call: Any) -> Any:
    try:
        return call()
    except Leap0Error as exc:
        return error(exc)


def auth_raw(client: Leap0Client, _: str) -> dict[str, Any]:
    """Item 1: the raw key in ``authorization`` (bearer=False)."""
    return {"total_items": client.sandboxes.list().total_items >= 0}


def paths(client: Leap0Client, _: str) -> dict[str, Any]:
    """Items 2, 3, 8: create/get/list/delete through whatever base URL the client was given."""
    sandbox = client.sandboxes.create()
    try:
        got = client.sandboxes.get(sandbox.id)
        listed = client.sandboxes.list(state="running")
        item = next(i for i in listed.items if i.id == sandbox.id)
        return {
            "state": state(got),
            "item": sorted(k for k in ("id", "template_id", "state", "created_at") if getattr(item, k, None)),
        }
    finally:
        sandbox.delete()


def policies(client: Leap0Client, _: str) -> dict[str, Any]:
    """Item 5: the policy is echoed unchanged; none given means allow-all."""
    seen: dict[str, Any] = {}
    for name, policy in {
        "deny": {"mode": "deny-all"},
        "custom": {"mode": "custom", "allow_domains": ["api.example.com"], "allow_cidrs": ["192.0.2.0/24"]},
        "none": None,
    }.items():
        sandbox = client.sandboxes.create(**({"network_policy": policy} if policy else {}))
        try:
            seen[name] = sandbox.network_policy
        finally:
            sandbox.delete()
    return seen


def pause_and_router(client: Leap0Client, _: str) -> dict[str, Any]:
    """Item 9 (SDK side): pause; the sandbox id is handed back for a router request."""
    sandbox = client.sandboxes.create()
    sandbox.pause()
    return {"id": sandbox.id, "state": state(client.sandboxes.get(sandbox.id))}


def state_of(client: Leap0Client, sandbox_id: str) -> dict[str, Any]:
    try:
        return {"state": state(client.sandboxes.get(sandbox_id))}
    except Leap0NotFoundError:
        return {"state": "not found"}


def delete(client: Leap0Client, sandbox_id: str) -> dict[str, Any]:
    return {"deleted": attempt(lambda: client.sandboxes.delete(sandbox_id)) is None}


def delete_mid_transition(client: Leap0Client, _: str) -> dict[str, Any]:
    """Item 10: a delete while a snapshot is being taken gets 409."""
    sandbox = client.sandboxes.create(memory=2048)
    # memory to dump makes the snapshot last long enough to be seen mid-way
    sandbox.process.execute(
        command="nohup python3 -c 'import time; b = bytearray(1200 << 20); time.sleep(9999)' &"
    )
    time.sleep(2)
    done: dict[str, Any] = {}
    name = f"mid-{sandbox.id}"
    snapshot = threading.Thread(
        target=lambda: done.update(snap=attempt(lambda: sandbox.create_snapshot(name=name)))
    )
    snapshot.start()
    deadline = time.monotonic() + 20
    while state_of(client, sandbox.id)["state"] != "snapshotting" and time.monotonic() < deadline:
        time.sleep(0.02)
    seen = {"observed": state_of(client, sandbox.id)["state"], "during": attempt(sandbox.delete)}
    snapshot.join()
    attempt(sandbox.delete)
    snap = done.get("snap")
    if snap is not None and not isinstance(snap, dict):
        client.snapshots.delete(snap.id)
    return seen


def timeouts(client: Leap0Client, _: str) -> dict[str, Any]:
    """Item 11: at its timeout a sandbox ends, or is paused when created with auto_pause."""
    plain = client.sandboxes.create(timeout=2)
    paused = client.sandboxes.create(timeout=2, auto_pause=True)
    time.sleep(5)
    return {
        "plain": state_of(client, plain.id)["state"],
        "auto_pause": state_of(client, paused.id)["state"],
        "ids": [plain.id, paused.id],
    }


def org_limit(client: Leap0Client, _: str) -> dict[str, Any]:
    """Item 12: at the organisation limit (1 on that server) create gets 409, start 429."""
    first = client.sandboxes.create()
    stopped = client._transport.request_json("POST", f"/v1/sandbox/{first.id}/stop", expected_status=200)
    second = client.sandboxes.create()
    seen = {
        "stopped": stopped["state"],
        "create": attempt(client.sandboxes.create),
        "start": attempt(
            lambda: client._transport.request_json(
                "POST", f"/v1/sandbox/{first.id}/start", expected_status=200
            )
        ),
    }
    snapshot = attempt(lambda: second.create_snapshot(name="at-the-limit"))
    if isinstance(snapshot, dict):
        seen["restore"] = {"skipped": snapshot}
    else:
        seen["restore"] = attempt(lambda: client.snapshots.restore(snapshot_name="at-the-limit"))
        second.delete()
        client.snapshots.delete(snapshot.id)
    attempt(second.delete)
    attempt(first.delete)
    return seen


def rate_limit(client: Leap0Client, count: str) -> dict[str, Any]:
    """Item 12: more than the limit in the window gets 429 + Retry-After, marked retryable."""
    for _ in range(int(count)):
        client.sandboxes.list()
    return {"over": attempt(client.sandboxes.list)}


def snapshots(client: Leap0Client, _: str) -> dict[str, Any]:
    """Items 13 and 14."""
    source = client.sandboxes.create()
    source.process.execute(
        command="echo disk > /root/f; nohup sleep 9999 >/dev/null 2>&1 & echo $! > /root/pid"
    )
    snap = source.create_snapshot(name="n1")
    seen: dict[str, Any] = {
        "name": snap.name,
        "id": bool(snap.id),
        "source": state(client.sandboxes.get(source.id)),
    }
    seen["duplicate"] = attempt(lambda: source.create_snapshot(name="n1"))
    restored = client.snapshots.restore(snapshot_name="n1", timeout=100)
    seen["restored"] = {
        "new_id": restored.id != source.id,
        "state": state(restored),
        "file": restored.process.execute(command="cat /root/f").stdout,
        "process": restored.process.execute(command="kill -0 $(cat /root/pid) && echo alive").stdout.strip(),
    }
    listed = client.snapshots.list()
    seen["listed"] = [s.name for s in listed.items if s.id == snap.id] + [listed.total_items >= 1]
    restored.delete()
    killed = source.create_snapshot(name="n2", kill_sandbox_after=True)
    seen["killed_source"] = state_of(client, source.id)["state"]
    seen["deleted"] = [attempt(lambda s=s: client.snapshots.delete(s.id)) for s in (snap, killed)]
    return seen


def exec_timeout(client: Leap0Client, _: str) -> dict[str, Any]:
    """Item 16: a command past its timeout returns promptly."""
    sandbox = client.sandboxes.create()
    try:
        started = time.monotonic()
        result = attempt(lambda: sandbox.process.execute(command="sleep 60", timeout=2))
        code = result.get("status") if isinstance(result, dict) else result.exit_code
        return {"seconds": time.monotonic() - started, "exit_code": code}
    finally:
        sandbox.delete()


def urls(client: Leap0Client, _: str) -> dict[str, Any]:
    """Items 18 and 21 (SDK side): invoke_url's shape, and a presigned URL's life."""
    sandbox = client.sandboxes.create()
    sandbox.process.execute(
        command="cd /tmp && echo served > index.html && nohup python3 -m http.server 8080 >/dev/null 2>&1 &"
    )
    sandbox.process.execute(  # the server takes a moment to listen; the test then requests it
        command="for i in $(seq 300); do python3 -c \"import socket; socket.create_connection(('127.0.0.1', "
        '8080), 1)" 2>/dev/null && break; sleep 0.1; done',
        timeout=60,
    )
    presigned = sandbox.create_presigned_url(port=8080)
    return {
        "id": sandbox.id,
        "invoke": sandbox.invoke_url("/h", port=3000),
        "presigned": {"id": presigned.id, "url": presigned.url},
    }


def delete_presigned(client: Leap0Client, arg: str) -> dict[str, Any]:
    sandbox_id, presigned_id = arg.split(",")
    client.sandboxes.delete_presigned_url(sandbox_id, presigned_id)
    return {"deleted": True}


CHECKS = {f.__name__: f for f in (
    auth_raw, paths, policies, pause_and_router, state_of, delete, delete_mid_transition, timeouts,
    org_limit, rate_limit, snapshots, exec_timeout, urls, delete_presigned,
)}  # fmt: skip


def main() -> None:
    base_url, api_key, check = sys.argv[1:4]
    arg = sys.argv[4] if len(sys.argv) > 4 else ""
    options: dict[str, Any] = {"auth_header": "authorization", "bearer": False} if check == "auth_raw" else {}
    with Leap0Client(api_key=api_key, base_url=base_url, sandbox_domain="sbx.local", **options) as client:
        print(json.dumps(CHECKS[check](client, arg), default=str))


if __name__ == "__main__":
    main()
