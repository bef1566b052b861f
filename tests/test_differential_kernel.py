"""The oracle: on random policy sets, the kernel's outcome equals the evaluator's verdict, and the
kernel's NFLOG attribution names the same policies and rules as the evaluator.

Random clusters and policies (tiers, orders, Allow/Deny/Pass/Log, selectors, nets, ports, named
ports, network sets, host endpoints — on eth0 or all interfaces — with untracked/preDNAT/forward
policy, DefaultEndpointToHostAction Accept, Drop or Return) are compiled to nftables and applied in
a lab; random TCP, UDP and ICMP probes run between pods, nodes and outside hosts, IPv4 and IPv6.
Every probe's first packet must arrive exactly when the evaluator lets it through, and its reply
(TCP, ICMP) come back exactly when the evaluator allows the connection (untracked policy checks
replies; where the request was untracked there is no conntrack entry for the reply);
and the verdict events the collector stores for it (node, action, policy or profile, direction,
rule — end-of-tier, failsafe, no-profile and default decisions included) and its `Log` events must
be exactly those the evaluator's stages imply. Some policies start disabled (laid out behind a
closed gate); then a third of the policies are toggled through their gates alone (set elements,
no rule rewritten) and a second round of probes is checked against the evaluator of the toggled
set: end-of-tier attribution moves to the last enabled policy, tiers vanish.
`FLOWTUI_DIFF_SEEDS` widens the run (bench/ uses it for the long mode).
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from enforcer.evaluate import Decision, Evaluator, decision_text
from enforcer.lab import lab_resources, netns_name, plan_lab
from enforcer.lab.probe import Probe, answerable, probe_both_ways
from enforcer.model import IPAddress, ResourceSet
from enforcer.nft import ir
from enforcer.nft.compiler import CompiledNode, CompileOptions, compile_node
from enforcer.nft.decision import DEFAULT_BUDGET
from enforcer.resolve import ClusterState
from enforcer.ruleids import IdAllocator, RuleRef, RuleTable
from enforcer.synth import PORTS, SynthSpec, synth_resources

SEEDS = int(os.environ.get("FLOWTUI_DIFF_SEEDS", "8"))
PROBES_PER_SEED = 60
# Half the nodes' host endpoints all-interfaces, DefaultEndpointToHostAction by seed, a preDNAT
# and an untracked policy on every host endpoint: every path of `test_random_sets_cover_every_path`.
SPEC = SynthSpec(nodes=2, namespaces=2, pods=4, externals=2, policies=8, rules_per_policy=3, disabled=0.15,
                 wildcard_heps=0.5, endpoint_to_host=True, host_extras=True)


def _targets(res: ResourceSet) -> list[tuple[str, tuple[IPAddress, ...]]]:
    out = [(f"{p.namespace}/{p.name}", p.ips) for p in res.pods]
    out += [(f"node:{n.name}", n.addresses) for n in res.nodes]
    out += [(f"external:{e.name}", e.addresses) for e in res.external_hosts]
    return out


def random_probes(res: ResourceSet, seed: int, count: int) -> list[Probe]:
    r = random.Random(seed)
    ends = _targets(res)
    probes: list[Probe] = []
    while len(probes) < count:
        (src_t, src_ips), (dst_t, dst_ips) = r.sample(ends, 2)
        if src_t.startswith("external:") and dst_t.startswith("external:"):
            continue  # never crosses a node
        version = 6 if r.random() < 0.25 else 4
        src = next((ip for ip in src_ips if ip.version == version), None)
        dst = next((ip for ip in dst_ips if ip.version == version), None)
        if src is None or dst is None:
            continue
        proto = r.choice((6, 6, 17, 17, 1))
        if proto == 1 and version == 6:
            proto = 58
        marker = 20000 + len(probes)
        dport = None if proto in (1, 58) else r.choice((*PORTS, 22, 9050))
        probes.append(Probe(src_t, src, dst_t, dst, proto, marker, dport))
    return probes


Attribution = tuple[object, ...]  # (node, action, kind, namespace, name, direction, rule)


def expected_attribution(d: Decision) -> set[Attribution]:
    """The verdict and Log events the dataplane must emit for this flow's first packet."""
    out: set[Attribution] = set()
    for r in d.enforced.stages:
        if r.reply:
            continue  # the reply's events carry the reversed 5-tuple (its verdict is checked by `answered`)
        node, direction, family = r.stage.node, r.stage.direction, r.stage.family
        for h in r.logged:
            out.add((node, "Log", h.kind, h.namespace, h.name, h.direction, h.rule))
        if r.skipped or r.outcome == "continue":
            continue
        action = "Allow" if r.outcome == "allow" else "Deny"
        if r.hit is not None:
            out.add((node, action, r.hit.kind, r.hit.namespace, r.hit.name, direction, r.hit.rule))
        elif r.failsafe and family == "normal":
            out.add((node, "Allow", "Failsafe", None, r.reason.removeprefix("failsafe port "), direction, -1))
        elif family == "to-host":
            out.add((node, action, "Default", None, None, direction, -1))
        elif action == "Deny":
            out.add((node, "Deny", "NoProfileMatch", None, "", direction, -1))
    return out


