"""What the CLI sees of an etcd lab's agents, in the kernel: `get hits --lab` names the policy and
rule behind a kernel counter on a node although only the agents compiled (their rule ids come
from blocks leased in etcd and what each id means is published there); `lab status` and
`flowtui status` show each agent's applied table (digest, rule count); and the commands the issue
lists work given only `--lab`: apply, get, delete, policy disable/enable, whatif, the dashboard.

One lab (one etcd member, three nodes) for the module; pings between pods on different nodes, as
in `test_lab_etcd_kernel.py` (`deny-icmp` is enforced by the destination's node).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import click
import pytest

from tests.test_lab_etcd_kernel import Lab, all_pings, etcd_lab, in_sync, wait_for

pytestmark = pytest.mark.kernel

OTHER_YAML = """apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: allow-a1}
spec:
  selector: app == 'a1'
  types: [Ingress]
  ingress: [{action: Allow}]
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with etcd_lab("pb", tmp_path_factory.mktemp("pb-lab"), members=1, files={"other.yaml": OTHER_YAML}) as the_lab:
        the_lab.ok("apply", "--lab", the_lab.id, "-f", str(the_lab.files / "deny.yaml"))
        wait_for("every node denies ICMP", all_pings(the_lab, False), timeout=60)
        yield the_lab


def test_get_hits_names_the_policy_rule_an_agent_counted(lab: Lab) -> None:
    def denied_at_node_b() -> list[dict[str, object]]:
        lab.ping("node-b")
        rows = json.loads(lab.ok("get", "hits", "--lab", lab.id, "-o", "json").stdout)
        return [r for r in rows if r["node"] == "node-b" and r["packets"] and r["rule"]
                and r["rule"]["name"] == "deny-icmp"]

    [hit] = wait_for("node-b's counter of deny-icmp", denied_at_node_b, timeout=30)
    assert hit["rule"] == {"kind": "GlobalNetworkPolicy", "namespace": None, "name": "deny-icmp",
                           "tier": "default", "direction": "ingress", "rule": 0, "action": "Deny",
                           "revision": hit["rule"]["revision"]}
    rows = json.loads(lab.ok("get", "hits", "--lab", lab.id, "-o", "json").stdout)
    assert rows and all(r["rule"] is not None for r in rows), [r for r in rows if r["rule"] is None]
    # the CLI's machine numbered nothing: every id resolved from what the agents published
    assert not [p for p in (lab.home / "etcd").glob("*/rules.jsonl") if p.stat().st_size]
    table = lab.ok("get", "hits", "--lab", lab.id).stdout
    assert "GlobalNetworkPolicy deny-icmp" in table and "(unknown id" not in table


def test_status_shows_each_agents_applied_table(lab: Lab) -> None:
    wait_for("agents in sync", in_sync(lab))

    def published() -> list[dict[str, object]] | None:
        agents = lab.status()["agents"]
        return agents if all(a.get("digest") and a.get("rules") for a in agents) else None

    agents = wait_for("every agent's table in lab status", published, timeout=30)
    assert {a["node"] for a in agents} == {"node-a", "node-b", "node-c"}
    for agent in agents:
        assert len(str(agent["digest"])) == 64 and int(str(agent["rules"])) > 0
    text = lab.ok("status", "--lab", lab.id).stdout
    for agent in agents:
        assert f"agent {agent['node']}: in-sync" in text
        assert f"table {str(agent['digest'])[:12]} with {agent['rules']} rules" in text


