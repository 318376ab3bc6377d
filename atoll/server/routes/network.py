"""Egress counters per sandbox: ``GET /v1/sandbox/{id}/network`` (JSON) and ``GET /v1/metrics``
(Prometheus text, the caller's organisation only). Counters cover the sandbox's current boot."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from atoll.network.egress import EgressService
from atoll.server import response_models as rm
from atoll.server.auth import require_org
from atoll.server.metrics import collector_for
from atoll.server.response_models import answers
from atoll.server.state import services

router = APIRouter(prefix="/v1", tags=["network"])
Org = Annotated[str, Depends(require_org)]
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def _egress(request: Request) -> EgressService | None:
    return services(request).egress


@router.get("/sandbox/{sandbox_id}/network", **answers(rm.SandboxNetwork))
@router.get("/sandbox/{sandbox_id}/network/", include_in_schema=False, **answers(rm.SandboxNetwork))
async def sandbox_network(sandbox_id: str, org: Org, request: Request) -> dict[str, Any]:
    manager = services(request).manager
    row = await manager.get(org, sandbox_id)
    policy: dict[str, Any] = row.network_policy.wire() if row.network_policy else {"mode": "allow-all"}
    for transform in policy.get("transforms") or ():
        transform["inject_headers"] = {k: "***" for k in transform.get("inject_headers") or {}}
    return {"id": row.id, "state": row.state, "network_policy": policy, **_report(request, row.id)}


def _report(request: Request, sandbox_id: str) -> dict[str, Any]:
    egress = _egress(request)  # an API replica has none: the sandbox's node answers (forwarded)
    return egress.report(sandbox_id) if egress is not None else {"attached": False}


class _EgressCollector(Collector):
    def __init__(self, reports: dict[str, dict[str, Any]]) -> None:
        self.reports = reports

    def collect(self):  # type: ignore[no-untyped-def]
        connections = CounterMetricFamily(
            "atoll_egress_connections",
            "Connections a sandbox opened, by verdict",
            labels=["sandbox", "verdict"],
        )
        traffic = CounterMetricFamily(
            "atoll_egress_bytes",
            "Bytes of allowed and refused traffic",
            labels=["sandbox", "direction", "verdict"],
        )
        dns = CounterMetricFamily(
            "atoll_egress_dns_queries", "Resolver answers", labels=["sandbox", "verdict"]
        )
        learned = GaugeMetricFamily(
            "atoll_egress_learned_addresses", "Addresses learned from DNS answers", labels=["sandbox"]
        )
        for sid, report in self.reports.items():
            if not report.get("attached"):
                continue
            connections.add_metric([sid, "allowed"], report["allowed"]["connections"])
            connections.add_metric([sid, "denied"], report["denied"]["connections"])
            traffic.add_metric([sid, "out", "allowed"], report["allowed"]["bytes_out"])
            traffic.add_metric([sid, "in", "allowed"], report["allowed"]["bytes_in"])
            traffic.add_metric([sid, "out", "denied"], report["denied"]["bytes"])
            dns.add_metric([sid, "answered"], report["dns"]["answered"])
            dns.add_metric([sid, "refused"], report["dns"]["refused"])
            learned.add_metric([sid], report["proxy"]["learned_addresses"])
        yield from (connections, traffic, dns, learned)


@router.get("/metrics", response_class=PlainTextResponse)  # documented as text/plain
async def metrics(org: Org, request: Request) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    egress = _egress(request)
    registry.register(_EgressCollector(egress.reports(org) if egress is not None else {}))
    # the org's sandboxes' resource gauges, state changes and API latencies (atoll.server.metrics)
    registry.register(await collector_for(services(request).metrics, org))
    return Response(generate_latest(registry), media_type=PROMETHEUS_TEXT)
