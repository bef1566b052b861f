"""A recorded flow, decided again by the evaluator with the full trace, and its deciding rule as
YAML with the fields that matched it marked. Headless: what the Flow detail screen shows."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import yaml

from enforcer.evaluate import Decision, Evaluator, Flow, Hit, decision_text
from enforcer.model import ResourceSet
from enforcer.resolve import ClusterState
from flowtui.tui.control import PolicyControl, PolicyRef

MATCH_KEYS = ("protocol", "notProtocol", "ipVersion", "icmp", "notICMP", "http", "source", "destination")


@dataclass
class RuleLine:
    text: str
    matched: bool = False  # a match criterion the flow satisfied
    note: str = ""  # what of the flow it matched


@dataclass
class Explanation:
    row: dict[str, Any]
    flow: Flow | None = None
    decision: Decision | None = None
    trace: str = ""
    policy_ref: PolicyRef | None = None
    policy_header: list[str] = field(default_factory=list)
    rule_lines: list[RuleLine] = field(default_factory=list)
    error: str | None = None
    l7: list[str] = field(default_factory=list)  # the proxy's L7 summaries an import recorded for the flow
    other_policies: list[str] = field(default_factory=list)  # further policies the source named for the verdict

    @property
    def recorded(self) -> str:
        from flowtui.tui.format import policy

        return f"{str(self.row.get('verdict') or '?').upper()} by {policy(self.row) or 'unattributed'}"

    @property
    def agrees(self) -> bool | None:
        """Does the evaluator decide as the kernel did (verdict only; policies may have changed)?"""
        if self.decision is None:
            return None
        recorded = str(self.row.get("verdict") or "")
        if recorded not in ("allow", "deny"):
            return None
        return recorded == self.decision.enforced.verdict


def flow_of(row: dict[str, Any]) -> Flow:
    src = ipaddress.ip_address(str(row["src_ip"]))
    dst = ipaddress.ip_address(str(row["dst_ip"]))
    proto = int(row["proto"])
    if proto in (1, 58):
        icmp_type = row.get("icmp_type")
        if icmp_type is None:
            icmp_type = 8 if proto == 1 else 128  # as `flowtui eval` assumes: an echo request
        return Flow(src, dst, proto, icmp_type=int(icmp_type), icmp_code=int(row.get("icmp_code") or 0))
    sport, dport = row.get("sport"), row.get("dport")
    return Flow(src, dst, proto, None if sport is None else int(sport), None if dport is None else int(dport))


def explain_row(row: dict[str, Any], control: PolicyControl, resources: ResourceSet | None = None) -> Explanation:
    out = Explanation(row)
    try:
        out.flow = flow_of(row)
    except (KeyError, TypeError, ValueError) as exc:
        out.error = f"this row is not a decidable flow: {exc}"
        return out
    if not control.has_policies and resources is None:
        out.error = "no policy set loaded: give the policies with -f PATH (or --state-dir) to see the trace"
        return out
    res = resources if resources is not None else control.resources()
    state = ClusterState(res)
    out.decision = Evaluator(state).decide(out.flow, explain=True)
    out.trace = decision_text(out.decision)
    hit = out.decision.enforced.decided_by
    if hit is not None and hit.kind not in ("Profile",) and not hit.builtin:
        out.policy_ref = PolicyRef(hit.kind, hit.namespace, hit.name)
        _rule_yaml(out, control, hit)
    return out


def _rule_yaml(out: Explanation, control: PolicyControl, hit: Hit) -> None:
    assert out.policy_ref is not None and out.decision is not None
    try:
        doc = control.document(out.policy_ref)
    except Exception as exc:  # the trace is still shown
        out.policy_header = [f"(cannot read the policy document: {exc})"]
        return
    if doc is None:
        out.policy_header = [f"(no document for {out.policy_ref})"]
        return
    spec = doc.get("spec") or {}
    meta = doc.get("metadata") or {}
    out.policy_header = [f"apiVersion: {doc.get('apiVersion')}", f"kind: {doc.get('kind')}",
                         f"metadata: {_flow_yaml({k: meta[k] for k in ('name', 'namespace') if k in meta})}"]
    for key in ("tier", "order", "selector", "namespaceSelector", "types", "doNotTrack", "applyOnForward", "preDNAT"):
        if key in spec:
            out.policy_header.append(f"  {key}: {_flow_yaml(spec[key])}")
    rules = spec.get(hit.direction) or []
    if hit.rule < 0 or hit.rule >= len(rules):
        out.rule_lines = [RuleLine(f"# end of tier {hit.tier}: no rule of the tier matched, so Calico denies;"),
                          RuleLine(f"# attributed to the last enabled policy of the tier that selected the "
                                   f"endpoint, {hit.name}")]
        return
    rule = rules[hit.rule]
    out.rule_lines = [RuleLine(f"{hit.direction}[{hit.rule}]:")]
    out.rule_lines += annotate_rule(rule, out.decision)


def _flow_yaml(value: Any) -> str:
    text = str(yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000))
    if text.endswith("\n...\n"):
        text = text[:-5]
    return text.strip()


INTERNAL_LABELS = ("pcns.", "pcsa.", "projectcalico.org/")


def annotate_rule(rule: dict[str, Any], decision: Decision) -> list[RuleLine]:
    """The rule's YAML, each match criterion marked with what of the flow satisfied it."""
    flow = decision.flow
    lines: list[RuleLine] = []
    for key, value in rule.items():
        if key in ("source", "destination") and isinstance(value, dict):
            peer = decision.src if key == "source" else decision.dst
            lines.append(RuleLine(f"  {key}:", matched=bool(value), note=peer.describe() if value else ""))
            for sub, sub_value in value.items():
                lines.append(RuleLine(f"    {sub}: {_flow_yaml(sub_value)}", True, _entity_note(sub, key, decision)))
            continue
        note = ""
        if key in ("protocol", "notProtocol", "ipVersion"):
            from enforcer.model import protocol_name

            note = f"flow: {protocol_name(flow.protocol)}, IPv{flow.version}"
        elif key in ("icmp", "notICMP"):
            note = f"flow: type {flow.icmp_type} code {flow.icmp_code}"
        lines.append(RuleLine(f"  {key}: {_flow_yaml(value)}", key in MATCH_KEYS, note))
    return lines


def _entity_note(field_name: str, side: str, decision: Decision) -> str:
    flow = decision.flow
    peer = decision.src if side == "source" else decision.dst
    if field_name in ("nets", "notNets"):
        return f"{'src' if side == 'source' else 'dst'} {peer.address}"
    if field_name in ("ports", "notPorts"):
        port = flow.src_port if side == "source" else flow.dst_port
        return f"port {port}"
    if field_name in ("selector", "notSelector", "namespaceSelector", "serviceAccounts"):
        ep = peer.endpoint
        if ep is not None:
            labels = ", ".join(f"{k}={v}" for k, v in sorted(ep.labels.items()) if not k.startswith(INTERNAL_LABELS))
            return f"{peer.describe()}: {labels}"
        return peer.describe()
    return ""
