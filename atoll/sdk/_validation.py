"""Argument checks shared by the async and the sync clients: pure, no I/O.

Each check raises ``InvalidArgument(field, message)`` whose message names the allowed range, and
each builder returns exactly what goes on the wire, so a client method is "check, send, parse".
Ranges are the wire protocol's (wire-protocol.md section 3); the server checks them again.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast
from urllib.parse import quote

from atoll._exceptions import InvalidArgument
from atoll._states import State
from atoll.sdk.models import NetworkMode, NetworkPolicyDict, SandboxRef, TransformRuleDict

DEFAULT_TEMPLATE_NAME: Final = "system/debian:bookworm"
DEFAULT_VCPU: Final = 1
DEFAULT_MEMORY_MIB: Final = 1024
DEFAULT_TIMEOUT_MIN: Final = 5

TEMPLATE_NAME_MAX: Final = 64
VCPU_RANGE: Final = (1, 8)
MEMORY_MIB_RANGE: Final = (512, 8192)
TIMEOUT_MIN_RANGE: Final = (1, 480)
PROCESS_TIMEOUT_RANGE: Final = (1, 480 * 60)  # a process cannot outlive its sandbox
PORT_RANGE: Final = (1, 65535)
PAGE_SIZE_RANGE: Final = (1, 100)

NETWORK_MODES: Final = ("allow-all", "deny-all", "custom")
MAX_ALLOW_DOMAINS: Final = 50
MAX_ALLOW_CIDRS: Final = 10
MAX_TRANSFORMS: Final = 20
_POLICY_KEYS: Final = frozenset({"mode", "allow_domains", "allow_cidrs", "transforms"})
_TRANSFORM_KEYS: Final = frozenset({"domain", "inject_headers", "strip_headers"})
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

# Every state but "deleted": a deleted sandbox is gone, there is nothing to list.
LISTABLE_STATES: Final = tuple(s.value for s in State if s is not State.DELETED)
LIST_SORTS: Final = ("created_at", "state")
LIST_ORDERS: Final = ("asc", "desc")

OTEL_ENDPOINT_ENV: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_HEADERS_ENV: Final = "OTEL_EXPORTER_OTLP_HEADERS"


def _int_in(field: str, value: object, low: int, high: int, unit: str = "") -> int:
    # bool is an int subclass; vcpu=True is a bug in the caller, not "1".
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        suffix = f" ({unit})" if unit else ""
        raise InvalidArgument(field, f"must be an integer from {low} to {high}{suffix}, got {value!r}")
    return value


def _one_of(field: str, value: object, allowed: Sequence[str]) -> str:
    text = value.value if isinstance(value, State) else value
    if not isinstance(text, str) or text not in allowed:
        raise InvalidArgument(field, f"must be one of {', '.join(allowed)}; got {value!r}")
    return text


def _str_list(field: str, value: object, max_items: int) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidArgument(field, f"must be a list of at most {max_items} strings, got {value!r}")
    if len(value) > max_items:
        raise InvalidArgument(field, f"must have at most {max_items} entries, got {len(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidArgument(f"{field}[{index}]", f"must be a string, got {item!r}")
    return list(value)


def _check_bool(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(field, f"must be True or False, got {value!r}")
    return value


def check_template_name(value: object) -> str:
    name = value.strip() if isinstance(value, str) else None
    if not name or len(name) > TEMPLATE_NAME_MAX:
        raise InvalidArgument("template_name", f"must be 1 to {TEMPLATE_NAME_MAX} characters, got {value!r}")
    return name


def check_memory_mib(value: object) -> int:
    low, high = MEMORY_MIB_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high or value % 2:
        raise InvalidArgument(
            "memory_mib", f"must be an even integer from {low} to {high} (MiB), got {value!r}"
        )
    return value


def check_env_vars(field: str, value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise InvalidArgument(field, f"must be a dict of str to str, got {type(value).__name__}")
    env: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise InvalidArgument(field, f"keys must be non-empty strings without '=' or NUL, got {key!r}")
        if not isinstance(item, str) or "\0" in item:
            raise InvalidArgument(f"{field}[{key!r}]", f"must be a string without NUL, got {item!r}")
        env[key] = item
    return env


def check_domain_pattern(field: str, value: object) -> str:
    """``a.b`` or ``*.a.b``: at least two DNS labels, no port, a wildcard only as the first label."""
    host = value.strip() if isinstance(value, str) else ""
    labels = (host[2:] if host.startswith("*.") else host).split(".")
    if len(labels) < 2 or len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidArgument(
            field, f"must be a domain like 'example.com' or '*.example.com' (no port), got {value!r}"
        )
    return host


def _check_cidr(field: str, value: str) -> str:
    try:
        ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        raise InvalidArgument(field, f"must be an IPv4 CIDR like '10.0.0.0/8', got {value!r}") from None
    return value


def _check_transform(field: str, value: object) -> TransformRuleDict:
    if not isinstance(value, Mapping):
        raise InvalidArgument(field, f"must be a dict with a 'domain', got {value!r}")
    unknown = sorted(set(value) - _TRANSFORM_KEYS)
    if unknown:
        raise InvalidArgument(field, f"unknown keys {unknown}; allowed: {', '.join(sorted(_TRANSFORM_KEYS))}")
    if "domain" not in value:
        raise InvalidArgument(field, "must have a 'domain'")
    rule: TransformRuleDict = {"domain": check_domain_pattern(f"{field}.domain", value["domain"])}
    if "inject_headers" in value:
        rule["inject_headers"] = check_env_vars(f"{field}.inject_headers", value["inject_headers"])
    if "strip_headers" in value:
        rule["strip_headers"] = _str_list(f"{field}.strip_headers", value["strip_headers"], 100)
    return rule


def check_network_policy(value: object) -> NetworkPolicyDict:
    """A validated copy of the policy; the caller's dict is never modified."""
    field = "network_policy"
    if not isinstance(value, Mapping):
        raise InvalidArgument(field, f"must be a dict with a 'mode', got {value!r}")
    unknown = sorted(set(value) - _POLICY_KEYS)
    if unknown:
        raise InvalidArgument(field, f"unknown keys {unknown}; allowed: {', '.join(sorted(_POLICY_KEYS))}")
    mode = _one_of(f"{field}.mode", value.get("mode"), NETWORK_MODES)
    policy: NetworkPolicyDict = {"mode": cast(NetworkMode, mode)}
    if "allow_domains" in value:
        domains = _str_list(f"{field}.allow_domains", value["allow_domains"], MAX_ALLOW_DOMAINS)
        policy["allow_domains"] = [
            check_domain_pattern(f"{field}.allow_domains[{i}]", d) for i, d in enumerate(domains)
        ]
    if "allow_cidrs" in value:
        cidrs = _str_list(f"{field}.allow_cidrs", value["allow_cidrs"], MAX_ALLOW_CIDRS)
        policy["allow_cidrs"] = [_check_cidr(f"{field}.allow_cidrs[{i}]", c) for i, c in enumerate(cidrs)]
    if "transforms" in value:
        transforms = value["transforms"]
        if isinstance(transforms, str) or not isinstance(transforms, Sequence):
            raise InvalidArgument(f"{field}.transforms", f"must be a list of dicts, got {transforms!r}")
        if len(transforms) > MAX_TRANSFORMS:
            raise InvalidArgument(
                f"{field}.transforms", f"must have at most {MAX_TRANSFORMS} entries, got {len(transforms)}"
            )
        policy["transforms"] = [
            _check_transform(f"{field}.transforms[{i}]", t) for i, t in enumerate(transforms)
        ]
    return policy


