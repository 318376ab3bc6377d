"""Which node does what with an organisation's imported template (docs/cluster.md, Templates),
from the node rows alone: the node an API replica sends an import to, and the nodes a node
lacking a template's files may copy them from (those whose heartbeat lists the template's id),
and the node whose templates a replica lists.

The import goes to the **up node with the most room** (placement's load: the mean of its
reserved vCPU and memory fractions; ties by id). A pull and unpack take CPU and disk, and the
importing node is the one placement then prefers for the template's sandboxes (it has it
cached), so the one with the most room to run them is the one to give it."""

from __future__ import annotations

from collections.abc import Sequence

from atoll.cluster.registry import ALIVE, UP
from atoll.store.models import NodeRow
from atoll.templates.registry import SYSTEM_PREFIX


def load(node: NodeRow) -> float:
    """The node's reserved share of its host (0 idle, 1 full before over-commit)."""
    cpu = node.vcpu_reserved / node.cpus if node.cpus > 0 else 1.0
    memory = node.memory_mib_reserved / node.memory_mib if node.memory_mib > 0 else 1.0
    return (cpu + memory) / 2


def importer(nodes: Sequence[NodeRow]) -> NodeRow | None:
    """The node an import is sent to; None when no node is up and sized (none takes sandboxes)."""
    fit = [n for n in nodes if n.state == UP and n.cpus > 0 and n.memory_mib > 0]
    return min(fit, key=lambda n: (load(n), n.id), default=None)


def lister(nodes: Sequence[NodeRow]) -> NodeRow | None:
    """The node whose templates an API replica lists (it has none of its own): of the live ones,
    the one with the most system templates built, then the least loaded."""
    live = [n for n in nodes if n.state in ALIVE]
    return min(live, key=lambda n: (-_system_count(n), load(n), n.id), default=None)


def _system_count(node: NodeRow) -> int:
    return sum(1 for name in node.templates or () if name.startswith(SYSTEM_PREFIX))


def holders(nodes: Sequence[NodeRow], template_id: str, *, own_id: str | None) -> list[NodeRow]:
    """The live nodes other than this one that hold the template's files, in the order to ask
    them: up before draining (a draining node is about to be emptied), then the least loaded."""
    found = [n for n in nodes if n.state in ALIVE and n.id != own_id and template_id in (n.templates or [])]
    return sorted(found, key=lambda n: (n.state != UP, load(n), n.id))