def observed_attribution(node: str, ref: RuleRef) -> Attribution:
    if ref.kind == "EndOfTier":
        return (node, ref.action, ref.trigger_kind, ref.namespace, ref.name, ref.direction, -1)
    if ref.kind == "Default":
        return (node, ref.action, "Default", None, None, ref.direction, -1)
    return (node, ref.action, ref.kind, ref.namespace, ref.name, ref.direction, ref.rule)


def collected_events(db: Path) -> list[tuple[object, ...]]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT s.node, e.action, e.rule_id, e.src_ip, e.dst_ip, e.proto, e.sport, e.dport "
            "FROM events e JOIN sources s USING (source_id) WHERE e.action IN ('Allow', 'Deny', 'Log')"
        ).fetchall()
        lost = con.execute("SELECT coalesce(sum(events), 0) FROM loss_latest").fetchone()
    finally:
        con.close()
    assert lost is not None and lost[0] == 0, f"the collector lost {lost[0]} events: attribution incomplete"
    return rows


def apply_tables(lab_id: str, state: ClusterState, evaluator: Evaluator, ids: IdAllocator | None = None
                 ) -> RuleTable:
    return _merged(compile_and_apply(lab_id, state, evaluator, ids or IdAllocator()))


def _merged(compiled: dict[str, CompiledNode]) -> RuleTable:
    rules = RuleTable()
    for c in compiled.values():
        rules = rules.merged(c.rules)
    return rules


def _nft(lab_id: str, node: str, script: str) -> None:
    ns = netns_name(lab_id, f"node:{node}")
    done = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True, capture_output=True)
    assert done.returncode == 0, f"nft rejected the change to {node}: {done.stderr}"


def compile_and_apply(lab_id: str, state: ClusterState, evaluator: Evaluator, ids: IdAllocator,
                      options: CompileOptions | None = None) -> dict[str, CompiledNode]:
    out = {}
    for node in state.nodes:
        compiled = out[node] = compile_node(state, node, options, evaluator=evaluator, ids=ids)
        _nft(lab_id, node, ir.render(compiled.table, ir.full(compiled.table, existing=False)))
    return out


def toggle_some(res: ResourceSet, seed: int) -> ResourceSet:
    """About a third of the enforced policies switched (off if on, on if off)."""
    r = random.Random(seed + 4242)
    pols = [replace(p, disabled=not p.disabled) if not p.staged and r.random() < 0.35 else p for p in res.policies]
    return replace(res, policies=tuple(pols))


def probe_with_collector(lab_id: str, nodes: Iterable[str], db: Path, rules_path: Path,
                         probes: list[Probe]) -> tuple[set[Probe], set[Probe]]:
    """Send `probes` while the collector stores every node's NFLOG events in `db`; the delivered
    ones and the answered ones (`probe_both_ways`)."""
    from flowtui.collector.config import CollectorConfig
    from flowtui.collector.service import Collector

    namespaces = tuple(netns_name(lab_id, f"node:{n}") for n in nodes)
    cfg = CollectorConfig(db=db, namespaces=namespaces, rules_path=rules_path, conntrack=False, counters=False,
                          snapshot_interval=None, bucket_seconds=1.0)
    collector = Collector(cfg)
    collector.start()
    try:
        return probe_both_ways(lab_id, probes)
    finally:
        collector.stop()


def events_by_key(db: Path, rules: RuleTable | Mapping[str, RuleTable], *, check_action: bool
                  ) -> dict[tuple[object, ...], set[Attribution]]:
    """The stored events' attributions, keyed by the probe's forward 5-tuple (replies are reversed;
    ICMP by address pair and protocol). `rules`: one table for every node, or each node's own
    (agents allocate their ids apart)."""
    by_key: dict[tuple[object, ...], set[Attribution]] = {}
    for node, action, rule_id, src, dst, proto, sport, dport in collected_events(db):
        table = rules if isinstance(rules, RuleTable) else rules[str(node)]
        ref = table.get(rule_id)  # type: ignore[arg-type]
        assert ref is not None, f"{node}: event with rule id {rule_id} that its rule table lacks"
        if check_action:
            assert ref.action == action, f"{node}: rule {rule_id}: prefix says {action}, the rule table {ref.action}"
        key = (src, dst, proto, sport, dport) if proto not in (1, 58) else (src, dst, proto)
        by_key.setdefault(key, set()).add(observed_attribution(str(node), ref))
    return by_key


