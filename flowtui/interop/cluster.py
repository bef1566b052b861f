"""Read the cluster flows dataset (`flowtui.collector.dataset`) as one flow store.

Every node writes its own partitions with its own ids (rule, endpoint, source, run), so the
reader gives every id a cluster-wide one before the store's views run:

- sources and runs: one per (node, id);
- rules: one per rule as the rule table describes it (policy, revision, direction, index,
  action...): the same rule has one id whichever node logged it, so `rule_hits` and `policies`
  add up across nodes;
- endpoints: one per endpoint (type, namespace, name, node, labels, addresses): a pod seen by
  the node it talks to and by its own node is one endpoint, so `flow_pairs` keeps one row per pair.

When the nodes' ids already agree (one machine, one rule table, as in a lab), the ids stay as
they are. Then the tables are views with the store's columns (`interop.parquet.view_statement`
semantics) and the store's derived views are created over them, so `flows_once` merges the two
reports of a flow between pods on two nodes exactly as it does in one store (same bucket, same
5-tuple: the buckets are aligned to the epoch on every node).

The dataset's files appear and grow while this reads (a part is renamed into place whole); a
connection sees the files that existed when each query started.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from flowtui.collector.dataset import APPENDED, MARKER, SNAPSHOTS
from flowtui.interop.parquet import derived_views, view_statement
from flowtui.store import schema

# id column -> which map gives its cluster-wide value
ID_COLUMNS: dict[str, dict[str, str]] = {
    "events": {"source_id": "source", "rule_id": "rule", "src_ep": "endpoint", "dst_ep": "endpoint"},
    "flows": {"source_id": "source", "rule_id": "rule", "src_ep": "endpoint", "dst_ep": "endpoint"},
    "connections": {"source_id": "source", "rule_id": "rule"},
    "loss": {"run_id": "run", "source_id": "source"},
    "stats": {"run_id": "run", "source_id": "source"},
    "rule_counters": {"run_id": "run", "source_id": "source", "rule_id": "rule"},
    "sources": {"source_id": "source", "run_id": "run"},
    "runs": {"run_id": "run"},
}
RULE_IDENTITY = ("kind", "namespace", "name", "tier", "revision", "direction", "rule", "action", "trigger_kind",
                 "policy")
ENDPOINT_IDENTITY = ("type", "namespace", "name", "endpoint_node", "labels", "addresses")


class ClusterError(RuntimeError):
    """Not a cluster flows dataset, or one that cannot be read."""


def is_cluster_dir(path: Path | str) -> bool:
    return (Path(path) / MARKER).is_file()


def _source(root: Path, table: str) -> str | None:
    part = root / table
    if not part.is_dir() or not any(part.rglob("*.parquet")):
        return None
    pattern = str(part / "**" / "*.parquet").replace("'", "''")
    return f"read_parquet('{pattern}', hive_partitioning = true, union_by_name = true)"


def tables_found(root: Path | str) -> frozenset[str]:
    """The dataset's tables that have files (a reader re-attaches when this grows)."""
    return frozenset(t for t in (*APPENDED, *SNAPSHOTS) if _source(Path(root), t) is not None)


def attach_cluster(con: duckdb.DuckDBPyConnection, root: Path | str) -> list[str]:
    """Create the store's tables (views over every node's files, ids made cluster-wide) and
    views in `con`; returns the nodes found."""
    root = Path(root)
    if not is_cluster_dir(root):
        raise ClusterError(f"{root}: not a cluster flows dataset (no {MARKER}; written by `flowtui collect "
                           "--node NAME --flows-dir DIR` or `flowtui agent --flows-dir DIR`)")
    found: dict[str, str] = {}
    for name in (*APPENDED, *SNAPSHOTS):
        source = _source(root, name)
        if source is not None:
            found[name] = source
            con.execute(f"CREATE OR REPLACE VIEW _c_{name} AS SELECT * FROM {source}")
    _maps(con, found)
    for table in schema.TABLES + schema.ROLLUP_TABLES:
        kind, query = _table_view(con, table, found)
        _replace(con, table.name, kind, query)
    for statement in derived_views():
        con.execute(statement)
    if "sources" not in found:
        return []
    return [str(r[0]) for r in con.execute("SELECT DISTINCT node FROM _c_sources ORDER BY 1").fetchall()]


def _replace(con: duckdb.DuckDBPyConnection, name: str, kind: str, query: str) -> None:
    """CREATE OR REPLACE `kind` (TABLE or VIEW) `name`, whatever kind of object had that name."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE NOT temporary").fetchall()}
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    if kind == "VIEW" and name in tables:
        con.execute(f"DROP TABLE {name}")
    elif kind == "TABLE" and name in views:
        con.execute(f"DROP VIEW {name}")
    con.execute(f"CREATE OR REPLACE {kind} {name} AS {query}")


def snapshot_signature(root: Path | str) -> tuple[tuple[str, int, int], ...]:
    """What the materialised id maps depend on: the nodes' rules, endpoints and sources files."""
    out = []
    for table in MATERIALISED_FROM:
        for path in sorted((Path(root) / table).glob("node=*/*.parquet")):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            out.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(out)


