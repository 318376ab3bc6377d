"""The control plane's tables. Schema changes go through Alembic (``migrations/``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from atoll._policy import NetworkPolicy

KEY_NAME_MAX_CHARS = 64  # an API key's name (the dashboard's form says so too)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PolicyJSON(TypeDecorator[NetworkPolicy]):
    """A network policy, stored as the JSON the request gave (``NetworkPolicy.wire``) and read
    back as the same frozen type: no layer above handles it as a dict."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: NetworkPolicy | None, dialect: Dialect) -> dict[str, Any] | None:
        return value.wire() if value is not None else None

    def process_result_value(self, value: Any, dialect: Dialect) -> NetworkPolicy | None:
        return NetworkPolicy.model_validate(value) if value else None


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timestamps are UTC and come back timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        return value.astimezone(dt.UTC) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON}


class Org(Base):
    __tablename__ = "orgs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex; the key is never stored
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to tell keys apart in listings
    # what a person calls it (e.g. "ci"), set in the dashboard; None for unnamed ones
    name: Mapped[str | None] = mapped_column(String(KEY_NAME_MAX_CHARS), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SandboxRow(Base):
    __tablename__ = "sandboxes"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    template_id: Mapped[str] = mapped_column(String(128))
    template_name: Mapped[str] = mapped_column(String(128))
    runtime: Mapped[str] = mapped_column(String(32))
    vcpu: Mapped[int] = mapped_column(Integer)
    memory: Mapped[int] = mapped_column(Integer)  # MiB
    disk: Mapped[int] = mapped_column(Integer)  # MiB
    timeout: Mapped[int] = mapped_column(Integer)  # seconds
    auto_pause: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), index=True)
    # why it is in that state when no request put it there (failed, a transition that timed
    # out or failed); cleared by the next transition that gives none
    state_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    env_vars: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    network_policy: Mapped[NetworkPolicy | None] = mapped_column(PolicyJSON, nullable=True)
    net_slot: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pause_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)  # "freeze" for now
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    launch_time: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    state_change_time: Mapped[dt.datetime] = mapped_column(default=utcnow)
    timeout_at: Mapped[dt.datetime | None] = mapped_column(nullable=True, index=True)
    # a sandbox restored from a snapshot runs over the snapshot's disk layers
    base_snapshot_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # the node whose host runs it (``NodeRow.id``); None on a single host (SQLite)
    node_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # a paused sandbox being handed to another node (``atoll.cluster.handoff``): the attempt's
    # id, which the receiving node must name to take it; None when no move is under way
    move_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class PresignedUrl(Base):
    """A public URL to one port of one sandbox. Only the token's SHA-256 is stored."""

    __tablename__ = "presigned_urls"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    sandbox_id: Mapped[str] = mapped_column(ForeignKey("sandboxes.id", ondelete="CASCADE"), index=True)
    port: Mapped[int] = mapped_column(Integer)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class TemplateRow(Base):
    """A template an organisation imported from an OCI image. Its root filesystem and runtime
    settings live on disk by id (``atoll.templates.registry``); this row is the org's catalog
    entry: the name (unique per org, renamable), where it came from, and the image's config.
    System templates (``system/...``) have no row."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("org_id", "name"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(String(512))
    state: Mapped[str] = mapped_column(String(16))  # "importing" until the rootfs is in place, then "ready"
    digest: Mapped[str] = mapped_column(String(128), default="")
    image_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SnapshotRow(Base):
    """A reusable checkpoint: memory image + disk layer, restorable into new sandboxes."""

    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("org_id", "name"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    source_sandbox_id: Mapped[str] = mapped_column(String(64))
    parent_snapshot_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    template_id: Mapped[str] = mapped_column(String(128))
    template_name: Mapped[str] = mapped_column(String(128))
    runtime: Mapped[str] = mapped_column(String(32))
    vcpu: Mapped[int] = mapped_column(Integer)
    memory: Mapped[int] = mapped_column(Integer)
    disk: Mapped[int] = mapped_column(Integer)
    env_vars: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    network_policy: Mapped[NetworkPolicy | None] = mapped_column(PolicyJSON, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="ready")
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # blocks used, not apparent sizes
    inodes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # None: made before counted
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SshAccessRow(Base):
    """A credential for the SSH gateway (agent-services §4): its id is the SSH user name; only a
    hash of its password is kept."""

    __tablename__ = "ssh_access"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    sandbox_id: Mapped[str] = mapped_column(String(64), index=True)
    password_hash: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[dt.datetime] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


NODE_JSON = JSON().with_variant(JSONB(), "postgresql")


class NodeRow(Base):
    """A host that runs sandboxes in a cluster (docs/cluster.md): what it offers, written by the
    node at start-up and on every heartbeat; ``state`` is ``down`` once it went silent."""

    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # "all" (one host doing everything) or "node"
    hostname: Mapped[str] = mapped_column(String(255))
    address: Mapped[str] = mapped_column(String(255))  # its API, for the API replicas to reach
    # its sandbox router ("http://host:port"), for the API replicas' routers (atoll.router._hop)
    router_address: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # its SSH gateway ("host:port") and that gateway's public host key (OpenSSH format), which
    # the API replicas' gateways log into and pin (atoll.ssh.relay); None: no gateway there
    ssh_address: Mapped[str | None] = mapped_column(String(255), nullable=True)
    ssh_host_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    state: Mapped[str] = mapped_column(String(16), index=True)  # up | draining | down
    # the operator's drain (atoll node drain), kept apart from ``state``: a draining node that
    # goes silent is marked down, and must come back draining, not up
    drain_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    state_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    vcpu_budget: Mapped[int] = mapped_column(Integer)
    memory_mib_budget: Mapped[int] = mapped_column(Integer)
    vcpu_used: Mapped[int] = mapped_column(Integer, default=0)
    memory_mib_used: Mapped[int] = mapped_column(Integer, default=0)
    # jsonb on PostgreSQL: placement reads both on every node for every create, and jsonb is
    # parsed once when written, json on each read (atoll.cluster.placement)
    templates: Mapped[list[str]] = mapped_column(NODE_JSON, default=list)  # cached on its host
    pools: Mapped[dict[str, Any]] = mapped_column(NODE_JSON, default=dict)  # warm sandboxes by template
    health: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # the database's clock, not the node's: nodes' clocks may disagree, the database's is one
    heartbeat_at: Mapped[dt.datetime] = mapped_column(index=True)
    # the host itself (CPUs, memory less the host's reserve), which placement over-commits
    # (atoll.cluster.placement); 0 on a node that reports none: nothing is placed there
    cpus: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    memory_mib: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # what placement has reserved on it: written only by placement and release, never by the
    # node's heartbeat, so a heartbeat never undoes a reservation another process just made
    vcpu_reserved: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    memory_mib_reserved: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class PlacementRow(Base):
    """A sandbox's reservation on the node placement chose for it (atoll.cluster.placement):
    what it holds there, so that release gives exactly that back, and whose it is, so that an
    organisation's sandboxes are spread."""

    __tablename__ = "placements"
    __table_args__ = (Index("ix_placements_org_id_node_id", "org_id", "node_id"),)
    sandbox_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[str] = mapped_column(String(64))
    template: Mapped[str] = mapped_column(String(255))
    vcpu: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    placed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AdmissionClaimRow(Base):
    """Room an organisation's sandbox holds from admission until its record counts for itself
    (``atoll.server.quota``), kept here so that every process of a cluster sees it. A process
    that dies holding one leaves it until ``expires_at``."""

    __tablename__ = "admission_claims"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    sandbox_id: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class RateWindowRow(Base):
    """One API key's current rate-limit window, shared by a cluster's processes
    (``atoll.cluster.rate_ledger``): what the processes have been granted of it so far, in leases.
    An ended window is reused by the key's next request and swept a while later."""

    __tablename__ = "rate_windows"
    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex; never the key
    window_start: Mapped[dt.datetime]  # the database's clock
    window_end: Mapped[dt.datetime] = mapped_column(index=True)
    granted: Mapped[int] = mapped_column(Integer)  # requests handed out in leases this window
    lease: Mapped[int] = mapped_column(Integer)  # the last lease's size (what the upsert returns)
