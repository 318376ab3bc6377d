"""The statements of placement (``atoll.cluster.placement``), built once per placer with bound
parameters: building and cache-keying a statement of this shape costs SQLAlchemy ~4 ms of CPU
each time, more than PostgreSQL takes to run it over 1,000 nodes; built once, a create costs
the driver's work only. Each is executed with ``params(request)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import aliased
from sqlalchemy.sql.dml import Insert, ReturningDelete, ReturningInsert, ReturningUpdate, Update

from atoll.cluster.registry import UP
from atoll.store.models import NodeRow, PlacementRow, utcnow

if TYPE_CHECKING:
    from atoll.cluster.placement import PlacementPolicy, PlacementRequest

# how many of the best nodes by template, warm pool and load the organisation's spread decides
# among: exact on clusters up to this size; on larger ones, among the best this many (counting
# the organisation's sandboxes on every node of 1,000 would cost more than all the rest)
SHORTLIST = 32

_VCPU = bindparam("p_vcpu", type_=Integer)
_MEMORY_MIB = bindparam("p_memory_mib", type_=Integer)
_TEMPLATE = bindparam("p_template", type_=String)
_ORG = bindparam("p_org_id", type_=String)
_SANDBOX = bindparam("p_sandbox_id", type_=String)
_NODE = bindparam("p_node_id", type_=String)
_PLACED_AT = bindparam("p_placed_at", type_=PlacementRow.__table__.c.placed_at.type)


def params(request: PlacementRequest) -> dict[str, Any]:
    return {
        "p_vcpu": request.vcpu,
        "p_memory_mib": request.memory_mib,
        "p_template": request.template,
        "p_org_id": request.org_id,
        "p_sandbox_id": request.sandbox_id,
        "p_placed_at": utcnow(),
    }


def _float(value: float) -> ColumnElement[float]:
    return literal(value, Float)


@dataclass(frozen=True)
class PlacementStatements:
    reserve_skipping_locked: ReturningUpdate[str, str]  # -> (node id, address) or no row
    reserve_waiting: ReturningUpdate[str, str]
    # PostgreSQL: the reservation and the placement's row in one statement (a data-modifying
    # WITH), -> (node id, address) or no row; None on SQLite, which has no such WITH
    place_skipping_locked: ReturningInsert[str, str] | None
    place_waiting: ReturningInsert[str, str] | None
    record: Insert  # the placement's row, on the node ``p_node_id``
    any_fits: Select[tuple[bool]]
    forget: ReturningDelete[str, int, int]  # -> (node id, vCPUs, MiB) of ``p_sandbox_id``
    give_back: Update  # ``p_vcpu`` and ``p_memory_mib`` back to ``p_node_id``


def build(dialect: str, policy: PlacementPolicy) -> PlacementStatements:
    postgresql = dialect == "postgresql"
    return PlacementStatements(
        reserve_skipping_locked=_reserve(postgresql, policy, skip_locked=True),
        reserve_waiting=_reserve(postgresql, policy, skip_locked=False),
        place_skipping_locked=_place(policy, skip_locked=True) if postgresql else None,
        place_waiting=_place(policy, skip_locked=False) if postgresql else None,
        record=insert(PlacementRow).values(
            sandbox_id=_SANDBOX,
            node_id=_NODE,
            org_id=_ORG,
            template=_TEMPLATE,
            vcpu=_VCPU,
            memory_mib=_MEMORY_MIB,
            placed_at=_PLACED_AT,
        ),
        any_fits=select(exists().where(_fits(NodeRow, policy))),
        forget=delete(PlacementRow)
        .where(PlacementRow.sandbox_id == _SANDBOX)
        .returning(PlacementRow.node_id, PlacementRow.vcpu, PlacementRow.memory_mib),
        give_back=update(NodeRow)
        .where(NodeRow.id == _NODE)
        .values(
            vcpu_reserved=NodeRow.vcpu_reserved - _VCPU,
            memory_mib_reserved=NodeRow.memory_mib_reserved - _MEMORY_MIB,
        ),
    )


def _fits(node: Any, policy: PlacementPolicy) -> ColumnElement[bool]:
    return and_(
        node.state == UP,
        node.cpus > 0,
        node.memory_mib > 0,
        node.vcpu_reserved + _VCPU <= node.cpus * _float(policy.cpu_overcommit),
        node.memory_mib_reserved + _MEMORY_MIB <= node.memory_mib * _float(policy.memory_overcommit),
    )


def _reserve(postgresql: bool, policy: PlacementPolicy, *, skip_locked: bool) -> ReturningUpdate[str, str]:
    candidate = aliased(NodeRow, name="candidate")
    load = (
        (candidate.vcpu_reserved + _VCPU) / (candidate.cpus * _float(policy.cpu_overcommit))
        + (candidate.memory_mib_reserved + _MEMORY_MIB)
        / (candidate.memory_mib * _float(policy.memory_overcommit))
    ) / _float(2.0)
    base = (
        case((_cached(postgresql, candidate), _float(0.0)), else_=_float(policy.uncached_penalty))
        + case((_warm(postgresql, candidate) > 0, _float(0.0)), else_=_float(policy.cold_penalty))
        + load
    ).label("base")
    # a bounded top-N over every fitting node (no row locks, no full sort); the organisation's
    # count is then looked up for these few only
    shortlist = (
        select(candidate.id.label("id"), base)
        .where(_fits(candidate, policy))
        .order_by(base, candidate.id)
        .limit(SHORTLIST)
        .subquery("shortlist")
    )
    org_count = (
        select(func.count())
        .where(PlacementRow.org_id == _ORG, PlacementRow.node_id == shortlist.c.id)
        .scalar_subquery()
    )
    chosen = aliased(NodeRow, name="chosen")
    best = (
        select(chosen.id)
        .join(shortlist, shortlist.c.id == chosen.id)
        .order_by(shortlist.c.base + org_count, chosen.id)
        .limit(1)
    )
    if postgresql:
        best = best.with_for_update(of=chosen, skip_locked=skip_locked)
    return (
        update(NodeRow)
        # the guarantee: re-evaluated on the row's newest version if another transaction changed
        # it since this statement's snapshot, so the last room of a node is taken once
        .where(NodeRow.id == best.scalar_subquery(), _fits(NodeRow, policy))
        .values(
            vcpu_reserved=NodeRow.vcpu_reserved + _VCPU,
            memory_mib_reserved=NodeRow.memory_mib_reserved + _MEMORY_MIB,
        )
        .returning(NodeRow.id, NodeRow.address)
    )


def _place(policy: PlacementPolicy, *, skip_locked: bool) -> ReturningInsert[str, str]:
    reserved = _reserve(True, policy, skip_locked=skip_locked).cte("reserved")
    columns = ["sandbox_id", "node_id", "org_id", "template", "vcpu", "memory_mib", "placed_at"]
    row = select(_SANDBOX, reserved.c.id, _ORG, _TEMPLATE, _VCPU, _MEMORY_MIB, _PLACED_AT)
    address = select(reserved.c.address).scalar_subquery()
    return insert(PlacementRow).from_select(columns, row).returning(PlacementRow.node_id, address)


def _cached(postgresql: bool, node: Any) -> ColumnElement[bool]:
    if postgresql:  # jsonb's ? asks "is this string an element of the array"
        has_key: ColumnElement[bool] = type_coerce(node.templates, JSONB).has_key(_TEMPLATE)
        return has_key
    each = func.json_each(node.templates).table_valued("value")
    return exists(select(1).select_from(each).where(each.c.value == _TEMPLATE))


def _warm(postgresql: bool, node: Any) -> ColumnElement[int]:
    """Warm sandboxes of the template the node reported ready (``pools``: template -> count)."""
    ready: ColumnElement[Any]
    if postgresql:
        ready = type_coerce(node.pools, JSONB).op("->>")(_TEMPLATE)
    else:
        ready = func.json_extract(node.pools, literal('$."') + _TEMPLATE + literal('"'))
    return func.coalesce(type_coerce(ready, String).cast(Integer), 0)
