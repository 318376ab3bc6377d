"""Templates on disk: ``<templates_dir>/<slug>/rootfs`` (read-only lower layer) and
``template.json`` (id, name, PORT, environment). Lookup by name; nothing here builds.

System templates live in the shared cache, by name. Templates an organisation imported from an
image (``atoll.templates.oci``) live under ``user_root/<id>/`` in the same layout: their names
are per organisation and renamable, so they are found by id, and by name only through
``resolve`` (which asks the catalog, ``atoll.templates.catalog``, for the org's name → id)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

DEFAULT_TEMPLATE_NAME = "system/debian:bookworm"
SYSTEM_PREFIX = "system/"
# the ids of system templates (fixed by their recipes), never an imported one's ("tpl-" + hex)
SYSTEM_ID_PREFIX = "tpl-system-"
# (org id, template name) -> id of the org's template, or None
NameLookup = Callable[[str, str], Awaitable[str | None]]
# template id -> nothing once its files are on this host (a cluster node copies them from
# another: atoll.server.template_copies); raises when they cannot be had
FilesFetch = Callable[[str], Awaitable[None]]
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "xterm",
}


@dataclass(frozen=True, kw_only=True)
class Template:
    id: str
    name: str
    port: int = 8080
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    cmd: list[str] = field(default_factory=list)  # the main process, when the image has one
    user: str = ""  # the image's USER, as the image says it (the home directory endpoint reads it)
    # that user resolved through the image's /etc/passwd and /etc/group when it was imported:
    # what every process of its sandboxes runs as
    uid: int = 0
    gid: int = 0
    groups: list[int] = field(default_factory=list)
    # a service main process: creates wait until GET {PORT}{ready_path} answers 200 (readiness)
    ready_path: str = ""
    # the isolation backend its sandboxes run on ("runsc" for gVisor); "": the server's default
    runtime: str = ""
    created_at: str = ""
    path: Path = Path()

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    def sandbox_env(self) -> dict[str, str]:
        return {**BASE_ENV, **self.env, "PORT": str(self.port)}


def slug(name: str) -> str:
    return name.replace("/", "--").replace(":", "@")


class TemplateRegistry:
    def __init__(self, root: Path, *, user_root: Path | None = None) -> None:
        self.root = root
        self.user_root = user_root
        self.lookup: NameLookup | None = None  # set by the server once the catalog exists
        self.fetch: FilesFetch | None = None  # set on a cluster node (docs/cluster.md, Templates)
        self._system_ids: dict[str, str] = {}  # id -> name, learnt by scanning
        root.mkdir(parents=True, exist_ok=True)
        if user_root is not None:
            user_root.mkdir(parents=True, exist_ok=True)

    def dir_for(self, name: str) -> Path:
        return self.root / slug(name)

    def get(self, name: str) -> Template | None:
        return _load(self.dir_for(name))

    def by_id(self, template_id: str) -> Template | None:
        """A system template or an imported one, by id (ids never change; names may)."""
        if self.user_root is not None and "/" not in template_id and template_id not in (".", ".."):
            found = _load(self.user_root / template_id)
            if found is not None:
                return found
        known = self._system_ids.get(template_id)
        if known is not None and (template := self.get(known)) is not None and template.id == template_id:
            return template
        for meta in self.root.glob("*/template.json"):
            template = _load(meta.parent)
            if template is not None and template.id == template_id:
                self._system_ids[template_id] = template.name
                return template
        return None

    async def resolve(self, org_id: str, name: str) -> Template | None:
        """The template an org means by ``name``: a system one, or one of its own."""
        if name.startswith(SYSTEM_PREFIX) or self.lookup is None:
            return self.get(name)
        template_id = await self.lookup(org_id, name)
        template = await self.ensure(template_id) if template_id else None
        # the catalog's name is current; the one on disk is the name it was imported under
        return replace(template, name=name) if template is not None else None

    async def ensure(self, template_id: str) -> Template | None:
        """An imported template with its files on this host: on a cluster node that lacks them,
        copied from another node first (``fetch``; raises when they cannot be had)."""
        template = self.by_id(template_id)
        if template is None and self.fetch is not None:
            await self.fetch(template_id)
            template = self.by_id(template_id)
        return template

    def save(self, template: Template) -> None:
        data = asdict(template)
        data.pop("path")
        (self.dir_for(template.name) / "template.json").write_text(json.dumps(data, indent=2))

    def names(self) -> list[str]:
        found = []
        for meta in sorted(self.root.glob("*/template.json")):
            found.append(json.loads(meta.read_text())["name"])
        return found

    def user_ids(self) -> list[str]:
        """The imported templates whose files are complete here (never one being imported or
        copied: those are under other names until they are)."""
        if self.user_root is None:
            return []
        found = self.user_root.glob("tpl-*/template.json")  # not "<id>.importing"
        return sorted(m.parent.name for m in found if "." not in m.parent.name and _load(m.parent))

    def cached(self) -> list[str]:
        """What a node's heartbeat reports cached: system templates by name, imported ones by id
        (placement and template copies look them up so: docs/cluster.md)."""
        return [*self.names(), *self.user_ids()]


# template.json by path -> (its mtime, the parsed template): every exec looks its template up
_loaded: dict[Path, tuple[int, Template]] = {}


def _load(directory: Path) -> Template | None:
    meta = directory / "template.json"
    try:
        mtime = meta.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    if not (directory / "rootfs").is_dir():
        return None
    cached = _loaded.get(meta)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    data = json.loads(meta.read_text())
    template = Template(
        id=data["id"],
        name=data["name"],
        port=int(data.get("port", 8080)),
        env=dict(data.get("env", {})),
        workdir=data.get("workdir", "/"),
        cmd=list(data.get("cmd", [])),
        user=data.get("user", ""),
        uid=int(data.get("uid", 0)),
        gid=int(data.get("gid", 0)),
        groups=[int(g) for g in data.get("groups", [])],
        ready_path=data.get("ready_path", ""),
        runtime=data.get("runtime", ""),
        created_at=data.get("created_at", ""),
        path=directory,
    )
    _loaded[meta] = (mtime, template)
    return template
