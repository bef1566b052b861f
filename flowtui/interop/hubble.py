"""Hubble flow JSON <-> flowtui flow rows, both directions.

**Out** (`flow_objects`, `write_hubble`): each flow row with a verdict (Allow, Deny) becomes
`events` lines of `hubble observe -o json` output, `{"flow": {...}, "node_name": ..., "time": ...}`,
one per logged packet as Hubble shows them, their times spread over the row's first..last seen.
Each is a *policy verdict* event (`event_type.type` 5) of the reporting node, with:

- `verdict` FORWARDED / DROPPED; for drops `drop_reason_desc` POLICY_DENY (a deny rule) or
  POLICY_DENIED (an implicit deny: end of tier, no profile, dataplane default), as Cilium says;
- `IP`, `l4` (TCP flags from the row, ICMP type/code from the events table when it has them),
  `traffic_direction` INGRESS / EGRESS from the deciding rule, `is_reply` false;
- `source` / `destination`: pods with `namespace`, `pod_name` and `k8s:` labels; hosts as
  `reserved:host` (on the reporting node) or `reserved:remote-node`; everything outside as
  `reserved:world`, network sets with `cidr:` labels;
- the deciding rule in `ingress_allowed_by` / `egress_allowed_by` / `ingress_denied_by` /
  `egress_denied_by`, as a Hubble `Policy` {name, namespace, kind, revision, labels}. `kind` uses
  the names Calico's Whisker uses (GlobalNetworkPolicy, CalicoNetworkPolicy, NetworkPolicy for
  Kubernetes', Profile, EndOfTier: then `name` is the trigger policy).

Hubble has no place for a tier, a rule index, an endpoint type or a non-pod name, so they travel
as extra labels with the source `flowtui:` (`flowtui:tier=default`, `flowtui:rule=2`,
`flowtui:type=hep`, ...): other tools ignore them, `import` reads them back, so an export
imports into the same flows. Pass and Log rows are intermediate steps with no Hubble verdict and
are not exported; conntrack rows (counts only) neither.

**In** (`import_hubble`, `flowtui import hubble FILE`): Hubble JSON from Cilium (or from the
export above) into a flow store, through the store's writer. Kept: policy-verdict events,
drops, and events that name a policy; when a file has none of those (a plain trace capture),
forwarded connection openings (no replies, TCP only SYN without ACK) instead. Skipped, and
counted: replies, L7 records, errors, other trace points. Hubble `lost_events` are recorded in
the `loss` table (cause `hubble_lost_events`). Each kept event becomes an `events` row and is
aggregated into `flows` per time bucket like the collector does (`count_source` = `hubble`, one
packet per event, no byte counts). Policies become `rules` rows (an existing identical rule is
reused; Cilium gives no rule index, so `rule` is NULL), endpoints become one new `endpoints`
revision, nodes become `sources` of one new run.
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import duckdb
import pyarrow as pa

from enforcer.ruleids import RuleRef
from flowtui.collector.attribution import policy_hit
from flowtui.interop.calico import net_name
from flowtui.interop.window import EVERYTHING, Window
from flowtui.store import schema

POLICY_VERDICT_EVENT = 5  # Cilium monitor MessageTypePolicyVerdict
DROP_EVENT = 1
VERDICT = {"Allow": "FORWARDED", "Deny": "DROPPED"}
ACTION = {"FORWARDED": "Allow", "REDIRECTED": "Allow", "TRANSLATED": "Allow", "TRACED": "Allow",
          "AUDIT": "Allow", "DROPPED": "Deny"}
L4 = {6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMPv4", 58: "ICMPv6"}
L4_PROTO = {v: k for k, v in L4.items()}
TCP_FLAGS = (("FIN", 1), ("SYN", 2), ("RST", 4), ("PSH", 8), ("ACK", 16), ("URG", 32), ("ECE", 64), ("CWR", 128))
IMPLICIT = ("EndOfTier", "NoProfileMatch", "Default")
HUBBLE_KIND = {
    "GlobalNetworkPolicy": "GlobalNetworkPolicy",
    "NetworkPolicy": "CalicoNetworkPolicy",
    "KubernetesNetworkPolicy": "NetworkPolicy",
    "StagedGlobalNetworkPolicy": "StagedGlobalNetworkPolicy",
    "StagedNetworkPolicy": "StagedNetworkPolicy",
    "StagedKubernetesNetworkPolicy": "StagedKubernetesNetworkPolicy",
    "ClusterNetworkPolicy": "ClusterNetworkPolicy",
}
FROM_HUBBLE_KIND = {v: k for k, v in HUBBLE_KIND.items()}
CILIUM_SHORT = {"CiliumNetworkPolicy": "cnp", "CiliumClusterwideNetworkPolicy": "ccnp"}
RESERVED_IDENTITY = {"host": 1, "world": 2, "remote-node": 6}
LABEL_SOURCES = ("k8s", "container", "any", "unspec", "cni", "kvstore", "cilium-generated")
DROPPED_LABELS = ("io.kubernetes.pod.namespace=", "io.cilium.k8s.")
NO_ENDPOINT = "none"
_UUID_NS = uuid.UUID("7f1f6c1e-57a1-4c1b-9d8e-2f0e2a3c4b5d")


# ------------------------------------------------------------------------------------------------
# Out: store -> Hubble JSON


_EXPORT_SQL = """
WITH icmp AS (
  SELECT source_id, rule_id, src_ip, dst_ip, proto, mode(icmp_type) AS icmp_type, mode(icmp_code) AS icmp_code
  FROM events WHERE proto IN (1, 58) AND icmp_type IS NOT NULL
  GROUP BY source_id, rule_id, src_ip, dst_ip, proto
)
SELECT f.start_time, f.first_seen, f.last_seen, f.events, f.action, f.proto, f.src_ip, f.dst_ip, f.sport, f.dport,
       f.tcp_flags, s.node, f.rule_id, r.kind, r.namespace, r.name, r.tier, r.revision, r.direction, r.rule,
       r.trigger_kind, se.id, se.type, se.namespace, se.name, se.node, se.labels, se.addresses,
       de.id, de.type, de.namespace, de.name, de.node, de.labels, de.addresses, i.icmp_type, i.icmp_code
