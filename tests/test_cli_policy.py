"""`flowtui check`, `flowtui eval` and `flowtui demo` through click's CliRunner."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from enforcer.loader import LoadError, load_paths
from flowtui.cli.common import scenario_dir
from flowtui.cli.main import cli
from flowtui.demo.probes import ARTICLE_PROBES
from tests.test_evaluator_properties import check_document

FIXTURES = Path(__file__).parent / "fixtures"
GOOD, BAD = FIXTURES / "good", FIXTURES / "bad"
ARTICLE = str(scenario_dir())
LOCATED = re.compile(r"^[^:\s][^:]*:\d+: ")  # FILE:LINE:


def run(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=stdin, prog_name="flowtui")


def problems_of(path: Path) -> list[str]:
    try:
        load_paths([str(path)])
    except LoadError as err:
        return [str(p) for p in err.problems]
    raise AssertionError(f"{path} loads without problems")


# --------------------------------------------------------------------------------------------
# check


class TestCheck:
    def test_good_files(self) -> None:
        result = run("check", "-f", str(GOOD / "calico.yaml"), "-f", str(GOOD / "cluster.yaml"))
        assert result.exit_code == 0, result.output
        assert result.stderr == ""
        assert re.fullmatch(r"ok: \d+ policies, .*\n", result.stdout)
        assert "tiers" in result.stdout and "pods" in result.stdout and "host endpoints" in result.stdout

    def test_directory_and_positional_paths(self) -> None:
        result = run("check", ARTICLE)
        assert result.exit_code == 0, result.output
        assert result.stdout == ("ok: 6 policies, 5 pods, 2 namespaces, 2 nodes, 2 host endpoints, 1 network sets, "
                                 "3 outside hosts\n")

    def test_bad_files_list_every_problem_of_every_file(self) -> None:
        files = [BAD / "policy.yaml", BAD / "rules.yaml", BAD / "tier.yaml"]
        result = run("check", *(arg for f in files for arg in ("-f", str(f))))
        assert result.exit_code == 2
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        expected = [line for f in files for line in problems_of(f)]
        assert lines[:-1] == expected
        assert lines[-1] == f"{len(expected)} problems found; nothing was changed."
        assert all(LOCATED.match(line) for line in lines[:-1])
        for f in files:
            assert any(line.startswith(f"{f}:") for line in lines)

    def test_a_bad_file_spoils_nothing_else_but_fails_the_run(self) -> None:
        result = run("check", "-f", str(GOOD / "calico.yaml"), "-f", str(BAD / "tier.yaml"))
        assert result.exit_code == 2 and result.stdout == ""
        assert all(line.startswith(f"{BAD / 'tier.yaml'}:") for line in result.stderr.splitlines()[:-1])

    def test_every_bad_fixture(self) -> None:
        result = run("check", str(BAD))
        assert result.exit_code == 2
        lines = result.stderr.splitlines()[:-1]
        assert len(lines) == sum(len(problems_of(f)) for f in sorted(BAD.iterdir()))
        assert all(LOCATED.match(line) for line in lines)

    def test_stdin(self) -> None:
        text = (GOOD / "knp.yaml").read_text()
        result = run("check", "-f", "-", stdin=text)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("ok: ")

    def test_stdin_json(self) -> None:
        text = (GOOD / "calico-list.json").read_text()
        result = run("check", "-", stdin=text)
        assert result.exit_code == 0, result.output

    def test_bad_stdin(self) -> None:
        result = run("check", "-f", "-", stdin="apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad_Name}\n")
        assert result.exit_code == 2
        first = result.stderr.splitlines()[0]
        assert first.startswith("<stdin>:3: ")

    def test_missing_file(self) -> None:
        result = run("check", "-f", "/nonexistent/policy.yaml")
        assert result.exit_code == 2
        assert result.stderr.splitlines()[0] == "/nonexistent/policy.yaml: no such file or directory"

    def test_no_input(self) -> None:
        result = run("check")
        assert result.exit_code == 2
        assert result.stderr.startswith("error: no input")


# --------------------------------------------------------------------------------------------
# eval


def eval_args(src: str, dst: str, proto: str, *more: str, paths: tuple[str, ...] = (ARTICLE,)) -> list[str]:
    out = ["eval"]
    for p in paths:
        out += ["-f", p]
    return [*out, "--from", src, "--to", dst, "--proto", proto, *more]


def eval_json(src: str, dst: str, proto: str, *more: str, paths: tuple[str, ...] = (ARTICLE,)) -> dict[str, Any]:
    result = run(*eval_args(src, dst, proto, *more, "-o", "json", paths=paths))
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    check_document(doc)
    return doc


class TestEvalText:
    def test_denied_with_log(self) -> None:
        result = run(*eval_args("staging/frontend", "staging/database", "tcp", "--port", "6379"))
        assert result.exit_code == 0, result.output
        out = result.stdout
        assert out.startswith("Flow: tcp 10.244.1.20:40000 → 10.244.2.30:6379\n  from pod staging/frontend\n")
        assert ("Verdict: DENY, decided by NetworkPolicy staging/log-and-deny-frontend in tier default, "
                "ingress rule 1: Deny") in out
        assert "Logged by NetworkPolicy staging/log-and-deny-frontend in tier default, ingress rule 0: Log" in out
        assert "Pending (with staged policies enforced): the same" in out
        assert "6. ingress of pod staging/database on node node-b" in out

    def test_failsafe(self) -> None:
        result = run(*eval_args("external:client", "node:node-a", "tcp", "--port", "22"))
        assert "Verdict: ALLOW by a failsafe port" in result.stdout

    def test_unpoliced(self) -> None:
        result = run(*eval_args("node:node-a", "production/frontend", "tcp", "--port", "8080"))
        assert "No policy point lies on this path" in result.stdout
        assert "Verdict: ALLOW" in result.stdout

    def test_sport(self) -> None:
        result = run(*eval_args("production/frontend", "staging/frontend", "udp", "--port", "53", "--sport", "5353"))
        assert result.stdout.startswith("Flow: udp 10.244.1.10:5353 → 10.244.1.20:53\n")


class TestEvalJson:
    def test_article_scenario_1(self) -> None:
        doc = eval_json("production/frontend", "production/transaction", "tcp", "--port", "9000")
        assert doc["verdict"] == "deny"
        assert doc["decided_by"] == {"kind": "GlobalNetworkPolicy", "namespace": None,
                                     "name": "deny-frontend-to-transaction", "tier": "default",
                                     "direction": "ingress", "rule": 0, "action": "Deny"}
        assert doc["pending"] == {"verdict": "deny", "decided_by": doc["decided_by"]}
        assert doc["flow"] == {"src": "10.244.1.10", "dst": "10.244.2.10", "protocol": 6, "src_port": 40000,
                               "dst_port": 9000, "icmp_type": None, "icmp_code": None,
                               "from": "pod production/frontend", "to": "pod production/transaction"}

    def test_logged(self) -> None:
        doc = eval_json("staging/frontend", "staging/database", "tcp", "--port", "6379")
        assert doc["logged"] == [{"kind": "NetworkPolicy", "namespace": "staging", "name": "log-and-deny-frontend",
                                  "direction": "ingress", "rule": 0}]

    def test_end_of_tier_on_a_host_endpoint(self) -> None:
        doc = eval_json("external:client", "node:node-a", "tcp", "--port", "80")
        assert doc["decided_by"] == {"kind": "GlobalNetworkPolicy", "namespace": None, "name": "favorite-worker-host",
                                     "tier": "default", "direction": "ingress", "rule": -1, "action": "Deny"}
        trace = doc["trace"]
        assert [s["stage"] for s in trace] == ["untracked", "prednat", "normal"]
        assert trace[-1]["endpoint"] == "hep:node-a-eth0"

    def test_failsafe(self) -> None:
        doc = eval_json("node:node-a", "node:node-b", "tcp", "--port", "2379")
        assert (doc["verdict"], doc["decided_by"], doc["failsafe"]) == ("allow", None, True)

    def test_ipv6_flag(self) -> None:
        doc = eval_json("staging/transaction", "production/transaction", "tcp", "--port", "9000", "-6")
        flow = doc["flow"]
        assert (flow["src"], flow["dst"]) == ("fd00:10:244:2::20", "fd00:10:244:2::10")
        assert doc["decided_by"] == {"kind": "GlobalNetworkPolicy", "namespace": None, "name": "allow-cluster-internal",
                                     "tier": "default", "direction": "ingress", "rule": 1, "action": "Allow"}

    def test_an_address_decides_the_family(self) -> None:
        doc = eval_json("2001:db8:bad::1", "node:node-b", "tcp", "--port", "80")
        assert doc["verdict"] == "deny" and doc["flow"]["dst"] == "fd00:172:31::12"
        doc = eval_json("192.0.2.50", "production/frontend", "tcp", "--port", "8080")
        assert doc["flow"]["from"] == "outside host client (192.0.2.50)"

    def test_icmp_defaults_to_echo_request(self) -> None:
        doc = eval_json("external:client", "node:node-a", "icmp")
        assert (doc["flow"]["protocol"], doc["flow"]["icmp_type"], doc["flow"]["icmp_code"]) == (1, 8, 0)
        assert doc["decided_by"]["rule"] == 1
        doc = eval_json("external:client", "node:node-a", "icmpv6")
        assert (doc["flow"]["protocol"], doc["flow"]["icmp_type"], doc["flow"]["icmp_code"]) == (58, 128, 0)
        assert ":" in doc["flow"]["src"]

    def test_icmp_type_and_code(self) -> None:
        doc = eval_json("external:client", "node:node-a", "icmp", "--icmp-type", "3", "--icmp-code", "4")
        assert (doc["flow"]["icmp_type"], doc["flow"]["icmp_code"]) == (3, 4)
        doc = eval_json("external:client", "node:node-a", "1", "--icmp-type", "0")
        assert (doc["flow"]["protocol"], doc["flow"]["icmp_type"], doc["flow"]["icmp_code"]) == (1, 0, None)

    def test_protocol_number(self) -> None:
        doc = eval_json("production/frontend", "staging/frontend", "132", "--port", "9")
        assert doc["flow"]["protocol"] == 132


class TestEvalErrors:
    @pytest.mark.parametrize(("src", "dst", "message"), [
        ("production/nope", "staging/database", "no Pod 'production/nope' (expected NAMESPACE/POD)"),
        ("hep:nope", "staging/database", "no HostEndpoint named 'nope'"),
        ("staging/frontend", "node:nope", "no Node named 'nope'"),
        ("external:nope", "node:node-a", "no ExternalHost named 'nope'"),
        ("frontend", "node:node-a", "cannot read 'frontend': expected NAMESPACE/POD, deploy/NAMESPACE/NAME (or sts/, "
                                    "ds/, rs/, job/, cronjob/, svc/), hep:NAME, node:NAME, external:NAME or an IP "
                                    "address"),
        ("deploy/staging/nope", "node:node-a", "no Deployment staging/nope"),
        ("pods/staging/frontend", "node:node-a", "cannot read 'pods/staging/frontend': unknown kind 'pods' "
                                                 "(allowed: deploy, sts, ds, rs, job, cronjob, svc)"),
        ("staging/frontend", "svc/staging/nope", "no Service staging/nope"),
        ("svc/staging/db", "staging/frontend", "svc/staging/db: a Service is a destination reached on a port "
                                               "(--to svc/staging/db --port N)"),
        ("10.0.0.1", "fd00::1", "source 10.0.0.1 and destination fd00::1 are of different IP versions"),
    ])
    def test_bad_refs(self, src: str, dst: str, message: str) -> None:
        result = run(*eval_args(src, dst, "tcp", "--port", "80"))
        assert result.exit_code == 2
        assert result.stdout == ""
        assert result.stderr == f"error: {message}\n"

    def test_no_address_of_the_family(self, tmp_path: Path) -> None:
        v4only = tmp_path / "v4.yaml"
        v4only.write_text("apiVersion: lab.flowtui.dev/v1\nkind: ExternalHost\nmetadata: {name: old}\n"
                          "spec: {addresses: [192.0.2.99]}\n")
        result = run(*eval_args("external:old", "node:node-a", "tcp", "--port", "80", "-6",
                                paths=(ARTICLE, str(v4only))))
        assert result.exit_code == 2
        assert result.stderr == "error: outside host old has no IPv6 address\n"

    def test_bad_protocol(self) -> None:
        result = run(*eval_args("staging/frontend", "staging/database", "bogus"))
        assert result.exit_code == 2
        expected = "Invalid value: 'bogus': expected tcp, udp, icmp, icmpv6, sctp, udplite or a number 1-255"
        assert expected in result.stderr
        result = run(*eval_args("staging/frontend", "staging/database", "256"))
        assert result.exit_code == 2

    def test_icmp_with_a_port(self) -> None:
        result = run(*eval_args("staging/frontend", "staging/database", "icmp", "--port", "80"))
        assert result.exit_code == 2
        assert "ICMP has no ports; use --icmp-type/--icmp-code" in result.stderr

    def test_icmp_options_without_icmp(self) -> None:
        result = run(*eval_args("staging/frontend", "staging/database", "tcp", "--port", "80", "--icmp-type", "8"))
        assert result.exit_code == 2
        assert "--icmp-type/--icmp-code need --proto icmp or icmpv6" in result.stderr

    def test_port_out_of_range(self) -> None:
        result = run(*eval_args("staging/frontend", "staging/database", "tcp", "--port", "0"))
        assert result.exit_code == 2

    def test_bad_files(self) -> None:
        result = run(*eval_args("a/b", "c/d", "tcp", "--port", "80", paths=(str(BAD / "tier.yaml"),)))
        assert result.exit_code == 2
        lines = result.stderr.splitlines()
        assert lines[:-1] == problems_of(BAD / "tier.yaml")
        assert lines[-1].endswith("nothing was changed.")

    def test_no_input(self) -> None:
        result = run(*eval_args("a/b", "c/d", "tcp", "--port", "80", paths=()))
        assert result.exit_code == 2
        assert result.stderr.startswith("error: no input")

    def test_missing_required_option(self) -> None:
        result = run("eval", "-f", ARTICLE, "--from", "staging/frontend", "--proto", "tcp")
        assert result.exit_code == 2
        assert "Missing option '--to'" in result.stderr


# --------------------------------------------------------------------------------------------
# demo


class TestDemo:
    def test_demo_prints_every_probe(self) -> None:
        result = run("demo")
        assert result.exit_code == 0, result.output
        out = result.stdout
        assert out.startswith(f"Scenarios: {ARTICLE}\n")
        rows = [line for line in out.splitlines() if line.startswith(("ALLOW ", "DENY "))]
        assert len(rows) == len(ARTICLE_PROBES)
        for probe, row in zip(ARTICLE_PROBES, rows, strict=True):
            assert f"{probe.src} → {probe.dst} {probe.proto}" in row
            assert probe.what in out
        assert rows[0].startswith("DENY ") and "deny-frontend-to-transaction" in rows[0]
        assert "Why? One decision explained step by step:" in out

    def test_help(self) -> None:
        result = run("--help")
        assert result.exit_code == 0
        for command in ("check", "eval", "demo"):
            assert command in result.stdout