MATERIALISED_FROM = ("rules", "endpoints", "sources")


def _maps(con: duckdb.DuckDBPyConnection, found: dict[str, str]) -> None:
    """`_map_<kind>(node, id, gid)` for sources, runs, rules and endpoints. Every query joins them,
    so those of the small tables that change only with policies and pods are materialised (a
    reader re-attaches when their files change: `snapshot_signature`); runs change every second
    (heartbeats) and stay a view."""
    empty = "SELECT NULL::VARCHAR AS node, NULL::BIGINT AS id, NULL::BIGINT AS gid WHERE false"
    _replace(con, "_map_source", "TABLE", (
        "SELECT node, source_id AS id, row_number() OVER (ORDER BY node, source_id) AS gid FROM _c_sources"
        if "sources" in found else empty))
    _replace(con, "_map_run", "VIEW", (
        "SELECT node, run_id AS id, row_number() OVER (ORDER BY started, node, run_id) AS gid FROM _c_runs"
        if "runs" in found else empty))
    _replace(con, "_map_rule", "TABLE", (
        _identity_map("_c_rules", "id", RULE_IDENTITY) if "rules" in found else empty))
    _replace(con, "_map_endpoint", "TABLE", (
        _identity_map("_c_endpoints", "id", ENDPOINT_IDENTITY) if "endpoints" in found else empty))


def _identity_map(relation: str, id_column: str, identity: tuple[str, ...]) -> str:
    """(node, id) -> one id per identity: the nodes' own id where every node that has the
    identity gave it the same one and no other identity has it; a fresh one (above them all)
    otherwise."""
    key = ", ".join(identity)
    return (
        f"WITH g AS (SELECT node, {id_column} AS id, dense_rank() OVER (ORDER BY {key}) AS grp FROM {relation}), "
        "s AS (SELECT grp, min(id) AS lo, max(id) AS hi FROM g GROUP BY grp), "
        "clash AS (SELECT lo FROM s GROUP BY lo HAVING count(*) > 1), "
        "top AS (SELECT coalesce(max(id), 0) AS top FROM g) "
        "SELECT g.node, g.id, CASE WHEN s.lo = s.hi AND s.lo NOT IN (SELECT lo FROM clash) THEN s.lo "
        "ELSE top.top + g.grp END AS gid FROM g JOIN s USING (grp) CROSS JOIN top"
    )


def _table_view(con: duckdb.DuckDBPyConnection, table: schema.Table, found: dict[str, str]) -> tuple[str, str]:
    """("TABLE" or "VIEW", its query): rules and endpoints are materialised with the id maps."""
    name = table.name
    if name == "rules" and "rules" in found:
        rule_cols = ", ".join(
            f"min(x.first_seen)::{c.sql} AS first_seen" if c.name == "first_seen"
            else f"any_value(x.\"{c.name}\" ORDER BY x.node)::{c.sql} AS \"{c.name}\"" if c.name != "id"
            else f"m.gid::{c.sql} AS id"
            for c in table.columns
        )
        return ("TABLE", f"SELECT {rule_cols} FROM _c_rules x "
                         "JOIN _map_rule m ON m.node = x.node AND m.id = x.id GROUP BY m.gid")
    if name == "endpoints" and "endpoints" in found:
        def col(c: schema.Column) -> str:
            if c.name == "id":
                return f"m.gid::{c.sql} AS id"
            source = "endpoint_node" if c.name == "node" else c.name
            return f"arg_max(x.\"{source}\", x.loaded_at)::{c.sql} AS \"{c.name}\""

        endpoint_cols = ", ".join(col(c) for c in table.columns)
        return ("TABLE", f"SELECT {endpoint_cols} FROM _c_endpoints x "
                         "JOIN _map_endpoint m ON m.node = x.node AND m.id = x.id GROUP BY m.gid")
    if name not in found:
        return "VIEW", view_statement(table, None).split(" AS ", 1)[1]
    have = {str(r[0]) for r in con.execute(f"DESCRIBE SELECT * FROM _c_{name}").fetchall()}
    ids = ID_COLUMNS.get(name, {})
    cols: list[str] = []
    joins: list[str] = []
    for c in table.columns:
        if c.name in ids:
            alias = f"j_{c.name}"
            joins.append(f"LEFT JOIN _map_{ids[c.name]} {alias} "
                         f"ON {alias}.node = x.node AND {alias}.id = x.\"{c.name}\"")
            cols.append(f"{alias}.gid::{c.sql} AS \"{c.name}\"")
        elif c.name == "other_rule_ids":  # ids of imports only: a collector never writes them
            cols.append(f"NULL::{c.sql} AS \"{c.name}\"")
        elif c.name in have:
            cols.append(f"x.\"{c.name}\"::{c.sql} AS \"{c.name}\"")
        else:
            cols.append(f"NULL::{c.sql} AS \"{c.name}\"")
    return "VIEW", f"SELECT {', '.join(cols)} FROM _c_{name} x {' '.join(joins)}"
