"""FelixConfiguration as Calico validates it, and the settings it accepts that flowtui used to
refuse (lower-case enum values, failsafe port 0 and SCTP); duplicate performance hints."""

from __future__ import annotations

from pathlib import Path

import pytest

from enforcer.evaluate import Evaluator
from enforcer.loader import LoadError, load_paths, load_text
from enforcer.model import FailsafePort
from enforcer.nft.compiler import compile_node
from enforcer.resolve import ClusterState
from flowtui.cli.policy import build_flow

REPROS = Path(__file__).resolve().parents[2] / "shared" / "repros" / "calico"

HOST = """\
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {role: edge}}
status: {addresses: [{type: InternalIP, address: 192.0.2.10}]}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1-eth0, labels: {role: edge}}
spec: {node: n1, interfaceName: eth0, expectedIPs: [192.0.2.10]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-edge}
spec:
  selector: role == 'edge'
  ingress: [{action: Deny}]
---
apiVersion: lab.flowtui.dev/v1
kind: ExternalHost
metadata: {name: peer}
spec: {addresses: [198.51.100.9]}
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec:
  defaultEndpointToHostAction: return
  failsafeInboundHostPorts: [{protocol: SCTP, port: 9}, {protocol: UDP, port: 0}]
"""


def test_lower_case_endpoint_to_host_action_is_accepted_as_felix_reads_it() -> None:
    res = load_paths([str(REPROS / "felix-endpoint-to-host-lowercase.yaml")])
    assert res.felix.default_endpoint_to_host_action == "Drop"


def test_failsafe_port_zero_is_accepted() -> None:
    res = load_paths([str(REPROS / "felix-failsafe-port-zero.yaml")])
    assert res.felix.failsafe_inbound == (FailsafePort(17, 0),)


@pytest.mark.parametrize(("port", "verdict", "failsafe"), [(9, "allow", True), (10, "deny", False)])
def test_an_sctp_failsafe_port_opens_the_host_as_calico_does(port: int, verdict: str, failsafe: bool) -> None:
    state = ClusterState(load_text(HOST, "host.yaml"))
    assert state.resources.felix.default_endpoint_to_host_action == "Return"
    flow = build_flow(state, "external:peer", "node:n1", 132, port, None, None, None, False)
    decision = Evaluator(state).decide(flow)
    assert (decision.verdict, decision.enforced.failsafe) == (verdict, failsafe)


def test_the_compiler_writes_sctp_and_port_zero_failsafes() -> None:
    state = ClusterState(load_text(HOST, "host.yaml"))
    out = compile_node(state, "n1")
    rules = [rule for chain in out.table.chains.values() for rule in chain.rules]
    assert any("meta l4proto sctp th dport 9" in rule for rule in rules)
    assert any("meta l4proto udp th dport 0" in rule for rule in rules)


def test_iptables_backend_bad_value_is_refused_and_good_ones_pass() -> None:
    text = ("apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\n"
            "spec: {iptablesBackend: badVal}\n")
    with pytest.raises(LoadError) as err:
        load_text(text, "fc.yaml")
    assert [(p.line, p.path) for p in err.value.problems] == [(4, "spec.iptablesBackend")]
    good = text.replace("{iptablesBackend: badVal}", "{iptablesBackend: NFT, logSeverityScreen: warning, "
                        "reportingInterval: 1m30s, kubeNodePortRanges: [30000:32767, 8080], "
                        "routeTableRanges: [{min: 1, max: 250}]}")
    assert load_text(good, "fc.yaml").felix.name == "default"


def test_duplicate_performance_hints_are_an_error() -> None:
    with pytest.raises(LoadError) as err:
        load_paths([str(REPROS / "performance-hints-duplicate.yaml")])
    (problem,) = err.value.problems
    assert (problem.line, problem.path) == (6, "spec.performanceHints[1]")
    assert "listed more than once" in problem.message
