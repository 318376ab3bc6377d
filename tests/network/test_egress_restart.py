"""Egress rules across a server crash: sandboxes outlive the server, so at start-up their
policies are attached again and no per-sandbox rule of anything else survives."""

from __future__ import annotations

import httpx
import pytest

from tests._support import api
from tests._support.server import ServerProcess
from tests.network._lab import ZONE, Lab
from tests.network.conftest import egress_slots_in_table
from tests.network.test_egress import make, probe

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]
API = f"api.{ZONE}"


def test_a_restart_reattaches_policies_and_leaves_nothing_stale(
    http: httpx.Client, server: ServerProcess, lab: Lab
) -> None:
    deny = make(http, {"mode": "deny-all"})
    domains = make(http, {"mode": "custom", "allow_domains": [API]})
    stopped = make(http, {"mode": "custom", "allow_cidrs": [lab.cidr]})
    try:
        assert http.post(f"/v1/sandbox/{stopped}/stop").status_code == 200
        assert probe(http, domains, "resolve", API)["ok"]
        assert len(egress_slots_in_table()) == 2

        server.kill9()
        server.start()

        assert len(egress_slots_in_table()) == 2  # the two live sandboxes, nothing else
        assert not probe(http, deny, "http", lab.hosts["api"], "80", API)["ok"]
        assert not probe(http, deny, "resolve", API)["ok"]
        assert probe(http, domains, "resolve", API)["ok"]  # learned sets start empty again
        assert (
            f"hello {lab.hosts['api']}" in probe(http, domains, "http", lab.hosts["api"], "80", API)["data"]
        )
        assert not probe(http, domains, "http", lab.hosts["other"], "80", f"other.{ZONE}")["ok"]
        assert http.post(f"/v1/sandbox/{stopped}/start").status_code == 200
        assert probe(http, stopped, "tcp", lab.hosts["cidr"], "7", "back")["ok"]
        assert not probe(http, stopped, "tcp", lab.hosts["outside"], "7", "no")["ok"]
    finally:
        for sid in (deny, domains, stopped):
            api.delete(http, sid)
