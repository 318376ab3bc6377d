"""Templates on disk: ``<templates_dir>/<slug>/rootfs`` (read-only lower layer) and
``template.json`` (id, name, PORT, environment). Lookup by name; nothing here builds."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_TEMPLATE_NAME = "system/debian:bookworm"
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
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def dir_for(self, name: str) -> Path:
        return self.root / slug(name)

    def get(self, name: str) -> Template | None:
        meta = self.dir_for(name) / "template.json"
        if not meta.exists() or not (self.dir_for(name) / "rootfs").is_dir():
            return None
        data = json.loads(meta.read_text())
        return Template(
            id=data["id"],
            name=data["name"],
            port=int(data.get("port", 8080)),
            env=dict(data.get("env", {})),
            workdir=data.get("workdir", "/"),
            cmd=list(data.get("cmd", [])),
            created_at=data.get("created_at", ""),
            path=self.dir_for(name),
        )

    def save(self, template: Template) -> None:
        data = asdict(template)
        data.pop("path")
        (self.dir_for(template.name) / "template.json").write_text(json.dumps(data, indent=2))

    def names(self) -> list[str]:
        found = []
        for meta in sorted(self.root.glob("*/template.json")):
            found.append(json.loads(meta.read_text())["name"])
        return found
