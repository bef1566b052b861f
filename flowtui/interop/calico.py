"""Calico flow records, as Whisker and Goldmane (Calico v3.30+) write them.

Calico aggregates flows by *flow key*, not by 5-tuple: source and destination (type, namespace,
name), destination port, protocol, reporter, action and the policy trace; addresses and source
ports are dropped, counts are summed per time window. `flow_records` does the same over the
store, per flow bucket:

1. The flow rows of one bucket, reporting node, direction and 5-tuple form one decision: its
   action is the Allow/Deny row's, its *enforced trace* the Pass and Log rules that fired
   (in rule-id order: the compiler allocates ids in evaluation order) followed by the deciding
   rule; counts come from the Allow/Deny rows only. Buckets with only Pass/Log rows have no
   verdict and are left out. The pending trace is the bucket's `Log` rows of non-Log rules: how
   `flowtui import calico` keeps staged verdicts (the collector records none).
2. Endpoints are named like Calico's: pods as WorkloadEndpoint `<pod>` in their namespace, host
   endpoints and nodes as HostEndpoint `<node>` in `-`, network sets as NetworkSet, anything else
   as Network `pvt` (RFC 1918, or IPv6 unique local fc00::/7, as Felix decides) or `pub`. Pods keep their own names
   (Calico shortens them to `<generateName>*`: the store does not know the generateName).
3. Decisions are summed per key: packets and bytes `in`/`out` from the reporter's side (for the
   destination, in = the original direction; for the source, out), connections started and
   completed from conntrack; `num_connections_live` is not tracked and is 0.

Policy hits carry Calico's kinds (GlobalNetworkPolicy, CalicoNetworkPolicy, NetworkPolicy for
Kubernetes', Profile, EndOfTier with a `trigger`); dataplane defaults and failsafes, which Calico
does not report, are `KindUnspecified` in tier `__DEFAULT__` / `__FAILSAFE__`.

Two encodings (`style`): **whisker** (whisker-backend's `FlowResponse`: RFC 3339 times, enum
names as strings, labels joined with " | ") and **goldmane** (Goldmane's NDJSON sink: the proto
`Flow` through Go's encoding/json: a nested `key`, unix-second times, enums as integers, labels
as lists). `flowtui.interop.calico_logs` parses either back (and Calico Enterprise's flows.log).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

import duckdb
import pyarrow as pa

from flowtui.interop.window import EVERYTHING, Window

STYLES = ("whisker", "goldmane")
ACTION_ENUM = {"Allow": 1, "Deny": 2, "Pass": 3}
REPORTER_ENUM = {"Src": 1, "Dst": 2}
ENDPOINT_ENUM = {"WorkloadEndpoint": 1, "HostEndpoint": 2, "NetworkSet": 3, "Network": 4}
KIND_ENUM = {
    "KindUnspecified": 0, "CalicoNetworkPolicy": 1, "GlobalNetworkPolicy": 2, "StagedNetworkPolicy": 3,
    "StagedGlobalNetworkPolicy": 4, "StagedKubernetesNetworkPolicy": 5, "NetworkPolicy": 6, "Profile": 9,
    "EndOfTier": 10, "ClusterNetworkPolicy": 11,
}
CALICO_KIND = {
    "GlobalNetworkPolicy": "GlobalNetworkPolicy", "NetworkPolicy": "CalicoNetworkPolicy",
    "KubernetesNetworkPolicy": "NetworkPolicy", "StagedNetworkPolicy": "StagedNetworkPolicy",
    "StagedGlobalNetworkPolicy": "StagedGlobalNetworkPolicy",
    "StagedKubernetesNetworkPolicy": "StagedKubernetesNetworkPolicy", "Profile": "Profile",
    "ClusterNetworkPolicy": "ClusterNetworkPolicy",
}
PROTO = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp"}

_SQL = """
WITH decisions AS (
  SELECT f.start_time, f.end_time, f.source_id, r.direction, f.proto, f.src_ip, f.dst_ip, f.sport, f.dport,
         any_value(f.action) FILTER (WHERE f.action IN ('Allow', 'Deny')) AS action,
         any_value(f.rule_id) FILTER (WHERE f.action IN ('Allow', 'Deny')) AS final_rule,
         list(DISTINCT f.rule_id) FILTER (WHERE f.action = 'Pass') AS steps,
         list(DISTINCT f.rule_id) FILTER (WHERE f.action = 'Log' AND r.action <> 'Log') AS pending,
         coalesce(sum(f.packets) FILTER (WHERE f.action IN ('Allow', 'Deny')), 0) AS packets,
         coalesce(sum(f.bytes) FILTER (WHERE f.action IN ('Allow', 'Deny')), 0) AS bytes,
         coalesce(sum(f.reply_packets) FILTER (WHERE f.action IN ('Allow', 'Deny')), 0) AS reply_packets,
         coalesce(sum(f.reply_bytes) FILTER (WHERE f.action IN ('Allow', 'Deny')), 0) AS reply_bytes,
         coalesce(sum(f.connections_started) FILTER (WHERE f.action IN ('Allow', 'Deny')), 0) AS started,
         coalesce(sum(f.connections_completed) FILTER (WHERE f.action IN ('Allow', 'Deny')), 0) AS completed,
         f.src_ep, f.dst_ep
  FROM flows f JOIN rules r ON r.id = f.rule_id
  WHERE r.direction IN ('ingress', 'egress') AND {where}
  GROUP BY f.start_time, f.end_time, f.source_id, r.direction, f.proto, f.src_ip, f.dst_ip, f.sport, f.dport,
           f.src_ep, f.dst_ep
  HAVING count(*) FILTER (WHERE f.action IN ('Allow', 'Deny')) > 0
),
named AS (
  SELECT d.*,
    CASE se.type WHEN 'wep' THEN 'WorkloadEndpoint' WHEN 'hep' THEN 'HostEndpoint' WHEN 'node' THEN 'HostEndpoint'
                 WHEN 'netset' THEN 'NetworkSet' ELSE 'Network' END AS src_type,
    CASE WHEN se.type = 'wep' THEN se.namespace WHEN se.type = 'netset' THEN coalesce(se.namespace, '-')
         WHEN se.type IN ('hep', 'node') THEN '-' ELSE '' END AS src_namespace,
    CASE WHEN se.type IN ('wep', 'netset') THEN se.name WHEN se.type = 'hep' THEN coalesce(se.node, se.name)
         WHEN se.type = 'node' THEN se.name ELSE coalesce(sc.net, se.name) END AS src_name,
    coalesce(se.labels, []::VARCHAR[]) AS src_labels,
    CASE de.type WHEN 'wep' THEN 'WorkloadEndpoint' WHEN 'hep' THEN 'HostEndpoint' WHEN 'node' THEN 'HostEndpoint'
                 WHEN 'netset' THEN 'NetworkSet' ELSE 'Network' END AS dst_type,
    CASE WHEN de.type = 'wep' THEN de.namespace WHEN de.type = 'netset' THEN coalesce(de.namespace, '-')
         WHEN de.type IN ('hep', 'node') THEN '-' ELSE '' END AS dst_namespace,
    CASE WHEN de.type IN ('wep', 'netset') THEN de.name WHEN de.type = 'hep' THEN coalesce(de.node, de.name)
         WHEN de.type = 'node' THEN de.name ELSE coalesce(dc.net, de.name) END AS dst_name,
    coalesce(de.labels, []::VARCHAR[]) AS dst_labels
  FROM decisions d
  LEFT JOIN endpoints se ON se.id = d.src_ep
  LEFT JOIN endpoints de ON de.id = d.dst_ep
  LEFT JOIN ip_class sc ON sc.ip = d.src_ip AND (se.type IS NULL OR se.type IN ('external', 'net'))
  LEFT JOIN ip_class dc ON dc.ip = d.dst_ip AND (de.type IS NULL OR de.type IN ('external', 'net'))
)
SELECT start_time, end_time, action, src_type, src_namespace, src_name, any_value(src_labels) AS src_labels,
       dst_type, dst_namespace, dst_name, any_value(dst_labels) AS dst_labels, proto, coalesce(dport, 0) AS dport,
       CASE direction WHEN 'ingress' THEN 'Dst' ELSE 'Src' END AS reporter,
       list_concat(list_sort(coalesce(steps, []::INTEGER[])), [final_rule]) AS trace,
       list_sort(coalesce(pending, []::INTEGER[])) AS pending,
       sum(packets) AS packets, sum(bytes) AS bytes, sum(reply_packets) AS reply_packets,
       sum(reply_bytes) AS reply_bytes, sum(started) AS started, sum(completed) AS completed