FROM flows f
LEFT JOIN sources s ON s.source_id = f.source_id
LEFT JOIN rules r ON r.id = f.rule_id
LEFT JOIN endpoints se ON se.id = f.src_ep
LEFT JOIN endpoints de ON de.id = f.dst_ep
LEFT JOIN icmp i ON f.proto IN (1, 58) AND i.source_id = f.source_id AND i.rule_id IS NOT DISTINCT FROM f.rule_id
                AND i.src_ip = f.src_ip AND i.dst_ip = f.dst_ip AND i.proto = f.proto
WHERE f.action IN ('Allow', 'Deny') AND f.events > 0 AND {where}
ORDER BY f.first_seen, f.source_id, f.src_ip, f.dst_ip, f.sport, f.dport
"""


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _hubble_endpoint(ep: tuple[Any, ...], ip: str, reporting_node: str | None) -> dict[str, Any]:
    ep_id, kind, namespace, name, node, labels, addresses = ep
    labels = list(labels or [])
    if ep_id is None:
        return {"identity": RESERVED_IDENTITY["world"], "labels": ["reserved:world", f"flowtui:type={NO_ENDPOINT}"]}
    if kind == "wep":
        out_labels = [f"k8s:{label}" for label in labels] + [f"k8s:io.kubernetes.pod.namespace={namespace}"]
        identity = 256 + zlib.crc32("\0".join([namespace or "", *labels]).encode()) % 65000
        return {"ID": int(ep_id), "identity": identity, "namespace": namespace, "labels": out_labels,
                "pod_name": name}
    if kind in ("hep", "node"):
        reserved = "host" if node is not None and node == reporting_node else "remote-node"
    else:
        reserved = "world"
    out_labels = [f"reserved:{reserved}", *(f"k8s:{label}" for label in labels)]
    if kind == "netset":
        out_labels += [f"cidr:{cidr}" for cidr in addresses or []]
    out_labels += [f"flowtui:type={kind}", f"flowtui:name={name}"]
    doc: dict[str, Any] = {"identity": RESERVED_IDENTITY[reserved], "labels": out_labels}
    if namespace:
        doc["namespace"] = namespace
    return doc


def _hubble_policy(kind: str, namespace: str | None, name: str, tier: str | None, revision: int | None,
                   rule: int | None, action: str, trigger_kind: str | None) -> dict[str, Any]:
    hubble_kind = HUBBLE_KIND.get(kind, kind)
    labels = []
    if kind in HUBBLE_KIND:  # a policy someone wrote: the labels Cilium gives its policies
        labels += [f"k8s:io.cilium.k8s.policy.derived-from={hubble_kind}", f"k8s:io.cilium.k8s.policy.name={name}"]
        if namespace:
            labels.append(f"k8s:io.cilium.k8s.policy.namespace={namespace}")
    labels += [f"flowtui:kind={kind}", f"flowtui:action={action}"]
    if tier is not None:
        labels.append(f"flowtui:tier={tier}")
    if rule is not None:
        labels.append(f"flowtui:rule={rule}")
    if trigger_kind:
        labels.append(f"flowtui:trigger-kind={trigger_kind}")
    doc: dict[str, Any] = {"name": name, "labels": labels, "revision": str(revision or 0), "kind": hubble_kind}
    if namespace:
        doc["namespace"] = namespace
    return doc


def _l4(proto: int | None, sport: int | None, dport: int | None, flags: int | None,
        icmp_type: int | None, icmp_code: int | None) -> tuple[dict[str, Any], str]:
    layer = L4.get(proto or -1)
    if layer is None:
        return {}, f"IP protocol {proto}"
    if layer.startswith("ICMP"):
        body: dict[str, Any] = {}
        if icmp_type:  # protojson omits zero values
            body["type"] = int(icmp_type)
        if icmp_code:
            body["code"] = int(icmp_code)
        return {layer: body}, layer
    body = {"source_port": int(sport or 0), "destination_port": int(dport or 0)}
    if layer == "TCP":
        set_flags = [name for name, bit in TCP_FLAGS if (flags or 0) & bit]
        if set_flags:
            body["flags"] = {name: True for name in set_flags}
        return {layer: body}, ("TCP Flags: " + ", ".join(set_flags) if set_flags else "TCP")
    return {layer: body}, layer


def flow_objects(con: duckdb.DuckDBPyConnection, window: Window = EVERYTHING) -> Iterator[dict[str, Any]]:
    """Hubble `GetFlowsResponse` objects for the store's Allow/Deny flow rows in `window`."""
    cursor = con.execute(_EXPORT_SQL.format(where=window.sql("f.start_time")))
    while batch := cursor.fetchmany(4096):
        for row in batch:
            yield from _row_objects(row)


