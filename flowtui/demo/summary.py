"""What a demo run recorded: flows by verdict and policy, and loss (from the closed store);
and the recording exported as files `flowtui tui --logs DIR` replays (e.g. `sample-logs/`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from enforcer.safefile import SHARED, atomic_write
from flowtui.store import schema

if TYPE_CHECKING:
    from enforcer.datastore import DesiredState

CAUSES = (
    "kernel_ratelimit",
    "rcvbuf_overrun",
    "writer_backlog",
    "malformed",
    "store_error",
    "collector_down",
)

@dataclass
class DemoSummary:
    """What `flowtui demo --headless` prints."""

    seconds: float
    lab_id: str
    state_dir: str
    db: str
    flows: list[dict[str, Any]] = field(default_factory=list)  # by verdict and policy
    verdicts: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    traffic: dict[str, dict[str, int]] = field(default_factory=dict)
    traffic_errors: list[str] = field(default_factory=list)
    sampled: list[dict[str, Any]] = field(default_factory=list)  # rate-limited rules: counted vs logged

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 2), "lab": self.lab_id, "state_dir": self.state_dir, "db": self.db,
            "verdicts": self.verdicts, "flows": self.flows, "lost": self.lost, "stats": self.stats,
            "sampled": self.sampled, "traffic": self.traffic, "traffic_errors": self.traffic_errors,
        }


# Per verdict and deciding rule: the events logged, the distinct flows (5-tuples), the packets.
BY_POLICY_SQL = """
SELECT lower(f.action) AS verdict, r.kind, r.namespace, r.name, r.tier, r.direction, r.rule,
  any_value(r.policy) AS policy, sum(f.events)::BIGINT AS events,
  count(DISTINCT (f.proto, f.src_ip, f.dst_ip, f.sport, f.dport))::BIGINT AS flows,
  greatest(sum(f.packets), sum(f.events))::BIGINT AS packets
FROM flows f LEFT JOIN rules r ON r.id = f.rule_id
WHERE f.count_source IS DISTINCT FROM 'conntrack'
GROUP BY ALL ORDER BY verdict, events DESC"""


# Rules whose logging is rate-limited (denied floods): packets their counter saw vs events logged.
SAMPLED_SQL = """
WITH counted AS (
  SELECT rule_id, sum(packets)::BIGINT AS packets FROM (
    SELECT rule_id, source_id, arg_max(packets, time) AS packets FROM rule_counters
    WHERE rate_limited AND rule_id IS NOT NULL GROUP BY rule_id, source_id)
  GROUP BY rule_id),
logged AS (SELECT rule_id, count(*)::BIGINT AS events FROM events GROUP BY rule_id)
SELECT r.kind, r.namespace, r.name, r.tier, r.direction, r.rule, c.packets, coalesce(l.events, 0) AS logged
FROM counted c JOIN rules r ON r.id = c.rule_id LEFT JOIN logged l ON l.rule_id = c.rule_id
WHERE c.packets - coalesce(l.events, 0) > greatest(10, c.packets // 100) ORDER BY c.packets DESC"""


def who(row: dict[str, Any]) -> str:
    """`GlobalNetworkPolicy dos-mitigation ingress rule 0`, `end of tier default ingress (attributed
    to deny-...)`, `Profile kns.staging egress` (rows differ by direction: say it)."""
    kind, ns, name, rule = row.get("kind"), row.get("namespace"), row.get("name"), row.get("rule")
    if kind is None:
        return str(row.get("policy") or "unattributed")
    ident = f"{ns}/{name}" if ns else str(name)
    direction = f" {row['direction']}" if row.get("direction") else ""
    if kind == "EndOfTier":
        return f"end of tier {row.get('tier')}{direction} (attributed to {ident})"
    if kind in ("Profile", "NoProfileMatch", "Default", "Failsafe"):
        return f"{kind} {ident}".strip() + direction
    return f"{kind} {ident}{direction} rule {rule}"


def summarize(db: Path, collector: dict[str, Any], *, seconds: float, lab_id: str, state_dir: str) -> DemoSummary:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute(BY_POLICY_SQL)
        names = [d[0] for d in cur.description or ()]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        cur = con.execute(SAMPLED_SQL)
        names = [d[0] for d in cur.description or ()]
        sampled = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()
    verdicts: dict[str, int] = {}
    for r in rows:
        r["decided_by"] = who(r)
        verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + int(r["flows"])
    lost = {c: 0 for c in CAUSES}
    lost.update({k: int(v) for k, v in collector.get("lost", {}).items()})
    stats = {k: int(v) for k, v in collector.get("stats", {}).items()}
    for r in sampled:
        r["decided_by"] = who(r)
    return DemoSummary(seconds, lab_id, state_dir, str(db), rows, verdicts, lost, stats, sampled=sampled)


def render(summary: DemoSummary) -> str:
    s = summary
    stats = s.stats
    lines = [
        f"demo ran {s.seconds:.1f} s in lab {s.lab_id}: {stats.get('received', 0):,} events received, "
        f"{stats.get('stored', 0):,} stored ({s.db})",
        "",
        "flows by verdict: " + ", ".join(f"{v} {n:,}" for v, n in sorted(s.verdicts.items())),
        "",
        f"{'VERDICT':8} {'FLOWS':>7} {'EVENTS':>8}  DECIDED BY",
    ]
    for r in s.flows:
        lines.append(f"{r['verdict']:8} {r['flows']:>7,} {r['events']:>8,}  {r['decided_by']}")
    lines += ["", "loss by cause: " + ", ".join(f"{c} {n:,}" for c, n in s.lost.items())]
    for r in s.sampled:
        share = r["logged"] / r["packets"] if r["packets"] else 1.0
        lines.append(f"  rate-limited logging: {r['decided_by']}: {r['packets']:,} packets counted, "
                     f"{r['logged']:,} logged ({share:.0%}); denied floods log at most 1,000 events/s per rule")
    if s.traffic:
        parts = [f"{kind} " + "/".join(f"{k} {v:,}" for k, v in sorted(c.items())) for kind, c in s.traffic.items()]
        lines += ["", "traffic sent: " + "; ".join(parts)]
    for err in s.traffic_errors[:3]:
        lines.append(f"  traffic warning: {err}")
    return "\n".join(lines)


def export(db: Path, out: Path, datastore: DesiredState | None = None) -> list[Path]:
    """Every table of the store as `<table>.parquet` in `out`, plus `resources.yaml` (the stored
    objects as a `kind: List`), which `flowtui tui --logs OUT` replays."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    con = duckdb.connect(str(db), read_only=True)
    try:
        for t in schema.TABLES:
            target = out / f"{t.name}.parquet"
            quoted = "'" + str(target).replace("'", "''") + "'"
            con.execute(f"COPY (SELECT * FROM {t.name}) TO {quoted} (FORMAT parquet, COMPRESSION zstd)").fetchall()
            written.append(target)
    finally:
        con.close()
    if datastore is not None:
        from enforcer.datastore.sources import dump

        docs = [doc for _obj, doc in datastore.object_documents()]
        target = out / "resources.yaml"
        atomic_write(target, dump({"apiVersion": "v1", "kind": "List", "items": docs}), SHARED)
        written.append(target)
    return written
