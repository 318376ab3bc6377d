"""The admission rule of ``conn_guard.ConnectionGuard`` (pure logic; the flood itself is in
test_slowloris.py): a per-address cap, and past the fd budget only small clients get in."""

from __future__ import annotations

from atoll._conn_guard import ConnectionGuard


def test_per_address_cap_and_release() -> None:
    guard = ConnectionGuard(per_address_max=3, fd_reserve=0, reserve_per_address=1, fd_limit=1000)
    tickets = [guard.admit("10.0.0.1") for _ in range(3)]
    assert all(tickets)
    assert guard.admit("10.0.0.1") is None  # past its cap
    assert guard.admit("10.0.0.2") is not None  # another address is not affected
    ticket = tickets[0]
    assert ticket is not None
    ticket.release()
    ticket.release()  # idempotent: every path that ends a connection may call it
    assert guard.by_address["10.0.0.1"] == 2
    assert guard.admit("10.0.0.1") is not None
    assert guard.total == 4


def test_reserve_keeps_room_for_small_clients() -> None:
    # 100 fds, 40 kept in reserve: past 60 connections only addresses holding < 2 get in
    guard = ConnectionGuard(per_address_max=1000, fd_reserve=40, reserve_per_address=2, fd_limit=100)
    assert all(guard.admit(f"10.0.0.{i % 3}") for i in range(60))
    assert guard.admit("10.0.0.1") is None  # a big holder, and the budget is spent
    assert guard.admit("10.0.9.9") is not None  # a newcomer still gets in
    assert guard.admit("10.0.9.9") is not None
    assert guard.admit("10.0.9.9") is None