def probe_key(p: Probe, probes: list[Probe]) -> tuple[object, ...] | None:
    """`p`'s key in `events_by_key`; None for an ICMP probe that shares its pair with another (its
    events cannot be told apart)."""
    if p.proto in (1, 58):
        if sum(1 for q in probes if q.proto in (1, 58) and (q.src, q.dst) == (p.src, p.dst)) > 1:
            return None
        return (str(p.src), str(p.dst), p.proto)
    return (str(p.src), str(p.dst), p.proto, p.marker, p.dport)


def disagreements(ev: Evaluator, probes: list[Probe], delivered: set[Probe], answered: set[Probe]) -> list[str]:
    """Probes where the kernel and the evaluator differ: on the first packet (delivered exactly when
    it gets through), and, where the sender sees replies (TCP, ICMP), on the reply (answered
    exactly when the connection is allowed: untracked policy checks replies too)."""
    out = []
    for p in probes:
        d = ev.decide(p.flow)
        first, both = d.enforced.first_packet == "allow", d.verdict == "allow"
        if (p in delivered) != first:
            what = f"kernel {'delivered' if p in delivered else 'dropped'} it, evaluator says {d.enforced.first_packet}"
        elif answerable(p) and (p in answered) != both:
            what = (f"kernel {'delivered' if p in answered else 'dropped'} its reply, evaluator says the "
                    f"connection is {d.verdict}")
        else:
            continue
        out.append(f"{p.src_target} → {p.dst_target} proto {p.proto} port {p.dport}: {what}\n"
                   f"{decision_text(ev.decide(p.flow, explain=True))}")
    return out


def check_round(lab_id: str, tmp_path: Path, res: ResourceSet, ev: Evaluator,
                rules: RuleTable | Mapping[str, RuleTable], seed: int, count: int, what: str) -> None:
    """Probe, then compare delivery with the evaluator's verdicts and NFLOG with its attribution.
    `rules` as `events_by_key` takes them; with one table the collector also attributes live."""
    rules_path = tmp_path / f"rules-{what}.jsonl"
    if isinstance(rules, RuleTable):
        rules.dump(rules_path)
    probes = random_probes(res, seed, count)
    db = tmp_path / f"flows-{what}.duckdb"
    delivered, answered = probe_with_collector(lab_id, ev.state.nodes, db, rules_path, probes)
    wrong = disagreements(ev, probes, delivered, answered)
    if wrong:
        pytest.fail(f"{what}: {len(wrong)}/{len(probes)} probes disagree (seed {seed}); first: {wrong[0]}")
    # The test must be able to fail: both verdicts occur across the probes of a seed set (the
    # toggled round runs in the lab the first round proved forwarding; it may deny everything).
    assert delivered or what == "toggled", "no probe was delivered: the lab is not forwarding"

    by_key = events_by_key(db, rules, check_action=True)
    compared = 0
    for p in probes:
        key = probe_key(p, probes)
        if key is None:
            continue
        want = expected_attribution(ev.decide(p.flow))
        got = by_key.get(key, set())
        assert got == want, (f"{what}, seed {seed}: {p.src_target} → {p.dst_target} proto {p.proto} port {p.dport}: "
                             f"kernel logged {sorted(map(str, got))}, evaluator implies {sorted(map(str, want))}\n"
                             f"{decision_text(ev.decide(p.flow, explain=True))}")
        compared += 1
    assert compared >= len(probes) * 3 // 4


# Both layouts of workload chains: decision maps (the default budget) and the rule walk (budget 0).
LAYOUTS = {"decision": CompileOptions(decision_budget=DEFAULT_BUDGET), "walk": CompileOptions(decision_budget=0)}


def toggle_ops_allowed(op: ir.Op, layout: str) -> bool:
    """A toggle changes the `closed` gate set; with decision maps, also map elements and the
    terminal chains of outcomes new to (or gone from) the node. Never a policy or endpoint chain."""
    if isinstance(op, ir.SetElements):
        return op.name == "closed" or (layout == "decision" and op.name.startswith(
            ("dp4-", "dp6-", "dh4-", "dh6-", "dn4-", "dn6-", "di4-", "di6-")))
    if layout == "decision" and isinstance(op, ir.DefineChain | ir.DeleteChain):
        name = op.chain.name if isinstance(op, ir.DefineChain) else op.name
        return name.startswith("dx-")
    return False