def otel_env_vars(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's OTLP exporter settings, to be injected into the sandbox's environment."""
    endpoint = environ.get(OTEL_ENDPOINT_ENV, "").strip()
    if not endpoint:
        raise InvalidArgument("otel_export", f"requires {OTEL_ENDPOINT_ENV} in the local environment")
    env = {OTEL_ENDPOINT_ENV: endpoint}
    headers = environ.get(OTEL_HEADERS_ENV, "")
    if headers:
        env[OTEL_HEADERS_ENV] = headers
    return env


def create_body(
    *,
    template_name: object,
    vcpu: object,
    memory_mib: object,
    timeout_min: object,
    auto_pause: object,
    env_vars: object,
    network_policy: object,
) -> dict[str, Any]:
    """The POST /v1/sandbox body; the five base keys always, the rest only when set."""
    body: dict[str, Any] = {
        "template_name": check_template_name(template_name),
        "vcpu": _int_in("vcpu", vcpu, *VCPU_RANGE),
        "memory": check_memory_mib(memory_mib),
        # The wire counts seconds; the SDK counts minutes, as the product page does.
        "timeout": _int_in("timeout_min", timeout_min, *TIMEOUT_MIN_RANGE, unit="minutes") * 60,
        "auto_pause": _check_bool("auto_pause", auto_pause),
    }
    if env_vars is not None:
        body["env_vars"] = check_env_vars("env_vars", env_vars)
    if network_policy is not None:
        body["network_policy"] = check_network_policy(network_policy)
    return body


def list_params(
    *, state: object, sort: object, order_by: object, page: object, page_size: object
) -> dict[str, Any]:
    """The GET /v1/sandboxes query; the wire spells two keys with hyphens."""
    params: dict[str, Any] = {
        "sort": _one_of("sort", sort, LIST_SORTS),
        "order-by": _one_of("order_by", order_by, LIST_ORDERS),
        "page": _int_in("page", page, 1, 2**31 - 1),
        "page-size": _int_in("page_size", page_size, *PAGE_SIZE_RANGE),
    }
    if state is not None:
        params["state"] = _one_of("state", state, LISTABLE_STATES)
    return params


def process_body(*, command: object, cwd: object, env: object, timeout: object) -> dict[str, Any]:
    """The process/execute body. The argument is ``env`` but the wire key is ``envs``."""
    if not isinstance(command, str) or not command.strip():
        raise InvalidArgument("command", f"must be a non-empty shell command, got {command!r}")
    body: dict[str, Any] = {"command": command}
    if cwd is not None:
        if not isinstance(cwd, str) or not cwd:
            raise InvalidArgument("cwd", f"must be a non-empty path, got {cwd!r}")
        body["cwd"] = cwd
    if env is not None:
        body["envs"] = check_env_vars("env", env)
    if timeout is not None:
        body["timeout"] = _int_in("timeout", timeout, *PROCESS_TIMEOUT_RANGE, unit="seconds")
    return body


def check_port(value: object) -> int:
    return _int_in("port", value, *PORT_RANGE)


def sandbox_id(ref: SandboxRef) -> str:
    """The id of a sandbox reference: an id string, or any object with an ``.id``."""
    value = ref if isinstance(ref, str) else getattr(ref, "id", None)
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument("sandbox", f"must be a sandbox id or an object with an .id, got {ref!r}")
    return value.strip()


def sandbox_path(ref: SandboxRef, suffix: str = "") -> str:
    """``/v1/sandbox/{id}{suffix}``; the id is quoted so an odd one can never reach another route."""
    return f"/v1/sandbox/{quote(sandbox_id(ref), safe='')}{suffix}"


SNAPSHOT_NAME_MAX: Final = 64
SNAPSHOT_SORTS: Final = ("created_at", "template_id")
RESTORE_TIMEOUT_RANGE: Final = (1, 28800)  # seconds, as on the wire


def check_snapshot_name(value: object, field: str = "name") -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= SNAPSHOT_NAME_MAX
        or any(c.isspace() for c in value)
    ):
        raise InvalidArgument(
            field, f"must be 1 to {SNAPSHOT_NAME_MAX} characters without spaces, got {value!r}"
        )
    return value


def snapshot_list_params(
    *, query: object, sort: object, order_by: object, page: object, page_size: object
) -> dict[str, Any]:
    if not isinstance(query, str) or len(query) > SNAPSHOT_NAME_MAX:
        raise InvalidArgument("query", f"must be a string of at most {SNAPSHOT_NAME_MAX} characters")
    return {
        "query": query,
        "sort": _one_of("sort", sort, SNAPSHOT_SORTS),
        "order-by": _one_of("order_by", order_by, LIST_ORDERS),
        "page": _int_in("page", page, 1, 2**31 - 1),
        "page-size": _int_in("page_size", page_size, *PAGE_SIZE_RANGE),
    }


def restore_body(
    *, snapshot_name: object, auto_pause: object, timeout: object, network_policy: object
) -> dict[str, Any]:
    if not isinstance(auto_pause, bool):
        raise InvalidArgument("auto_pause", f"must be a bool, got {auto_pause!r}")
    body: dict[str, Any] = {"snapshot_name": check_snapshot_name(snapshot_name, "snapshot_name")}
    body["auto_pause"] = auto_pause
    if timeout is not None:
        body["timeout"] = _int_in("timeout", timeout, *RESTORE_TIMEOUT_RANGE, unit="seconds")
    if network_policy is not None:
        body["network_policy"] = check_network_policy(network_policy)
    return body


def snapshot_path(ref: object) -> str:
    snapshot_id = ref if isinstance(ref, str) else getattr(ref, "id", None)
    if not isinstance(snapshot_id, str) or not snapshot_id:
        raise InvalidArgument("snapshot", f"must be a snapshot id or an object with an id, got {ref!r}")
    return f"/v1/snapshot/{quote(snapshot_id, safe='')}"
