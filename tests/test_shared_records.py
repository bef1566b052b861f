"""Rule ids and agents' applied state shared through etcd (`enforcer.datastore.shared`), against a
real etcd with an in-memory dataplane: agents on separate machines (separate local records) number
rules from leased blocks, publish what the ids mean before any kernel sees them, and a third
machine (the CLI) resolves every id any of them put in a table; each agent's state, with its
table's digest and rule count, is readable from anywhere; none of it wakes a watching agent."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from enforcer.agent import Agent
from enforcer.agent_status import Publisher, StatusWriter, read_agents
from enforcer.applied import table_digest
from enforcer.datastore import open_datastore
from enforcer.datastore.backend import parse_datastore_url
from enforcer.datastore.etcd import EtcdDatastore
from enforcer.datastore.shared import (
    BLOCK,
    lease_block,
    publish_agent,
    publish_refs,
    published_agents,
    published_refs,
)
from enforcer.nft import ir
from enforcer.nft.backend import FakeBackend
from enforcer.nft.compiler import CompileOptions, compile_node
from enforcer.reconcile import Reconciler
from enforcer.ruleids import IdAllocator, RuleIdError, RuleRef, RuleTable
from flowtui.cli.main import cli
from tests.test_agent import until
from tests.test_datastore import SCENARIOS
from tests.test_datastore_backends import write

NODES = ("node-a", "node-b")
EDIT = """\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: shared-edit}
spec:
  selector: all()
  order: 5
  ingress: [{action: Deny, protocol: ICMP}]
