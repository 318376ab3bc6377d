"""What of one sandbox slot is in an instance's nftables table (chains, sets, counters named
``s<N>_...`` and the verdict-map elements keyed by its interface), found by listing the table,
and removing whatever of it exists, one command at a time. Start-up reconciliation and a failed
attach's clean-up use it: they cannot know which objects a half-made slot has."""

from __future__ import annotations

import logging

from atoll.network import egress_rules
from atoll.network.nftables import Nft, NftError

log = logging.getLogger("atoll.egress")


def slot_objects(nft: Nft, table: str) -> dict[int, str | None]:
    """Slots that have any per-sandbox object in the table -> the ifname in the maps, if any."""
    found: dict[int, str | None] = {}
    for item in nft.query(f"list table inet {table}"):
        for kind in ("chain", "set", "counter"):
            if kind in item:
                index = egress_rules.slot_of_object(item[kind]["name"])
                if index is not None:
                    found.setdefault(index, None)
        if "map" in item and item["map"]["name"] in egress_rules.MAPS:
            for element in item["map"].get("elem", []):
                key, verdict = element
                target = verdict.get("jump", {}).get("target", "") if isinstance(verdict, dict) else ""
                index = egress_rules.slot_of_object(target)
                if index is not None:
                    found[index] = key
    return found


def remove_slot_objects(nft: Nft, table: str, index: int, ifname: str | None) -> None:
    """Remove whatever exists of slot ``index``, one command at a time (some may be gone)."""
    prefix = egress_rules.prefix(index)
    listing = nft.query(f"list table inet {table}")
    names = {kind: set() for kind in ("chain", "set", "counter")}  # type: dict[str, set[str]]
    maps = []
    for item in listing:
        for kind in names:
            if kind in item and item[kind]["name"].startswith(prefix):
                names[kind].add(item[kind]["name"][len(prefix) :])
        if "map" in item and ifname is not None:
            if any(element[0] == ifname for element in item["map"].get("elem", [])):
                maps.append(item["map"]["name"])
    batch = egress_rules.detach(
        table,
        index=index,
        ifname=ifname or "",
        maps=maps,
        chains=names["chain"],
        sets=names["set"],
        counters=names["counter"],
    )
    for line in batch.splitlines():
        try:
            nft.run(line)
        except NftError as exc:
            log.debug("egress cleanup of slot %d: %s", index, exc)