def _row_objects(row: tuple[Any, ...]) -> Iterator[dict[str, Any]]:
    (start, first, last, events, action, proto, src_ip, dst_ip, sport, dport, tcp_flags, node, rule_id, kind,
     pol_ns, pol_name, tier, revision, direction, rule, trigger_kind) = row[:21]
    src_ep, dst_ep = row[21:28], row[28:35]
    icmp_type, icmp_code = row[35], row[36]
    l4, summary = _l4(proto, sport, dport, tcp_flags, icmp_type, icmp_code)
    flow: dict[str, Any] = {
        "verdict": VERDICT[action],
        "IP": {"source": src_ip, "destination": dst_ip, "ipVersion": "IPv6" if ":" in src_ip else "IPv4"},
        "l4": l4,
        "source": _hubble_endpoint(src_ep, src_ip, node),
        "destination": _hubble_endpoint(dst_ep, dst_ip, node),
        "Type": "L3_L4",
        "event_type": {"type": POLICY_VERDICT_EVENT},
        "is_reply": False,
        "Summary": summary,
    }
    if node:
        flow["node_name"] = node
    if direction in ("ingress", "egress"):
        flow["traffic_direction"] = direction.upper()
    if action == "Deny":
        flow["drop_reason_desc"] = "POLICY_DENIED" if kind is None or kind in IMPLICIT else "POLICY_DENY"
    if kind is not None and direction in ("ingress", "egress"):
        verb = "allowed" if action == "Allow" else "denied"
        flow[f"{direction}_{verb}_by"] = [
            _hubble_policy(kind, pol_ns, pol_name, tier, revision, rule, action, trigger_kind)]
    n = max(int(events), 1)
    first = first or start
    last = last or first
    step = (last - first) / (n - 1) if n > 1 else timedelta(0)
    key = f"{start}|{node}|{rule_id}|{proto}|{src_ip}|{sport}|{dst_ip}|{dport}"
    for k in range(n):
        when = _time(first + step * k)
        yield {"flow": {"time": when, "uuid": str(uuid.uuid5(_UUID_NS, f"{key}|{k}")), **flow},
               "node_name": node or "", "time": when}


