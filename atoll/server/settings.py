"""Server configuration: one keyword-only value object, resolved once at start-up."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_DATA_DIR = Path("/var/lib/atoll")
_NAME = r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_NAME = rf"^{_NAME}$"


def host_nameservers(resolv_conf: Path = Path("/etc/resolv.conf"), *, loopback: bool = False) -> list[str]:
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
            if (loopback or not address.is_loopback) and address.version == 4:
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

    runtime: Literal["auto", "crun", "runc", "runsc"] = "auto"
    # the runtime's executable (named like the runtime it stands for); default: found on PATH
    runtime_binary: Path | None = None
    subnet: str = "10.200.0.0/16"
    iface_prefix: str = Field(default="atl", pattern=r"^[a-z]{2,6}$")
    deny_cidrs: tuple[str, ...] = ()
    # private ranges (RFC 1918 and the like, atoll.network.firewall.PRIVATE_V4) are closed to every
    # sandbox; one listed here is reachable by sandboxes whose policy names it in allow_cidrs
    allow_private_cidrs: tuple[str, ...] = ()
    dns_servers: tuple[str, ...] | None = None  # upstreams of Atoll's sandbox resolver; default: the host's
    egress_ca_bundle: Path | None = None  # verifies upstream TLS for transforms; default: the system store
    netns_pool_size: int = Field(default=4, ge=0, le=256)
    # sandboxes of these templates booted ahead of demand (0 disables; see atoll.server.warm)
    warm_pool_size: int = Field(default=2, ge=0, le=256)
    warm_templates: tuple[str, ...] = (
        "system/debian:bookworm",
        "system/code-interpreter:v0.1.0",
        "system/desktop:v0.1.0",
    )
    # how many of the desktop (when in warm_templates): each holds ~200 MiB and a boot's CPU
    warm_desktop_pool_size: int = Field(default=1, ge=0, le=64)
    # sandbox disks copied and mounted ahead of demand (atoll.runtime.disk.DiskPool; 0 disables)
    disk_pool_size: int = Field(default=4, ge=0, le=1024)

    pids_limit: int = Field(default=1024, ge=16)
    disk_mib: int = Field(default=10240, ge=16)
    # each sandbox's upper layer and /etc files on an ext4 image of disk_mib (atoll.runtime.disk);
    # False: on the host's filesystem, unlimited
    disk_quota: bool = True
    # the sizes of all sandbox disks may add up to this many times what the data filesystem can
    # back (what they use plus what is free, less the reserve); past it, 503 (atoll.server.disk_budget)
    disk_overcommit_ratio: float = Field(default=50.0, gt=0)
    # kept free on the data filesystem for the server; within one reserve of it writers are
    # clamped (atoll.server.disk_watermark) and new sandboxes refused
    disk_reserve_mib: int = Field(default=1024, ge=0)
    # OCI sandboxes' /proc/meminfo, cpuinfo, stat, uptime from LXCFS (atoll.runtime.lxcfs)
    lxcfs: bool = True
    # OCI sandboxes in user namespaces (atoll.runtime.userns): root inside is host uid
    # userns_base + i * 65536 for a range i no other running sandbox holds
    userns: bool = False
    userns_base: int = Field(default=1 << 30, ge=65536, multiple_of=65536)  # claims: userns.CLAIMS_DIR
    userns_ranges: int = Field(default=4096, ge=1, le=16384)
    snapshots_root: Path | None = None  # where snapshots are written; default data_dir/snapshots
    # per API key, on /v1 (atoll.server.ratelimit); 0 disables
    rate_limit: int = Field(default=1000, ge=0)
    rate_limit_window_s: float = Field(default=60.0, gt=0)
    max_sandboxes_per_org: int | None = None  # None: limited only by the host
    # what one organisation's snapshots may use on the host (atoll.server.snapshot_quota); None: no limit
    snapshot_quota_bytes: int | None = Field(default=50 * 1024**3, ge=0)
    snapshot_quota_inodes: int | None = Field(default=2_000_000, ge=0)
    # the host's CPUs and memory times these are the budgets sandboxes draw on (limits are
    # ceilings, not reservations: idle sandboxes use a few MiB, so memory is over-committed too)
    cpu_overcommit: float = Field(default=128.0, gt=0)
    memory_overcommit: float = Field(default=8.0, gt=0)
    exec_max_output_bytes: int = 10 * 1024 * 1024
    reaper_interval_s: float = 1.0
    # how often running sandboxes' resource use is sampled (atoll.server.metrics)
    metrics_interval_s: float = Field(default=5.0, ge=0.2, le=3600)
    # how long one transition's work may take (boot, pause, resume, stop, delete; a snapshot has
    # its own): past it the work is cancelled and the sandbox falls back (atoll._states)
    transition_timeout_s: float = Field(default=300.0, gt=0)
    snapshot_timeout_s: float = Field(default=1800.0, gt=0)

    # templates imported from OCI images (atoll.templates.oci)
    max_templates_per_org: int | None = 25
    template_import_timeout_s: float = 1800.0
    # local image sources (oci-archive:, docker-archive:, oci:, dir:) must lie under one of
    # these; None means data_dir/imports, () disables local sources
    template_import_dirs: tuple[Path, ...] | None = None
    # build missing on-demand system templates (the code interpreter) in the background once
    # the server is up (atoll.server.template_builds); ``atoll serve`` turns it on
    build_templates: bool = False
    # registry hosts ("host[:port]") imports may pull from; () means any public registry. A host
    # listed here may be on a private address; others must resolve to public ones only
    template_registries: tuple[str, ...] = ()

    # sandbox router: {id}[-{port}].{sandbox_domain} -> a port inside the sandbox (atoll.router)
    router_hosts: tuple[str, ...] = ("127.0.0.1", "::1")  # *.localhost resolves to ::1 first
    router_port: int = Field(default=7701, ge=1, le=65535)
    # SSH gateway (atoll.ssh): 0 disables it; ssh_public_host is the host ``ssh_command`` names
    # (default: the host the API request was sent to)
    ssh_port: int = Field(default=2222, ge=0, le=65535)
    ssh_host: str = "0.0.0.0"
    ssh_public_host: str | None = None
    ssh_access_ttl_s: int = Field(default=86400, ge=1, le=30 * 86400)
    # SSH gateway bounds (atoll.ssh.bounds): from accept to login, without channel data (0: none)
    ssh_login_timeout_s: float = Field(default=30.0, gt=0, le=600)
    ssh_idle_timeout_s: float = Field(default=3600.0, ge=0, le=7 * 86400)
    ssh_max_connections_per_address: int = Field(default=16, ge=1, le=65536)
    ssh_max_connections: int = Field(default=1024, ge=1, le=65536)
    # open connections one client address may hold to the API and the router together (atoll._conn_guard)
    max_connections_per_address: int = Field(default=1024, ge=1, le=1 << 20)
    # "domain[:port]", as the SDK's ATOLL_SANDBOX_DOMAIN; the port (default router_port) is the
    # one generated URLs name, e.g. 443 behind a TLS proxy
    sandbox_domain: str = Field(default="sbx.localhost", pattern=rf"^{_NAME}(:[0-9]{{1,5}})?$")
    presigned_domain: str | None = Field(default=None, pattern=_DOMAIN_NAME)  # default: sandbox_domain
    # the router speaks HTTPS and plain HTTP on one port; its certificate is this one (with
    # tls_key: a wildcard one for the domain) or else one from a local CA (atoll.router._certs)
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self

    @field_validator("allow_private_cidrs")
    @classmethod
    def _private_cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(ipaddress.IPv4Network(c, strict=False)) for c in value)

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        ipaddress.IPv4Network(value, strict=True)
        return value

    @property
    def sandbox_scheme(self) -> str:
        """The scheme of generated sandbox URLs: the router always speaks TLS (plain HTTP too)."""
        return "https"

    @property
    def sandbox_host(self) -> str:
        """The sandbox domain without a port."""
        return self.sandbox_domain.partition(":")[0]

    @property
    def sandbox_url_port(self) -> int:
        _, _, port = self.sandbox_domain.partition(":")
        return int(port) if port else self.router_port

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'atoll.db'}"

    @property
    def snapshots_dir(self) -> Path:
        return self.snapshots_root or self.data_dir / "snapshots"

    @property
    def run_dir(self) -> Path:
        return Path("/run/atoll") / self.instance

    @property
    def private_dirs(self) -> tuple[Path, ...]:
        """Directories that hold sandbox, snapshot or template content: 0700 root."""
        dirs = (self.data_dir, self.sandboxes_dir, self.snapshots_dir, self.run_dir.parent, self.run_dir)
        return (*dirs, self.templates_dir, self.user_templates_dir)

    @property
    def sandboxes_dir(self) -> Path:
        return self.data_dir / "sandboxes"

    @property
    def user_templates_dir(self) -> Path:
        """Imported templates' root filesystems, by template id (this instance's catalog owns them)."""
        return self.data_dir / "user-templates"

    @property
    def import_dirs(self) -> tuple[Path, ...]:
        if self.template_import_dirs is None:
            return (self.data_dir / "imports",)
        return self.template_import_dirs

    @property
    def blank_disks_dir(self) -> Path:
        return self.data_dir / "blank-disks"

    @property
    def disk_pool_dir(self) -> Path:
        """Pooled disks; on the sandboxes' filesystem, so that one moves into place by rename."""
        return self.data_dir / "disk-pool"

    @property
    def helpers_dir(self) -> Path:
        return self.data_dir / "helpers"

    @property
    def cgroup_parent(self) -> str:
        return f"atoll_{self.instance}"

    def nameservers(self) -> list[str]:
        return list(self.dns_servers) if self.dns_servers is not None else host_nameservers()

    def dns_upstreams(self) -> list[str]:
        """Where Atoll's resolver (on the host, so loopback resolvers work too) forwards to."""
        return list(self.dns_servers) if self.dns_servers is not None else host_nameservers(loopback=True)
