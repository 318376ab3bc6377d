"""Server configuration: one keyword-only value object, resolved once at start-up."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_DATA_DIR = Path("/var/lib/atoll")


def host_nameservers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The host's resolvers a sandbox can use (loopback ones are unreachable from a netns)."""
    servers = []
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                address = ipaddress.ip_address(parts[1])
            except ValueError:
                continue
            if not address.is_loopback and address.version == 4:
                servers.append(parts[1])
    return servers


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # identity: names host resources (netns, nft table, cgroups), so two instances never collide
    instance: str = Field(default="main", pattern=r"^[a-z0-9]{1,12}$")
    data_dir: Path = DEFAULT_DATA_DIR
    templates_dir: Path = DEFAULT_DATA_DIR / "templates"  # shared cache: built once per host
    database_url: str | None = None  # default: SQLite file in data_dir

    host: str = "127.0.0.1"
    port: int = 7700
    api_key: str | None = None  # registered for the default org at start-up when given

    runtime: Literal["auto", "crun", "runc"] = "auto"
    subnet: str = "10.200.0.0/16"
    iface_prefix: str = Field(default="atl", pattern=r"^[a-z]{2,6}$")
    deny_cidrs: tuple[str, ...] = ()
    dns_servers: tuple[str, ...] | None = None  # default: the host's own non-loopback resolvers
    netns_pool_size: int = Field(default=4, ge=0, le=256)

    pids_limit: int = Field(default=1024, ge=16)
    disk_mib: int = 10240
    max_sandboxes_per_org: int | None = None  # None: limited only by the host
    exec_max_output_bytes: int = 10 * 1024 * 1024
    reaper_interval_s: float = 1.0

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        ipaddress.IPv4Network(value, strict=True)
        return value

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'atoll.db'}"

    @property
    def snapshots_dir(self) -> Path:
        return self.data_dir / "snapshots"

    @property
    def run_dir(self) -> Path:
        return Path("/run/atoll") / self.instance

    @property
    def sandboxes_dir(self) -> Path:
        return self.data_dir / "sandboxes"

    @property
    def helpers_dir(self) -> Path:
        return self.data_dir / "helpers"

    @property
    def cgroup_parent(self) -> str:
        return f"atoll_{self.instance}"

    def nameservers(self) -> list[str]:
        return list(self.dns_servers) if self.dns_servers is not None else host_nameservers()
