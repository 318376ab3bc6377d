"""The code interpreter's data (agent-services §1) and the pure parts of talking to it: request
bodies, answer parsing, stream events, and the error for a sandbox that has no interpreter.

Parsing is lenient like ``models``: a field left out takes a neutral default. Two things break
the wire protocol and raise ``MalformedResponseError``: a stream event that is not a JSON object,
and a ``png``/``jpeg``/``pdf`` payload that is not base64 (raised when it is decoded).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from atoll._exceptions import InvalidArgument, MalformedResponseError, ServerError
from atoll.sdk._validation import check_env_vars
from atoll.sdk.models import HasId

CODE_INTERPRETER_TEMPLATE: Final = "system/code-interpreter:v0.1.0"
"""The template whose sandboxes run the code interpreter: ``sandboxes.create(template_name=...)``."""

LANGUAGES: Final = ("python", "py", "python3", "typescript", "ts", "javascript", "js", "bun", "node")
# leap0 sends and answers some enums as integers; accept them the same way.
_LANGUAGE_BY_INT: Final = {1: "python", 2: "typescript"}
_EVENT_TYPE_BY_INT: Final = {0: "stdout", 1: "stderr", 2: "exit", 3: "error"}
MAX_CONTEXT_ID_CHARS: Final = 128
MAX_TIMEOUT_MS: Final = 24 * 3600 * 1000  # the interpreter's own bounds (agent-services §1)
# What the router answers when nothing in the sandbox serves the interpreter (a 502 "nothing is
# listening" for a sandbox made from another template), or a server without the service (501).
SERVICE_ABSENT_STATUSES: Final = (501, 502)
# Time for the answer to travel back after the code's own time limit ran out.
EXECUTE_HTTP_MARGIN_S: Final = 10.0

ContextRef: TypeAlias = str | HasId
"""A context id, or an object carrying one in ``.id`` (a ``CodeContext``)."""


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_list(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _language(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return _LANGUAGE_BY_INT.get(value, str(value))
    return value if isinstance(value, str) else ""


def _decode(kind: str, value: str | None) -> bytes | None:
    if not value:
        return None
    try:
        # Tolerate line-wrapped base64; reject anything else that is not the alphabet.
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedResponseError(f"the output item's {kind} payload is not valid base64") from exc


@dataclass(frozen=True, slots=True)
class OutputItem:
    """One rich output of an execution; each field is one representation (MIME type) of it.

    ``png``, ``jpeg`` and ``pdf`` are base64 text as sent; ``png_bytes()`` and friends decode them.
    ``json_data`` is the wire's ``json`` field.
    """

    is_primary: bool = False
    text: str | None = None
    html: str | None = None
    markdown: str | None = None
    svg: str | None = None
    png: str | None = None
    jpeg: str | None = None
    pdf: str | None = None
    latex: str | None = None
    json_data: Any = None
    javascript: str | None = None
    extra: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutputItem:
        extra = data.get("extra")
        return cls(
            is_primary=data.get("is_primary") is True,
            text=_opt_str(data, "text"),
            html=_opt_str(data, "html"),
            markdown=_opt_str(data, "markdown"),
            svg=_opt_str(data, "svg"),
            png=_opt_str(data, "png"),
            jpeg=_opt_str(data, "jpeg"),
            pdf=_opt_str(data, "pdf"),
            latex=_opt_str(data, "latex"),
            json_data=data.get("json"),
            javascript=_opt_str(data, "javascript"),
            extra=dict(extra) if isinstance(extra, Mapping) else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The wire form (``json_data`` back under ``json``)."""
        data: dict[str, Any] = {"is_primary": self.is_primary}
        for name in ("text", "html", "markdown", "svg", "png", "jpeg", "pdf", "latex"):
            data[name] = getattr(self, name)
        data.update(json=self.json_data, javascript=self.javascript, extra=self.extra)
        return data

    @property
    def formats(self) -> list[str]:
        """The representations present, by wire name: ``["text", "png"]``."""
        present = [name for name, value in self.to_dict().items() if value is not None]
        return [name for name in present if name not in ("is_primary", "extra")]

    def png_bytes(self) -> bytes | None:
        return _decode("png", self.png)

    def jpeg_bytes(self) -> bytes | None:
        return _decode("jpeg", self.jpeg)

    def pdf_bytes(self) -> bytes | None:
        return _decode("pdf", self.pdf)