@pytest.mark.kernel
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("seed", range(SEEDS))
def test_kernel_agrees_with_evaluator(seed: int, layout: str, lab_id: str, tmp_path: Path) -> None:
    from enforcer.lab import lab_up

    # ClusterNetworkPolicies on every other seed: kube-admin and kube-baseline around the rest.
    res = synth_resources(seed, replace(SPEC, cluster_network_policies=3 * (seed % 2)))
    plan = plan_lab(res, lab_id)
    lab_up(plan)
    res = lab_resources(res, plan)
    state = ClusterState(res)
    ev = Evaluator(state)
    compiled = compile_and_apply(lab_id, state, Evaluator(state.for_dataplane()), IdAllocator(), LAYOUTS[layout])
    layouts = {c.layout for node in compiled.values() for c in node.layouts}
    if layout == "walk":
        assert layouts == {"walk"}, "a budget of 0 must keep every chain's walk"
    check_round(lab_id, tmp_path, res, ev, _merged(compiled), seed, PROBES_PER_SEED, "compiled")

    # Live toggles: the same layout with other gates closed must behave as the evaluator does with
    # those policies absent (end-of-tier attribution moving to the last enabled policy, tiers
    # vanishing), and the change to the kernel is set elements only.
    toggled = toggle_some(res, seed)
    off = {p.key for p in toggled.policies if p.disabled}
    for node, c in compiled.items():
        ops = ir.diff(c.table, c.with_disabled(off).table)
        assert all(toggle_ops_allowed(op, layout) for op in ops), ops
        if ops:
            _nft(lab_id, node, ir.render(c.table, ops))
    check_round(lab_id, tmp_path, toggled, Evaluator(ClusterState(toggled)), _merged(compiled), seed + 1000,
                PROBES_PER_SEED // 2, "toggled")


def test_random_sets_cover_every_path() -> None:
    """The random sets and probes of the kernel test reach each of Calico's paths that flowtui
    once got wrong (issue 11): a reply denied after an untracked request, an all-interfaces HEP's
    preDNAT and forward policy on packets from pods, DefaultEndpointToHostAction Return."""
    from enforcer.lab import plan_lab as plan

    seen: set[str] = set()
    for seed in range(SEEDS):
        res = synth_resources(seed, SPEC)
        res = lab_resources(res, plan(res, "tcover"))
        ev = Evaluator(ClusterState(res))
        for p in random_probes(res, seed, PROBES_PER_SEED):
            d = ev.decide(p.flow)
            if d.enforced.first_packet == "allow" and d.verdict == "deny" and answerable(p):
                seen.add("reply denied")
            for r in d.enforced.stages:
                st = r.stage
                if st.family in ("prednat", "forward") and st.via == "pod" and ev.stage_tiers(st) and not r.skipped:
                    seen.add(f"{st.family} from a pod")
                if st.family == "to-host" and ev.state.felix.default_endpoint_to_host_action == "Return":
                    seen.add("Return")
    assert seen == {"reply denied", "prednat from a pod", "forward from a pod", "Return"}


def _in_range(text: str, value: int, parse: type = int) -> bool:
    first, _, last = text.partition("-")
    lo = int(parse(first))
    return lo <= value <= (int(parse(last)) if last else lo)


def _class_of(table: ir.Table, tag: str, addr: int) -> int:
    """The peer class a decision chain's address lookup gives `addr` (its class chain writes it
    into the mark; a chain with one class writes 0 itself)."""
    import ipaddress

    for element in table.sets.get(f"da4-{tag}", ir.NftSet("", "", (), frozenset())).elements:
        key, _, chain = element.partition(" : jump ")
        if _in_range(key, addr, ipaddress.IPv4Address):
            (rule,) = table.chains[chain].rules  # meta mark set mark & 0xffff0000 | 0x<class>
            return int(rule.rsplit("| ", 1)[1], 16)
    assert f"da4-{tag}" not in table.sets, f"{addr}: no class"
    return 0


def _port_target(table: ir.Table, tag: str, cls: int, proto: int, port: int) -> tuple[str, str] | None:
    """(map, element) of the class-keyed port maps that a packet of class `cls` hits."""
    for name in (f"dh4-{tag}", f"dp4-{tag}"):  # the hash map first, as the chain looks them up
        for element in sorted(table.sets[name].elements):
            key, _, _ = element.partition(" : goto ")
            fields = key.split(" . ")
            if int(fields[0]) == cls and int(fields[1]) == proto and _in_range(fields[-1], port):
                return name, element
    return None


@pytest.mark.kernel
@pytest.mark.parametrize("mutation", ["element", "class"])
def test_a_map_element_pointing_at_the_wrong_rule_is_caught(mutation: str, lab_id: str, tmp_path: Path) -> None:
    """The mutation check: one decision-map element sent to another outcome chain (another rule's
    verdict or attribution), or one peer class's chain writing another class into the mark (so
    the port maps answer with that class's row), makes the differential comparison fail for the
    probe that hits it, while the same probe agrees on the intact table."""
    from enforcer.lab import lab_up
    from enforcer.lab.names import cali_name

    spec = SynthSpec(nodes=2, namespaces=2, pods=4, externals=2, policies=8, rules_per_policy=3, disabled=0.15)
    found = None
    for seed in range(1, 40):  # the first seed with a probe through a decision-map element
        res = synth_resources(seed, spec)
        plan = plan_lab(res, lab_id)
        res = lab_resources(res, plan)
        state = ClusterState(res)
        ids = IdAllocator()  # one for every node, as the reconciler has: an id means one rule everywhere
        compiled = {n: compile_node(state, n, LAYOUTS["decision"], ids=ids) for n in state.nodes}
        ev = Evaluator(state)
        for p in random_probes(res, seed, 200):
            if p.proto not in (6, 17) or p.src.version != 4 or "/" not in p.dst_target:
                continue
            # the packet must get as far as the destination's ingress chain
            if not any(r.stage.family == "workload" and r.stage.direction == "ingress"
                       for r in ev.decide(p.flow).enforced.stages):
                continue
            pod = next(q for q in res.pods if f"{q.namespace}/{q.name}" == p.dst_target)
            assert pod.node is not None
            table = compiled[pod.node].table
            iface = f'"{cali_name(pod.namespace, pod.name)}" : goto '
            chain = next(e for e in table.sets["wl-to"].elements if e.startswith(iface)).removeprefix(iface)
            if not (chain.startswith("tw-d") and len(chain) == 16):
                continue  # the walk (tw-<digest>)
            tag = chain.removeprefix("tw-d")
            cls = _class_of(table, tag, int(p.src))
            hit = _port_target(table, tag, cls, p.proto, p.dport or 0)
            assert hit is not None, f"{p}: no port map element"
            map_name, element = hit
            key, _, target = element.partition(" : goto ")
            if mutation == "element":
                wrong = next((c for c in sorted(table.chains) if c.startswith("dx-") and c != target), None)
                if wrong is not None:
                    found = (seed, res, plan, state, compiled, p, pod.node,
                             [ir.SetElements(map_name, delete=(element,)),
                              ir.SetElements(map_name, add=(f"{key} : goto {wrong}",))], element)
            elif f"da4-{tag}" in table.sets:  # several classes
                for other in range(0xFFFF):
                    if f"dr4-{tag}-{other}" not in table.chains:
                        break
                    elsewhere = _port_target(table, tag, other, p.proto, p.dport or 0)
                    if elsewhere is not None and elsewhere[1].partition(" : goto ")[2] != target:
                        rewrite = f"meta mark set mark & 0xffff0000 | {other:#x}"
                        found = (seed, res, plan, state, compiled, p, pod.node,
                                 [ir.DefineChain(ir.Chain(f"dr4-{tag}-{cls}", (rewrite,)), new=False)],
                                 f"class {cls} → {other}")
                        break
            if found:
                break
        if found:
            break
    assert found is not None, "no seed gives a probe through a decision map"
    seed, res, plan, state, compiled, probe, node, corruption, what = found
    lab_up(plan)
    for n, c in compiled.items():
        _nft(lab_id, n, ir.render(c.table, ir.full(c.table, existing=False)))
    rules = _merged(compiled)
    rules.dump(tmp_path / "rules.jsonl")
    ev = Evaluator(state)
    want = expected_attribution(ev.decide(probe.flow))
    key = probe_key(probe, [probe])

    def observed(what: str) -> set[Attribution]:
        db = tmp_path / f"flows-{what}.duckdb"
        probe_with_collector(lab_id, state.nodes, db, tmp_path / "rules.jsonl", [probe])
        return events_by_key(db, rules, check_action=True).get(key, set())

    assert want, "the probe reaches the ingress chain: it must be attributed"
    assert observed("intact") == want
    table = compiled[node].table
    _nft(lab_id, node, ir.render(table, corruption))
    assert observed("corrupted") != want, f"seed {seed}: {what} went unnoticed"