def write_hubble(con: duckdb.DuckDBPyConnection, out: IO[str], window: Window = EVERYTHING) -> int:
    """Write `hubble observe -o json` lines; returns how many."""
    n = 0
    for obj in flow_objects(con, window):
        out.write(json.dumps(obj, separators=(",", ":")))
        out.write("\n")
        n += 1
    return n


# ------------------------------------------------------------------------------------------------
# In: Hubble JSON -> store


@dataclass(frozen=True)
class RuleKey:
    kind: str
    namespace: str | None
    name: str
    tier: str | None
    revision: int
    direction: str
    rule: int | None
    action: str
    trigger_kind: str | None


@dataclass(frozen=True)
class EndpointKey:
    type: str
    namespace: str | None
    name: str
    labels: tuple[str, ...]


@dataclass
class Observation:
    time: datetime
    node: str
    action: str
    proto: int
    src_ip: str
    dst_ip: str
    sport: int | None
    dport: int | None
    icmp_type: int | None
    icmp_code: int | None
    tcp_flags: int | None
    rule: RuleKey
    src: EndpointKey | None
    dst: EndpointKey | None
    src_addresses: tuple[str, ...]
    dst_addresses: tuple[str, ...]
    decision: bool  # a policy verdict, a drop, or an event naming a policy
    opening: bool  # not a reply; for TCP, SYN without ACK


@dataclass
class Parsed:
    observations: list[Observation] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    lost: dict[str, int] = field(default_factory=dict)  # node ('' = unknown) -> events Hubble lost
    lines: int = 0


class HubbleFormatError(ValueError):
    """A line that is not JSON (with its line number)."""


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    text = text.strip().replace("Z", "+00:00")
    head, _, frac = text.partition(".")
    if frac:  # Go writes nanoseconds; Python takes at most microseconds
        digits = "".join(ch for ch in frac if ch.isdigit())
        zone = frac[len(digits):]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when


def _flowtui_labels(labels: Iterable[str]) -> dict[str, str]:
    out = {}
    for label in labels:
        if label.startswith("flowtui:"):
            key, _, value = label[len("flowtui:"):].partition("=")
            out[key] = value
    return out


