"""`flowtui whatif` and `flowtui propose` through click's CliRunner: flow sources, the current set
from files or the datastore, edits and deletions, output formats, and invalid input (exit 2,
FILE:LINE, nothing evaluated)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from enforcer.datastore import Datastore
from flowtui.cli.main import cli
from tests.test_whatif_fixtures import SHOP_TRAFFIC, flow_frame, write_cluster
from tests.test_whatif_report import EDIT as DENY_DNS

BAD = """apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: broken}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    protocol: TCP
    destination: {ports: [99999]}
"""


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, str]:
    cluster = write_cluster(tmp_path)
    flows = tmp_path / "flows.parquet"
    flow_frame(SHOP_TRAFFIC, repeat=3).write_parquet(flows)
    edit = tmp_path / "edit.yaml"
    edit.write_text(DENY_DNS)
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    return {"cluster": str(cluster), "flows": str(flows), "edit": str(edit), "bad": str(bad), "dir": str(tmp_path)}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_whatif_table(files: dict[str, str]) -> None:
    result = invoke("whatif", "--current", files["cluster"], "--flows", files["flows"], "-f", files["edit"])
    assert result.exit_code == 0, result.stderr
    assert "edits: added gnp/no-dns-out" in result.stdout
    assert "NEWLY DENIED: 3 flows in 1 group" in result.stdout
    assert "shop/web-1  external:internet  udp/53" in result.stdout


def test_whatif_json_and_exit_code(files: dict[str, str]) -> None:
    result = invoke("whatif", "--current", files["cluster"], "--flows", files["flows"], "-f", files["edit"],
                    "-o", "json", "--exit-code", "--no-pending")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["summary"]["newly_denied"] == 3
    assert set(doc["categories"]) == {"newly_denied", "newly_allowed", "attribution_changed"}
    group = doc["categories"]["newly_denied"]["groups"][0]
    assert group["after"]["decided_by"]["name"] == "no-dns-out" and group["examples"][0]["dst_port"] == 53


def test_whatif_delete(files: dict[str, str]) -> None:
    result = invoke("whatif", "--current", files["cluster"], "--flows", files["flows"], "--delete",
                    "gnp/deny-dev-to-db", "-o", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["summary"]["newly_allowed"] == 3 and doc["summary"]["edits"] == ["deleted gnp/deny-dev-to-db"]


@pytest.mark.parametrize("args,message", [
    (["--delete", "gnp/nope"], "gnp/nope: not found"),
    (["--delete", "zzz/x"], "unknown kind"),
    (["--delete", "gnp"], "expected KIND/NAME"),
    (["--since", "yesterday"], "expected a duration"),
])
def test_whatif_bad_arguments(files: dict[str, str], args: list[str], message: str) -> None:
    result = invoke("whatif", "--current", files["cluster"], "--flows", files["flows"], *args)
    assert result.exit_code == 2 and message in result.stderr + result.stdout
    assert "NEWLY DENIED" not in result.stdout


def test_invalid_edit_exits_2_with_file_and_line(files: dict[str, str]) -> None:
    result = invoke("whatif", "--current", files["cluster"], "--flows", files["flows"], "-f", files["bad"])
    assert result.exit_code == 2
    assert f"{files['bad']}:9" in result.stderr and "nothing was evaluated" in result.stderr
    assert result.stdout == ""


def test_flow_sources(files: dict[str, str], tmp_path: Path) -> None:
    missing = invoke("whatif", "--current", files["cluster"], "--db", str(tmp_path / "none.duckdb"))
    assert missing.exit_code == 2 and "no such file" in missing.stderr
    hubble = tmp_path / "export.json"
    hubble.write_text(json.dumps({"flow": {"verdict": "FORWARDED", "IP": {"source": "10.244.1.10",
                                                                          "destination": "198.51.100.7"},
                                           "l4": {"UDP": {"source_port": 5000, "destination_port": 53}}}}) + "\n")
    result = invoke("whatif", "--current", files["cluster"], "--flows", str(hubble), "-f", files["edit"],
                    "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["newly_denied"] == 1


def test_no_flow_store(files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(files["dir"])
    result = invoke("whatif", "--current", files["cluster"])
    assert result.exit_code == 2 and "no flows" in result.stderr


def test_current_set_from_the_datastore(files: dict[str, str], tmp_path: Path) -> None:
    state = tmp_path / "state"
    Datastore(state).apply_documents([files["cluster"]])
    result = invoke("whatif", "--state-dir", str(state), "--flows", files["flows"], "-f", files["edit"], "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["newly_denied"] == 3
    empty = invoke("whatif", "--state-dir", str(tmp_path / "empty"), "--flows", files["flows"])
    assert empty.exit_code == 2 and "is empty" in empty.stderr


def test_propose_then_check_then_whatif(files: dict[str, str], tmp_path: Path) -> None:
    result = invoke("propose", "-n", "shop", "--current", files["cluster"], "--flows", files["flows"])
    assert result.exit_code == 0, result.stderr
    proposal = tmp_path / "proposal.yaml"
    proposal.write_text(result.stdout)
    assert "kind: NetworkPolicy" in result.stdout and "0 observed allowed flows would be denied" in result.stdout
    checked = invoke("check", "-f", str(proposal))
    assert checked.exit_code == 0 and checked.stdout.startswith("ok:")
    replay = invoke("whatif", "--current", files["cluster"], "--flows", files["flows"], "-f", str(proposal),
                    "-o", "json", "--exit-code")
    assert replay.exit_code == 0, replay.stdout
    assert json.loads(replay.stdout)["summary"]["newly_denied"] == 0
    unknown = invoke("propose", "-n", "nowhere", "--current", files["cluster"], "--flows", files["flows"])
    assert unknown.exit_code == 2 and "no pods" in unknown.stderr


def test_progress_bars_on_request(files: dict[str, str]) -> None:
    result = invoke("whatif", "--current", files["cluster"], "--flows", files["flows"], "-f", files["edit"],
                    "--progress", "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["newly_denied"] == 3
