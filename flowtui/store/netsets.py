"""Which flow source addresses lie in a network set's CIDR: `netset_sources`, kept by the writer.

Matched in Python (`ipaddress`) against the few distinct addresses of each batch, not in SQL over
every flow row: the deny-list rollup (`denylisted_hours`) then holds the flows of those addresses only.
Network sets are read from every revision of `endpoints` (as denylisted_traffic reads them), so a
source, once a member, stays one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(con: Any) -> list[Network]:
    """The CIDRs of every network set in `endpoints` (ones `ipaddress` cannot read match nothing)."""
    out: list[Network] = []
    rows = con.execute("SELECT DISTINCT unnest(addresses) FROM endpoints WHERE type = 'netset'").fetchall()
    for (cidr,) in rows:
        try:
            out.append(ipaddress.ip_network(str(cidr), strict=False))
        except ValueError:
            continue
    return out


def members(addresses: Iterable[str | None], nets: list[Network]) -> list[str]:
    """The addresses that lie in one of `nets`."""
    out = []
    for text in addresses:
        if text is None:
            continue
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if any(ip.version == n.version and ip in n for n in nets):
            out.append(text)
    return out


def new_members(con: Any, addresses: Iterable[str | None], nets: list[Network], table: str = "netset_sources"
                ) -> list[str]:
    """The members among `addresses` not yet in `table`, added to it."""
    found = sorted(set(members(addresses, nets)))
    if not found:
        return []
    have = {r[0] for r in con.execute(f"SELECT src_ip FROM {table} WHERE src_ip IN (SELECT unnest(?))",
                                      [found]).fetchall()}
    fresh = [a for a in found if a not in have]
    if fresh:
        con.execute(f"INSERT INTO {table} SELECT unnest(?)", [fresh])
    return fresh


def flow_sources(con: Any) -> list[str]:
    return [r[0] for r in con.execute("SELECT DISTINCT src_ip FROM flows").fetchall()]