def _clean_labels(labels: Iterable[str]) -> tuple[str, ...]:
    out = []
    for label in labels:
        source, sep, rest = label.partition(":")
        if sep and source in ("reserved", "flowtui", "cidr"):
            continue
        if sep and source in LABEL_SOURCES:
            label = rest
        if label.startswith(DROPPED_LABELS):
            continue
        if label not in out:
            out.append(label)
    return tuple(out)


def _endpoint(doc: Any, ip: str, node: str) -> tuple[EndpointKey | None, tuple[str, ...]]:
    doc = doc if isinstance(doc, dict) else {}
    labels = [str(x) for x in doc.get("labels") or []]
    extra = _flowtui_labels(labels)
    namespace = doc.get("namespace") or None
    clean = _clean_labels(labels)
    cidrs = tuple(label[len("cidr:"):] for label in labels if label.startswith("cidr:"))
    kind = extra.get("type")
    if kind == NO_ENDPOINT:
        return None, ()
    if kind:
        name = extra.get("name") or ip
    elif doc.get("pod_name"):
        kind, name = "wep", str(doc["pod_name"])
    elif "reserved:host" in labels:
        kind, name = "node", node
    elif "reserved:remote-node" in labels:
        kind, name = "node", "remote-node"
    elif "reserved:world" in labels or not labels:
        kind, name = "net", net_name(ip)
    else:
        reserved = [label.split(":", 1)[1] for label in labels if label.startswith("reserved:")]
        kind, name = "external", reserved[0] if reserved else ip
    addresses = cidrs if kind == "netset" and cidrs else (ip,)
    return EndpointKey(kind, namespace, name, clean), addresses


def _rule(flow: dict[str, Any], action: str, direction: str, verdict: str) -> RuleKey:
    verb = "allowed" if action == "Allow" else "denied"
    policies = flow.get(f"{direction}_{verb}_by") or []
    if not policies and verdict == "AUDIT":
        policies = flow.get(f"{direction}_denied_by") or []
    policy = policies[0] if policies and isinstance(policies[0], dict) else None
    if policy is None:
        reason = str(flow.get("drop_reason_desc") or "POLICY_DENIED")
        name = "no-policy" if action == "Allow" else reason
        if verdict == "AUDIT":
            name = f"audit:{reason}"
        return RuleKey("Default", None, name, None, 0, direction, -1, action, None)
    labels = [str(x) for x in policy.get("labels") or []]
    extra = _flowtui_labels(labels)
    derived = next((label.split("=", 1)[1] for label in labels
                    if label.startswith(("k8s:io.cilium.k8s.policy.derived-from=",
                                         "io.cilium.k8s.policy.derived-from="))), None)
    hubble_kind = str(policy.get("kind") or derived or "CiliumNetworkPolicy")
    kind = extra.get("kind") or FROM_HUBBLE_KIND.get(hubble_kind, hubble_kind)
    try:
        revision = int(policy.get("revision") or 0)
    except (TypeError, ValueError):
        revision = 0
    rule = int(extra["rule"]) if extra.get("rule", "").lstrip("-").isdigit() else None
    if rule is None and kind in IMPLICIT:
        rule = -1
    return RuleKey(kind, policy.get("namespace") or None, str(policy.get("name") or "?"), extra.get("tier"),
                   revision, direction, rule, extra.get("action") or action, extra.get("trigger-kind"))


