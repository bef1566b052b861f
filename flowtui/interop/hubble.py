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
  `egress_denied_by`, as a Hubble `Policy` {name, namespace, kind, revision, labels}, followed by
  the row's `other_rule_ids` (every further policy an import recorded). `kind` uses
  the names Calico's Whisker uses (GlobalNetworkPolicy, CalicoNetworkPolicy, NetworkPolicy for
  Kubernetes', Profile, EndOfTier: then `name` is the trigger policy);
- rows with an `l7` summary (imported proxy records) as access-log events (`Type` L7, event type
  129) with the `l7` object the summary holds (HTTP method, URL and status; DNS query, types and
  rcode; Kafka API key, topic and error code) and nothing it does not (record type, headers,
  latency were not kept).

Hubble has no place for a tier, a rule index, an endpoint type or a non-pod name, so they travel
as extra labels with the source `flowtui:` (`flowtui:tier=default`, `flowtui:rule=2`,
`flowtui:type=hep`, ...): other tools ignore them, `import` reads them back, so an export
imports into the same flows. Pass and Log rows are intermediate steps with no Hubble verdict and
are not exported; conntrack rows (counts only) neither.

**In** (`parse_lines`; `flowtui import hubble FILE`, `whatif --flows FILE`): Hubble JSON from
Cilium (or from the export above) into observations (`flowtui.interop.observed`), which the
import writes into a store and what-if reads as flows. Kept: policy-verdict events, drops,
flows redirected to the proxy (`REDIRECTED`: attributed to a `ProxyRedirect` rule named after
`policy_match_type`, never to "no policy"), L7 requests (HTTP, DNS, Kafka: they carry IP and L4;
their summary such as `http GET http://x/metrics` is kept as the observation's `l7` and the
store's `l7` column) and events
that name a policy; when a file has none of those (a plain trace capture), forwarded connection
openings (no replies, TCP only SYN without ACK) instead. Skipped, and counted: replies (L7
responses too), other trace points, flows without addresses or L4. Lines that cannot be read are
problems with their line number; the rest go on. Hubble `lost_events` are recorded in the `loss`
table (cause `hubble_lost_events`). Endpoints keep their pod labels, their namespace's labels
(`pcns.<key>`, as Calico names them) and service account (`projectcalico.org/serviceaccount`).
A flow naming several policies for its verdict keeps them all: the first decides (`rule_id`), the
others follow in Hubble's order (`other_rule_ids`). Each kept event is aggregated into `flows` per
time bucket (and L7 summary) like the collector does
(`count_source` = `hubble`, one packet per event, no byte counts). Policies become `rules` rows
(an existing identical rule is reused; Cilium gives no rule index, so `rule` is NULL).
Dataplane defaults, failsafes and proxy redirects are no policy: the export names none for them.
"""

from __future__ import annotations

import functools
import json
import uuid
import zlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import duckdb

from flowtui.interop.calico import net_name
from flowtui.interop.observed import (
    IMPLICIT,
    EndpointKey,
    ImportResult,
    Observation,
    Parsed,
    RuleKey,
    digest,
    json_lines,
    write_import,
)
from flowtui.interop.window import EVERYTHING, Window

POLICY_VERDICT_EVENT = 5  # Cilium monitor MessageTypePolicyVerdict
ACCESS_LOG_EVENT = 129  # Cilium monitor MessageTypeAccessLog: a proxy's L7 record
DROP_EVENT = 1
VERDICT = {"Allow": "FORWARDED", "Deny": "DROPPED"}
ACTION = {"FORWARDED": "Allow", "REDIRECTED": "Allow", "TRANSLATED": "Allow", "TRACED": "Allow",
          "AUDIT": "Allow", "DROPPED": "Deny"}
L4 = {6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMPv4", 58: "ICMPv6"}
L4_PROTO = {v: k for k, v in L4.items()}
TCP_FLAGS = (("FIN", 1), ("SYN", 2), ("RST", 4), ("PSH", 8), ("ACK", 16), ("URG", 32), ("ECE", 64), ("CWR", 128))
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
RESERVED_IDENTITY = {"host": 1, "world": 2, "remote-node": 6}
LABEL_SOURCES = ("k8s", "container", "any", "unspec", "cni", "kvstore", "cilium-generated")
DROPPED_LABELS = ("io.kubernetes.pod.namespace=", "io.cilium.k8s.")
# Cilium's namespace labels and service account, kept as Calico names them on its endpoints
CILIUM_NS_LABEL = "io.cilium.k8s.namespace.labels."
CILIUM_SA_LABEL = "io.cilium.k8s.policy.serviceaccount="
NS_LABEL = "pcns."  # Calico: a namespace's labels on its pods' profile
SA_LABEL = "projectcalico.org/serviceaccount="
NO_ENDPOINT = "none"
# Rules no policy wrote: exported without `*_allowed_by` / `*_denied_by` (Hubble would name a policy)
NOT_A_POLICY = ("Default", "Failsafe", "ProxyRedirect")
# Cilium's monitor API: what part of a policy matched (flow.policy_match_type)
POLICY_MATCH = {0: "none", 1: "L3-only", 2: "L3-L4", 3: "L4-only", 4: "all"}
DNS_RCODE = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
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
       de.id, de.type, de.namespace, de.name, de.node, de.labels, de.addresses, i.icmp_type, i.icmp_code,
       {imported}
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


def _cilium_label(label: str) -> str:
    """Namespace labels and the service account as Cilium writes them (the reverse of `_clean_labels`)."""
    if label.startswith(NS_LABEL):
        return CILIUM_NS_LABEL + label[len(NS_LABEL):]
    if label.startswith(SA_LABEL):
        return CILIUM_SA_LABEL + label[len(SA_LABEL):]
    return label


def _hubble_endpoint(ep: tuple[Any, ...], ip: str, reporting_node: str | None) -> dict[str, Any]:
    ep_id, kind, namespace, name, node, labels, addresses = ep
    labels = list(labels or [])
    if ep_id is None:
        return {"identity": RESERVED_IDENTITY["world"], "labels": ["reserved:world", f"flowtui:type={NO_ENDPOINT}"]}
    if kind == "wep":
        out_labels = [f"k8s:{_cilium_label(label)}" for label in labels] + [
            f"k8s:io.kubernetes.pod.namespace={namespace}"]
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
    have = {str(r[0]) for r in con.execute("DESCRIBE flows").fetchall()}  # a store older than the L7 columns
    imported = ", ".join(f"f.{c}" if c in have else f"NULL AS {c}" for c in ("l7", "other_rule_ids"))
    rules = {int(r[0]): r[1:] for r in con.execute(
        "SELECT id, kind, namespace, name, tier, revision, rule, action, trigger_kind FROM rules").fetchall()}
    cursor = con.execute(_EXPORT_SQL.format(where=window.sql("f.start_time"), imported=imported))
    while batch := cursor.fetchmany(4096):
        for row in batch:
            yield from _row_objects(row, rules)


def _l7_record(summary: str) -> dict[str, Any]:
    """The Hubble `l7` object a stored summary (`_l7_summary`) came from, as far as it says: nothing
    it does not hold (the record type, latency and headers were not kept, so they are not written)."""
    words = summary.split(" ")
    kind, rest = words[0], words[1:]
    if kind == "http" and rest:
        http: dict[str, Any] = {"method": rest[0]}
        if len(rest) > 1:
            http["url"] = rest[1]
        if len(rest) > 2 and rest[2].isdigit():
            http["code"] = int(rest[2])
        return {"http": http}
    if kind == "dns" and len(rest) >= 2:
        rcodes = {v: k for k, v in DNS_RCODE.items()}
        code = rcodes.get(rest[-1], int(rest[-1]) if rest[-1].isdigit() else None)
        dns: dict[str, Any] = {"query": rest[0]}
        if len(rest) == 3:
            dns["qtypes"] = rest[1].split(",")
        if code:  # protojson omits zero
            dns["rcode"] = code
        return {"dns": dns}
    if kind == "kafka" and len(rest) == 3:
        kafka: dict[str, Any] = {"api_key": rest[0], "topic": rest[1]}
        if rest[2].lstrip("-").isdigit() and int(rest[2]):
            kafka["error_code"] = int(rest[2])
        return {"kafka": kafka}
    return {}


def _row_objects(row: tuple[Any, ...], rules: dict[int, tuple[Any, ...]]) -> Iterator[dict[str, Any]]:
    (start, first, last, events, action, proto, src_ip, dst_ip, sport, dport, tcp_flags, node, rule_id, kind,
     pol_ns, pol_name, tier, revision, direction, rule, trigger_kind) = row[:21]
    src_ep, dst_ep = row[21:28], row[28:35]
    icmp_type, icmp_code, l7, other_rule_ids = row[35:39]
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
    if l7 is not None:  # a proxy's access-log record (Cilium MessageTypeAccessLog)
        flow.update({"Type": "L7", "event_type": {"type": ACCESS_LOG_EVENT}, "l7": _l7_record(l7), "Summary": l7})
    if action == "Deny":
        flow["drop_reason_desc"] = "POLICY_DENIED" if kind is None or kind in IMPLICIT else "POLICY_DENY"
    if kind == "ProxyRedirect":
        flow["verdict"] = "REDIRECTED"
        match = {v: k for k, v in POLICY_MATCH.items()}.get((pol_name or "").removeprefix("policy-match:"))
        if match:
            flow["policy_match_type"] = match
    elif kind is not None and kind not in NOT_A_POLICY and direction in ("ingress", "egress"):
        verb = "allowed" if action == "Allow" else "denied"
        flow[f"{direction}_{verb}_by"] = [
            _hubble_policy(kind, pol_ns, pol_name, tier, revision, rule, action, trigger_kind),
            *(_hubble_policy(*rules[i]) for i in other_rule_ids or () if i in rules)]
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


@functools.lru_cache(maxsize=65536)  # a capture repeats the label sets of its few identities
def _clean_labels(labels: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for label in labels:
        source, sep, rest = label.partition(":")
        if sep and source in ("reserved", "flowtui", "cidr"):
            continue
        if sep and source in LABEL_SOURCES:
            label = rest
        if label.startswith(CILIUM_NS_LABEL):
            label = NS_LABEL + label[len(CILIUM_NS_LABEL):]
        elif label.startswith(CILIUM_SA_LABEL):
            label = SA_LABEL + label[len(CILIUM_SA_LABEL):]
        elif label.startswith(DROPPED_LABELS):
            continue
        if label not in out:
            out.append(label)
    return tuple(out)


def _endpoint(doc: Any, ip: str, node: str) -> tuple[EndpointKey | None, tuple[str, ...]]:
    doc = doc if isinstance(doc, dict) else {}
    labels = tuple(str(x) for x in doc.get("labels") or [])
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


def _policies(flow: dict[str, Any], action: str, direction: str, verdict: str) -> list[dict[str, Any]]:
    """The policies Hubble lists for the verdict (every one that allowed, or denied, the flow)."""
    verb = "allowed" if action == "Allow" else "denied"
    policies = flow.get(f"{direction}_{verb}_by") or []
    if not policies and verdict == "AUDIT":
        policies = flow.get(f"{direction}_denied_by") or []
    if not isinstance(policies, list):
        raise ValueError(f"{direction}_{verb}_by: {type(policies).__name__}, not a list of policies")
    return [p for p in policies if isinstance(p, dict)]


def _rules(flow: dict[str, Any], action: str, direction: str, verdict: str) -> tuple[RuleKey, tuple[RuleKey, ...]]:
    """The deciding rule (Hubble's first policy) and the further ones it lists, in its order."""
    policies = _policies(flow, action, direction, verdict)
    first = _rule(flow, policies[0] if policies else None, action, direction, verdict)
    others = tuple(dict.fromkeys(_rule(flow, p, action, direction, verdict) for p in policies[1:]))
    return first, tuple(k for k in others if k != first)


def _rule(flow: dict[str, Any], policy: dict[str, Any] | None, action: str, direction: str, verdict: str) -> RuleKey:
    if policy is None and verdict == "REDIRECTED":  # a policy matched and sent it to the proxy
        match = POLICY_MATCH.get(int(flow.get("policy_match_type") or 0), str(flow.get("policy_match_type")))
        return RuleKey("ProxyRedirect", None, f"policy-match:{match}", None, 0, direction, -1, action, None)
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


def _bounded(body: dict[str, Any], name: str, top: int) -> int:
    value = body.get(name) or 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise ValueError(f"{name}: {value!r} is not a number from 0 to {top}")
    return value


def _l7_summary(l7: dict[str, Any]) -> str:
    """`GET http://x/metrics 200`, `dns www.example.com. A NOERROR`, `kafka produce orders 0`."""
    if isinstance(l7.get("http"), dict):
        http = l7["http"]
        parts = [str(http.get("method") or ""), str(http.get("url") or "")]
        if http.get("code"):
            parts.append(str(http["code"]))
        return "http " + " ".join(p for p in parts if p)
    if isinstance(l7.get("dns"), dict):
        dns = l7["dns"]
        qtypes = ",".join(str(q) for q in dns.get("qtypes") or [])
        return " ".join(p for p in ("dns", str(dns.get("query") or ""), qtypes,
                                     DNS_RCODE.get(int(dns.get("rcode") or 0), str(dns.get("rcode")))) if p)
    if isinstance(l7.get("kafka"), dict):
        kafka = l7["kafka"]
        return " ".join(p for p in ("kafka", str(kafka.get("api_key") or ""), str(kafka.get("topic") or ""),
                                     str(kafka.get("error_code") or 0)) if p)
    return "l7"


def parse_line(doc: dict[str, Any], parsed: Parsed, number: int = 0) -> None:
    """One JSON object of `hubble observe -o json` output, into `parsed` (kept, counted as skipped,
    or recorded as a problem with its line `number`)."""
    if "lost_events" in doc:
        lost = doc["lost_events"] or {}
        node = str(doc.get("node_name") or "")
        count = lost.get("num_events_lost") or 0
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 2**63:
            raise ValueError(f"num_events_lost: {count!r} is not a count")
        parsed.lost[node] = parsed.lost.get(node, 0) + count
        return
    flow = doc.get("flow", doc if "IP" in doc else None)
    if not isinstance(flow, dict):
        if any(k in doc for k in ("node_status", "debug_event", "agent_event")):
            parsed.skipped["not_a_flow"] += 1
        else:
            parsed.problem(number, "not_a_flow", "no `flow` object (is this `hubble observe -o json` output?)")
        return
    ip = flow.get("IP") or {}
    if not isinstance(ip, dict) or not ip.get("source") or not ip.get("destination"):
        parsed.skipped["no_ip"] += 1  # e.g. L7 records of a proxy that saw no addresses, or non-IP traces
        return
    l7 = flow.get("l7") if isinstance(flow.get("l7"), dict) else None
    verdict = str(flow.get("verdict") or "")
    action = ACTION.get(verdict)
    if action is None:
        parsed.skipped[f"verdict_{verdict.lower() or 'unknown'}"] += 1
        return
    if flow.get("is_reply") is True or flow.get("reply") is True or (l7 or {}).get("type") == "RESPONSE":
        parsed.skipped["reply"] += 1
        return
    when = _parse_time(flow.get("time") or doc.get("time"))
    if when is None and (flow.get("time") or doc.get("time")):
        parsed.problem(number, "no_time", f"flow time {flow.get('time') or doc.get('time')!r} is not RFC 3339")
        return
    l4 = flow.get("l4") or {}
    proto, sport, dport, icmp_type, icmp_code, flags = None, None, None, None, None, None
    for layer, number_ in L4_PROTO.items():
        body = l4.get(layer)
        if isinstance(body, dict):
            proto = number_
            if layer.startswith("ICMP"):
                icmp_type, icmp_code = _bounded(body, "type", 255), _bounded(body, "code", 255)
            else:
                sport, dport = _bounded(body, "source_port", 65535), _bounded(body, "destination_port", 65535)
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
    rule, others = _rules(flow, action, direction, verdict)
    parsed.observations.append(Observation(
        time=when, node=node, action=action, proto=proto, src_ip=ip["source"], dst_ip=ip["destination"],
        sport=sport, dport=dport, icmp_type=icmp_type, icmp_code=icmp_code, tcp_flags=flags,
        rule=rule, others=others, src=src, dst=dst,
        src_addresses=src_addresses, dst_addresses=dst_addresses,
        # a proxy's L7 request record is a decision too: the L7 policy allowed (or denied) it
        decision=event_type in (POLICY_VERDICT_EVENT, DROP_EVENT) or verdict in ("DROPPED", "AUDIT", "REDIRECTED")
        or named or l7 is not None,
        opening=flags is None or flags & 0x12 == 0x02, line=number,
        l7=_l7_summary(l7) if l7 is not None else None,
    ))


def parse_lines(lines: Iterable[str], source: str = "<hubble>") -> Parsed:
    """Parse Hubble JSON lines; then keep decisions, or openings when the file has no decisions.
    A line that cannot be read is recorded in `problems` with its number and the rest go on."""
    parsed = Parsed("hubble")
    for number, doc in json_lines(lines, parsed):
        if not isinstance(doc, dict):
            parsed.problem(number, "not_an_object", f"expected one JSON object per line, got {type(doc).__name__}")
            continue
        try:
            parse_line(doc, parsed, number)
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError, OSError, RecursionError) as exc:
            parsed.problem(number, "bad_field", f"{type(exc).__name__}: {exc}")
    observations = parsed.observations
    if any(o.decision for o in observations):
        parsed.skipped["trace_not_a_decision"] += sum(1 for o in observations if not o.decision)
        parsed.observations = [o for o in observations if o.decision]
    else:
        parsed.skipped["trace_not_an_opening"] += sum(1 for o in observations if not o.opening)
        parsed.observations = [o for o in observations if o.opening]
    return parsed


def import_hubble(store: Any, lines: Iterable[str], *, source: str = "<hubble>", bucket_seconds: float = 15.0,
                  keep_events: bool = True) -> ImportResult:
    """Parse Hubble JSON lines and write them into `store` (a `flowtui.store.duckdb_store.DuckStore`)."""
    text = list(lines)
    return write_import(store, parse_lines(text, source), source=source, sha256=digest("".join(text).encode()),
                        bucket_seconds=bucket_seconds, keep_events=keep_events)
