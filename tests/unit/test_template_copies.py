"""An organisation's templates across a cluster, their pure parts (docs/cluster.md, Templates):
which node an import goes to and which nodes a copy is asked of (``template_homes``), one copy
of a template at a time on a node (``KeyedLocks``), what a heartbeat reports cached
(``TemplateRegistry.cached``: imported templates by id, never one half-made), and a starting
process on a shared database dropping only its own or long-dead imports
(``TemplateCatalog.recover``, on the real SQLite store)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select, update

from atoll.cluster.registry import DOWN, DRAINING, UP
from atoll.cluster.template_homes import holders, importer, lister, load
from atoll.server.template_copies import KeyedLocks
from atoll.store import db
from atoll.store.models import NodeRow, TemplateRow, utcnow
from atoll.store.repo import Repository
from atoll.templates.catalog import TemplateCatalog
from atoll.templates.registry import TemplateRegistry

TID = "tpl-0123456789abcdef"


def _node(node_id: str, state: str = UP, *, reserved: int = 0, templates: list[str] | None = None) -> NodeRow:
    return NodeRow(
        id=node_id, state=state, cpus=4, memory_mib=4096, vcpu_reserved=reserved,
        memory_mib_reserved=reserved * 1024, templates=templates or [], address=f"http://{node_id}",
    )  # fmt: skip


def test_an_import_goes_to_the_up_node_with_the_most_room() -> None:
    nodes = [_node("a", reserved=2), _node("b", reserved=1), _node("c", DRAINING), _node("d", DOWN)]
    chosen = importer(nodes)
    assert chosen is not None and chosen.id == "b"
    assert load(nodes[1]) == pytest.approx(0.25)
    tie = importer([_node("z"), _node("y")])
    assert tie is not None and tie.id == "y"  # ties by id: every replica picks the same
    unsized = _node("u")
    unsized.cpus = 0
    assert importer([unsized, _node("c", DRAINING), _node("d", DOWN)]) is None


def test_a_replica_lists_the_templates_of_the_live_node_with_the_most_system_ones() -> None:
    debian, desktop = "system/debian:bookworm", "system/desktop:v0.1.0"
    nodes = [
        _node("idle", templates=[debian, TID, "tpl-1", "tpl-2"]),  # imported ones do not count
        _node("busy", reserved=3, templates=[debian, desktop]),
        _node("down", DOWN, templates=[debian, desktop, "system/code-interpreter:v0.1.0"]),
    ]
    chosen = lister(nodes)
    assert chosen is not None and chosen.id == "busy"
    chosen = lister([*nodes, _node("drained", DRAINING, templates=[debian, desktop])])
    assert chosen is not None and chosen.id == "drained"  # alive, as many, less loaded
    assert lister([_node("down", DOWN, templates=[debian])]) is None


def test_a_copy_is_asked_of_live_holders_up_ones_first() -> None:
    nodes = [
        _node("self", templates=[TID]),
        _node("drained", DRAINING, templates=[TID]),
        _node("busy", reserved=3, templates=[TID]),
        _node("idle", templates=[TID]),
        _node("down", DOWN, templates=[TID]),
        _node("lacking"),
    ]
    assert [n.id for n in holders(nodes, TID, own_id="self")] == ["idle", "busy", "drained"]
    assert holders(nodes, "tpl-ffffffffffffffff", own_id="self") == []


async def test_one_copy_of_a_key_at_a_time_and_the_map_empties() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    most = {"t1": 0}

    async def copy(key: str) -> None:
        async with locks.hold(key):
            inside.append(key)
            most[key] = max(most.get(key, 0), inside.count(key))
            await asyncio.sleep(0.01)
            inside.remove(key)

    await asyncio.gather(*(copy("t1") for _ in range(5)), copy("t2"))
    assert most == {"t1": 1, "t2": 1}
    assert len(locks) == 0

    async def fail() -> None:
        async with locks.hold("t1"):
            raise OSError("copy failed")

    with pytest.raises(OSError):
        await fail()
    assert len(locks) == 0  # a failed holder leaves nothing behind


def _template_dir(root: Path, name: str, *, complete: bool = True) -> None:
    directory = root / name
    (directory / "rootfs").mkdir(parents=True)
    if complete:
        (directory / "template.json").write_text(json.dumps({"id": name.split(".")[0], "name": "web"}))


def test_a_heartbeat_reports_imported_templates_by_id_and_only_complete_ones(tmp_path: Path) -> None:
    registry = TemplateRegistry(tmp_path / "system", user_root=tmp_path / "user")
    _template_dir(registry.user_root or tmp_path, TID)
    _template_dir(registry.user_root or tmp_path, "tpl-1111111111111111.importing")
    _template_dir(registry.user_root or tmp_path, ".incoming-tpl-2222222222222222-abcd")
    _template_dir(registry.user_root or tmp_path, "tpl-3333333333333333", complete=False)
    assert registry.cached() == [TID]


async def test_a_shared_database_keeps_other_nodes_imports(tmp_path: Path, migrated_db: Path) -> None:
    database = tmp_path / "atoll.db"
    shutil.copyfile(migrated_db, database)
    engine = db.make_engine(f"sqlite+aiosqlite:///{database}")
    try:
        sessions = db.sessions(engine)
        await Repository(sessions).ensure_org("org", "org")
        registry = TemplateRegistry(tmp_path / "system", user_root=tmp_path / "user")
        catalog = TemplateCatalog(sessions, registry, max_per_org=None)
        elsewhere = await catalog.reserve("org", "elsewhere", "oci:x")  # another node is importing
        here = await catalog.reserve("org", "here", "oci:x")  # this host's, interrupted
        dead = await catalog.reserve("org", "dead", "oci:x")  # a node that died long ago
        (tmp_path / "user" / f"{here.id}.importing").mkdir()
        async with sessions.begin() as s:
            long_ago = utcnow() - dt.timedelta(hours=2)
            await s.execute(update(TemplateRow).where(TemplateRow.id == dead.id).values(created_at=long_ago))
        await catalog.recover(shared_after_s=3600)
        async with sessions() as s:
            left = set((await s.scalars(select(TemplateRow.id))).all())
        assert left == {elsewhere.id}
        assert not (tmp_path / "user" / f"{here.id}.importing").exists()
        await catalog.recover()  # one host: every unfinished import was this process's
        async with sessions() as s:
            assert (await s.scalars(select(TemplateRow.id))).all() == []
    finally:
        await engine.dispose()
