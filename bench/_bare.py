"""Bare OCI bundles of the default template, for the baselines that run crun without Atoll: the
same overlay root (template + Atoll's helper layer) and config.json as a sandbox, no API."""

from __future__ import annotations

import json
from pathlib import Path

from atoll.runtime import helpers, oci_config, overlay
from atoll.runtime.spec import SandboxSpec
from atoll.templates.registry import DEFAULT_TEMPLATE_NAME, TemplateRegistry

TEMPLATES = Path("/var/lib/atoll/templates")


class BareBundles:
    def __init__(self, scratch: Path) -> None:
        template = TemplateRegistry(TEMPLATES).get(DEFAULT_TEMPLATE_NAME)
        assert template is not None, "build the template first: atoll template build"
        self.template = template
        self.scratch = scratch
        self.helpers = helpers.prepare(scratch / "helpers")

    def make(self, sandbox_id: str, cgroup_parent: str, init_args: list[str] | None = None) -> SandboxSpec:
        """A mounted bundle under the scratch dir (``overlay.unmount(spec.rootfs)`` undoes it)."""
        spec = SandboxSpec(
            sandbox_id=sandbox_id,
            lower_dirs=(self.helpers, self.template.rootfs),
            sandbox_dir=self.scratch / sandbox_id,
            vcpu=1,
            memory_mib=1024,
            pids_limit=1024,
            netns_path=None,
            env=self.template.sandbox_env(),
        )
        overlay.mount_overlay(spec.lower_dirs, spec.upper_dir, spec.work_dir, spec.rootfs)
        config = oci_config.build(spec, cgroups_path=f"/{cgroup_parent}/{sandbox_id}", init_args=init_args)
        (spec.sandbox_dir / "config.json").write_text(json.dumps(config))
        return spec
