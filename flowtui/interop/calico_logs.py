"""Calico's flow logs into flow observations (`flowtui import calico`, `whatif --flows`).

Three encodings, told apart per line:

- **flows.log** (Calico Enterprise/Cloud, `/var/log/calico/flowlogs/flows.log`): flat JSON with
  `source_type` `wep|hep|ns|net`, `source_name` (`-` when aggregated: then `source_name_aggr`),
  `source_ip`/`dest_ip` when not aggregated away, labels as `{"labels": [...]}`, lowercase
  `action`/`reporter`, unix-second times, `num_flows*` counts and the policy trace as strings in
  `policies.all_policies` (older) or `enforced_policies` + `pending_policies` (newer);
- **Goldmane** NDJSON (Calico v3.30+): a nested `key`, integer enums, labels as lists;
- **whisker-backend** JSON (what `flowtui export --format calico` writes by default): string
  enums, RFC 3339 times, labels joined with ` | `, structured policy hits.

Policy strings come in two syntaxes, both `<index>|<tier>|<name>|<action>|<rule index>`:
before Calico 3.32 the name is `[<ns>/][staged:]<tier>.<policy>` (`knp.default.<name>` for
Kubernetes', `__PROFILE__.<profile>` for profiles); from 3.32 it is kind-qualified,
`<kind>:[<ns>/]<name>` with kinds `gnp np knp sgnp snp sknp kcnp pro` (Goldmane's
`HitFromString`). Rule index -1 is the end of the tier: the name is the policy that triggered it,
and the import keeps it as the EndOfTier rule's trigger. Staged hits (pending verdicts) are kept
apart from the enforced trace; so are Pass steps before the verdict.

A record is one aggregated observation: its window, the reporter's direction (`src` = egress,
`dst` = ingress), packets and bytes (the original direction is `in` at the destination, `out` at
the source), connections started and completed. A line that cannot be read is a `Problem` with
its number; the rest of the file goes on.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from flowtui.interop.calico import ACTION_ENUM, CALICO_KIND, ENDPOINT_ENUM, KIND_ENUM, PROTO, REPORTER_ENUM
from flowtui.interop.observed import EndpointKey, Observation, Parsed, RuleKey, json_lines

SHORT_KINDS = {  # 3.32's kind-qualified names -> flowtui's kinds
    "gnp": "GlobalNetworkPolicy", "np": "NetworkPolicy", "knp": "KubernetesNetworkPolicy",
    "sgnp": "StagedGlobalNetworkPolicy", "snp": "StagedNetworkPolicy", "sknp": "StagedKubernetesNetworkPolicy",
    "kcnp": "ClusterNetworkPolicy", "pro": "Profile", "dp": "Default",
}
FROM_CALICO_KIND = {v: k for k, v in CALICO_KIND.items()} | {"ClusterNetworkPolicy": "ClusterNetworkPolicy"}
ENDPOINT_TYPE = {"wep": "wep", "hep": "hep", "ns": "netset", "net": "net",
                 "WorkloadEndpoint": "wep", "HostEndpoint": "hep", "NetworkSet": "netset", "Network": "net"}
PROTO_NUMBER = {v: k for k, v in PROTO.items()} | {"icmp6": 58, "ipv6-icmp": 58}
_ENUM_NAMES = {
    "action": {v: k for k, v in ACTION_ENUM.items()}, "reporter": {v: k for k, v in REPORTER_ENUM.items()},
    "type": {v: k for k, v in ENDPOINT_ENUM.items()}, "kind": {v: k for k, v in KIND_ENUM.items()},
}


class RecordError(ValueError):
    """A record that is JSON but not a Calico flow record; the message names the field."""


def _action(text: Any) -> str:
    value = str(text or "").capitalize()
    if value not in ("Allow", "Deny", "Pass"):
        raise RecordError(f"action: {text!r} is not allow, deny or pass")
    return value


def _staged(kind: str) -> bool:
    return kind.startswith("Staged")


@functools.lru_cache(maxsize=4096)  # a log repeats a few hundred hit strings at most
def parse_policy_string(text: str, direction: str) -> RuleKey:
    """One policy hit string, in either syntax, as the rule it names."""
    parts = str(text).split("|")
    if len(parts) != 5:
        raise RecordError(f"policy {text!r}: expected <index>|<tier>|<name>|<action>|<rule index>")
    _index, tier, name_part, action_text, rule_text = parts
    action = _action(action_text)
    try:
        rule = int(rule_text)
    except ValueError:
        raise RecordError(f"policy {text!r}: rule index {rule_text!r} is not a number") from None
    namespace: str | None = None
    head, colon, rest = name_part.partition(":")
    if colon and head in SHORT_KINDS:  # 3.32: kind-qualified
        kind = SHORT_KINDS[head]
        namespace, slash, name = rest.rpartition("/")
        namespace = namespace if slash else None
        name = rest if not slash else name
    else:  # before 3.32: [<ns>/][staged:]<tier>.<policy>
        namespace, slash, name = name_part.rpartition("/")
        namespace = namespace if slash else None
        staged = name.startswith("staged:")
        name = name.removeprefix("staged:")
        if tier == "__PROFILE__" or name.startswith("__PROFILE__."):
            kind, name = "Profile", name.removeprefix("__PROFILE__.")
        elif name.startswith("knp.default."):
            kind, name = ("StagedKubernetesNetworkPolicy" if staged else "KubernetesNetworkPolicy"), name[12:]
        elif name.startswith(("kanp.adminnetworkpolicy.", "kbanp.baselineadminnetworkpolicy.")):
            kind, name = "ClusterNetworkPolicy", name.split(".", 2)[2]
        else:
            kind = ("StagedNetworkPolicy" if namespace else "StagedGlobalNetworkPolicy") if staged else (
                "NetworkPolicy" if namespace else "GlobalNetworkPolicy")
            if tier == "default":  # the default tier's policies carry its prefix only in the log
                name = name.removeprefix("default.")
    if not name:
        raise RecordError(f"policy {text!r}: no policy name")
    if kind == "Profile" and name == "__NO_MATCH__":
        return RuleKey("NoProfileMatch", None, name, None, 0, direction, -1, action, None)
    if kind == "Default":
        default_kind = "Failsafe" if tier == "__FAILSAFE__" else "Default"
        return RuleKey(default_kind, None, name, None, 0, direction, rule, action, None)
    if kind == "Profile":
        return RuleKey("Profile", None, name, "__PROFILE__", 0, direction, rule, action, None)
    if rule == -1:
        return RuleKey("EndOfTier", namespace, name, tier, 0, direction, -1, action, kind)
    return RuleKey(kind, namespace, name, tier or None, 0, direction, rule, action, None)


def _hit_key(hit: dict[str, Any], direction: str) -> RuleKey:
    """A structured hit (whisker names, or Goldmane's enums already named) as a rule."""
    kind = str(hit.get("kind") or "KindUnspecified")
    action = _action(hit.get("action"))
    tier = str(hit.get("tier") or "") or None
    rule = int(hit.get("rule_index", -1))
    if kind == "EndOfTier":
        trigger = hit.get("trigger") or {}
        if not isinstance(trigger, dict) or not trigger.get("name"):
            raise RecordError("policies: an EndOfTier hit without its trigger policy")
        trigger_kind = FROM_CALICO_KIND.get(str(trigger.get("kind")), str(trigger.get("kind")))
        return RuleKey("EndOfTier", trigger.get("namespace") or None, str(trigger["name"]),
                       tier or trigger.get("tier") or None, 0, direction, -1, action, trigger_kind)
    if kind == "Profile":
        if hit.get("name") == "__NO_MATCH__":
            return RuleKey("NoProfileMatch", None, "__NO_MATCH__", None, 0, direction, -1, action, None)
        return RuleKey("Profile", None, str(hit.get("name") or ""), "__PROFILE__", 0, direction, rule, action, None)
    if kind == "KindUnspecified":
        default_kind = "Failsafe" if tier == "__FAILSAFE__" else "Default"
        return RuleKey(default_kind, None, str(hit.get("name") or ""), None, 0, direction, rule, action, None)
    if kind not in FROM_CALICO_KIND:
        raise RecordError(f"policies: unknown policy kind {kind!r}")
    if not hit.get("name"):
        raise RecordError("policies: a hit without a policy name")
    return RuleKey(FROM_CALICO_KIND[kind], hit.get("namespace") or None, str(hit["name"]), tier, 0, direction,
                   rule, action, None)


def _named_hit(hit: Any) -> dict[str, Any]:
    if not isinstance(hit, dict):
        raise RecordError("policies: a hit is not an object")
    out = dict(hit)
    for field_name in ("kind", "action"):
        if isinstance(out.get(field_name), int):
            out[field_name] = _ENUM_NAMES[field_name].get(out[field_name], "")
    if out.get("trigger") is not None:
        out["trigger"] = _named_hit(out["trigger"])
    return out


def _time(value: Any, field_name: str) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise RecordError(f"{field_name}: {value!r} is neither unix seconds nor RFC 3339") from None
        return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when
    raise RecordError(f"{field_name}: missing or not a time ({value!r})")


def _labels(value: Any) -> tuple[str, ...]:
    if isinstance(value, dict):  # flows.log: {"labels": [...]}
        value = value.get("labels")
    if isinstance(value, str):  # whisker: "a=b | c=d"
        return tuple(s for s in value.split(" | ") if s)
    return tuple(str(x) for x in value or [])


def _int(doc: dict[str, Any], name: str) -> int:
    value = doc.get(name)
    if value is None or value == "-":
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RecordError(f"{name}: {value!r} is not a count")
    try:
        count = int(value)
    except (ValueError, OverflowError):
        raise RecordError(f"{name}: {value!r} is not a count") from None
    if not 0 <= count < 2**63:
        raise RecordError(f"{name}: {value!r} is not a count (0 to 2^63-1)")
    return count


def _port(value: Any, name: str) -> int | None:
    """A port, None when absent (`-`, null, 0 for Calico's portless protocols)."""
    if value in (None, "", "-", 0):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 65535:
        raise RecordError(f"{name}: {value!r} is not a port (1-65535)")
    return value


def _endpoint(kind: Any, namespace: Any, name: Any, aggregated: Any, labels: tuple[str, ...],
              ip: Any) -> tuple[EndpointKey, tuple[str, ...]]:
    if isinstance(kind, int):
        kind = _ENUM_NAMES["type"].get(kind)
    namespace = None if namespace in (None, "", "-") else str(namespace)
    if kind is None:  # whisker has no endpoint type: Calico's naming tells
        kind = "net" if namespace is None and name in ("pub", "pvt") else "hep" if namespace is None else "wep"
    ep_type = ENDPOINT_TYPE.get(str(kind))
    if ep_type is None:
        raise RecordError(f"endpoint type {kind!r} is not wep, hep, ns or net")
    name = str(aggregated if name in (None, "", "-") and aggregated not in (None, "") else name or "")
    address = str(ip) if ip not in (None, "", "-") else None
    return EndpointKey(ep_type, namespace, name or "-", labels), (address,) if address else ()


def _flat(doc: dict[str, Any]) -> dict[str, Any]:
    """Any of the three encodings in one shape (flows.log's field names)."""
    if isinstance(doc.get("key"), dict):  # Goldmane
        key = doc["key"]
        policies = key.get("policies") or {}
        return {
            **{k: doc.get(k) for k in ("start_time", "end_time", "packets_in", "packets_out", "bytes_in",
                                       "bytes_out")},
            "source_type": key.get("source_type"), "source_namespace": key.get("source_namespace"),
            "source_name": key.get("source_name"), "source_labels": doc.get("source_labels"),
            "dest_type": key.get("dest_type"), "dest_namespace": key.get("dest_namespace"),
            "dest_name": key.get("dest_name"), "dest_labels": doc.get("dest_labels"),
            "dest_port": key.get("dest_port"), "proto": key.get("proto"),
            "action": _ENUM_NAMES["action"].get(key.get("action"), key.get("action")),
            "reporter": _ENUM_NAMES["reporter"].get(key.get("reporter"), key.get("reporter")),
            "enforced": [_named_hit(h) for h in policies.get("enforced_policies") or []],
            "pending": [_named_hit(h) for h in policies.get("pending_policies") or []],
            "num_flows_started": doc.get("num_connections_started"),
            "num_flows_completed": doc.get("num_connections_completed"),
        }
    policies = doc.get("policies") or {}
    if not isinstance(policies, dict):
        raise RecordError("policies: not an object")
    out = dict(doc)
    if "enforced" in policies or "pending" in policies:  # whisker: structured hits
        out["enforced"] = [_named_hit(h) for h in policies.get("enforced") or []]
        out["pending"] = [_named_hit(h) for h in policies.get("pending") or []]
        out["proto"] = doc.get("protocol", doc.get("proto"))
        out.setdefault("source_type", None)
        out.setdefault("dest_type", None)
    else:  # flows.log: hit strings
        enforced = policies.get("enforced_policies")
        every = policies.get("all_policies") or []
        out["enforced_strings"] = list(enforced if enforced is not None else every)
        out["pending_strings"] = list(policies.get("pending_policies") or [])
        if enforced is None:  # before pending_policies existed, staged hits sat in all_policies
            out["staged_in_all"] = True
    return out


def record(doc: dict[str, Any], node_default: str = "calico") -> Observation:
    """One flow record (any encoding) as an aggregated observation."""
    flat = _flat(doc)
    for required in ("start_time", "end_time", "action", "reporter"):
        if flat.get(required) in (None, ""):
            raise RecordError(f"{required}: missing")
    start, end = _time(flat["start_time"], "start_time"), _time(flat["end_time"], "end_time")
    if end < start:
        raise RecordError(f"end_time {end} is before start_time {start}")
    action = _action(flat["action"])
    if action == "Pass":
        raise RecordError("action: a flow's verdict is allow or deny, not pass")
    reporter = str(flat["reporter"]).lower()
    if reporter not in ("src", "dst"):
        raise RecordError(f"reporter: {flat['reporter']!r} is not src or dst")
    direction = "ingress" if reporter == "dst" else "egress"
    proto_value = flat.get("proto")
    if isinstance(proto_value, int) and not isinstance(proto_value, bool):
        proto: int | None = proto_value
    elif str(proto_value).isdigit():
        proto = int(str(proto_value))
    else:
        proto = PROTO_NUMBER.get(str(proto_value).lower())
    if proto is None or not 0 <= proto <= 255:
        raise RecordError(f"proto: {proto_value!r} is not a protocol name or number (0-255)")
    if "enforced_strings" in flat:
        hits = sorted(flat["enforced_strings"], key=lambda s: int(str(s).split("|", 1)[0])
                      if str(s).split("|", 1)[0].isdigit() else 0)
        keys = [parse_policy_string(str(s), direction) for s in hits]
        pending = [parse_policy_string(str(s), direction) for s in flat["pending_strings"]]
        if flat.get("staged_in_all"):
            pending += [k for k in keys if _staged(k.kind) or _staged(k.trigger_kind or "")]
            keys = [k for k in keys if not (_staged(k.kind) or _staged(k.trigger_kind or ""))]
    else:
        keys = [_hit_key(h, direction) for h in sorted(flat["enforced"], key=lambda h: int(h.get("policy_index", 0)))]
        pending = [_hit_key(h, direction) for h in flat["pending"]]
    verdicts = [k for k in keys if k.action in ("Allow", "Deny")]
    if not verdicts:  # Calico reports a flow no policy decided with no hit: the profile's default
        final = RuleKey("Default", None, "no-policy" if action == "Allow" else "no-policy-deny", None, 0, direction,
                        -1, action, None)
    else:
        final = verdicts[-1]
    steps = tuple(k for k in keys if k.action == "Pass")
    src, src_addresses = _endpoint(flat.get("source_type"), flat.get("source_namespace"), flat.get("source_name"),
                                   flat.get("source_name_aggr"), _labels(flat.get("source_labels")),
                                   flat.get("source_ip"))
    dst, dst_addresses = _endpoint(flat.get("dest_type"), flat.get("dest_namespace"), flat.get("dest_name"),
                                   flat.get("dest_name_aggr"), _labels(flat.get("dest_labels")), flat.get("dest_ip"))
    at_dst = reporter == "dst"
    packets_in, packets_out = _int(flat, "packets_in"), _int(flat, "packets_out")
    bytes_in, bytes_out = _int(flat, "bytes_in"), _int(flat, "bytes_out")
    started = _int(flat, "num_flows_started")
    dport = _port(flat.get("dest_port"), "dest_port")
    sport = _port(flat.get("source_port"), "source_port")
    return Observation(
        time=start, end=end, node=str(flat.get("host") or node_default), action=action, proto=proto,
        src_ip=src_addresses[0] if src_addresses else None, dst_ip=dst_addresses[0] if dst_addresses else None,
        sport=sport, dport=dport,
        icmp_type=None, icmp_code=None, tcp_flags=None, rule=final, src=src, dst=dst,
        src_addresses=src_addresses, dst_addresses=dst_addresses,
        packets=packets_in if at_dst else packets_out, bytes=bytes_in if at_dst else bytes_out,
        reply_packets=packets_out if at_dst else packets_in, reply_bytes=bytes_out if at_dst else bytes_in,
        events=max(_int(flat, "num_flows"), started, 1), started=started if action == "Allow" else 0,
        completed=_int(flat, "num_flows_completed"), steps=steps, pending=tuple(pending),
    )


def parse_lines(lines: Iterable[str], source: str = "<calico>") -> Parsed:
    """Calico flow records, one JSON object per line (a JSON array of them is read too)."""
    parsed = Parsed("calico")
    for number, doc in json_lines(lines, parsed):
        for item in doc if isinstance(doc, list) else [doc]:
            if not isinstance(item, dict):
                parsed.problem(number, "not_an_object", f"expected a flow record object, got {type(item).__name__}")
                continue
            try:
                parsed.observations.append(record(item))
            except RecordError as exc:
                parsed.problem(number, "bad_record", str(exc))
            except (TypeError, ValueError, AttributeError, KeyError, OverflowError, OSError, RecursionError) as exc:
                parsed.problem(number, "bad_field", f"{type(exc).__name__}: {exc}")
    return parsed


def looks_like(doc: dict[str, Any]) -> bool:
    """A Calico flow record, in any of the three encodings?"""
    if isinstance(doc.get("key"), dict) and "policies" in doc["key"]:
        return True
    return "reporter" in doc and ("dest_name" in doc or "dest_namespace" in doc) and "policies" in doc