@dataclass(frozen=True, slots=True)
class ExecutionLogs:
    """What the code printed, in the chunks it was produced in (newlines included)."""

    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ExecutionError:
    """An exception the executed code raised (the call itself still succeeded)."""

    name: str
    value: str
    traceback: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExecutionError:
        return cls(
            name=_opt_str(data, "name") or "",
            value=_opt_str(data, "value") or "",
            traceback=_opt_str(data, "traceback") or "",
        )


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """The whole outcome of ``execute``: rich outputs, printed logs, and the code's own error."""

    items: list[OutputItem] = field(default_factory=list)
    logs: ExecutionLogs = field(default_factory=ExecutionLogs)
    error: ExecutionError | None = None
    execution_count: int | None = None
    context_id: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExecutionResult:
        raw_items, logs, error = data.get("items"), data.get("logs"), data.get("error")
        logs = logs if isinstance(logs, Mapping) else {}
        return cls(
            items=[OutputItem.from_dict(i) for i in raw_items or [] if isinstance(i, Mapping)]
            if isinstance(raw_items, list)
            else [],
            logs=ExecutionLogs(stdout=_str_list(logs.get("stdout")), stderr=_str_list(logs.get("stderr"))),
            error=ExecutionError.from_dict(error) if isinstance(error, Mapping) else None,
            execution_count=_opt_int(data, "execution_count"),
            context_id=_opt_str(data, "context_id"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The wire form, e.g. for ``json.dumps``."""
        error = self.error
        return {
            "context_id": self.context_id,
            "items": [item.to_dict() for item in self.items],
            "logs": {"stdout": list(self.logs.stdout), "stderr": list(self.logs.stderr)},
            "error": None
            if error is None
            else {"name": error.name, "value": error.value, "traceback": error.traceback},
            "execution_count": self.execution_count,
        }

    @property
    def primary(self) -> OutputItem | None:
        """The value of the code's last expression, if it had one."""
        return next((item for item in self.items if item.is_primary), None)

    @property
    def main_text(self) -> str | None:
        """The primary item's text; without a primary item, the last item's text."""
        item = self.primary or (self.items[-1] if self.items else None)
        return item.text if item is not None else None

    @property
    def stdout(self) -> str:
        return "".join(self.logs.stdout)

    @property
    def stderr(self) -> str:
        return "".join(self.logs.stderr)

    @property
    def images(self) -> list[OutputItem]:
        """The items carrying a PNG or JPEG (a matplotlib figure, a displayed image)."""
        return [item for item in self.items if item.png or item.jpeg]


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of ``execute_stream``: ``type`` is ``stdout``/``stderr`` (``data`` is the text),
    ``error`` (``data`` describes it) or ``exit`` (the last one; ``code`` is the status).
    A type this SDK does not know stays as the server sent it."""

    type: str
    data: str = ""
    code: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StreamEvent:
        raw = data.get("type")
        if isinstance(raw, int) and not isinstance(raw, bool):
            kind = _EVENT_TYPE_BY_INT.get(raw, str(raw))
        else:
            kind = raw if isinstance(raw, str) else ""
        text = data.get("data")
        return cls(type=kind, data=text if isinstance(text, str) else "", code=_opt_int(data, "code"))


@dataclass(frozen=True, slots=True)
class CodeContext:
    """A place where state (variables, imports, cwd) persists between executions."""

    id: str
    language: str = ""
    cwd: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CodeContext:
        context_id = data.get("id")
        if not isinstance(context_id, str) or not context_id:
            raise MalformedResponseError(f"code context has no non-empty string 'id' (got {context_id!r})")
        return cls(id=context_id, language=_language(data.get("language")), cwd=_opt_str(data, "cwd") or "")


def stream_event(payload: str) -> StreamEvent | None:
    """The event in one SSE ``data`` payload; None for an empty keep-alive."""
    if not payload.strip():
        return None
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise MalformedResponseError(f"stream event is not JSON: {payload[:200]!r}") from exc
    if not isinstance(value, dict):
        raise MalformedResponseError(f"stream event is not a JSON object: {payload[:200]!r}")
    if value.get("envelope") == "error":  # the stream itself failed on the server's side
        message = value.get("error") or value.get("message") or "code execution stream failed"
        raise ServerError(str(message), body=payload.encode())
    return StreamEvent.from_dict(value)


def check_language(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value in _LANGUAGE_BY_INT:
        return _LANGUAGE_BY_INT[value]
    if isinstance(value, str) and value.strip().lower() in LANGUAGES:
        return value.strip().lower()
    raise InvalidArgument("language", f"must be one of {', '.join(LANGUAGES)}, got {value!r}")


def check_context_id(ref: object, field_name: str = "context_id") -> str:
    value = getattr(ref, "id", ref)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_CONTEXT_ID_CHARS:
        raise InvalidArgument(
            field_name, f"must be a non-empty id of at most {MAX_CONTEXT_ID_CHARS} characters, got {ref!r}"
        )
    if "\0" in value:
        raise InvalidArgument(field_name, "must not contain NUL")
    return value.strip()


def check_timeout_ms(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_TIMEOUT_MS:
        raise InvalidArgument(
            "timeout_ms", f"must be a whole number from 1 to {MAX_TIMEOUT_MS}, got {value!r}"
        )
    return value


def execute_body(
    *, code: object, language: object, context: object, env_vars: object, timeout_ms: object
) -> dict[str, Any]:
    if not isinstance(code, str):
        raise InvalidArgument("code", f"must be a string, got {type(code).__name__}")
    body: dict[str, Any] = {"code": code, "language": check_language(language)}
    if context is not None:
        body["context_id"] = check_context_id(context)
    if env_vars is not None:
        body["env_vars"] = check_env_vars("env_vars", env_vars)
    if timeout_ms is not None:
        body["timeout_ms"] = check_timeout_ms(timeout_ms)
    return body


def context_body(*, language: object, cwd: object) -> dict[str, Any]:
    body: dict[str, Any] = {"language": check_language(language)}
    if cwd is not None:
        if not isinstance(cwd, str) or not cwd or "\0" in cwd:
            raise InvalidArgument("cwd", f"must be a non-empty path without NUL, got {cwd!r}")
        body["cwd"] = cwd
    return body


def execute_http_timeout(
    timeout_ms: int | None, http_timeout: float | None, default_s: float
) -> float | None:
    """The HTTP timeout for an execution: the caller's, else long enough to outlive the code's
    own limit, so slow code is reported by the interpreter and not as a network fault."""
    if http_timeout is not None or timeout_ms is None:
        return http_timeout
    return max(default_s, timeout_ms / 1000 + EXECUTE_HTTP_MARGIN_S)


def service_absent(error: ServerError, sandbox_id: str) -> ServerError:
    """The same error, with a message that says what is most likely wrong and how to fix it."""
    message = (
        f"no code interpreter answered in sandbox {sandbox_id} ({error.message}). Code runs only in"
        f" sandboxes created from the {CODE_INTERPRETER_TEMPLATE!r} template; one created just now"
        " may still be starting."
    )
    return type(error)(
        message,
        status_code=error.status_code,
        errors=error.errors,
        headers=error.headers,
        body=error.body,
        retry_after=error.retry_after,
    )


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG or JPEG image, read from its header; None if neither."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 9 <= len(data):  # walk the JPEG segments up to the frame header (SOFn)
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(data[at + 5 : at + 7], "big")
            return int.from_bytes(data[at + 7 : at + 9], "big"), height
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None
