"""The system templates this host can build, by name: the default one (built before the server
starts) and the ones built on demand (in the background once the server is up, see
``atoll.server.template_builds``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from atoll.templates import code_interpreter, debian, desktop
from atoll.templates.build import ProgressCallback
from atoll.templates.registry import DEFAULT_TEMPLATE_NAME, Template, TemplateRegistry


class Builder(Protocol):
    def __call__(
        self, registry: TemplateRegistry, *, on_progress: ProgressCallback | None = ..., force: bool = ...
    ) -> Template: ...


@dataclass(frozen=True)
class SystemTemplate:
    name: str  # with its tag, e.g. "system/code-interpreter:v0.1.0"
    build: Builder  # builds it unless current (or forced); returns it
    is_current: Callable[[TemplateRegistry], bool]  # built, from the recipe and inputs of today
    on_demand: bool  # False: built before ``atoll serve`` starts; True: in the background after

    @property
    def untagged(self) -> str:
        return self.name.rpartition(":")[0] or self.name


SYSTEM_TEMPLATES = (
    SystemTemplate(DEFAULT_TEMPLATE_NAME, debian.build_debian, debian.is_current, on_demand=False),
    SystemTemplate(
        code_interpreter.NAME,
        code_interpreter.build_code_interpreter,
        code_interpreter.is_current,
        on_demand=True,
    ),
    SystemTemplate(desktop.NAME, desktop.build_desktop, desktop.is_current, on_demand=True),
)


def find(name: str) -> SystemTemplate:
    """The system template called ``name``, with or without its tag; KeyError if none is."""
    for template in SYSTEM_TEMPLATES:
        if name in (template.name, template.untagged):
            return template
    known = ", ".join(t.name for t in SYSTEM_TEMPLATES)
    raise KeyError(f"no system template {name!r} (known: {known})")
