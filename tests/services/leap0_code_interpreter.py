"""Runs under Python 3.12 with the public leap0==0.8.0 SDK (never imported by pytest itself).

Usage: leap0_code_interpreter.py BASE_URL API_KEY SANDBOX_DOMAIN CHECK [SANDBOX_ID]
Prints one JSON object with what the unchanged SDK observed for CHECK. The sandbox host is
reached over https (``SSL_CERT_FILE`` names Atoll's CA), as the SDK always does."""

from __future__ import annotations

import base64
import json
import struct
import sys
import time
from typing import Any

from leap0 import Leap0Client
from leap0.models.errors import Leap0Error

CODE_INTERPRETER = "system/code-interpreter:v0.1.0"


def png_size(data: bytes) -> list[int]:
    """Width and height from a PNG's IHDR chunk (no imaging library in this venv)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    width, height = struct.unpack(">II", data[16:24])
    return [width, height]


def error_of(call: Any) -> dict[str, Any]:
    try:
        call()
    except Leap0Error as exc:
        return {"class": type(exc).__name__, "status": exc.status_code, "body": exc.body}
    return {"class": None}


def basics(client: Leap0Client, sid: str) -> dict[str, Any]:
    ci = client.sandboxes.get(sid).code_interpreter
    seen: dict[str, Any] = {"health": ci.health()}
    first = ci.execute(code="x=1")
    seen["first_context"] = first.context_id
    second = ci.execute(code="x+1", context_id=first.context_id)
    seen["main_text"] = second.main_text
    seen["execution_count"] = [first.execution_count, second.execution_count]
    code = "import time\nfor i in range(4):\n    print('tick', i, flush=True)\n    time.sleep(0.3)\n"
    events = []
    for event in ci.execute_stream(code=code, context_id=first.context_id):
        kind = event.type.value if hasattr(event.type, "value") else str(event.type)
        events.append({"type": kind, "data": event.data, "code": event.code, "at": time.monotonic()})
    seen["stream"] = events
    return seen


def contexts(client: Leap0Client, sid: str) -> dict[str, Any]:
    ci = client.sandboxes.get(sid).code_interpreter
    a = ci.create_context(language="python")
    b = ci.create_context(language="python", cwd="/tmp")
    ci.execute(code="secret = 41", context_id=a.id)
    seen: dict[str, Any] = {
        "a": [a.id, str(getattr(a.language, "value", a.language)), a.cwd],
        "b_cwd": b.cwd,
        "same": ci.execute(code="secret + 1", context_id=a.id).main_text,
        "other": (ci.execute(code="secret", context_id=b.id).error or None) is not None,
        "cwd_in_b": ci.execute(code="import os; os.getcwd()", context_id=b.id).main_text,
        "listed": sorted(c.id for c in ci.list_contexts()),
        "got": ci.get_context(a.id).id,
    }
    ci.delete_context(b.id)
    seen["after_delete"] = error_of(lambda: ci.get_context(b.id))
    seen["listed_after"] = sorted(c.id for c in ci.list_contexts())
    return seen


def rich(client: Leap0Client, sid: str) -> dict[str, Any]:
    ci = client.sandboxes.get(sid).code_interpreter
    seen: dict[str, Any] = {}
    plot = ci.execute(
        code=(
            "import matplotlib.pyplot as plt\n"
            "fig = plt.figure(figsize=(4, 3), dpi=100)\n"
            "plt.plot([1, 2, 3], [1, 4, 9])\n"
        )
    )
    pngs = [item.png_bytes() for item in plot.items if item.png]
    seen["png_sizes"] = [png_size(p) for p in pngs if p]
    seen["plot_error"] = plot.error.name if plot.error else None
    frame = ci.execute(code="import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': [3, 4]})")
    seen["frame_html"] = [item.html for item in frame.items if item.html]
    seen["frame_text"] = frame.main_text
    error = ci.execute(code="1/0")
    seen["error"] = {
        "name": error.error.name if error.error else None,
        "value": error.error.value if error.error else None,
        "traceback": error.error.traceback if error.error else None,
    }
    printed = ci.execute(code="print('hello'); print('oops', file=__import__('sys').stderr)")
    seen["logs"] = {"stdout": printed.logs.stdout, "stderr": printed.logs.stderr}
    env = ci.execute(code="import os; os.environ.get('ATOLL_CI_VAR')", env_vars={"ATOLL_CI_VAR": "seen"})
    seen["env"] = env.main_text
    return seen


def timeout(client: Leap0Client, sid: str) -> dict[str, Any]:
    ci = client.sandboxes.get(sid).code_interpreter
    ctx = ci.create_context(language="python")
    ci.execute(code="kept = 'still here'", context_id=ctx.id)
    started = time.monotonic()
    spun = ci.execute(code="while True: pass", context_id=ctx.id, timeout_ms=500)
    took = time.monotonic() - started
    after = ci.execute(code="kept", context_id=ctx.id)
    died = ci.execute(code="import os; os._exit(1)", context_id=ctx.id)
    revived = ci.execute(code="1 + 1", context_id=ctx.id)
    return {
        "error": spun.error.name if spun.error else None,
        "took_s": took,
        "after": after.main_text,
        "died": died.error.name if died.error else None,
        "revived": revived.main_text,
    }


def typescript(client: Leap0Client, sid: str) -> dict[str, Any]:
    ci = client.sandboxes.get(sid).code_interpreter
    result = ci.execute(code="const x: number = 41; x + 1", language="typescript")
    ctx = ci.create_context(language="typescript")
    ci.execute(code="let total: number = 40", language="typescript", context_id=ctx.id)
    later = ci.execute(code="total + 2", language="typescript", context_id=ctx.id)
    logged = ci.execute(code="console.log('from node')", language="javascript")
    thrown = ci.execute(code="throw new TypeError('bad')", language="ts")
    return {
        "main_text": result.main_text,
        "context": later.main_text,
        "stdout": logged.logs.stdout,
        "error": thrown.error.name if thrown.error else None,
    }


def bad_input(client: Leap0Client, sid: str) -> dict[str, Any]:
    ci = client.sandboxes.get(sid).code_interpreter
    return {
        "language": error_of(lambda: ci.execute(code="1", language="cobol")),
        "context": error_of(lambda: ci.execute(code="1", context_id="no-such-context")),
        "get_context": error_of(lambda: ci.get_context("no-such-context")),
    }


def fresh(client: Leap0Client, sid: str) -> dict[str, Any]:
    """A create through the SDK, then at once the interpreter, as the SDK's own example does."""
    started = time.monotonic()
    sandbox = client.sandboxes.create(template_name=CODE_INTERPRETER)
    try:
        result = sandbox.code_interpreter.execute(code="1 + 1")
        return {"main_text": result.main_text, "took_s": time.monotonic() - started}
    finally:
        sandbox.delete()


CHECKS = {f.__name__: f for f in (basics, contexts, rich, timeout, typescript, bad_input, fresh)}


def encode(value: object) -> str:
    return base64.b64encode(value).decode() if isinstance(value, bytes) else str(value)


def main() -> None:
    base_url, key, domain, check = sys.argv[1:5]
    sid = sys.argv[5] if len(sys.argv) > 5 else ""
    with Leap0Client(api_key=key, base_url=base_url, sandbox_domain=domain) as client:
        seen = CHECKS[check](client, sid)
    print(
        json.dumps(seen, default=lambda o: base64.b64encode(o).decode() if isinstance(o, bytes) else str(o))
    )


if __name__ == "__main__":
    main()