"""


def _etcd(url: str, home: Path) -> EtcdDatastore:
    ds = open_datastore(url, home)
    assert isinstance(ds, EtcdDatastore)
    return ds


def _ids_in(table: ir.Table) -> set[int]:
    """Every rule id the table logs with (its NFLOG prefixes)."""
    return {int(m) for m in re.findall(r"ft:[ADPL](\d+)", repr(table))}


def test_blocks_never_overlap_and_start_past_what_a_machine_used(etcd_url: str, tmp_path: Path) -> None:
    kv = _etcd(etcd_url, tmp_path).kv
    first = lease_block(kv, 1)
    second = lease_block(kv, 1)
    assert first == (1, 1 + BLOCK) and second == (1 + BLOCK, 1 + 2 * BLOCK)
    assert lease_block(kv, 10**6, size=10) == (10**6, 10**6 + 10)  # past this machine's own old ids
    assert lease_block(kv, 1, size=10)[0] == 10**6 + 10
    # leases racing each other: every block distinct
    blocks: list[tuple[int, int]] = []
    threads = [threading.Thread(target=lambda: blocks.append(lease_block(_etcd(etcd_url, tmp_path).kv, 1, 5)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    taken = [i for low, high in blocks for i in range(low, high)]
    assert len(taken) == len(set(taken)) == 30


def test_allocator_takes_ids_from_leased_blocks_and_records_them(tmp_path: Path) -> None:
    leases: list[int] = []

    def lease(first: int) -> tuple[int, int]:
        leases.append(first)
        return (100, 102) if len(leases) == 1 else (500, 502)

    ids = IdAllocator(lease=lease)
    assert [ids.id_for(("rule", str(i))) for i in range(3)] == [100, 101, 500]
    assert ids.id_for(("rule", "0")) == 100 and leases == [1, 102]
    path = tmp_path / "ids.jsonl"
    ids.persist(path)
    again = IdAllocator.load(path, lease=lease)  # another process sharing the file goes on in the block
    assert again.block == (500, 502) and again.id_for(("rule", "3")) == 501 and len(leases) == 2
    path.write_text('{"block": [5, 3]}\n')
    with pytest.raises(RuleIdError, match=r"ids.jsonl:1: not an id block"):
        IdAllocator.load(path)


def test_published_refs_are_created_once_and_an_id_keeps_one_meaning(etcd_url: str, tmp_path: Path) -> None:
    kv = _etcd(etcd_url, tmp_path).kv
    refs = [RuleRef(i, "GlobalNetworkPolicy", None, f"p{i}", "default", 3, "ingress", 0, "Deny") for i in (7, 8)]
    assert publish_refs(kv, refs) == 1
    assert publish_refs(kv, refs) == 0  # the same refs again: nothing more written
    assert published_refs(kv) == RuleTable(refs)
    check = CliRunner().invoke(cli, ["datastore", "check", "--datastore", etcd_url, "--state-dir", str(tmp_path)])
    assert check.exit_code == 0, check.output
    publish_refs(kv, [RuleRef(7, "GlobalNetworkPolicy", None, "other", "default", 3, "ingress", 0, "Allow")])
    with pytest.raises(RuleIdError, match="rule id 7 would change meaning"):
        published_refs(kv)
    check = CliRunner().invoke(cli, ["datastore", "check", "--datastore", etcd_url, "--state-dir", str(tmp_path)])
    assert check.exit_code == 1 and "rule id 7 would change meaning" in check.output


def test_agents_on_two_machines_number_apart_and_the_cli_resolves_both(etcd_url: str, tmp_path: Path) -> None:
    writer = _etcd(etcd_url, tmp_path / "cli")
    writer.apply_documents([str(SCENARIOS)])
    backends, agents, threads = {}, {}, []
    publishers = []
    for node in NODES:
        ds = _etcd(etcd_url, tmp_path / node)  # each node's agent has its own machine's records
        backends[node] = FakeBackend()
        own = _etcd(etcd_url, tmp_path / node).kv  # the publisher's own client, as `flowtui agent` makes it
        publisher = Publisher(lambda doc, n=node, kv=own: publish_agent(kv, n, doc))
        publishers.append(publisher)
        agents[node] = Agent(ds, Reconciler(ds, backends[node], compile_node, CompileOptions(), lambda n=node: [n]),
                             node, lambda e: None, backoff=(0.1, 0.3), heartbeat=0.3,
                             status=StatusWriter(ds.path, node, "memory", str(ds), publisher))
        threads.append(threading.Thread(target=agents[node].run, daemon=True))
    for t in threads:
        t.start()
    try:
        until(lambda: all(a.state == "in-sync" for a in agents.values()), what="both agents in sync")
        edit = writer.apply_documents([write(tmp_path / "e.yaml", EDIT)])
        until(lambda: all(a.revision >= edit.revision for a in agents.values()), what="the edit on both nodes")
        used = {node: _ids_in(backends[node].tables[node]) for node in NODES}
        assert all(used.values())
        # each machine numbered from its own blocks: the same rules under different ids, never one id twice
        local = {node: RuleTable.load(tmp_path / node / "etcd" / agents[node].datastore.path.name / "rules.jsonl")
                 for node in NODES}
        assert not used["node-a"] & used["node-b"]
        # the CLI's machine compiled nothing, yet resolves every id either node logs with
        resolved = writer.rule_table()
        for node in NODES:
            missing = {i for i in used[node] if resolved.get(i) is None}
            assert not missing, f"{node}: ids {sorted(missing)[:5]} not resolvable from another machine"
            for rule_id in used[node]:
                assert resolved.get(rule_id) == local[node].get(rule_id)
        assert any(r.name == "shared-edit" for r in resolved)
        # each agent's applied state, from anywhere: the digest of what its node holds
        until(lambda: {d["node"] for d in published_agents(writer.kv)
                       if d.get("revision", 0) >= edit.revision} == set(NODES), what="published states")
        seen = {s.node: s for s in read_agents(writer.path, published_agents(writer.kv))}
        for node in NODES:
            table = backends[node].tables[node]
            assert seen[node].digest == table_digest(table)
            assert seen[node].rules == sum(len(c.rules) for c in table.chains.values()) > 0
            assert seen[node].state == "in-sync" and seen[node].revision >= edit.revision
        # publishing is outside the watched range: it wakes no agent
        revisions = {n: a.revision for n, a in agents.items()}
        publish_refs(writer.kv, [RuleRef(2**31 - 5, "Default", None, "x", None, 1, "ingress", -1, "Deny")])
        writer.kv.apply("/flowtui/state/agents/elsewhere", "{}")
        threading.Event().wait(1.0)
        assert {n: a.revision for n, a in agents.items()} == revisions
    finally:
        for agent in agents.values():
            agent.stop()
        for t in threads:
            t.join(30)
        for publisher in publishers:
            publisher.close()


class _BeforePublishing(EtcdDatastore):
    """The agents of an earlier version: rule ids counted up on the machine alone, never published."""

    @property
    def id_lease(self) -> None:
        return None

    def publish_rules(self, refs: object) -> None:
        pass


def test_refs_compiled_before_publishing_are_published_by_the_next_agent_run(etcd_url: str, tmp_path: Path) -> None:
    """A node whose table was compiled before the shared records existed logs ids no other machine
    can name (the CLI shows them unknown); the agent's next run publishes its records' refs once it
    enforces, and from then on every id resolves elsewhere. An id etcd already gives another
    meaning (numbered apart before ids were leased) is reported and left out: publishing it would
    make every reader refuse the id."""
    writer = _etcd(etcd_url, tmp_path / "cli")
    writer.apply_documents([str(SCENARIOS)])
    node = "node-a"
    backend = FakeBackend()
    old = _BeforePublishing(parse_datastore_url(etcd_url), state_dir=tmp_path / node)
    assert Reconciler(old, backend, compile_node, CompileOptions(), lambda: [node]).reconcile([node]).ok
    used = _ids_in(backend.tables[node])
    assert used and min(used) == 1  # numbered on this machine alone
    assert published_refs(writer.kv) == RuleTable()
    assert all(writer.rule_table().get(i) is None for i in used)  # the CLI cannot name them
    # another machine, meanwhile, published id 1 with its own meaning (its ids were numbered apart)
    other = RuleRef(1, "GlobalNetworkPolicy", None, "elsewhere", "default", 9, "egress", 3, "Allow")
    mine = RuleTable.load(old.rules_path)
    assert mine.get(1) is not None and mine.get(1) != other
    publish_refs(writer.kv, [other])

    events: list[dict[str, object]] = []
    ds = _etcd(etcd_url, tmp_path / node)  # the same machine's records, today's agent
    agent = Agent(ds, Reconciler(ds, backend, compile_node, CompileOptions(), lambda: [node]), node, events.append,
                  backoff=(0.1, 0.3), heartbeat=0.3)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        said = until(lambda: next((e for e in events if e["event"] == "rules"), None), what="the backlog published")
    finally:
        agent.stop()
        thread.join(30)
    assert agent.state == "in-sync"
    assert _ids_in(backend.tables[node]) == used  # adopted: the same ids, nothing renumbered
    assert said["published"] == len(mine) - 1 and said["conflicts"] == [1]
    assert "mean another rule in etcd" in str(said["error"])
    resolved = writer.rule_table()  # every other id now resolves from another machine, as compiled
    for rule_id in used - {1}:
        assert resolved.get(rule_id) == mine.get(rule_id)
    assert resolved.get(1) == other  # etcd's meaning stands; no id was published with two
    # the next run finds nothing left to publish
    events.clear()
    again = Agent(ds, Reconciler(ds, backend, compile_node, CompileOptions(), lambda: [node]), node, events.append)
    again.run(rounds=1)
    rules = [e for e in events if e["event"] == "rules"]
    assert len(rules) == 1 and rules[0]["published"] == 0 and rules[0]["conflicts"] == [1]
