"""Runs under Python 3.12 with the public leap0==0.8.0 SDK (never imported by pytest itself).

Usage: leap0_lsp.py BASE_URL API_KEY CHECK SANDBOX_ID PROJECT
Prints one JSON object with what the unchanged SDK observed for CHECK (``sandbox.lsp``)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from leap0 import Leap0Client
from leap0.models.errors import Leap0Error

PY_SYMBOLS = (
    "class Greeter:\n    def hello(self):\n        return 1\n\n\n"
    "def alpha():\n    pass\n\n\ndef beta():\n    pass\n"
)
TS_SYMBOLS = (
    "class Greeter {\n  hello(): number { return 1; }\n}\n\n"
    "function alpha(): void {}\n\nfunction beta(): void {}\n"
)
# every process in the sandbox: pid and command line (no ps needed)
LIST_PROCESSES = (
    "for d in /proc/[0-9]*; do printf '%s ' \"${d#/proc/}\"; tr '\\0' ' ' < $d/cmdline; echo; done"
)


def labels(answer: Any) -> list[str]:
    result = answer.result
    items = result.get("items", []) if isinstance(result, dict) else result or []
    return [item["label"] for item in items]


def names(answer: Any) -> list[str]:
    found: list[str] = []

    def walk(symbols: list[dict[str, Any]]) -> None:
        for symbol in symbols:
            found.append(symbol["name"])
            walk(symbol.get("children") or [])

    walk(answer.result or [])
    return found


def error_of(call: Any) -> dict[str, Any]:
    started = time.monotonic()
    try:
        call()
    except Leap0Error as exc:
        return {"status": exc.status_code, "message": str(exc), "took_s": time.monotonic() - started}
    return {"status": None, "took_s": time.monotonic() - started}


def language(client: Leap0Client, sid: str, project: str, lang: str) -> dict[str, Any]:
    sandbox = client.sandboxes.get(sid)
    lsp = sandbox.lsp
    ext, source, code = (
        ("py", PY_SYMBOLS, "import os\nos.pa")
        if lang == "python"
        else ("ts", TS_SYMBOLS, 'const s = "abc";\ns.toUp')
    )
    seen: dict[str, Any] = {}
    started = time.monotonic()
    seen["start"] = lsp.start(language_id=lang, path_to_project=project).success
    seen["start_s"] = time.monotonic() - started
    main = f"{project}/main.{ext}"
    lsp.did_open_path(language_id=lang, path_to_project=project, path=main, text=code)
    line, character = 1, len(code.splitlines()[1])
    answer = lsp.completions_path(
        language_id=lang, path_to_project=project, path=main, line=line, character=character
    )
    seen["completion_envelope"] = {"jsonrpc": answer.jsonrpc, "id": answer.id, "error": answer.error}
    seen["completions"] = labels(answer)
    # the document's text from the sandbox's own file (did_open_path without text)
    sandbox.filesystem.write_file(path=f"{project}/shapes.{ext}", content=source)
    shapes = f"{project}/shapes.{ext}"
    lsp.did_open_path(language_id=lang, path_to_project=project, path=shapes)
    seen["symbols"] = names(lsp.document_symbols_path(language_id=lang, path_to_project=project, path=shapes))
    lsp.did_close_path(language_id=lang, path_to_project=project, path=shapes)
    warm = []
    for _ in range(5):
        t0 = time.monotonic()
        lsp.completions_path(
            language_id=lang, path_to_project=project, path=main, line=line, character=character
        )
        warm.append(time.monotonic() - t0)
    seen["warm_s"] = sorted(warm)[len(warm) // 2]
    seen["stop"] = lsp.stop(language_id=lang, path_to_project=project).success
    seen["after_stop"] = error_of(
        lambda: lsp.completions_path(
            language_id=lang, path_to_project=project, path=main, line=1, character=1
        )
    )
    return seen


def crash(client: Leap0Client, sid: str, project: str, lang: str) -> dict[str, Any]:
    sandbox = client.sandboxes.get(sid)
    lsp = sandbox.lsp
    seen: dict[str, Any] = {"start": lsp.start(language_id=lang, path_to_project=project).success}
    main = f"{project}/main.py"
    lsp.did_open_path(language_id=lang, path_to_project=project, path=main, text="import os\nos.pa")
    kill = (
        "for d in /proc/[0-9]*; do if tr '\\0' ' ' < $d/cmdline | grep -q '^node .*langserver'; then "
        "kill -9 ${d#/proc/}; fi; done"
    )
    seen["kill"] = sandbox.process.execute(command=kill).exit_code
    time.sleep(0.5)
    call = lambda: lsp.completions_path(  # noqa: E731
        language_id=lang, path_to_project=project, path=main, line=1, character=5
    )
    seen["first"] = error_of(call)
    seen["second"] = error_of(call)
    seen["restart"] = lsp.start(language_id=lang, path_to_project=project).success
    lsp.did_open_path(language_id=lang, path_to_project=project, path=main, text="import os\nos.pa")
    seen["after_restart"] = labels(call())
    seen["stop"] = lsp.stop(language_id=lang, path_to_project=project).success
    return seen


def processes(client: Leap0Client, sid: str, project: str, lang: str) -> dict[str, Any]:
    """What runs in the sandbox (after a stop: the bridge and the server must be gone)."""
    sandbox = client.sandboxes.get(sid)
    deadline = time.monotonic() + 5
    while True:
        out = sandbox.process.execute(command=LIST_PROCESSES).stdout
        lines = [
            line
            for line in out.splitlines()
            if "langserver" in line or "atoll-lsp-bridge" in line or "ATOLL_LSP" in line or "tsserver" in line
        ]
        if not lines or time.monotonic() > deadline:
            return {"left": lines, "all": out}
        time.sleep(0.2)


def start_only(client: Leap0Client, sid: str, project: str, lang: str) -> dict[str, Any]:
    return {"start": client.sandboxes.get(sid).lsp.start(language_id=lang, path_to_project=project).success}


CHECKS = {"language": language, "crash": crash, "processes": processes, "start_only": start_only}


def main() -> None:
    base_url, key, check, sid, project, lang = sys.argv[1:7]
    with Leap0Client(api_key=key, base_url=base_url) as client:
        seen = CHECKS[check](client, sid, project, lang)
    print(json.dumps(seen, default=str))


if __name__ == "__main__":
    main()
