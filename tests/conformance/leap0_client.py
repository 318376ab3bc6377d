"""Runs under Python 3.12 with the public leap0==0.8.0 SDK (never imported by pytest itself).

Usage: leap0_client.py BASE_URL API_KEY CHECK
Prints one JSON object with what the SDK observed for CHECK."""

from __future__ import annotations

import json
import sys

from leap0 import Leap0Client
from leap0.models.errors import Leap0Error, Leap0NotFoundError


def lifecycle(client: Leap0Client) -> dict[str, object]:
    sandbox = client.sandboxes.create()
    seen: dict[str, object] = {
        "id": sandbox.id,
        "state": str(sandbox.state.value if hasattr(sandbox.state, "value") else sandbox.state),
        "vcpu": sandbox.vcpu,
        "memory": sandbox.memory,
        "timeout": sandbox.timeout,
        "template_id": sandbox.template_id,
        "created_at": sandbox.created_at,
    }
    result = sandbox.process.execute(
        command="echo hi; echo e 1>&2; exit 3", cwd="/tmp", env={"X": "y"}, timeout=5
    )
    seen["exec"] = [result.exit_code, result.stdout, result.stderr]
    seen["env"] = sandbox.process.execute(command="echo $X", env={"X": "y"}).stdout
    got = client.sandboxes.get(sandbox.id)
    seen["get_type"] = type(got._data).__name__
    seen["get_state"] = str(got.state.value if hasattr(got.state, "value") else got.state)
    listed = client.sandboxes.list(state="running")
    seen["listed"] = sandbox.id in [item.id for item in listed.items]
    seen["total_items"] = listed.total_items
    sandbox.pause()
    seen["paused_state"] = str(sandbox.state.value if hasattr(sandbox.state, "value") else sandbox.state)
    try:
        sandbox.pause()
        seen["second_pause"] = "no error"
    except Leap0Error as exc:
        seen["second_pause"] = type(exc).__name__
    seen["after_resume"] = sandbox.process.execute(command="echo back").stdout
    sandbox.delete()
    try:
        client.sandboxes.get(sandbox.id)
        seen["after_delete"] = "still there"
    except Leap0NotFoundError as exc:
        seen["after_delete"] = ["not found", exc.status_code, bool(exc.error_message)]
    return seen


def env_vars(client: Leap0Client) -> dict[str, object]:
    sandbox = client.sandboxes.create(env_vars={"A": "1"}, network_policy={"mode": "allow-all"})
    try:
        return {
            "stdout": sandbox.process.execute(command="echo $A").stdout,
            "policy": sandbox.network_policy,
        }
    finally:
        sandbox.delete()


def validation(client: Leap0Client) -> dict[str, object]:
    seen: dict[str, object] = {}
    for name, kwargs in {"vcpu": {"vcpu": 9}, "memory": {"memory": 513}, "timeout": {"timeout": 0}}.items():
        try:
            client.sandboxes.create(**kwargs)  # type: ignore[arg-type]
            seen[name] = "created"
        except Leap0Error as exc:
            seen[name] = exc.status_code
    try:
        client.sandboxes.create(template_name="no/such:template")
        seen["template"] = "created"
    except Leap0Error as exc:
        seen["template"] = exc.status_code
    return seen


def home_user(client: Leap0Client) -> dict[str, object]:
    """What leap0's examples and LangChain's standard sandbox tests do on the default template."""
    sandbox = client.sandboxes.create()
    try:
        tools = "python --version; pip --version | cut -c1-3; git --version | cut -c1-3"
        tools += "; node --version | cut -c1; npm --version | cut -c1-2"
        tools += "; for t in curl wget unzip pyright-langserver typescript-language-server"
        tools += "; do command -v $t >/dev/null && echo $t; done; pwd"
        ran = sandbox.process.execute(command=tools, cwd="/home/user")
        big = sandbox.process.execute(command="python -c \"print('x' * 100000)\"", cwd="/home/user")
        venv = sandbox.process.execute(command="python -m venv v && v/bin/pip --version | cut -c1-3")
        return {
            "tools": [ran.exit_code, ran.stdout.splitlines()],
            "big": [big.exit_code, len(big.stdout)],
            "venv": [venv.exit_code, venv.stdout],
        }
    finally:
        sandbox.delete()


def bad_key(client: Leap0Client) -> dict[str, object]:
    try:
        client.sandboxes.list()
        return {"status": "ok"}
    except Leap0Error as exc:
        return {"status": exc.status_code}


def main() -> None:
    base_url, api_key, check = sys.argv[1:4]
    variants = {
        "bearer": {},
        "raw-leap0-header": {"auth_header": "leap0-authorization", "bearer": False},
    }
    variant = sys.argv[4] if len(sys.argv) > 4 else "bearer"
    with Leap0Client(
        api_key=api_key, base_url=base_url, sandbox_domain="sbx.local", **variants[variant]
    ) as client:
        print(
            json.dumps(
                {
                    "lifecycle": lifecycle,
                    "env_vars": env_vars,
                    "validation": validation,
                    "bad_key": bad_key,
                    "home_user": home_user,
                }[check](client)
            )
        )


if __name__ == "__main__":
    main()