FROM named
GROUP BY start_time, end_time, action, src_type, src_namespace, src_name, dst_type, dst_namespace, dst_name, proto,
         dport, direction, trace, pending
ORDER BY start_time, src_namespace, src_name, dst_namespace, dst_name, dport, reporter
"""


PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))


def net_name(ip: str) -> str:
    """Calico's name for an address outside the cluster: `pvt` or `pub`."""
    try:
        address = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return "pub"
    return "pvt" if any(address.version == n.version and address in n for n in PRIVATE) else "pub"


def _rules(con: duckdb.DuckDBPyConnection) -> dict[int, tuple[Any, ...]]:
    rows = con.execute("SELECT id, kind, namespace, name, tier, rule, action, trigger_kind FROM rules").fetchall()
    return {int(r[0]): r[1:] for r in rows}


def _hit(rule: tuple[Any, ...] | None, index: int) -> dict[str, Any]:
    if rule is None:
        return {"kind": "KindUnspecified", "name": "", "namespace": "", "tier": "", "action": "",
                "policy_index": index, "rule_index": -1, "trigger": None}
    kind, namespace, name, tier, rule_index, action, trigger_kind = rule
    hit: dict[str, Any] = {"kind": CALICO_KIND.get(kind, "KindUnspecified"), "name": name or "",
                           "namespace": namespace or "", "tier": tier or "", "action": action,
                           "policy_index": index, "rule_index": -1 if rule_index is None else int(rule_index),
                           "trigger": None}
    if kind == "EndOfTier":
        hit.update(kind="EndOfTier", name="", namespace="")
        hit["trigger"] = {"kind": CALICO_KIND.get(trigger_kind or "", "KindUnspecified"), "name": name or "",
                          "namespace": namespace or "", "tier": tier or "", "action": action,
                          "policy_index": index, "rule_index": -1, "trigger": None}
    elif kind == "NoProfileMatch":
        hit.update(kind="Profile", name="__NO_MATCH__", tier="__PROFILE__")
    elif kind in ("Default", "Failsafe"):
        hit["tier"] = f"__{kind.upper()}__"
    return hit


