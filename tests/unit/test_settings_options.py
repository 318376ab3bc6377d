"""One source of configuration: every ``Settings`` field has an ``atoll serve`` option and an
``ATOLL_`` variable, and each of them takes effect (the options are generated from the fields,
atoll.cli.serve_options); the command adds no default of its own."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import typer.main

from atoll.cli.main import app
from atoll.cli.serve_options import ALIASES, env_name, option_name, settings_from_options
from atoll.server.settings import Settings

POSTGRES = "postgresql+asyncpg://atoll@db/atoll"

# a valid value other than the default for every field (and what it needs beside it): a field
# added to Settings without a sample here fails test_every_field_has_a_sample
SAMPLES: dict[str, tuple[Any, dict[str, Any]]] = {
    "instance": ("other", {}),
    "data_dir": (Path("/srv/atoll"), {}),
    "templates_dir": (Path("/srv/templates"), {}),
    "database_url": (POSTGRES, {}),
    "role": ("node", {"database_url": POSTGRES}),
    "node_id": ("n1@host", {}),
    "node_address": ("http://10.0.0.2:7700", {}),
    "node_router_address": ("http://10.0.0.2:7701", {}),
    "heartbeat_interval_s": (3.0, {}),
    "node_down_after_s": (30.0, {}),
    "drain_retry_after_s": (2.0, {}),
    "cluster_token": ("a-shared-secret-of-32-characters", {}),
    "host": ("0.0.0.0", {}),
    "port": (7800, {}),
    "api_key": ("atl_sample", {}),
    "log_level": ("debug", {}),
    "runtime": ("crun", {}),
    "runtime_binary": (Path("/opt/bin/crun"), {}),
    "subnet": ("10.99.0.0/16", {}),
    "iface_prefix": ("xq", {}),
    "deny_cidrs": (("203.0.113.0/24", "198.51.100.0/24"), {}),
    "allow_private_cidrs": (("10.5.0.0/16",), {}),
    "dns_servers": (("192.0.2.53", "192.0.2.54:5353"), {}),
    "egress_ca_bundle": (Path("/etc/ssl/bundle.pem"), {}),
    "netns_pool_size": (7, {}),
    "warm_pool_size": (5, {}),
    "warm_templates": (("system/debian:bookworm",), {}),
    "warm_desktop_pool_size": (3, {}),
    "disk_pool_size": (9, {}),
    "pids_limit": (512, {}),
    "disk_mib": (2048, {}),
    "disk_quota": (False, {}),
    "disk_overcommit_ratio": (4.5, {}),
    "disk_reserve_mib": (64, {}),
    "lxcfs": (False, {}),
    "userns": (False, {}),
    "userns_base": (2 * 65536, {}),
    "userns_ranges": (16, {}),
    "snapshots_root": (Path("/srv/snapshots"), {}),
    "rate_limit": (5, {}),
    "rate_limit_window_s": (2.5, {}),
    "max_sandboxes_per_org": (12, {}),
    "snapshot_quota_mib": (100, {}),
    "snapshot_quota_inodes": (1000, {}),
    "cpu_overcommit": (2.0, {}),
    "memory_overcommit": (1.5, {}),
    "exec_max_output_bytes": (4096, {}),
    "reaper_interval_s": (0.5, {}),
    "metrics_interval_s": (1.5, {}),
    "transition_timeout_s": (12.0, {}),
    "snapshot_timeout_s": (30.0, {}),
    "max_templates_per_org": (3, {}),
    "template_import_timeout_s": (60.0, {}),
    "template_import_dirs": ((Path("/srv/imports"), Path("/srv/more")), {}),
    "build_templates": (False, {}),
    "template_registries": (("registry.example:5000",), {}),
    "router_hosts": (("0.0.0.0",), {}),
    "router_port": (7801, {}),
    "ssh_port": (0, {}),
    "ssh_host": ("127.0.0.1", {}),
    "ssh_public_host": ("ssh.example.com", {}),
    "ssh_access_ttl_s": (60, {}),
    "ssh_login_timeout_s": (5.0, {}),
    "ssh_idle_timeout_s": (0.0, {}),
    "ssh_max_connections_per_address": (4, {}),
    "ssh_max_connections": (8, {}),
    "max_connections_per_address": (99, {}),
    "sandbox_domain": ("sbx.example.com:443", {}),
    "presigned_domain": ("files.example.com", {}),
    "tls_cert": (Path("/etc/atoll/cert.pem"), {"tls_key": Path("/etc/atoll/key.pem")}),
    "tls_key": (Path("/etc/atoll/key.pem"), {"tls_cert": Path("/etc/atoll/cert.pem")}),
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ATOLL_ variable of the developer's shell reaches these settings."""
    import os

    for name in list(os.environ):
        if name.startswith("ATOLL_"):
            monkeypatch.delenv(name)