def parse_line(doc: dict[str, Any], parsed: Parsed) -> None:
    """One JSON object of `hubble observe -o json` output, into `parsed` (kept or counted as skipped)."""
    if "lost_events" in doc:
        lost = doc["lost_events"] or {}
        node = str(doc.get("node_name") or "")
        parsed.lost[node] = parsed.lost.get(node, 0) + int(lost.get("num_events_lost") or 0)
        return
    flow = doc.get("flow", doc if "IP" in doc else None)
    if not isinstance(flow, dict):
        parsed.skipped["not_a_flow"] += 1
        return
    ip = flow.get("IP") or {}
    if flow.get("Type") == "L7" or flow.get("l7") or not ip.get("source") or not ip.get("destination"):
        parsed.skipped["l7_or_no_ip"] += 1
        return
    verdict = str(flow.get("verdict") or "")
    action = ACTION.get(verdict)
    if action is None:
        parsed.skipped[f"verdict_{verdict.lower() or 'unknown'}"] += 1
        return
    if flow.get("is_reply") is True or flow.get("reply") is True:
        parsed.skipped["reply"] += 1
        return
    when = _parse_time(flow.get("time") or doc.get("time"))
    if when is None:
        parsed.skipped["no_time"] += 1
        return
    l4 = flow.get("l4") or {}
    proto, sport, dport, icmp_type, icmp_code, flags = None, None, None, None, None, None
    for layer, number in L4_PROTO.items():
        body = l4.get(layer)
        if isinstance(body, dict):
            proto = number
            if layer.startswith("ICMP"):
                icmp_type, icmp_code = int(body.get("type") or 0), int(body.get("code") or 0)
            else:
                sport, dport = int(body.get("source_port") or 0), int(body.get("destination_port") or 0)
            if layer == "TCP" and isinstance(body.get("flags"), dict):
                flags = sum(bit for name, bit in TCP_FLAGS if body["flags"].get(name))
            break
    if proto is None:
        parsed.skipped["no_l4"] += 1
        return
    direction = str(flow.get("traffic_direction") or "").lower()
    if direction not in ("ingress", "egress"):
        direction = "egress" if flow.get("egress_allowed_by") or flow.get("egress_denied_by") else "ingress"
    node = str(flow.get("node_name") or doc.get("node_name") or "unknown")
    event_type = (flow.get("event_type") or {}).get("type")
    named = any(flow.get(f"{d}_{v}_by") for d in ("ingress", "egress") for v in ("allowed", "denied"))
    src, src_addresses = _endpoint(flow.get("source"), ip["source"], node)
    dst, dst_addresses = _endpoint(flow.get("destination"), ip["destination"], node)
    parsed.observations.append(Observation(
        time=when, node=node, action=action, proto=proto, src_ip=ip["source"], dst_ip=ip["destination"],
        sport=sport, dport=dport, icmp_type=icmp_type, icmp_code=icmp_code, tcp_flags=flags,
        rule=_rule(flow, action, direction, verdict), src=src, dst=dst,
        src_addresses=src_addresses, dst_addresses=dst_addresses,
        decision=event_type in (POLICY_VERDICT_EVENT, DROP_EVENT) or verdict in ("DROPPED", "AUDIT") or named,
        opening=flags is None or flags & 0x12 == 0x02,
    ))


def parse_lines(lines: Iterable[str], source: str = "<hubble>") -> Parsed:
    """Parse Hubble JSON lines; then keep decisions, or openings when the file has no decisions."""
    parsed = Parsed()
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        parsed.lines += 1
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HubbleFormatError(f"{source}:{number}: not JSON: {exc.msg}") from exc
        if not isinstance(doc, dict):
            raise HubbleFormatError(f"{source}:{number}: expected one JSON object per line")
        parse_line(doc, parsed)
    observations = parsed.observations
    if any(o.decision for o in observations):
        parsed.skipped["trace_not_a_decision"] += sum(1 for o in observations if not o.decision)
        parsed.observations = [o for o in observations if o.decision]
    else:
        parsed.skipped["trace_not_an_opening"] += sum(1 for o in observations if not o.opening)
        parsed.observations = [o for o in observations if o.opening]
    return parsed


@dataclass
class HubbleImport:
    lines: int
    events: int
    flow_rows: int
    run_id: int
    nodes: list[str]
    rules_added: int
    endpoints_added: int
    skipped: dict[str, int]
    lost: int