def _goldmane_hit(hit: dict[str, Any]) -> dict[str, Any]:
    out = dict(hit, kind=KIND_ENUM.get(hit["kind"], 0), action=ACTION_ENUM.get(hit["action"], 0))
    out["trigger"] = _goldmane_hit(hit["trigger"]) if hit.get("trigger") else None
    return out


def _rfc3339(value: datetime) -> str:
    return value.replace(microsecond=0).isoformat() + "Z"


def _unix(value: datetime) -> int:
    return int(value.replace(tzinfo=UTC).timestamp())


def flow_records(con: duckdb.DuckDBPyConnection, window: Window = EVERYTHING, style: str = "whisker"
                 ) -> Iterator[dict[str, Any]]:
    """Calico flow records (Whisker or Goldmane encoding) for the flows in `window`."""
    if style not in STYLES:
        raise ValueError(f"style: one of {', '.join(STYLES)}")
    ips = con.execute("""
        SELECT DISTINCT ip FROM (
          SELECT f.src_ip AS ip FROM flows f LEFT JOIN endpoints e ON e.id = f.src_ep
          WHERE e.type IS NULL OR e.type IN ('external', 'net')
          UNION SELECT f.dst_ip FROM flows f LEFT JOIN endpoints e ON e.id = f.dst_ep
          WHERE e.type IS NULL OR e.type IN ('external', 'net'))
        WHERE ip IS NOT NULL""").fetchall()
    ip_class = pa.table({"ip": [r[0] for r in ips], "net": [net_name(r[0]) for r in ips]},
                        schema=pa.schema([("ip", pa.string()), ("net", pa.string())]))
    rules = _rules(con)
    con.register("ip_class", ip_class)
    try:
        cursor = con.execute(_SQL.format(where=window.sql("f.start_time")))
        while batch := cursor.fetchmany(4096):
            for row in batch:
                yield _record(row, rules, style)
    finally:
        con.unregister("ip_class")


