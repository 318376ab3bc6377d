"""The SSH relay's pure parts (atoll.ssh.relay_session, atoll.server.cluster_role): the gateway
address a node records and the replica reads back."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from atoll.server.cluster_role import node_ssh_address
from atoll.server.settings import Settings
from atoll.ssh.relay_session import split_address


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:2222", ("127.0.0.1", 2222)),
        ("node-a.cluster.local:22", ("node-a.cluster.local", 22)),
        ("[::1]:2222", ("::1", 2222)),
        ("[fd00::5]:65535", ("fd00::5", 65535)),
    ],
)
def test_split_address(address: str, expected: tuple[str, int]) -> None:
    assert split_address(address) == expected


@pytest.mark.parametrize(
    "address",
    [
        "",
        "2222",
        ":2222",
        "host:",
        "host:0",
        "host:65536",
        "host:22x",
        "::1:2222",
        "[::1]:",
        "[]:22",
        "a]:22",
    ],
)
def test_split_address_refuses(address: str) -> None:
    with pytest.raises(ValueError):
        split_address(address)


def test_node_ssh_address(tmp_path: Path) -> None:
    def settings(**values: object) -> Settings:
        return Settings(data_dir=tmp_path, **values)  # type: ignore[arg-type]

    assert node_ssh_address(settings(ssh_port=0)) is None  # no gateway: nothing to record
    assert node_ssh_address(settings(ssh_port=2200, ssh_host="10.0.0.7")) == "10.0.0.7:2200"
    assert node_ssh_address(settings(ssh_port=2200, ssh_host="0.0.0.0")) == f"{socket.gethostname()}:2200"
    assert node_ssh_address(settings(ssh_port=2200, ssh_host="fd00::7")) == "[fd00::7]:2200"
    # what a node records, the replica reads back
    assert split_address(node_ssh_address(settings(ssh_port=2200, ssh_host="fd00::7")) or "") == (
        "fd00::7",
        2200,
    )
