"""`flowtui lab up|exec|status|down`: input and root checks without a kernel, then a real lab whose
traffic a live policy toggle changes (with the fake compiler of test_reconcile: it drops ICMP in
every node's forward hook while a policy called `deny-ping` is enabled)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from enforcer.lab.state import lab_namespaces
from flowtui.cli.main import cli
from flowtui.cli.state import Runtime, default_backend, default_lab_nodes
from tests.test_reconcile import SCENARIOS, fake_compile

DENY_PING = """\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-ping}
spec:
  selector: all()
  ingress: [{action: Deny, protocol: ICMP}]
"""


def runtime(root: bool = True) -> Runtime:
    def compiler() -> tuple[Any, Any]:
        return fake_compile, None

    return Runtime(compiler=compiler, backend=default_backend, lab_nodes=default_lab_nodes, is_root=lambda: root)


def run(*args: str, root: bool = True) -> Result:
    return CliRunner().invoke(cli, list(args), obj=runtime(root), catch_exceptions=False)


def test_lab_commands_need_root(tmp_path: Path) -> None:
    for args in (["lab", "up", "-f", str(SCENARIOS)], ["lab", "exec", "default/x", "--", "true"],
                 ["lab", "status"], ["lab", "down"]):
        result = run(*args[:2], "--lab", "tnoroot", *args[2:], root=False)
        assert result.exit_code == 1, args
        assert "needs root (network namespaces and nftables): run as root" in result.stderr
        assert "--dry-run" not in result.stderr and "Traceback" not in result.output


def test_lab_up_invalid_input_exits_2_before_building(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: Not_A_Label}\n")
    result = run("lab", "up", "-f", str(bad), "--lab", "tinvalid", "--state-dir", str(tmp_path / "s"))
    assert result.exit_code == 2 and f"{bad}:" in result.stderr
    assert not lab_namespaces("tinvalid")


def test_lab_exec_rejects_bad_targets() -> None:
    result = run("lab", "exec", "--lab", "tbad", "not a target", "--", "true")
    assert result.exit_code == 2 and "invalid target" in result.stderr
    missing = run("lab", "exec", "--lab", "tbad", "default/pod", "--", "true")
    assert missing.exit_code == 1 and "is not up" in missing.stderr
    # an option after TARGET would otherwise run as the command, in the default lab
    late = run("lab", "exec", "default/pod", "--lab", "tbad", "--", "true")
    assert late.exit_code == 2 and "--lab after TARGET: options go before it" in late.stderr


def test_lab_help() -> None:
    result = run("lab", "--help")
    assert result.exit_code == 0 and "ft-<lab>-" in result.stdout
    assert "NAMESPACE/POD" in run("lab", "exec", "--help").stdout


def ping(lab_id: str, src: str, dst: str) -> int:
    result = run("lab", "exec", "--lab", lab_id, src, "--", "ping", "-c1", "-W1", "-q", dst)
    return result.exit_code


@pytest.mark.kernel
def test_lab_up_enforce_toggle_down(lab_id: str, tmp_path: Path) -> None:
    before = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout
    policy = tmp_path / "deny-ping.yaml"
    policy.write_text(DENY_PING)
    state = str(tmp_path / "state")
    up = run("lab", "up", "-f", str(SCENARIOS), "-f", str(policy), "--lab", lab_id, "--state-dir", state)
    assert up.exit_code == 0, up.output
    assert "production/frontend" in up.stdout and "10.244.1.10" in up.stdout and "node-a" in up.stdout
    assert "node-a: applied, replaced whole table" in up.stdout
    assert f"Try: flowtui lab exec --lab {lab_id} " in up.stdout  # as typed here: not the default lab

    status = run("lab", "status", "--lab", lab_id, "-o", "json")
    doc = json.loads(status.stdout)
    assert doc["up"] and doc["nftables"]["node-a"]["chains"] >= 2
    assert "nftables (table inet flowtui):" in run("lab", "status", "--lab", lab_id).stdout

    # deny-ping is enforced: frontend (node-a) cannot ping transaction (node-b); TCP is untouched
    assert ping(lab_id, "production/frontend", "10.244.2.10") != 0
    toggle = run("policy", "disable", "deny-ping", "--lab", lab_id, "--state-dir", state)
    assert toggle.exit_code == 0, toggle.output
    assert "in the kernel" in toggle.stdout and "2 of 2 nodes changed" in toggle.stdout
    assert ping(lab_id, "production/frontend", "10.244.2.10") == 0
    assert run("policy", "enable", "deny-ping", "--lab", lab_id, "--state-dir", state).exit_code == 0
    assert ping(lab_id, "production/frontend", "10.244.2.10") != 0

    assert run("lab", "exec", "--lab", lab_id, "node:node-a", "--", "sh", "-c", "exit 3").exit_code == 3

    down = run("lab", "down", "--lab", lab_id)
    assert down.exit_code == 0 and "removed" in down.stdout
    again = run("lab", "down", "--lab", lab_id)
    assert again.exit_code == 0 and "was not up" in again.stdout
    assert run("lab", "status", "--lab", lab_id).stdout.strip() == f"lab {lab_id} is not up"
    assert subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout == before
