"""The lifecycle in-process: a ``SandboxManager`` over the fakes (``tests.unit.fakes``), the real
SQLite store on a temporary file, and a real template registry holding one empty template.
No root, no namespaces, no mounts: everything lives under pytest's ``tmp_path``."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from atoll._states import State
from atoll.network.addressing import AddressPlan
from atoll.server.capacity import Budget
from atoll.server.host import SandboxHost
from atoll.server.manager import CreateParams, SandboxManager
from atoll.server.settings import Settings
from atoll.server.warm import WarmPool
from atoll.store import db
from atoll.store.models import SandboxRow
from atoll.store.repo import Repository, SnapshotRepository
from atoll.templates.registry import Template, TemplateRegistry
from tests.unit.fakes import FakeBackend, FakeDisks, FakeNetworkPool, Faults

ORG = "org-unit"
TEMPLATE = "system/debian:bookworm"


def unit_row(sandbox_id: str, state: State, *, net_slot: int | None = None) -> SandboxRow:
    """A sandbox record of the unit tier's template and fake runtime, in ``state``."""
    return SandboxRow(
        id=sandbox_id,
        org_id=ORG,
        template_id="tpl-unit",
        template_name=TEMPLATE,
        runtime="fake",
        vcpu=1,
        memory=256,
        disk=1024,
        timeout=600,
        auto_pause=False,
        state=state,
        env_vars={},
        net_slot=net_slot,
    )


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The schema, migrated once (Alembic takes seconds); each test gets a copy."""
    path = tmp_path_factory.mktemp("db") / "atoll.db"
    db.upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@dataclass
class Host:
    """One manager and the fakes behind it."""

    manager: SandboxManager
    backend: FakeBackend
    pool: FakeNetworkPool
    disks: FakeDisks
    snapshots_repo: SnapshotRepository
    warm: WarmPool | None = None  # with ``warm_pool_size`` > 0: not started (the test starts it)

    @property
    def repo(self) -> Repository:
        return self.manager.repo

    async def create(self, org_id: str = ORG, **params: Any) -> Any:
        values: dict[str, Any] = {"template_name": TEMPLATE, "vcpu": 1, "memory": 256, "timeout": 600}
        return await self.manager.create(org_id, CreateParams(**{**values, **params}))

    async def stored(self, sandbox_id: str) -> SandboxRow:
        """The record as the store has it, whatever its state (``get_sandbox`` hides deleted ones)."""
        async with self.repo.sessions() as s:
            row = await s.get(SandboxRow, sandbox_id)
        assert row is not None, f"no record of {sandbox_id}"
        return row

    async def records(self, org_id: str = ORG) -> list[SandboxRow]:
        async with self.repo.sessions() as s:
            return list((await s.scalars(select(SandboxRow).where(SandboxRow.org_id == org_id))).all())

    def holds_nothing(self) -> bool:
        """No process, network slot or attached disk of any sandbox is left on the fake host."""
        return not self.backend.holds and not self.pool.taken and not self.disks.attached


MakeHost = Callable[..., Awaitable[Host]]


@pytest.fixture
async def make_host(tmp_path: Path, migrated_db: Path) -> AsyncIterator[MakeHost]:
    engines: list[AsyncEngine] = []
    warm_pools: list[WarmPool] = []

    async def make(**overrides: Any) -> Host:
        data_dir = tmp_path / f"host{len(engines)}"
        data_dir.mkdir()
        database = data_dir / "atoll.db"
        shutil.copyfile(migrated_db, database)
        values: dict[str, Any] = {
            "instance": "unit",
            "data_dir": data_dir,
            "templates_dir": data_dir / "templates",
            "subnet": "10.233.0.0/16",
            "iface_prefix": "xhm",
            "dns_servers": ("192.0.2.53",),
            "netns_pool_size": 0,
            "warm_pool_size": 0,
            "disk_pool_size": 0,
            "disk_quota": False,
        }
        settings = Settings(**{**values, **overrides})
        for directory in (settings.sandboxes_dir, settings.snapshots_dir, settings.helpers_dir):
            directory.mkdir(parents=True, exist_ok=True)
        engine = db.make_engine(f"sqlite+aiosqlite:///{database}")
        engines.append(engine)
        sessions = db.sessions(engine)
        repo = Repository(sessions)
        await repo.ensure_org(ORG, ORG)
        templates = TemplateRegistry(settings.templates_dir)
        template_dir = templates.dir_for(TEMPLATE)
        (template_dir / "rootfs").mkdir(parents=True)
        templates.save(Template(id="tpl-unit", name=TEMPLATE))
        backend = FakeBackend()
        plan = AddressPlan(settings.subnet, instance=settings.instance, iface_prefix=settings.iface_prefix)
        pool = FakeNetworkPool(plan, target_size=0)
        pool.faults = Faults()
        disks = FakeDisks()
        sandbox_host = SandboxHost(
            settings=settings,
            backend=backend,
            pool=pool,
            templates=templates,
            egress=None,
            attach_disk=disks.attach,
            detach_disk=disks.detach,
        )
        warm = None
        if settings.warm_pool_size > 0:
            warm = WarmPool(sandbox_host, size=settings.warm_pool_size, template_names=(TEMPLATE,))
            warm_pools.append(warm)
        manager = SandboxManager(settings=settings, repo=repo, host=sandbox_host, warm=warm)
        manager.capacity.budget = Budget(vcpu=10_000, memory_mib=10_000_000)  # the host's is not the point
        return Host(manager, backend, pool, disks, SnapshotRepository(sessions), warm)

    yield make
    for warm in warm_pools:
        await warm.close()
    for engine in engines:
        await engine.dispose()