def _policy_string(key: RuleKey) -> str:
    if key.kind in CILIUM_SHORT or key.rule is None:
        short = CILIUM_SHORT.get(key.kind, key.kind.lower())
        name = f"{key.namespace}/{key.name}" if key.namespace else key.name
        rule = "-" if key.rule is None else str(key.rule)
        return f"0|{key.tier or 'default'}|{short}:{name}|{key.action.lower()}|{rule}"
    ref = RuleRef(0, key.kind, key.namespace, key.name, key.tier, key.revision, key.direction, key.rule,
                  key.action, key.trigger_kind)
    return policy_hit(ref)


def import_hubble(store: Any, lines: Iterable[str], *, source: str = "<hubble>", bucket_seconds: float = 15.0,
                  keep_events: bool = True) -> HubbleImport:
    """Parse Hubble JSON and write it into `store` (a `flowtui.store.duckdb_store.DuckStore`)."""
    parsed = parse_lines(lines, source)
    obs = parsed.observations
    run_id = store.begin_run({"import": "hubble", "source": source, "bucket": bucket_seconds})
    nodes = sorted({o.node for o in obs} | {n for n in parsed.lost if n})
    source_ids = {node: store.add_source(run_id, None, node, (), 0) for node in nodes}
    # rules: reuse an identical row, else allocate
    existing: dict[RuleKey, int] = {}
    for row in store.query("SELECT id, kind, namespace, name, tier, revision, direction, rule, action, trigger_kind "
                           "FROM rules"):
        existing.setdefault(RuleKey(row[1], row[2], row[3], row[4], int(row[5] or 0), row[6], row[7], row[8],
                                    row[9]), int(row[0]))
    next_rule = store.next_id("rules", "id")
    first_use: dict[RuleKey, datetime] = {}
    for o in obs:
        if o.rule not in first_use or o.time < first_use[o.rule]:
            first_use[o.rule] = o.time
    new_rules = []
    rule_ids: dict[RuleKey, int] = {}
    for key in sorted(first_use, key=lambda k: first_use[k]):
        if key in existing:
            rule_ids[key] = existing[key]
            continue
        rule_ids[key] = next_rule
        new_rules.append({**vars(key), "id": next_rule, "prefix": None, "policy": _policy_string(key),
                          "first_seen": first_use[key]})
        next_rule += 1
    store.insert_rows("rules", new_rules)
    # endpoints: one new revision
    revision = store.next_id("endpoints", "revision")
    next_ep = store.next_id("endpoints", "id")
    ep_ids: dict[EndpointKey, int] = {}
    ep_rows: dict[int, dict[str, Any]] = {}
    loaded_at = min((o.time for o in obs), default=None)
    for o in obs:
        for ep_key, addresses, local in ((o.src, o.src_addresses, o.rule.direction == "egress"),
                                      (o.dst, o.dst_addresses, o.rule.direction == "ingress")):
            if ep_key is None:
                continue
            if ep_key not in ep_ids:
                ep_ids[ep_key] = next_ep
                ep_rows[next_ep] = {"id": next_ep, "revision": revision, "type": ep_key.type,
                                    "namespace": ep_key.namespace, "name": ep_key.name, "node": None,
                                    "labels": list(ep_key.labels), "addresses": [], "loaded_at": loaded_at}
                next_ep += 1
            row = ep_rows[ep_ids[ep_key]]
            for address in addresses:
                if address not in row["addresses"]:
                    row["addresses"].append(address)
            if local and row["node"] is None and ep_key.type in ("wep", "node", "hep"):
                row["node"] = ep_key.name if ep_key.type == "node" and ep_key.name != "remote-node" else o.node
    store.insert_rows("endpoints", list(ep_rows.values()))
    events = _events_table(obs, source_ids, rule_ids, ep_ids)
    if keep_events:
        store.insert("events", events)
    flows = _aggregate(events, bucket_seconds)
    store.insert("flows", flows)
    now = max((o.time for o in obs), default=None) or datetime.now()
    store.insert_rows("stats", [
        {"time": now, "run_id": run_id, "source_id": source_ids[node], "name": "received",
         "value": sum(1 for o in obs if o.node == node)} for node in nodes
    ] + [
        {"time": now, "run_id": run_id, "source_id": None, "name": f"hubble_skipped_{reason}", "value": n}
        for reason, n in sorted(parsed.skipped.items())
    ])
    store.insert_rows("loss", [
        {"time": now, "run_id": run_id, "source_id": source_ids.get(node), "cause": "hubble_lost_events",
         "events": n, "detail": "Hubble LostEvent records in the imported file"}
        for node, n in sorted(parsed.lost.items())
    ])
    store.end_run(run_id)
    return HubbleImport(
        lines=parsed.lines, events=len(obs), flow_rows=flows.num_rows, run_id=run_id, nodes=nodes,
        rules_added=len(new_rules), endpoints_added=len(ep_rows),
        skipped={k: v for k, v in parsed.skipped.items() if v},
        lost=sum(parsed.lost.values()),
    )


