"""Calico's functional-test expectations that flowtui used to get wrong (issue 11), each from its
minimal reproduction in `../shared/repros/calico/` (read by path, never copied): `flowtui eval`
must give the outcome the repro states, and so must the kernel (real packets in a lab).

- dnt-reply.yaml: untracked traffic has no conntrack, so policy checks the reply too;
- wildcard-hep-prednat-local-pods.yaml: an all-interfaces HEP's preDNAT policy sees packets from
  local pods;
- return-wildcard-hep.yaml: DefaultEndpointToHostAction Return skips host endpoint policy;
- wireguard-wildcard-hep-aof.yaml: an all-interfaces HEP's applyOnForward policy applies to pod
  traffic decapsulated from the WireGuard tunnel.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from enforcer.evaluate import Evaluator
from enforcer.lab import lab_resources, netns_name, plan_lab
from enforcer.lab.probe import Probe, run_probes
from enforcer.loader import load_paths, load_text
from enforcer.model import ResourceSet
from enforcer.resolve import ClusterState
from flowtui.cli.main import cli
from tests.test_evaluator_properties import check_document

REPROS = Path(__file__).resolve().parents[1].parent / "shared" / "repros" / "calico"


def repro(name: str) -> Path:
    path = REPROS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: the repros live in ../shared/repros/calico beside the project")
    return path


def eval_json(name: str, src: str, dst: str, proto: str, *more: str) -> dict[str, Any]:
    args = ["eval", "-f", str(repro(name)), "--from", src, "--to", dst, "--proto", proto, *more, "-o", "json"]
    result = CliRunner().invoke(cli, args, prog_name="flowtui")
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    check_document(doc)
    return doc


def decided(doc: dict[str, Any]) -> tuple[object, ...] | None:
    by = doc["decided_by"]
    return None if by is None else (by["kind"], by["name"], by["direction"], by["rule"], by["action"])


def trace(doc: dict[str, Any]) -> list[tuple[object, ...]]:
    return [(t["stage"], t["direction"], t["node"], t["result"], t["reply"]) for t in doc["trace"]]


# ---- flowtui eval ---------------------------------------------------------------------------------


class TestDoNotTrackReply:
    def test_the_unallowed_reply_is_dropped(self) -> None:
        # The SYN is allowed untracked (NOTRACK); the SYN-ACK matches no untracked egress rule and
        # has no conntrack entry: invalid, dropped (Calico: failsafe-only connectivity with host 0).
        doc = eval_json("dnt-reply.yaml", "node:felix-1", "node:felix-0", "tcp", "--port", "8055")
        assert (doc["verdict"], decided(doc)) == ("deny", None)
        assert trace(doc) == [
            ("untracked", "ingress", "felix-0", "allow", False),
            ("prednat", "ingress", "felix-0", "continue", False),
            ("normal", "ingress", "felix-0", "continue", False),
            ("untracked", "egress", "felix-0", "continue", True),
            ("normal", "egress", "felix-0", "deny", True),
        ]
        assert "invalid" in doc["trace"][-1]["reason"]

    def test_failsafe_ports_still_connect(self) -> None:
        doc = eval_json("dnt-reply.yaml", "node:felix-1", "node:felix-0", "tcp", "--port", "22")
        assert (doc["verdict"], doc["failsafe"]) == ("allow", True)

    def test_other_ports_are_denied_by_the_host_endpoint(self) -> None:
        doc = eval_json("dnt-reply.yaml", "node:felix-1", "node:felix-0", "tcp", "--port", "8056")
        assert doc["verdict"] == "deny" and not any(t["reply"] for t in doc["trace"])

    def test_text_output_marks_the_reply(self) -> None:
        args = ["eval", "-f", str(repro("dnt-reply.yaml")), "--from", "node:felix-1", "--to", "node:felix-0",
                "--proto", "tcp", "--port", "8055"]
        out = CliRunner().invoke(cli, args, prog_name="flowtui").output
        assert "reply: untracked (doNotTrack, raw table) egress of host endpoint h0" in out
        assert "Verdict: DENY" in out


class TestWildcardPreDNAT:
    def test_pod_to_local_pod_is_denied_by_prednat(self) -> None:
        doc = eval_json("wildcard-hep-prednat-local-pods.yaml", "default/a", "default/b", "tcp", "--port", "80")
        assert (doc["verdict"], decided(doc)) == ("deny", ("GlobalNetworkPolicy", "pre", "ingress", 0, "Deny"))
        assert trace(doc) == [("prednat", "ingress", "n1", "deny", False)]

    def test_pod_to_its_node_is_denied_by_prednat(self) -> None:
        doc = eval_json("wildcard-hep-prednat-local-pods.yaml", "default/a", "node:n1", "udp", "--port", "53")
        assert (doc["verdict"], decided(doc)) == ("deny", ("GlobalNetworkPolicy", "pre", "ingress", 0, "Deny"))

    def test_host_to_local_pod_is_not_policed(self) -> None:
        doc = eval_json("wildcard-hep-prednat-local-pods.yaml", "node:n1", "default/a", "tcp", "--port", "80")
        assert doc["verdict"] == "allow" and doc["trace"] == []


class TestReturnWildcard:
    def test_workload_to_host_skips_host_endpoint_policy(self) -> None:
        doc = eval_json("return-wildcard-hep.yaml", "default/a", "node:n1", "tcp", "--port", "80")
        assert (doc["verdict"], decided(doc)) == ("allow", None)
        assert [t["stage"] for t in doc["trace"]] == ["prednat", "workload", "to-host"]
        assert "Return" in doc["trace"][-1]["reason"]


class TestWireGuardWildcardForward:
    def test_pod_to_pod_across_nodes_is_denied(self) -> None:
        doc = eval_json("wireguard-wildcard-hep-aof.yaml", "default/a", "default/b", "tcp", "--port", "80")
        assert (doc["verdict"], decided(doc)) == (
            "deny", ("GlobalNetworkPolicy", "aof-deny-ingress", "ingress", 0, "Deny"))
        doc = eval_json("wireguard-wildcard-hep-aof.yaml", "default/b", "default/a", "tcp", "--port", "80")
        assert doc["verdict"] == "deny"

    def test_the_decapsulated_packet_meets_the_destinations_forward_policy(self) -> None:
        # Only n2 has a wildcard HEP: n1 forwards into the tunnel, n2's forward ingress (from the
        # tunnel) denies.
        res = without_hep(load_paths([str(repro("wireguard-wildcard-hep-aof.yaml"))]), "hep-n1")
        ev = Evaluator(ClusterState(res))
        pods = {p.name: p for p in res.pods}
        from enforcer.evaluate import Flow

        d = ev.decide(Flow(pods["a"].ips[0], pods["b"].ips[0], 6, 40000, 80), explain=True)
        last = d.enforced.stages[-1]
        assert (d.verdict, last.stage.family, last.stage.direction, last.stage.node, last.stage.via) == (
            "deny", "forward", "ingress", "n2", "tunnel")
        assert "the WireGuard tunnel" in last.stage.describe()


def without_hep(res: ResourceSet, name: str) -> ResourceSet:
    return replace(res, host_endpoints=tuple(h for h in res.host_endpoints if h.name != name))


# ---- the kernel -----------------------------------------------------------------------------------


def lab_for(lab_id: str, res: ResourceSet) -> tuple[ResourceSet, Evaluator]:
    """Bring the lab up for `res` and enforce its policy on every node."""
    from enforcer.lab import lab_up
    from tests.test_differential_kernel import apply_tables

    plan = plan_lab(res, lab_id)
    lab_up(plan)
    res = lab_resources(res, plan)
    state = ClusterState(res)
    ev = Evaluator(state)
    apply_tables(lab_id, state, ev)
    return res, ev


def probe(res: ResourceSet, src: str, dst: str, proto: int, marker: int, port: int | None = None) -> Probe:
    def addr(ref: str) -> tuple[str, Any]:
        if ref.startswith("node:"):
            node = next(n for n in res.nodes if n.name == ref[5:])
            return ref, next(a for a in node.addresses if a.version == 4)
        pod = next(p for p in res.pods if f"{p.namespace}/{p.name}" == ref)
        return ref, next(a for a in pod.ips if a.version == 4)

    (s, sip), (d, dip) = addr(src), addr(dst)
    return Probe(s, sip, d, dip, proto, marker, None if proto == 1 else port)


def connects(lab_id: str, src: str, dst: str, dst_ip: str, port: int) -> bool:
    """A real TCP connection from `src` to a listener on `dst`: the SYN-ACK has to come back."""
    server = (f"import socket,time\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
              f"s.bind(('0.0.0.0',{port}));s.listen(8);print('up',flush=True);time.sleep(6)")
    proc = subprocess.Popen(["ip", "netns", "exec", netns_name(lab_id, dst), sys.executable, "-c", server],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        client = (f"import socket\ns=socket.socket();s.settimeout(2)\ntry:\n s.connect(('{dst_ip}',{port}));"
                  f"print('ok')\nexcept OSError as e:\n print('no',e)")
        out = subprocess.run(["ip", "netns", "exec", netns_name(lab_id, src), sys.executable, "-c", client],
                             capture_output=True, text=True, timeout=15).stdout
        return out.startswith("ok")
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.kernel
def test_kernel_dnt_reply(lab_id: str) -> None:
    res, ev = lab_for(lab_id, load_paths([str(repro("dnt-reply.yaml"))]))
    felix0 = str(next(a for a in next(n for n in res.nodes if n.name == "felix-0").addresses if a.version == 4))
    # The request gets there (untracked Allow) ...
    syn = probe(res, "node:felix-1", "node:felix-0", 6, 24001, 8055)
    other = probe(res, "node:felix-1", "node:felix-0", 6, 24002, 8056)
    assert run_probes(lab_id, [syn, other]) == {syn}
    assert ev.decide(syn.flow).enforced.first_packet == "allow"
    assert ev.decide(other.flow).enforced.first_packet == "deny"
    # ... but the connection fails: its reply is dropped. A failsafe port connects.
    assert ev.decide(syn.flow).verdict == "deny"
    assert not connects(lab_id, "node:felix-1", "node:felix-0", felix0, 8055)
    assert connects(lab_id, "node:felix-1", "node:felix-0", felix0, 22)


@pytest.mark.kernel
def test_kernel_wildcard_prednat_from_local_pods(lab_id: str) -> None:
    res, ev = lab_for(lab_id, load_paths([str(repro("wildcard-hep-prednat-local-pods.yaml"))]))
    denied = [probe(res, "default/a", "default/b", 6, 24011, 80), probe(res, "default/a", "default/b", 17, 24012, 80),
              probe(res, "default/a", "node:n1", 6, 24013, 80), probe(res, "default/b", "default/a", 1, 24014)]
    allowed = [probe(res, "node:n1", "default/a", 6, 24015, 80)]  # host → local pod: not policed
    assert run_probes(lab_id, [*denied, *allowed]) == set(allowed)
    assert [ev.decide(p.flow).verdict for p in denied] == ["deny"] * 4
    assert [ev.decide(p.flow).verdict for p in allowed] == ["allow"]


@pytest.mark.kernel
def test_kernel_return_skips_wildcard_host_endpoint_policy(lab_id: str) -> None:
    res, ev = lab_for(lab_id, load_paths([str(repro("return-wildcard-hep.yaml"))]))
    probes = [probe(res, "default/a", "node:n1", 6, 24021, 80), probe(res, "default/a", "node:n1", 17, 24022, 9000),
              probe(res, "default/a", "node:n1", 1, 24023)]
    assert run_probes(lab_id, probes) == set(probes)
    assert all(ev.decide(p.flow).verdict == "allow" for p in probes)
    # Drop instead of Return: the same lab refuses them (the probes can fail).
    drop = load_text(repro("return-wildcard-hep.yaml").read_text().replace("Return", "Drop"), "drop.yaml")
    from tests.test_differential_kernel import apply_tables

    state = ClusterState(replace(res, felix=drop.felix))
    apply_tables(lab_id, state, Evaluator(state))
    again = [replace(p, marker=p.marker + 100) for p in probes]
    assert run_probes(lab_id, again) == set()


@pytest.mark.kernel
@pytest.mark.parametrize("both_nodes", [True, False], ids=["wildcard-on-both", "wildcard-on-n2"])
def test_kernel_wireguard_wildcard_forward(lab_id: str, tmp_path: Path, both_nodes: bool) -> None:
    from tests.test_wireguard_differential import differential, tunnel_bytes

    res = load_paths([str(repro("wireguard-wildcard-hep-aof.yaml"))])
    if not both_nodes:
        res = without_hep(res, "hep-n1")
    placed = lab_resources(res, plan_lab(res, lab_id))
    a_to_b = probe(placed, "default/a", "default/b", 6, 24031, 80)
    b_to_a = probe(placed, "default/b", "default/a", 17, 24032, 80)
    local = probe(placed, "node:n1", "default/a", 6, 24033, 80)  # host → local pod: not policed
    run = differential(lab_id, tmp_path, res, [a_to_b, b_to_a, local], felix=res.felix)
    assert run.delivered == {local}
    assert [run.ev.decide(p.flow).verdict for p in (a_to_b, b_to_a, local)] == ["deny", "deny", "allow"]
    mismatches, compared = run.attribution_mismatches(run.probes)
    assert not mismatches and compared == 3, mismatches
    if not both_nodes:
        # a → b crossed the tunnel and was denied on n2, by the forward policy of its '*' HEP.
        assert tunnel_bytes(lab_id) > 0
        got = run.events[(str(a_to_b.src), str(a_to_b.dst), 6, a_to_b.marker, 80)]
        assert got == {("n1", "Allow", "Profile", None, "kns.default", "egress", 0),
                       ("n2", "Deny", "GlobalNetworkPolicy", None, "aof-deny-ingress", "ingress", 0)}