def _record(row: tuple[Any, ...], rules: dict[int, tuple[Any, ...]], style: str) -> dict[str, Any]:
    (start, end, action, src_type, src_ns, src_name, src_labels, dst_type, dst_ns, dst_name, dst_labels, proto,
     dport, reporter, trace, pending, packets, bytes_, reply_packets, reply_bytes, started, completed) = row
    hits = [_hit(rules.get(rule_id), i) for i, rule_id in enumerate(trace)]
    pending_hits = [_hit(rules.get(rule_id), i) for i, rule_id in enumerate(pending)]
    dst_side = reporter == "Dst"
    counts = {
        "packets_in": int(packets if dst_side else reply_packets),
        "packets_out": int(reply_packets if dst_side else packets),
        "bytes_in": int(bytes_ if dst_side else reply_bytes),
        "bytes_out": int(reply_bytes if dst_side else bytes_),
    }
    protocol = PROTO.get(proto, str(proto))
    if style == "whisker":
        return {
            "start_time": _rfc3339(start), "end_time": _rfc3339(end), "action": action,
            "source_name": src_name or "", "source_namespace": src_ns or "",
            "source_labels": " | ".join(src_labels or []),
            "dest_name": dst_name or "", "dest_namespace": dst_ns or "", "dest_labels": " | ".join(dst_labels or []),
            "protocol": protocol, "dest_port": int(dport), "reporter": reporter,
            "policies": {"enforced": hits, "pending": pending_hits},
            **counts,
        }
    return {
        "key": {
            "source_name": src_name or "", "source_namespace": src_ns or "",
            "source_type": ENDPOINT_ENUM[src_type],
            "dest_name": dst_name or "", "dest_namespace": dst_ns or "", "dest_type": ENDPOINT_ENUM[dst_type],
            "dest_port": int(dport), "dest_service_name": "", "dest_service_namespace": "",
            "dest_service_port_name": "", "dest_service_port": 0,
            "proto": protocol, "reporter": REPORTER_ENUM[reporter], "action": ACTION_ENUM[action],
            "policies": {"enforced_policies": [_goldmane_hit(h) for h in hits],
                         "pending_policies": [_goldmane_hit(h) for h in pending_hits]},
        },
        "start_time": _unix(start), "end_time": _unix(end),
        "source_labels": list(src_labels or []), "dest_labels": list(dst_labels or []),
        **counts,
        "num_connections_started": int(started), "num_connections_completed": int(completed),
        "num_connections_live": 0,
    }


def write_records(con: duckdb.DuckDBPyConnection, out: IO[str], window: Window = EVERYTHING,
                  style: str = "whisker") -> int:
    """Write flow records as JSON Lines; returns how many."""
    n = 0
    for record in flow_records(con, window, style):
        out.write(json.dumps(record, separators=(",", ":")))
        out.write("\n")
        n += 1
    return n