def _events_table(obs: list[Observation], source_ids: dict[str, int], rule_ids: dict[RuleKey, int],
                  ep_ids: dict[EndpointKey, int]) -> pa.Table:
    n = len(obs)
    cols: dict[str, list[Any]] = {
        "time": [o.time for o in obs],
        "source_id": [source_ids[o.node] for o in obs],
        "action": [o.action for o in obs],
        "rule_id": [rule_ids[o.rule] for o in obs],
        "ip_version": [6 if ":" in o.src_ip else 4 for o in obs],
        "proto": [o.proto for o in obs],
        "src_ip": [o.src_ip for o in obs],
        "dst_ip": [o.dst_ip for o in obs],
        "sport": [o.sport for o in obs],
        "dport": [o.dport for o in obs],
        "icmp_type": [o.icmp_type for o in obs],
        "icmp_code": [o.icmp_code for o in obs],
        "tcp_flags": [o.tcp_flags for o in obs],
        "src_ep": [ep_ids.get(o.src) if o.src else None for o in obs],
        "dst_ep": [ep_ids.get(o.dst) if o.dst else None for o in obs],
    }
    arrays = [pa.array(cols[c.name], c.arrow) if c.name in cols else pa.nulls(n, c.arrow)
              for c in schema.EVENTS.columns]
    return pa.Table.from_arrays(arrays, schema=schema.EVENTS.arrow_schema)


def _aggregate(events: pa.Table, bucket_seconds: float) -> pa.Table:
    """Events into flow rows per bucket and key, like the collector (one packet per event)."""
    con = duckdb.connect()
    try:
        con.register("observed", events)
        micros = max(1, int(round(bucket_seconds * 1e6)))
        result = con.sql(f"""
            SELECT time_bucket(INTERVAL {micros} MICROSECONDS, time) AS start_time,
                   time_bucket(INTERVAL {micros} MICROSECONDS, time) + INTERVAL {micros} MICROSECONDS AS end_time,
                   source_id, action, rule_id, NULL::VARCHAR AS prefix, proto, src_ip, dst_ip, sport, dport,
                   any_value(src_ep) AS src_ep, any_value(dst_ep) AS dst_ep, count(*) AS events, count(*) AS packets,
                   NULL::BIGINT AS bytes, 0::BIGINT AS reply_packets, 0::BIGINT AS reply_bytes,
                   CASE WHEN action = 'Allow' THEN count(*) ELSE 0 END AS connections_started,
                   0::BIGINT AS connections_completed, bit_or(tcp_flags) AS tcp_flags,
                   min(time) AS first_seen, max(time) AS last_seen, 'hubble' AS count_source
            FROM observed
            GROUP BY 1, 2, source_id, action, rule_id, proto, src_ip, dst_ip, sport, dport
            ORDER BY 1, source_id""").to_arrow_table()
    finally:
        con.close()
    return result.cast(schema.FLOWS.arrow_schema)
