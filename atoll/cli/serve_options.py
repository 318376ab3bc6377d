"""``atoll serve``'s options, generated from ``Settings`` (the one declaration of every server
setting and its default): one option per field, named after it (``max_sandboxes_per_org`` is
``--max-sandboxes-per-org``), plus the earlier names below. An option left out leaves the field to
the environment (``ATOLL_<FIELD>``) and then to its default, so the command holds no default of its
own: pydantic converts and checks what is given, exactly as it does the environment's values.

Kinds of option: a bool field is a ``--x/--no-x`` flag; a tuple field is repeated (``--deny-cidr A
--deny-cidr B``, or ``none`` alone for an empty list); anything else takes one value, and
``none`` sets a field that may be None to None.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from atoll.server.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

# names the options had before they were generated (docs, scripts and habits use them): accepted too
ALIASES: dict[str, tuple[str, ...]] = {
    "snapshots_root": ("--snapshots-dir",),
    "deny_cidrs": ("--deny-cidr",),
    "allow_private_cidrs": ("--allow-private-cidr",),
    "template_registries": ("--template-registry",),
    "dns_servers": ("--dns-server",),
    "warm_templates": ("--warm-template",),
    "template_import_dirs": ("--import-dir",),
    "router_hosts": ("--router-host",),
    "metrics_interval_s": ("--metrics-interval",),
    "rate_limit_window_s": ("--rate-limit-window",),
}
_METAVARS: dict[object, str] = {int: "INTEGER", float: "FLOAT", Path: "PATH", str: "TEXT"}


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def _unwrap(annotation: object) -> tuple[object, bool]:
    """The annotation without ``| None``, and whether None was allowed."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _is_tuple(annotation: object) -> bool:
    return typing.get_origin(annotation) is tuple


def _default_text(info: FieldInfo) -> str | bool:
    default = info.get_default(call_default_factory=True)
    if default is None:
        return False
    if isinstance(default, tuple):
        return ", ".join(str(d) for d in default) or "none"
    return str(default)


def _parameter(field: str, info: FieldInfo) -> inspect.Parameter:
    base, optional = _unwrap(info.annotation)
    names = (option_name(field), *ALIASES.get(field, ()))
    help_text = f"{info.description or ''} (env {env_name(field)})".strip()
    shown = _default_text(info)
    annotation: object
    if base is bool:
        flag = f"{names[0]}/--no-{names[0][2:]}"
        shown = names[0][2:] if info.default else f"no-{names[0][2:]}"
        option = typer.Option(flag, help=help_text, show_default=shown)
        annotation = Annotated[bool | None, option]
    elif _is_tuple(base):
        option = typer.Option(*names, help=help_text + " (repeat)", show_default=shown, metavar="TEXT")
        annotation = Annotated[list[str] | None, option]
    else:
        if typing.get_origin(base) is Literal:
            metavar = "[" + "|".join(str(a) for a in typing.get_args(base)) + "]"
        else:
            metavar = _METAVARS.get(base, "TEXT")
        if optional:
            metavar += "|none"
        option = typer.Option(*names, help=help_text, show_default=shown, metavar=metavar)
        annotation = Annotated[str | None, option]
    return inspect.Parameter(field, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def settings_parameters() -> list[inspect.Parameter]:
    """One keyword-only parameter per ``Settings`` field, for Typer to make an option of."""
    return [_parameter(field, info) for field, info in Settings.model_fields.items()]


def with_settings_options(command: F) -> F:
    """``command`` with one option per setting after its own parameters: Typer reads the
    signature, so the generated options reach ``command`` in its ``**options``."""
    own = typing.get_type_hints(command, include_extras=True)
    signature = inspect.signature(command)
    params = [
        p.replace(annotation=own.get(p.name, p.annotation))
        for p in signature.parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    params += settings_parameters()
    command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
    return command


def settings_from_options(options: Mapping[str, Any]) -> Settings:
    """The settings the given options (None: not given) and the environment make, or a usage
    error naming the option and its variable."""
    given: dict[str, Any] = {}
    for field, value in options.items():
        # a repeated option not given arrives as an empty list: not given either
        if field not in Settings.model_fields or value is None or value in ([], ()):
            continue
        base, optional = _unwrap(Settings.model_fields[field].annotation)
        if _is_tuple(base) and list(value) == ["none"]:
            given[field] = ()  # e.g. --dns-server none: no upstream at all (not the default)
        else:
            given[field] = None if optional and value == "none" else value
    try:
        return Settings(**given)
    except ValidationError as exc:
        messages, hint = [], None
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            if field in Settings.model_fields:
                hint = hint or f"'{option_name(field)}' / {env_name(field)}"
                messages.append(f"{field}: {error['msg']}")
            else:
                messages.append(error["msg"])
        raise typer.BadParameter("; ".join(messages), param_hint=hint) from None
