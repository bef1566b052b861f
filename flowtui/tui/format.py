"""How stream rows are written on screen: endpoints, services, verdicts, policies. Headless."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from enforcer.model import SHORT_KIND

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite", 47: "gre", 50: "esp"}
VERDICT_STYLE = {
    "allow": "bold green",
    "deny": "bold red",
    "log": "bold yellow",
    "pass": "bold blue",
}
ROW_STYLE = {"allow": "green", "deny": "red", "log": "yellow", "pass": "blue"}


def endpoint(row: dict[str, Any], side: str) -> str:
    """`ns/pod`, `hep:NAME`, `node:NAME`, `external:NAME`, `netset:NAME`, or the address."""
    kind, name, ns = row.get(f"{side}_type"), row.get(f"{side}_name"), row.get(f"{side}_namespace")
    ip = row.get(f"{side}_ip") or "?"
    if not name:
        return str(ip)
    if kind == "wep":
        return f"{ns}/{name}" if ns and ns != "-" else str(name)
    if kind in ("hep", "node", "external", "netset"):
        return f"{kind}:{name}"
    return str(ip)


def service(row: dict[str, Any]) -> str:
    proto = row.get("proto")
    name = PROTO_NAMES.get(int(proto), str(proto)) if proto is not None else "?"
    if row.get("dport") is not None:
        return f"{name}/{row['dport']}"
    if row.get("icmp_type") is not None:
        return f"{name} {row['icmp_type']}"
    return name


def policy(row: dict[str, Any]) -> str:
    """`tier/gnp:name #rule`, `tier end-of-tier (gnp:last)`, `profile kns.prod`, or the prefix."""
    kind, name = row.get("policy_kind"), row.get("policy_name")
    if not kind or not name:
        prefix = row.get("prefix")
        return f"? {prefix}" if prefix else ""
    ns = row.get("policy_namespace")
    ident = f"{ns}/{name}" if ns else str(name)
    tier = row.get("tier") or "default"
    rule = row.get("rule_index")
    if kind == "Profile":
        return f"profile {ident}"
    if kind == "EndOfTier":
        return f"{tier} end-of-tier ({ident})"
    if kind in ("Failsafe", "Default", "NoProfileMatch"):
        return f"{kind.lower()} {ident}"
    short = SHORT_KIND.get(str(kind), str(kind))
    return f"{tier}/{short}:{ident} #{rule}"


def when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%H:%M:%S.") + f"{value.microsecond // 1000:03d}"
    return "" if value is None else str(value)


def count(n: Any) -> str:
    if n is None:
        return "-"
    n = int(n)
    for unit, size in (("G", 1_000_000_000), ("M", 1_000_000), ("k", 10_000)):
        if n >= size:
            return f"{n / size:.1f}{unit}" if unit != "k" else f"{n // 1000}k"
    return str(n)


def size(n: Any) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


# The live table's columns: (title, width or 0 = share what is left, function of the row)
COLUMNS: tuple[tuple[str, int, Any], ...] = (
    ("TIME", 12, lambda r: when(r.get("time"))),
    ("SOURCE", 0, lambda r: endpoint(r, "src")),
    ("DESTINATION", 0, lambda r: endpoint(r, "dst")),
    ("SERVICE", 11, service),
    ("VERDICT", 7, lambda r: str(r.get("verdict") or "").upper()),
    ("TIER/POLICY/RULE", 0, policy),
    ("PKTS/BYTES", 14, lambda r: f"{count(r.get('packets'))}/{size(r.get('bytes'))}"),
    ("NODE", 8, lambda r: str(r.get("node") or "")),
)
FLEX_SHARE = {"SOURCE": 2, "DESTINATION": 2, "TIER/POLICY/RULE": 3}


def rate(value: Any) -> str:
    """Packets per second: `-` when quiet, one decimal below 10, `12k` above 10,000."""
    if not value:
        return "-"
    value = float(value)
    if value < 10:
        return f"{value:.1f}"
    return count(round(value))


# The flows view's columns: one row per flow (see `flowtable`), its counts updated in place.
FLOW_COLUMNS: tuple[tuple[str, int, Any], ...] = (
    ("LAST SEEN", 12, lambda r: when(r.get("last_seen") or r.get("time"))),
    ("SOURCE", 0, lambda r: endpoint(r, "src")),
    ("DESTINATION", 0, lambda r: endpoint(r, "dst")),
    ("SERVICE", 11, service),
    ("VERDICT", 7, lambda r: str(r.get("verdict") or "").upper()),
    ("TIER/POLICY/RULE", 0, policy),
    ("PKTS/BYTES", 14, lambda r: f"{count(r.get('packets'))}/{size(r.get('bytes'))}"),
    ("PKT/S", 6, lambda r: rate(r.get("rate"))),
    ("NODE", 8, lambda r: str(r.get("node") or "")),
)


def layout(width: int, columns: tuple[tuple[str, int, Any], ...] = COLUMNS) -> list[tuple[str, int, Any]]:
    """Column widths for a terminal `width` wide (one space between columns)."""
    fixed = sum(w for _t, w, _f in columns if w) + len(columns) - 1
    left = max(width - fixed, 30)
    shares = sum(FLEX_SHARE.values())
    out = []
    for title, w, fn in columns:
        if not w:
            w = max(10, left * FLEX_SHARE[title] // shares)
        out.append((title, w, fn))
    return out


def fit(text: str, width: int, keep_tail: int = 0) -> str:
    """`text` in exactly `width` cells; too long, it loses its middle when `keep_tail` chars
    at its end matter (a policy's rule number), else its end."""
    if len(text) <= width:
        return text.ljust(width)
    if keep_tail and width > keep_tail + 4:
        return text[: width - keep_tail - 1] + "…" + text[-keep_tail:]
    return text[: width - 1] + "…"


def cells(row: dict[str, Any], columns: list[tuple[str, int, Any]]) -> list[str]:
    out = []
    for title, width, fn in columns:
        text = str(fn(row))
        tail = 0
        if title == "TIER/POLICY/RULE" and " #" in text:
            tail = len(text) - text.rindex(" #")
        out.append(fit(text, width, tail))
    return out
