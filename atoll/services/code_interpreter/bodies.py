"""Request bodies: parsed and bounded by hand (a few fields; no validation library in the sandbox)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DEFAULT_TIMEOUT_MS, MAX_CODE_BYTES, MAX_ENV_BYTES, MAX_ENV_VARS, MAX_TIMEOUT_MS
from .kernels.base import Language

LANGUAGES: dict[str, Language] = {
    "python": "python",
    "py": "python",
    "python3": "python",
    "typescript": "typescript",
    "ts": "typescript",
    "javascript": "typescript",
    "js": "typescript",
    "node": "typescript",
    "bun": "typescript",
}


class BadRequestError(Exception):
    """A 400 (or ``status``) with ``{"message", "errors": [{"field", "error"}]}``."""

    def __init__(self, errors: list[tuple[str, str]], *, status: int = 400) -> None:
        self.errors = errors
        self.status = status
        super().__init__("; ".join(f"{f}: {e}" for f, e in errors))

    def body(self) -> dict[str, Any]:
        return {
            "message": f"invalid request: {self}",
            "errors": [{"field": f, "error": e} for f, e in self.errors],
        }


@dataclass(frozen=True, slots=True)
class ExecuteBody:
    code: str
    language: Language
    context_id: str | None
    env_vars: dict[str, str]
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class ContextBody:
    language: Language
    cwd: Path | None


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequestError([("body", "is not valid JSON")]) from None
    if not isinstance(body, dict):
        raise BadRequestError([("body", "must be a JSON object")])
    return body


def _language(body: dict[str, Any], errors: list[tuple[str, str]]) -> Language:
    value = body.get("language", "python")
    if value is None:
        value = "python"
    if not isinstance(value, str) or value.lower() not in LANGUAGES:
        errors.append(("language", f"must be one of {', '.join(LANGUAGES)}"))
        return "python"
    return LANGUAGES[value.lower()]


def parse_execute(body: dict[str, Any], *, allow_env: bool) -> ExecuteBody:
    errors: list[tuple[str, str]] = []
    code = body.get("code")
    if not isinstance(code, str):
        errors.append(("code", "is required and must be a string"))
        code = ""
    elif len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
        errors.append(("code", f"is longer than {MAX_CODE_BYTES} bytes"))
    language = _language(body, errors)
    context_id = body.get("context_id")
    if context_id is not None and not (isinstance(context_id, str) and 0 < len(context_id) <= 128):
        errors.append(("context_id", "must be a context id (a non-empty string)"))
        context_id = None
    env_vars = _env_vars(body.get("env_vars") if allow_env else None, errors)
    timeout_ms = body.get("timeout_ms")
    if timeout_ms is None:
        timeout_ms = DEFAULT_TIMEOUT_MS
    elif type(timeout_ms) is not int or not 0 < timeout_ms <= MAX_TIMEOUT_MS:  # bool is no int here
        errors.append(("timeout_ms", f"must be an integer from 1 to {MAX_TIMEOUT_MS}"))
        timeout_ms = DEFAULT_TIMEOUT_MS
    if errors:
        raise BadRequestError(errors)
    return ExecuteBody(code, language, context_id, env_vars, timeout_ms)


def _env_vars(value: Any, errors: list[tuple[str, str]]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(("env_vars", "must be an object of string values"))
        return {}
    if len(value) > MAX_ENV_VARS:
        errors.append(("env_vars", f"has more than {MAX_ENV_VARS} entries"))
        return {}
    size = 0
    for key, val in value.items():
        if not key or "=" in key or "\0" in key:
            errors.append(("env_vars", f"{key[:64]!r} is not a valid variable name"))
            return {}
        if not isinstance(val, str) or "\0" in val:
            errors.append(("env_vars", f"the value of {key[:64]!r} must be a string without NUL"))
            return {}
        size += len(key) + len(val)
    if size > MAX_ENV_BYTES:
        errors.append(("env_vars", f"is larger than {MAX_ENV_BYTES} bytes"))
        return {}
    return dict(value)


def parse_context(body: dict[str, Any]) -> ContextBody:
    errors: list[tuple[str, str]] = []
    language = _language(body, errors)
    cwd_value = body.get("cwd")
    cwd: Path | None = None
    if cwd_value is not None:
        if not isinstance(cwd_value, str) or not cwd_value.startswith("/") or "\0" in cwd_value:
            errors.append(("cwd", "must be an absolute path"))
        elif not os.path.isdir(cwd_value):
            errors.append(("cwd", "is not an existing directory"))
        else:
            cwd = Path(cwd_value)
    if errors:
        raise BadRequestError(errors)
    return ContextBody(language, cwd)
