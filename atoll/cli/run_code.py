"""``atoll sandbox run-code``: run a snippet in a sandbox's code interpreter and show what it made.

By default it waits for the result and prints the logs, the last expression's value and a line
per image, as a notebook cell would. ``--stream`` shows stdout and stderr as the code prints them
instead (for long runs); the interpreter's stream carries no rich results, so then the value and
images are not shown (``--json`` and ``--save-images`` never stream). Binary outputs are never
dumped on the terminal: each is one line like ``[image/png 640x480, 21.3 KiB]``, or written to
``--save-images DIR``.

Exit status: 0 when the code ran, 1 when it raised, 2 when Atoll could not run it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from atoll._exceptions import AtollError

if TYPE_CHECKING:
    from atoll import Client, OutputItem, Sandbox

EXIT_RAISED = 1
EXIT_NOT_RUN = 2
_BINARY = (("png", "image/png", "png"), ("jpeg", "image/jpeg", "jpg"), ("pdf", "application/pdf", "pdf"))


def _write(out: TextIO, text: str, *, line: bool = False) -> None:
    out.write(text + ("\n" if line and not text.endswith("\n") else ""))
    out.flush()


def _kib(size: int) -> str:
    return f"{size} B" if size < 1024 else f"{size / 1024:.1f} KiB"


def render_item(item: OutputItem, number: int, save_dir: Path | None) -> list[str]:
    """The lines to print for one output item: its binary payloads described (and saved when
    asked), else its text, else the names of the formats it carries."""
    from atoll.sdk._interpreter import image_size

    lines: list[str] = []
    for name, mime, suffix in _BINARY:
        data: bytes | None = getattr(item, f"{name}_bytes")()
        if data is None:
            continue
        size = image_size(data) if name != "pdf" else None
        label = f"[{mime}{f' {size[0]}x{size[1]}' if size else ''}, {_kib(len(data))}"
        if save_dir is not None:
            path = save_dir / f"output-{number}.{suffix}"
            save_dir.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            label += f", saved to {path}"
        lines.append(label + "]")
    if lines:
        return lines
    if item.text is not None:
        return [item.text]
    return [f"[{', '.join(item.formats) or 'empty output'}]"]


def _streamed(sandbox: Sandbox, code: str, options: dict[str, Any]) -> int:
    exit_code: int | None = None
    raised = False
    for event in sandbox.code_interpreter.execute_stream(code, **options):
        if event.type == "stdout":
            _write(sys.stdout, event.data)
        elif event.type == "stderr":
            _write(sys.stderr, event.data)
        elif event.type == "error":
            raised = True
            _write(sys.stderr, event.data, line=True)
        elif event.type == "exit":
            exit_code = event.code
    if exit_code is None:
        _write(sys.stderr, "error: the output stream ended before the code finished", line=True)
        return EXIT_NOT_RUN
    return EXIT_RAISED if raised or exit_code else 0


def _whole(
    sandbox: Sandbox, code: str, options: dict[str, Any], *, as_json: bool, save_dir: Path | None
) -> int:
    result = sandbox.code_interpreter.execute(code, **options)
    if as_json:
        _write(sys.stdout, json.dumps(result.to_dict(), indent=2), line=True)
    else:
        _write(sys.stdout, result.stdout)
        _write(sys.stderr, result.stderr)
        for number, item in enumerate(result.items, start=1):
            for text in render_item(item, number, save_dir):
                _write(sys.stdout, text, line=True)
        if result.error is not None:
            error = result.error
            _write(sys.stderr, error.traceback or f"{error.name}: {error.value}", line=True)
    return EXIT_RAISED if result.error is not None else 0


def run_code(
    client: Client,
    sandbox_id: str,
    code: str,
    *,
    language: str,
    context_id: str | None,
    timeout_ms: int | None,
    stream: bool,
    as_json: bool,
    save_dir: Path | None,
) -> int:
    """Run ``code`` and print its output; the exit status to leave with."""
    options: dict[str, Any] = {"language": language, "context_id": context_id, "timeout_ms": timeout_ms}
    try:
        sandbox = client.sandboxes.get(sandbox_id)
        if stream and not as_json and save_dir is None:
            return _streamed(sandbox, code, options)
        return _whole(sandbox, code, options, as_json=as_json, save_dir=save_dir)
    except AtollError as exc:
        notes = "".join(f"\n{note}" for note in getattr(exc, "__notes__", ()))
        _write(sys.stderr, f"error: {exc}{notes}", line=True)
        return EXIT_NOT_RUN
