"""What a what-if found: flows whose verdict or deciding rule changes, grouped, with examples.

Categories (a flow can be in one enforced and one pending category):

* `newly_denied`, `newly_allowed`: the enforced verdict differs between the current and the
  edited set;
* `attribution_changed`: same verdict, decided by a different policy/rule;
* `pending_denied`, `pending_allowed`, `pending_attribution`: in the edited set (the current set
  when there are no edits), what the staged policies would do if promoted: the *pending*
  verdict or rule differs from the enforced one.

Within a category, flows are grouped by (source, destination, protocol, port, before, after),
source and destination named as reports name endpoints (`ns/pod`, `node:NAME`,
`external:NAME`, or the address). `WhatIfReport.to_json()` is plain JSON; `render_table()` is the
terminal view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from enforcer.evaluate import Hit
from enforcer.model import protocol_name
from flowtui.whatif.classes import NULL_PORT
from flowtui.whatif.engine import ALLOW, DENY, I64, VERDICTS, Comparison, Keyed, Timings, hit_label

CATEGORIES: dict[str, str] = {
    "newly_denied": "Newly denied",
    "newly_allowed": "Newly allowed",
    "attribution_changed": "Decided by a different rule",
    "pending_denied": "Pending: would be denied (staged policies)",
    "pending_allowed": "Pending: would be allowed (staged policies)",
    "pending_attribution": "Pending: would be decided by a different rule",
}


@dataclass(frozen=True)
class Decided:
    verdict: str
    decided_by: Hit | None

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "rule": hit_label(self.decided_by, self.verdict),
            "decided_by": self.decided_by.to_json() if self.decided_by is not None else None,
        }


@dataclass(frozen=True)
class Group:
    source: str
    destination: str
    proto: int
    port: int | None
    icmp_type: int | None
    flows: int
    rows: int
    before: Decided
    after: Decided
    examples: tuple[dict[str, Any], ...]
    first_seen: datetime | None = None
    last_seen: datetime | None = None

    @property
    def service(self) -> str:
        """`tcp/443`, `icmp type 8`, `gre`."""
        name = protocol_name(self.proto)
        if self.port is not None:
            return f"{name}/{self.port}"
        if self.icmp_type is not None:
            return f"{name} type {self.icmp_type}"
        return name

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "proto": self.proto,
            "port": self.port,
            "icmp_type": self.icmp_type,
            "flows": self.flows,
            "rows": self.rows,
            "before": self.before.to_json(),
            "after": self.after.to_json(),
            "first_seen": self.first_seen.isoformat() if self.first_seen else None,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "examples": list(self.examples),
        }


@dataclass
class Category:
    name: str
    title: str
    flows: int = 0
    rows: int = 0
    groups_total: int = 0
    groups: list[Group] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "flows": self.flows, "rows": self.rows, "groups_total": self.groups_total,
                "groups": [g.to_json() for g in self.groups]}


@dataclass
class WhatIfReport:
    rows: int
    flows: int
    skipped_rows: int  # not decidable: not an address, IPv4 to IPv6, no protocol
    flow_classes: int
    address_classes: int
    evaluations: int
    edits: list[str]
    categories: dict[str, Category]
    timings: dict[str, float]
    pending: bool = True  # pending (staged) categories were computed

    @property
    def newly_denied(self) -> int:
        return self.categories["newly_denied"].flows

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": {
                "rows": self.rows,
                "flows": self.flows,
                "skipped_rows": self.skipped_rows,
                "flow_classes": self.flow_classes,
                "address_classes": self.address_classes,
                "evaluations": self.evaluations,
                "edits": self.edits,
                **{name: c.flows for name, c in self.categories.items()},
            },
            "categories": {name: c.to_json() for name, c in self.categories.items()},
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


# --------------------------------------------------------------------------------------------
# Building


def _key_categories(cmp: Comparison) -> pl.DataFrame:
    """One row per (key index, category) with the before/after verdict and hit."""
    b, e = cmp.base, cmp.edited
    both = (b.verdict >= 0) & (e.verdict >= 0)
    pend = (e.verdict >= 0) & (e.pending_verdict >= 0)
    masks = {
        "newly_denied": both & (b.verdict == ALLOW) & (e.verdict == DENY),
        "newly_allowed": both & (b.verdict == DENY) & (e.verdict == ALLOW),
        "attribution_changed": both & (b.verdict == e.verdict) & (b.hit != e.hit),
        "pending_denied": pend & (e.verdict == ALLOW) & (e.pending_verdict == DENY),
        "pending_allowed": pend & (e.verdict == DENY) & (e.pending_verdict == ALLOW),
        "pending_attribution": pend & (e.verdict == e.pending_verdict) & (e.hit != e.pending_hit),
    }
    parts = []
    for cat, (name, mask) in enumerate(masks.items()):
        idx = np.flatnonzero(mask)
        if not len(idx):
            continue
        pending = name.startswith("pending")
        before_v, before_h = (e.verdict, e.hit) if pending else (b.verdict, b.hit)
        after_v, after_h = (e.pending_verdict, e.pending_hit) if pending else (e.verdict, e.hit)
        parts.append(pl.DataFrame({
            "k": idx.astype(np.int64),
            "cat": np.full(len(idx), cat, dtype=np.int8),
            "bv": before_v[idx], "bh": before_h[idx], "av": after_v[idx], "ah": after_h[idx],
        }))
    if not parts:
        return pl.DataFrame(schema={"k": pl.Int64, "cat": pl.Int8, "bv": pl.Int8, "bh": pl.Int32,
                                    "av": pl.Int8, "ah": pl.Int32})
    return pl.concat(parts)


def _bits(n: int) -> int:
    return max(1, int(n).bit_length())


def _changed_groups(keyed: Keyed, changed: npt.NDArray[np.bool_], label_by_code: I64, nlabels: int,
                    examples: int) -> pl.DataFrame:
    """Rows of changed keys summed per (key, source label, destination label, destination port),
    with the first `examples` rows of each and the time range. One pass over those rows."""
    frame = keyed.frame
    mask = changed[keyed.key_idx]
    rows = np.flatnonzero(mask)
    k = keyed.key_idx[rows].astype(np.uint64)
    sl = label_by_code[keyed.src_code[rows]].astype(np.uint64)
    dl = label_by_code[keyed.dst_code[rows]].astype(np.uint64)
    port = keyed.dst_port[rows].astype(np.uint64)
    widths = [_bits(len(keyed.keys)), _bits(nlabels), _bits(nlabels), 17]
    columns: list[pl.Series] = []
    if sum(widths) <= 64:
        g = k << np.uint64(sum(widths[1:]))
        g |= sl << np.uint64(widths[2] + widths[3])
        g |= dl << np.uint64(widths[3])
        g |= port
        columns.append(pl.Series("g", g))
    else:
        columns += [pl.Series("k", k), pl.Series("sl", sl), pl.Series("dl", dl), pl.Series("p", port)]
    by = [c.name for c in columns]
    columns.append(pl.Series("row", rows, dtype=pl.Int64))
    counts = frame.get_column("count")
    weighted = not (counts.min() == 1 and counts.max() == 1)
    extra = ["time"] if "time" in frame.columns else []
    if weighted or extra:
        picked = frame.select("count", *extra).filter(pl.Series(mask))
        columns += [picked.get_column(c) for c in (["count"] if weighted else []) + extra]
    first = pl.col("row").head(examples) if examples > 1 else pl.col("row").first().implode()
    aggs = [pl.len().alias("rows"), first.alias("ex")]
    aggs.append(pl.col("count").sum().alias("flows") if weighted else pl.len().alias("flows"))
    if extra:
        aggs += [pl.col("time").min().alias("first"), pl.col("time").max().alias("last")]
    out = pl.DataFrame(columns).group_by(by).agg(aggs)
    if "g" in out.columns:
        g = out.get_column("g").to_numpy()
        out = out.with_columns(
            k=pl.Series(g >> np.uint64(sum(widths[1:]))),
            sl=pl.Series((g >> np.uint64(widths[2] + widths[3])) & np.uint64((1 << widths[1]) - 1)),
            dl=pl.Series((g >> np.uint64(widths[3])) & np.uint64((1 << widths[2]) - 1)),
            p=pl.Series(g & np.uint64((1 << widths[3]) - 1)),
        ).drop("g")
    return out.with_columns(pl.col("k", "sl", "dl", "p").cast(pl.Int64))


def build_report(
    cmp: Comparison, *, limit: int = 50, examples: int = 3, edits: list[str] | None = None
) -> WhatIfReport:
    """Group the changed flows of `cmp`; keep the `limit` largest groups per category (0: all)."""
    timings = Timings(dict(cmp.timings.phases))
    keyed = cmp.keyed
    frame = keyed.frame
    total_flows = int(frame.get_column("count").sum()) if frame.height else 0
    skipped_keys = np.array([f is None for f in keyed.flows], dtype=bool)
    skipped_rows = int(skipped_keys[keyed.key_idx].sum()) if skipped_keys.any() else 0

    table = _key_categories(cmp)
    categories = {name: Category(name, title) for name, title in CATEGORIES.items()}
    if table.height:
        addrs = keyed.addresses
        labels = sorted(set(addrs.labels)) + ["(none)"]
        label_id = {name: i for i, name in enumerate(labels)}
        label_of = np.array([label_id[x] for x in addrs.labels] + [len(labels) - 1], dtype=np.int64)
        label_by_code = label_of[keyed.index_by_code]
        changed = np.zeros(len(keyed.keys), dtype=bool)
        changed[table.get_column("k").to_numpy()] = True
        per_key = _changed_groups(keyed, changed, label_by_code, len(labels), examples)
        protos = [f.protocol if f is not None else -1 for f in keyed.flows]
        icmp_types = [f.icmp_type if f is not None else None for f in keyed.flows]
        key_info = table.with_columns(
            proto=pl.Series([protos[k] for k in table.get_column("k")], dtype=pl.Int64),
            itype=pl.Series([icmp_types[k] for k in table.get_column("k")], dtype=pl.Int64),
        )
        merged = per_key.join(key_info, on="k")
        time_aggs = [pl.col("first").min(), pl.col("last").max()] if "first" in merged.columns else []
        grouped = merged.with_columns(
            p=pl.when(pl.col("proto").is_in([1, 58])).then(pl.col("itype")).otherwise(pl.col("p")),
        ).group_by("cat", "sl", "dl", "proto", "p", "bv", "bh", "av", "ah").agg(
            pl.col("flows").sum(), pl.col("rows").sum(),
            pl.col("ex").list.explode(keep_nulls=False, empty_as_null=False).sort().head(examples), *time_aggs,
        ).sort(["cat", "flows", "sl", "dl", "p"], descending=[False, True, False, False, False])
        names = list(CATEGORIES)
        totals = grouped.group_by("cat").agg(pl.col("flows").sum(), pl.col("rows").sum(), n=pl.len())
        for cat, flows, nrows, n in totals.iter_rows():
            c = categories[names[cat]]
            c.flows, c.rows, c.groups_total = int(flows), int(nrows), int(n)
        kept = grouped.group_by("cat", maintain_order=True).head(limit) if limit else grouped
        example_rows = sorted({int(r) for lst in kept.get_column("ex").to_list() for r in lst})
        ex_frame = _example_rows(keyed, example_rows)
        for r in kept.iter_rows(named=True):
            proto, port = int(r["proto"]), r["p"]
            icmp = proto in (1, 58)
            categories[names[r["cat"]]].groups.append(Group(
                source=labels[r["sl"]], destination=labels[r["dl"]], proto=proto,
                port=None if icmp or port is None or port == NULL_PORT else port,
                icmp_type=port if icmp else None,
                flows=int(r["flows"]), rows=int(r["rows"]),
                before=Decided(VERDICTS[r["bv"]], cmp.hits[r["bh"]]),
                after=Decided(VERDICTS[r["av"]], cmp.hits[r["ah"]]),
                examples=tuple(ex_frame[int(i)] for i in r["ex"]), first_seen=r.get("first"), last_seen=r.get("last"),
            ))
    timings.lap("report")
    evaluations = int((cmp.base.verdict >= 0).sum() + (cmp.edited.verdict >= 0).sum())
    return WhatIfReport(
        rows=frame.height, flows=total_flows, skipped_rows=skipped_rows, flow_classes=len(keyed.keys),
        address_classes=keyed.addresses.count - 1, evaluations=evaluations, edits=edits or [],
        categories=categories if cmp.pending else {k: v for k, v in categories.items() if not k.startswith("pending")},
        timings=timings.phases, pending=cmp.pending,
    )


def _example_rows(keyed: Keyed, rows: list[int]) -> dict[int, dict[str, Any]]:
    if not rows:
        return {}
    cols = ["src_ip", "dst_ip", "proto", "src_port", "dst_port", "icmp_type", "icmp_code"]
    cols += [c for c in ("time", "verdict", "policy", "packets", "bytes") if c in keyed.frame.columns]
    picked = keyed.frame.select(cols)[rows].with_columns(pl.col("src_ip", "dst_ip").cast(pl.String))
    return {r: _example(x) for r, x in zip(rows, picked.iter_rows(named=True), strict=True)}


def _example(x: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"src_ip": x["src_ip"], "dst_ip": x["dst_ip"], "proto": x["proto"]}
    if x["proto"] in (1, 58):
        out.update(icmp_type=x["icmp_type"], icmp_code=x["icmp_code"])
    else:
        out.update(src_port=x["src_port"], dst_port=x["dst_port"])
    if x.get("time") is not None:
        out["time"] = x["time"].isoformat()
    for extra in ("verdict", "policy", "packets", "bytes"):
        if x.get(extra) is not None:
            out["recorded_" + extra if extra in ("verdict", "policy") else extra] = x[extra]
    return out


# --------------------------------------------------------------------------------------------
# Rendering


def _example_text(ex: dict[str, Any]) -> str:
    proto = protocol_name(ex["proto"])
    if "icmp_type" in ex:
        return f"{proto} {ex['src_ip']} → {ex['dst_ip']} type {ex['icmp_type']} code {ex['icmp_code']}"
    sport = f":{ex['src_port']}" if ex.get("src_port") is not None else ""
    dport = f":{ex['dst_port']}" if ex.get("dst_port") is not None else ""
    src = f"[{ex['src_ip']}]" if ":" in ex["src_ip"] and sport else ex["src_ip"]
    dst = f"[{ex['dst_ip']}]" if ":" in ex["dst_ip"] and dport else ex["dst_ip"]
    return f"{proto} {src}{sport} → {dst}{dport}"


def _columns(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]


def render_table(report: WhatIfReport, *, examples: bool = True) -> str:
    lines = []
    if report.edits:
        lines.append("edits: " + ", ".join(report.edits))
    skipped = f", {report.skipped_rows:,} rows skipped (not decidable)" if report.skipped_rows else ""
    lines.append(f"{report.flows:,} flows ({report.rows:,} rows) in {report.flow_classes:,} flow classes; "
                 f"{report.evaluations:,} evaluations{skipped}")
    for cat in report.categories.values():
        lines.append("")
        more = f", showing the top {len(cat.groups)}" if len(cat.groups) < cat.groups_total else ""
        groups = f"{cat.groups_total:,} group{'s' if cat.groups_total != 1 else ''}"
        lines.append(f"{cat.title.upper()}: {cat.flows:,} flows in {groups}{more}"
                     if cat.flows else f"{cat.title.upper()}: none")
        if not cat.groups:
            continue
        pending = cat.name.startswith("pending")
        header = ["FLOWS", "SOURCE", "DESTINATION", "SERVICE",
                  "PENDING" if pending else "NOW DECIDED BY", "ENFORCED" if pending else "WAS"]
        rows = []
        for g in cat.groups:
            rows.append([f"{g.flows:,}", g.source, g.destination, g.service,
                         f"{g.after.verdict}: {hit_label(g.after.decided_by, g.after.verdict)}",
                         f"{g.before.verdict}: {hit_label(g.before.decided_by, g.before.verdict)}"])
        table = _columns(rows, header)
        lines.append("  " + table[0])
        for g, line in zip(cat.groups, table[1:], strict=True):
            lines.append("  " + line)
            if examples and g.examples:
                lines.append("      e.g. " + _example_text(g.examples[0]))
    return "\n".join(lines)