@functools.cache
def _serve_command() -> Any:
    return typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]


def _serve_params(argv: list[str]) -> dict[str, Any]:
    with _serve_command().make_context("serve", argv) as ctx:
        return dict(ctx.params)


def _argv(field: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        return [option_name(field) if value else f"--no-{option_name(field)[2:]}"]
    if isinstance(value, tuple):
        return [arg for item in value for arg in (option_name(field), str(item))]
    return [option_name(field), str(value)]


def _env(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return json.dumps([str(v) for v in value])
    return str(value)


def _expected(field: str, value: Any) -> Any:
    return getattr(Settings(**{field: value, **SAMPLES[field][1]}), field)


def test_every_field_has_a_sample() -> None:
    assert set(SAMPLES) == set(Settings.model_fields)
    defaults = Settings()
    for field, (value, _) in SAMPLES.items():
        assert _expected(field, value) != getattr(defaults, field), f"{field}: sample is the default"


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_cli_option_takes_effect(field: str) -> None:
    value, companions = SAMPLES[field]
    argv = _argv(field, value)
    for name, companion in companions.items():
        argv += _argv(name, companion)
    settings = settings_from_options(_serve_params(argv))
    assert getattr(settings, field) == _expected(field, value)


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_env_var_takes_effect(field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    value, companions = SAMPLES[field]
    monkeypatch.setenv(env_name(field), _env(value))
    for name, companion in companions.items():
        monkeypatch.setenv(env_name(name), _env(companion))
    assert getattr(settings_from_options(_serve_params([])), field) == _expected(field, value)


def test_nothing_given_is_the_declared_default() -> None:
    assert settings_from_options(_serve_params([])) == Settings()
    assert _serve_params([])["build_template"] is True  # the one option that is no setting


def test_option_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOLL_CPU_OVERCOMMIT", "3")
    assert settings_from_options(_serve_params([])).cpu_overcommit == 3.0
    assert settings_from_options(_serve_params(["--cpu-overcommit", "5"])).cpu_overcommit == 5.0


@pytest.mark.parametrize("field", sorted(ALIASES))
def test_earlier_option_names_still_work(field: str) -> None:
    value, _ = SAMPLES[field]
    argv = [arg if arg != option_name(field) else ALIASES[field][0] for arg in _argv(field, value)]
    assert getattr(settings_from_options(_serve_params(argv)), field) == _expected(field, value)


def test_none_and_zero_spellings() -> None:
    settings = settings_from_options(
        _serve_params(
            ["--dns-server", "none", "--max-templates-per-org", "none", "--snapshot-quota-mib", "0"]
        )
    )
    assert settings.dns_servers == ()  # no upstream at all (not the host's)
    assert settings.max_templates_per_org is None
    assert settings.snapshot_quota_bytes is None


def test_bad_value_names_the_option_and_variable() -> None:
    with pytest.raises(typer.BadParameter) as raised:
        settings_from_options(_serve_params(["--port", "seventy"]))
    assert raised.value.param_hint == "'--port' / ATOLL_PORT"
