"""Typed columns for ad-hoc SQL over the raw flows: would ENUMs or numeric addresses pay?

    python bench/bench_typed_columns.py --db /work/bench-data/e-10m.duckdb [--repeat 3] [--json]

Copies the store's `flows` (read-only) three times, each into its own scratch database:
`text` as stored today (VARCHAR; DuckDB already dictionary-compresses it: `pragma storage_info`
says DICT_FSST for action, prefix, count_source, src_ip, dst_ip); `enum` with action and count_source
as ENUM; `numeric` with that and both addresses as UHUGEINT (IPv4 as its 32-bit value; an IPv6
address would be its 128-bit value plus a family column: not needed for a measurement of IPv4 data).
Prints each copy's size (MiB: its used blocks) and, best of `--repeat` after a warm-up,
the ad-hoc questions the README names: group by address pair, by action and protocol, filter by an
action, by one address, by a CIDR, by namespace (endpoints joined). Each question runs on the three
copies in turn, so the ratios of one run compare like with like under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb

V4 = ("(CAST(split_part({c}, '.', 1) AS UHUGEINT) << 24) + (CAST(split_part({c}, '.', 2) AS UHUGEINT) << 16) "
      "+ (CAST(split_part({c}, '.', 3) AS UHUGEINT) << 8) + CAST(split_part({c}, '.', 4) AS UHUGEINT)")


def ip_number(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def build(con: duckdb.DuckDBPyConnection, tmp: Path) -> dict[str, float]:
    """Each copy in its own database file (attached as `text`, `enum`, `numeric`): its size is its
    used blocks, with nothing shared."""
    actions = "ENUM ('Allow', 'Deny', 'Pass', 'Log')"
    sources = "ENUM ('nflog', 'conntrack', 'hubble', 'calico', 'pcap')"
    enums = f"action::{actions} AS action, count_source::{sources} AS count_source"
    copies = {"text": "*", "enum": f"* REPLACE ({enums})",
              "numeric": f"* REPLACE ({enums}, {V4.format(c='src_ip')} AS src_ip, {V4.format(c='dst_ip')} AS dst_ip)"}
    sizes = {}
    for name, columns in copies.items():
        con.execute(f"ATTACH '{tmp / name}.duckdb' AS {name}")
        con.execute(f"CREATE TABLE {name}.flows AS SELECT {columns} FROM src.flows")
        con.execute(f"CREATE TABLE {name}.endpoints AS SELECT id, namespace FROM src.endpoints")
        con.execute(f"CHECKPOINT {name}")
        used = con.execute("SELECT (total_blocks - free_blocks) * block_size FROM pragma_database_size() "
                           "WHERE database_name = ?", [name]).fetchone()
        sizes[name] = round((used[0] if used else 0) / 2**20, 1)
    return sizes


def questions(ip: str, lo: str, hi: str) -> dict[str, dict[str, str]]:
    n, nlo, nhi = ip_number(ip), ip_number(lo), ip_number(hi)
    pair = "SELECT src_ip, dst_ip, count(*), sum(packets) FROM {t} GROUP BY ALL ORDER BY 4 DESC, 1, 2 LIMIT 20"
    text_cidr = f"SELECT count(*), sum(packets) FROM {{t}} WHERE src_ip LIKE '{lo.rsplit('.', 2)[0]}.%'"
    return {
        "address_pairs": {k: pair for k in ("text", "enum", "numeric")},
        "action_proto": {k: "SELECT action, proto, count(*), sum(packets) FROM {t} GROUP BY ALL"
                         for k in ("text", "enum", "numeric")},
        "denied": {k: "SELECT count(*), sum(packets) FROM {t} WHERE action = 'Deny'"
                   for k in ("text", "enum", "numeric")},
        "one_address": {"text": f"SELECT count(*), sum(packets) FROM {{t}} WHERE src_ip = '{ip}' OR dst_ip = '{ip}'",
                        "enum": f"SELECT count(*), sum(packets) FROM {{t}} WHERE src_ip = '{ip}' OR dst_ip = '{ip}'",
                        "numeric": f"SELECT count(*), sum(packets) FROM {{t}} WHERE src_ip = {n} OR dst_ip = {n}"},
        "cidr_16": {"text": text_cidr, "enum": text_cidr,
                    "numeric": f"SELECT count(*), sum(packets) FROM {{t}} WHERE src_ip BETWEEN {nlo} AND {nhi}"},
        "namespace_pairs": {k: "SELECT s.namespace, d.namespace, count(*), sum(packets) FROM {t} f "
                            "LEFT JOIN endpoints s ON s.id = f.src_ep LEFT JOIN endpoints d ON d.id = f.dst_ep "
                            "GROUP BY ALL" for k in ("text", "enum", "numeric")},
    }


def timed(con: duckdb.DuckDBPyConnection, sql: str, repeat: int) -> tuple[float, Any]:
    out = sorted(con.execute(sql).fetchall(), key=repr)  # warm-up (and the answer, in a fixed order)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        con.execute(sql).fetchall()
        best = min(best, time.perf_counter() - t0)
    return best * 1000, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", required=True, help="a flow store (read-only)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=Path(args.db).parent) as tmp:
        con = duckdb.connect()
        con.execute(f"ATTACH '{args.db}' AS src (READ_ONLY)")
        t0 = time.perf_counter()
        sizes = build(con, Path(tmp))
        built = time.perf_counter() - t0
        busiest = "SELECT src_ip FROM text.flows GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
        (ip,) = con.execute(busiest).fetchone() or ("",)
        lo = ".".join(ip.split(".")[:2]) + ".0.0"
        hi = ".".join(ip.split(".")[:2]) + ".255.255"
        con.execute("DETACH src")
        load = os.getloadavg()
        rows = (con.execute("SELECT count(*) FROM text.flows").fetchone() or (0,))[0]
        print(f"copies of {rows:,} flow rows built in {built:.0f} s; "
              f"MiB: " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + f" (load {load[0]:.1f})")
        result: dict[str, dict[str, float]] = {}
        for name, by_kind in questions(ip, lo, hi).items():
            answers = {}
            result[name] = {}
            for kind, sql in by_kind.items():
                sql = sql.format(t=f"{kind}.flows").replace("JOIN endpoints", f"JOIN {kind}.endpoints")
                ms, answers[kind] = timed(con, sql, args.repeat)
                result[name][kind] = round(ms, 1)
            same = answers["text"] == answers["enum"] and (name in ("address_pairs",) or
                                                              answers["text"] == answers["numeric"])
            print(f"  {name:16} " + "  ".join(f"{k} {v:8.1f} ms" for k, v in result[name].items())
                  + f"  text/numeric {result[name]['text'] / max(result[name]['numeric'], 0.01):.2f}x"
                  + ("" if same else "  (answers differ!)"))
        con.close()
    if args.json:
        print(json.dumps({"sizes_mib": sizes, "ms": result, "load_average": list(os.getloadavg())}))


if __name__ == "__main__":
    main()
