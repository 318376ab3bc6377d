"""Server configuration: one keyword-only value object, resolved once at start-up.

The one declaration of every server setting and its one default: each field is read from the
environment as ``ATOLL_<FIELD>`` (lists as JSON, ``none`` for None) and ``atoll serve`` generates
one option per field from this class (atoll.cli.serve_options), so neither holds a second default."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", env_prefix="ATOLL_", env_parse_none_str="none", validate_default=True
    )

    # identity: names host resources (netns, nft table, cgroups), so two instances never collide
    instance: str = Field(default="main", pattern=r"^[a-z0-9]{1,12}$", description="Names host resources.")
    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="State directory.")
    # shared cache: built once per host
    templates_dir: Path = Field(default=DEFAULT_DATA_DIR / "templates", description="Template cache.")
    database_url: str | None = Field(default=None, description="Store URL (default: SQLite in DATA_DIR).")
    # cluster (docs/cluster.md; atoll.cluster): "all" is one host doing everything; "node" runs
    # sandboxes and registers and heartbeats into the shared PostgreSQL; "api" registers no node
    # and runs the cluster's singleton jobs (node liveness). node and api need PostgreSQL.
    role: Literal["all", "api", "node"] = Field(
        default="all", description="all (one host), node (runs sandboxes) or api (cluster API replica)."
    )
    node_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$",
        description="This node's name in the cluster (default: INSTANCE@hostname).",
    )
    node_address: str | None = Field(
        default=None, description="URL other cluster processes reach this node's API at (default: host:port)."
    )
    node_router_address: str | None = Field(
        default=None,
        pattern=r"^http://[^/?#\s]+:[0-9]{1,5}$",
        description="http://HOST:PORT the API replicas' routers reach this node's sandbox router at "
        "(default: the first router host and router_port).",
    )
    heartbeat_interval_s: float = Field(
        default=2.0, gt=0, le=60, description="Seconds between a node's heartbeats (cluster)."
    )
    node_down_after_s: float = Field(
        default=10.0, gt=0, le=3600, description="Seconds of silence after which a node is marked down."
    )
    drain_retry_after_s: float = Field(
        default=30.0,
        gt=0,
        le=300,
        description="Seconds before a draining node tries again to move a paused sandbox whose move "
        "failed (then doubled each failure, up to 5 minutes).",
    )
    cluster_token: str | None = Field(
        default=None,
        min_length=16,
        max_length=256,
        description="Secret the cluster's processes share for node-to-node calls, e.g. copying a "
        "snapshot to another node (give it as ATOLL_CLUSTER_TOKEN, not on the command line).",
    )

    host: str = Field(default="127.0.0.1", description="API address.")
    port: int = Field(default=7700, ge=1, le=65535, description="API port.")
    api_key: str | None = Field(default=None, description="Register this key for the default org.")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        default="info", description="Server log level."
    )

    runtime: Literal["auto", "crun", "runc", "runsc"] = Field(
        default="auto",
        description="Default backend: auto (runc if CRIU works, else crun), crun, runc, runsc (gVisor).",
    )
    # the runtime's executable (named like the runtime it stands for); default: found on PATH
    runtime_binary: Path | None = Field(
        default=None, description="The runtime's executable (default: on PATH)."
    )
    subnet: str = Field(default="10.200.0.0/16", description="Sandbox addresses.")
    iface_prefix: str = Field(default="atl", pattern=r"^[a-z]{2,6}$", description="Host interface names.")
    deny_cidrs: tuple[str, ...] = Field(default=(), description="Extra egress deny ranges.")
    # private ranges (RFC 1918 and the like, atoll.network.firewall.PRIVATE_V4) are closed to every
    # sandbox; one listed here is reachable by sandboxes whose policy names it in allow_cidrs
    allow_private_cidrs: tuple[str, ...] = Field(
        default=(), description="Private ranges sandboxes may reach when their policy names them."
    )
    # upstreams of Atoll's sandbox resolver; default: the host's; (): no DNS at all
    dns_servers: tuple[str, ...] | None = Field(
        default=None,
        description="Upstreams of the sandbox resolver, IP or IP:PORT ('none': no DNS; default: the host's).",
    )
    egress_ca_bundle: Path | None = Field(
        default=None, description="CA bundle transforms verify upstreams with (default: the system store)."
    )
    netns_pool_size: int = Field(
        default=4, ge=0, le=256, description="Network namespaces made ahead of demand."
    )
    # sandboxes of these templates booted ahead of demand (0 disables; see atoll.server.warm)
    warm_pool_size: int = Field(
        default=2, ge=0, le=256, description="Sandboxes booted ahead of demand (0: off)."
    )
    warm_templates: tuple[str, ...] = Field(
        default=("system/debian:bookworm", "system/code-interpreter:v0.1.0", "system/desktop:v0.1.0"),
        description="Templates the warm pool keeps ready.",
    )
    # how many of the desktop (when in warm_templates): each holds ~200 MiB and a boot's CPU
    warm_desktop_pool_size: int = Field(
        default=1, ge=0, le=64, description="Booted desktops kept ready (0: off)."
    )
    # sandbox disks copied and mounted ahead of demand (atoll.runtime.disk.DiskPool; 0 disables)
    disk_pool_size: int = Field(
        default=4, ge=0, le=1024, description="Sandbox disks mounted ahead of demand (0: off)."
    )

    pids_limit: int = Field(default=1024, ge=16, description="Processes per sandbox.")
    disk_mib: int = Field(default=10240, ge=16, description="Disk per sandbox (upper layer and /etc), MiB.")
    # each sandbox's upper layer and /etc files on an ext4 image of disk_mib (atoll.runtime.disk);
    # False: on the host's filesystem, unlimited
    disk_quota: bool = Field(default=True, description="Enforce DISK_MIB with a loop-mounted image.")
    # the sizes of all sandbox disks may add up to this many times what the data filesystem can
    # back (what they use plus what is free, less the reserve); past it, 503 (atoll.server.disk_budget)
    disk_overcommit_ratio: float = Field(
        default=50.0, gt=0, description="Sandbox disk sizes per MiB the data filesystem can back."
    )
    # kept free on the data filesystem for the server; within one reserve of it writers are
    # clamped (atoll.server.disk_watermark) and new sandboxes refused
    disk_reserve_mib: int = Field(default=1024, ge=0, description="Kept free on the data filesystem, MiB.")
    # OCI sandboxes' /proc/meminfo, cpuinfo, stat, uptime from LXCFS (atoll.runtime.lxcfs)
    lxcfs: bool = Field(default=True, description="/proc/meminfo etc. from LXCFS (own limits).")
    # OCI sandboxes in user namespaces (atoll.runtime.userns): root inside is host uid
    # userns_base + i * 65536 for a range i no other network slot holds (atoll.runtime.userns_slot)
    userns: bool = Field(default=True, description="OCI sandboxes in user namespaces (--no-userns: off).")
    # claims: userns.CLAIMS_DIR
    userns_base: int = Field(
        default=1 << 30,
        ge=65536,
        multiple_of=65536,
        description="First host uid/gid of the sandboxes' ranges.",
    )
    userns_ranges: int = Field(
        default=4096, ge=1, le=16384, description="User namespace ranges (network slots at once)."
    )
    snapshots_root: Path | None = Field(
        default=None, description="Snapshot store (default: DATA_DIR/snapshots)."
    )
    # per API key, on /v1 (atoll.server.ratelimit); 0 disables
    rate_limit: int = Field(default=1000, ge=0, description="API requests per key per window (0: off).")
    rate_limit_window_s: float = Field(default=60.0, gt=0, description="Rate limit window, seconds.")
    max_sandboxes_per_org: int | None = Field(
        default=None, ge=0, description="None: limited only by the host."
    )
    # what one organisation's snapshots may use on the host (atoll.server.snapshot_quota); None or 0: no limit
    snapshot_quota_mib: int | None = Field(
        default=50 * 1024, ge=0, description="What one organisation's snapshots may use, MiB (0: no limit)."
    )
    snapshot_quota_inodes: int | None = Field(
        default=2_000_000, ge=0, description="Files one organisation's snapshots may hold (0: no limit)."
    )
    # the host's CPUs and memory times these are the budgets sandboxes draw on (limits are
    # ceilings, not reservations: idle sandboxes use a few MiB, so memory is over-committed too)
    cpu_overcommit: float = Field(default=128.0, gt=0, description="vCPU budget per host CPU.")
    memory_overcommit: float = Field(default=8.0, gt=0, description="Memory budget per MiB of host memory.")
    exec_max_output_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="Output one exec keeps."
    )
    reaper_interval_s: float = Field(default=1.0, gt=0, le=60, description="Seconds between timeout sweeps.")
    # how often running sandboxes' resource use is sampled (atoll.server.metrics)
    metrics_interval_s: float = Field(
        default=5.0, ge=0.2, le=3600, description="Seconds between metrics samples."
    )
    # how long one transition's work may take (boot, pause, resume, stop, delete; a snapshot has
    # its own): past it the work is cancelled and the sandbox falls back (atoll._states)
    transition_timeout_s: float = Field(
        default=300.0, gt=0, description="Seconds one boot, pause, resume, stop or delete may take."
    )
    snapshot_timeout_s: float = Field(
        default=1800.0, gt=0, description="Seconds one snapshot may take before it is abandoned."
    )

    # templates imported from OCI images (atoll.templates.oci)
    max_templates_per_org: int | None = Field(default=25, ge=0, description="Imported templates per org.")
    template_import_timeout_s: float = Field(default=1800.0, gt=0, description="Seconds one import may take.")
    # local image sources (oci-archive:, docker-archive:, oci:, dir:) must lie under one of
    # these; None means data_dir/imports, () disables local sources
    template_import_dirs: tuple[Path, ...] | None = Field(
        default=None, description="Local image sources must be under these (default: DATA_DIR/imports)."
    )
    # build missing on-demand system templates (the code interpreter) in the background once
    # the server is up (atoll.server.template_builds)
    build_templates: bool = Field(
        default=True, description="Build missing on-demand system templates in the background."
    )
    # registry hosts ("host[:port]") imports may pull from; () means any public registry. A host
    # listed here may be on a private address; others must resolve to public ones only
    template_registries: tuple[str, ...] = Field(
        default=(), description="Registry host[:port] imports may use (default: any public)."
    )

    # sandbox router: {id}[-{port}].{sandbox_domain} -> a port inside the sandbox (atoll.router)
    # *.localhost resolves to ::1 first
    router_hosts: tuple[str, ...] = Field(
        default=("127.0.0.1", "::1"), description="Sandbox router addresses."
    )
    router_port: int = Field(default=7701, ge=1, le=65535, description="Sandbox router port.")
    # SSH gateway (atoll.ssh): 0 disables it; ssh_public_host is the host ``ssh_command`` names
    # (default: the host the API request was sent to)
    ssh_port: int = Field(default=2222, ge=0, le=65535, description="SSH gateway port (0: no gateway).")
    ssh_host: str = Field(default="0.0.0.0", description="SSH gateway address.")
    ssh_public_host: str | None = Field(
        default=None, description="Host named in ssh_command (default: the API request's host)."
    )
    ssh_access_ttl_s: int = Field(
        default=86400, ge=1, le=30 * 86400, description="Lifetime of an SSH access, seconds."
    )
    # SSH gateway bounds (atoll.ssh.bounds): from accept to login, without channel data (0: none)
    ssh_login_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="SSH: seconds from connecting to logging in, then closed."
    )
    ssh_idle_timeout_s: float = Field(
        default=3600.0,
        ge=0,
        le=7 * 86400,
        description="SSH: seconds without session data before closing (0: never).",
    )
    ssh_max_connections_per_address: int = Field(
        default=16, ge=1, le=65536, description="SSH: open connections from one client address."
    )
    ssh_max_connections: int = Field(
        default=1024, ge=1, le=65536, description="SSH: open connections in all."
    )
    # open connections one client address may hold to the API and the router together (atoll._conn_guard)
    max_connections_per_address: int = Field(
        default=1024,
        ge=1,
        le=1 << 20,
        description="API and router: open connections from one client address.",
    )
    # "domain[:port]", as the SDK's ATOLL_SANDBOX_DOMAIN; the port (default router_port) is the
    # one generated URLs name, e.g. 443 behind a TLS proxy
    sandbox_domain: str = Field(
        default="sbx.localhost",
        pattern=rf"^{_NAME}(:[0-9]{{1,5}})?$",
        description="Sandbox URLs: {id}[-{port}].DOMAIN[:PORT].",
    )
    presigned_domain: str | None = Field(
        default=None, pattern=_DOMAIN_NAME, description="Presigned URL domain (default: the sandbox domain)."
    )
    # the router speaks HTTPS and plain HTTP on one port; its certificate is this one (with
    # tls_key: a wildcard one for the domain) or else one from a local CA (atoll.router._certs)
    tls_cert: Path | None = Field(
        default=None, description="Router certificate (wildcard; default: a local CA's)."
    )
    tls_key: Path | None = Field(default=None, description="Router private key.")

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self

    @model_validator(mode="before")
    @classmethod
    def _api_replica_pools(cls, data: object) -> object:
        # an API replica runs no sandboxes (docs/cluster.md): no warm ones unless asked for
        if isinstance(data, dict) and data.get("role") == "api":
            return {"warm_pool_size": 0, "warm_desktop_pool_size": 0, "disk_pool_size": 0, **data}
        return data

    @model_validator(mode="after")
    def _cluster_role(self) -> Settings:
        # a node or an API replica shares its state with other processes: only PostgreSQL can
        if self.role != "all" and not (self.database_url or "").startswith("postgresql"):
            raise ValueError(f"role {self.role} needs a PostgreSQL database_url (docs/cluster.md)")
        if self.heartbeat_interval_s * 2 > self.node_down_after_s:
            raise ValueError("node_down_after_s must be at least two heartbeat intervals")
        if self.role == "api" and (self.warm_pool_size or self.warm_desktop_pool_size):
            raise ValueError("an API replica runs no sandboxes: warm_pool_size must be 0 (docs/cluster.md)")
        return self

    @field_validator("snapshot_quota_mib", "snapshot_quota_inodes")
    @classmethod
    def _zero_is_no_limit(cls, value: int | None) -> int | None:
        return value or None

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
    def snapshot_quota_bytes(self) -> int | None:
        return self.snapshot_quota_mib * 1024 * 1024 if self.snapshot_quota_mib else None

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'atoll.db'}"

    @property
    def snapshots_dir(self) -> Path:
        return self.snapshots_root or self.data_dir / "snapshots"

    @property
    def runs_sandboxes(self) -> bool:
        """False for an API replica, which places sandboxes on nodes (docs/cluster.md)."""
        return self.role != "api"

    @property
    def run_dir(self) -> Path:
        return Path("/run/atoll") / self.instance

    @property
    def private_dirs(self) -> tuple[Path, ...]:
        """Directories that hold sandbox, snapshot or template content: 0700 root. An API
        replica holds none of it: only its own state (keys of its router's CA and SSH gateway)."""
        if not self.runs_sandboxes:
            return (self.data_dir, self.user_templates_dir)
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