def test_the_issues_commands_work_given_only_lab(lab: Lab) -> None:
    other = str(lab.files / "other.yaml")
    applied = lab.ok("apply", "--lab", lab.id, "-f", other)
    assert "gnp/allow-a1 created" in applied.stdout
    assert "allow-a1" in lab.ok("get", "gnp", "--lab", lab.id).stdout
    assert "gnp/allow-a1 deleted" in lab.ok("delete", "gnp", "allow-a1", "--lab", lab.id).stdout
    lab.ok("apply", "--lab", lab.id, "-f", other)
    assert "gnp/allow-a1 deleted" in lab.ok("delete", "-f", other, "--lab", lab.id).stdout
    assert "allow-a1" not in lab.ok("get", "gnp", "--lab", lab.id).stdout
    lab.toggle(disabled=True)
    assert "disabled" in lab.ok("get", "gnp", "deny-icmp", "--lab", lab.id).stdout
    wait_for("pings pass with deny-icmp disabled", all_pings(lab, True), timeout=30)
    lab.toggle(disabled=False)
    wait_for("every node denies ICMP again", all_pings(lab, False), timeout=30)
    assert lab.ok("datastore", "check", "--lab", lab.id).returncode == 0

    # whatif: the lab's datastore is the current set, its dataset the recorded flows
    def newly_allowed() -> list[dict[str, object]] | None:
        lab.ping("node-b")
        done = lab.cli("whatif", "--lab", lab.id, "--cluster", "--delete", "gnp/deny-icmp", "-o", "json")
        if done.returncode != 0:
            return None
        groups = json.loads(done.stdout)["categories"]["newly_allowed"]["groups"]
        return groups or None

    groups = wait_for("a denied ping that deleting deny-icmp allows", newly_allowed, timeout=60)
    assert any(g["before"]["decided_by"]["name"] == "deny-icmp" and g["after"]["verdict"] == "allow"
               for g in groups)


def test_the_dashboard_reads_the_labs_datastore(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """`flowtui tui --lab ID` headless: policies from the lab's etcd, read-only with the reason, and live
    per-rule counters from every node's table."""
    from enforcer.datastore.etcd import EtcdDatastore
    from flowtui.cli.tui import build_app, tui
    from flowtui.tui.screens.policies import PoliciesScreen

    monkeypatch.setenv("FLOWTUI_HOME", str(lab.home))
    flows = lab.home / "flows" / lab.id
    wait_for("the lab's dataset", lambda: flows.is_dir() and any(flows.rglob("*.parquet")), timeout=30)
    with click.Context(tui, info_name="tui") as ctx:  # what `flowtui tui --lab ID` runs in
        ctx.params["lab_id"] = lab.id
        app = build_app(str(flows), None, state_dir=str(lab.home), lab_id=lab.id)
    control = app.control  # type: ignore[attr-defined]
    assert isinstance(control.datastore, EtcdDatastore)
    assert "etcd mode" in control.why_not
    # its rule ids resolve through what the agents published (this machine compiled nothing)
    refs = control.rule_refs()
    assert {(r.name, r.rule, r.action) for r in refs.values() if r.name == "deny-icmp"} \
        >= {("deny-icmp", 0, "Deny"), ("deny-icmp", 1, "Allow")}
    # live per-rule counters although the agents enforce: each node's table, read in its namespace
    [deny] = [i for i, r in refs.items() if r.name == "deny-icmp" and r.rule == 0]
    lab.ping("node-b")  # denied: counted by node-b's deny-icmp rule
    counters = control.kernel_hits()
    assert counters is not None and counters[deny] > 0
    by_cli = json.loads(lab.ok("get", "hits", "--lab", lab.id, "-o", "json").stdout)
    assert counters[deny] == sum(int(r["packets"]) for r in by_cli if r["id"] == deny)  # every node's, summed
    lab.ping("node-b")
    assert control.kernel_hits()[deny] > counters[deny]  # type: ignore[index]  # live, not a stored reading

    async def run() -> tuple[list[str], str, int]:
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.press("3")
            screen = app.screen
            assert isinstance(screen, PoliciesScreen)
            for _ in range(500):
                if screen.lines:
                    break
                await pilot.pause(0.02)
            hits = next(ln.activity.hits for ln in screen.lines
                        if ln.level == "rule" and ln.ref is not None and ln.ref.name == "deny-icmp" and ln.rule == 0)
            return [ln.text for ln in screen.shown], screen.note, hits

    try:
        names, note, hits = asyncio.run(run())
    finally:
        app.source.close()
    assert "gnp deny-icmp" in names
    assert "hits: live nftables counters" in note and hits > counters[deny]
