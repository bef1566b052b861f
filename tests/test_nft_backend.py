"""Backends: the fake (ordering, failure injection, all-or-nothing) and the kernel through libnftables
and, for element-only changes, nfnetlink (atomicity, listings, incremental == full, the root
namespace untouched)."""

from __future__ import annotations

import random
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enforcer.lab import LabError, netns_name
from enforcer.nft import ir
from enforcer.nft.backend import (
    HOST_NOT_IMPLEMENTED,
    TABLE_NAME,
    ApplyError,
    FakeBackend,
    KernelBackend,
    canonical,
    empty_table,
    host_backend,
    parse_listing,
)
from enforcer.nft.libnft import NftError, parse_errors

BASE = "type filter hook input priority filter; policy accept;"


def table(chains: dict[str, tuple[str, ...]], sets: dict[str, frozenset[str]] | None = None,
          hooks: dict[str, str] | None = None) -> ir.Table:
    hooks = hooks or {}
    return ir.Table(
        "inet", TABLE_NAME,
        {n: ir.Chain(n, rules, hooks.get(n)) for n, rules in chains.items()},
        {n: ir.NftSet(n, "ipv4_addr", (), elems) for n, elems in (sets or {}).items()},
    )


T1 = table(
    {"input": ("jump a", "jump b"), "a": ("tcp dport 22 accept",), "b": ("ip saddr @deny drop", "udp dport 53 accept")},
    {"deny": frozenset({"192.0.2.1", "192.0.2.2"})},
    {"input": BASE},
)
T2 = table(  # b removed, c added, a changed, the set changed
    {"input": ("jump a", "jump c"), "a": ("tcp dport 443 accept",), "c": ("ip saddr @deny drop",)},
    {"deny": frozenset({"192.0.2.2", "192.0.2.3"})},
    {"input": BASE},
)


# --------------------------------------------------------------------------------------------
# The fake


def test_fake_applies_lists_and_records() -> None:
    fake = FakeBackend()
    assert fake.listing("n1") is None and fake.current("n1") is None
    fake.apply("n1", T1, ir.full(T1, existing=False))
    assert fake.current("n1") == T1
    assert fake.listing("n1") == ir.listing(T1)
    fake.apply("n1", T2, ir.diff(T1, T2))
    assert fake.current("n1") == T2
    assert [s.splitlines()[0] for s in fake.history["n1"]] == ["add table inet flowtui", "add chain inet flowtui c"]
    fake.delete("n1")
    fake.delete("n1")  # idempotent
    assert fake.listing("n1") is None and fake.history["n1"][-1] == "delete table inet flowtui\n"


def test_fake_diff_order_is_what_the_kernel_needs() -> None:
    fake = FakeBackend()
    fake.apply("n1", T1, ir.full(T1, existing=False))
    ops = ir.diff(T1, T2)
    kinds = [type(op).__name__ for op in ops]
    # declare new chains first, write rules, and delete b only after nothing jumps to it
    assert kinds.index("DeleteChain") > max(i for i, k in enumerate(kinds) if k == "DefineChain" and
                                            isinstance(ops[i], ir.DefineChain) and ops[i].chain.name == "input")
    # The same operations in a bad order (delete b while input still jumps to it) are refused whole.
    deletes = [op for op in ops if isinstance(op, ir.DeleteChain)]
    bad = deletes + [op for op in ops if op not in deletes]
    with pytest.raises(ApplyError, match="still referenced"):
        fake.apply("n1", T2, bad)
    assert fake.current("n1") == T1 and len(fake.history["n1"]) == 1 and len(fake.failed["n1"]) == 1
    fake.apply("n1", T2, ops)
    assert fake.current("n1") == T2


def test_fake_failure_injection_is_all_or_nothing() -> None:
    fake = FakeBackend()
    fake.apply("n1", T1, ir.full(T1, existing=False))
    fake.fail_next("n1", "boom")
    with pytest.raises(ApplyError, match="boom") as info:
        fake.apply("n1", T2, ir.diff(T1, T2))
    assert info.value.node == "n1" and "add chain inet flowtui c" in info.value.script
    assert fake.current("n1") == T1 and len(fake.history["n1"]) == 1
    fake.apply("n1", T2, ir.diff(T1, T2))  # only the next one failed
    assert fake.current("n1") == T2


def test_fake_bad_op_in_the_middle_changes_nothing() -> None:
    fake = FakeBackend()
    fake.apply("n1", T1, ir.full(T1, existing=False))
    ops: list[ir.Op] = [
        ir.DefineChain(ir.Chain("a", ("tcp dport 1 accept",)), new=False),
        ir.SetElements("missing", add=("192.0.2.9",)),
        ir.DefineChain(ir.Chain("z", ()), new=True),
    ]
    with pytest.raises(ApplyError):
        fake.apply("n1", T1, ops)
    assert fake.current("n1") == T1


def test_backends_own_one_table() -> None:
    other = ir.Table("inet", "filter")
    with pytest.raises(ValueError, match="inet flowtui"):
        FakeBackend().apply("n1", other, ir.full(other, existing=False))
    assert empty_table().ref == "inet flowtui"


def test_root_and_foreign_namespaces_are_refused() -> None:
    with pytest.raises(NotImplementedError, match="root network namespace"):
        host_backend()
    assert "not implemented" in HOST_NOT_IMPLEMENTED
    root = KernelBackend("lab", lambda node: "")
    with pytest.raises(NotImplementedError):
        root.apply("n1", T1, ir.full(T1, existing=False))
    for name in ("ft-other-node-n1", "default", "../ft-lab-node-n1", "ft-lab"):
        backend = KernelBackend("lab", lambda node, name=name: name)
        with pytest.raises(LabError):
            backend.listing("n1")
    with pytest.raises(LabError):
        KernelBackend("Not-A-Lab", lambda node: "ft-x")


def test_nft_errors_point_at_the_script_line() -> None:
    script = "add table inet t\nadd rule inet t c tcp dport 22 acept\nadd chain inet t d\n"
    errors = ("/proc/self/fd/7:2:43-43: Error: syntax error, unexpected newline\n"
              "add rule inet t c tcp dport 22 acept\n                                          ^\n")
    (problem,) = parse_errors(errors, script)
    assert (problem.line, problem.columns, problem.text) == (2, "43-43", "add rule inet t c tcp dport 22 acept")
    assert str(problem).startswith("line 2: syntax error")
    (bare,) = parse_errors("Error: Could not process rule: No such file or directory\n", script)
    assert bare.line == 0 and "No such file" in str(bare)
    assert NftError("x", script, (bare,)).missing


def test_parse_listing() -> None:
    text = (
        "table inet flowtui {\n\tset s {\n\t\ttype ipv4_addr\n\t\tflags interval\n"
        "\t\telements = { 10.0.0.0/8, 192.0.2.1,\n\t\t\t     198.51.100.0/24 }\n\t}\n\n"
        "\tmap m {\n\t\ttype ifname : verdict\n\t\telements = { \"cali1\" : goto a, \"cali,2\" : jump a }\n\t}\n\n"
        "\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n"
        "\t\tiifname vmap @m\n\t}\n\n\tchain a {\n\t\ttcp dport 22 accept\n\t}\n}\n"
    )
    parsed = parse_listing(text)
    assert parsed.sets["s"].flags == ("interval",)
    assert parsed.sets["s"].elements == {"10.0.0.0/8", "192.0.2.1", "198.51.100.0/24"}
    assert parsed.sets["m"].is_map and parsed.sets["m"].elements == {'"cali1" : goto a', '"cali,2" : jump a'}
    assert parsed.chains["input"].hook == BASE and parsed.chains["input"].rules == ("iifname vmap @m",)
    assert parsed.chains["a"] == ir.Chain("a", ("tcp dport 22 accept",))


# --------------------------------------------------------------------------------------------
# Random tables (used on the fake and on the kernel)


@st.composite
def tables(draw: st.DrawFn) -> ir.Table:
    """A random valid table: base chain input dispatching by interface through a verdict map, regular
    chains that may jump to each other (no cycles), a hash set and an interval set they use."""
    names = sorted(draw(st.sets(st.sampled_from([f"c{i}" for i in range(8)]), max_size=6)))
    hosts = draw(st.frozensets(st.integers(1, 40).map(lambda i: f"192.0.2.{i}"), max_size=8))
    nets = draw(st.frozensets(st.integers(0, 30).map(lambda i: f"10.{i}.0.0/16"), max_size=5))
    chains: dict[str, ir.Chain] = {}
    for pos, name in enumerate(names):
        pool = ["tcp dport 22 accept", "udp dport 53 drop", "ip saddr @hosts counter drop",
                "ip daddr @nets accept", "meta l4proto icmp counter accept", "tcp dport { 80, 443 } accept"]
        pool += [f"jump {later}" for later in names[pos + 1 :]]
        rules = draw(st.lists(st.sampled_from(pool), max_size=4))
        chains[name] = ir.Chain(name, tuple(rules))
    vmap = {f'"cali{i}" : goto {name}' for i, name in enumerate(names) if draw(st.booleans())}
    dispatch = ["iifname vmap @dispatch"] + [f"jump {n}" for n in names if draw(st.booleans())]
    chains["input"] = ir.Chain("input", tuple(dispatch), BASE)
    sets = {
        "hosts": ir.NftSet("hosts", "ipv4_addr", (), hosts),
        "nets": ir.NftSet("nets", "ipv4_addr", ("interval",), nets),
        "dispatch": ir.NftSet("dispatch", "ifname : verdict", (), frozenset(vmap), is_map=True),
    }
    return ir.Table("inet", TABLE_NAME, chains, sets)


@settings(max_examples=60, deadline=None)
@given(st.lists(tables(), min_size=1, max_size=5))
def test_fake_incremental_equals_full(versions: list[ir.Table]) -> None:
    inc, whole = FakeBackend(), FakeBackend()
    current: ir.Table | None = None
    for version in versions:
        inc.apply("n", version, ir.diff(current, version) if current else ir.full(version, existing=False))
        current = version
    whole.apply("n", current, ir.full(current, existing=False))  # type: ignore[arg-type]
    assert inc.listing("n") == whole.listing("n")


# --------------------------------------------------------------------------------------------
# The kernel


def root_ruleset() -> str:
    """The root namespace's ruleset, read with the `nft` tool (never written)."""
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True, timeout=10).stdout


def ns_listing(netns: str) -> str:
    done = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "inet", TABLE_NAME],
                          capture_output=True, text=True, timeout=10)
    return done.stdout if done.returncode == 0 else ""


@pytest.fixture
def kbackend(lab_id: str) -> Iterator[KernelBackend]:
    """A KernelBackend over two fresh lab namespaces (nodes n1, n2); root ruleset checked after."""
    from enforcer.lab.netns import create_netns

    before = root_ruleset()
    for node in ("n1", "n2"):
        create_netns(netns_name(lab_id, f"node:{node}"))
    backend = KernelBackend(lab_id, lambda node: netns_name(lab_id, f"node:{node}"))
    yield backend
    backend.close()
    assert root_ruleset() == before, "the root namespace's ruleset changed"


@pytest.mark.kernel
def test_context_lives_in_its_namespace(lab_id: str) -> None:
    from enforcer.lab.netns import create_netns
    from enforcer.nft.libnft import Nft

    before = root_ruleset()
    netns = netns_name(lab_id, "node:n1")
    create_netns(netns)
    with Nft(netns) as nft:
        nft.run(f"add table inet {TABLE_NAME}")
        assert f"table inet {TABLE_NAME}" in nft.run("list tables")
        with pytest.raises(NftError) as info:
            nft.run(f"add chain inet {TABLE_NAME} c\nadd rule inet {TABLE_NAME} c jump nowhere\n")
        assert info.value.problems[0].line == 2
        assert info.value.problems[0].text == f"add rule inet {TABLE_NAME} c jump nowhere"
        assert "No such file or directory" in str(info.value) and "line 2" in str(info.value)
    assert ns_listing(netns).startswith(f"table inet {TABLE_NAME}")
    assert root_ruleset() == before
    with pytest.raises(NftError, match="closed"):
        nft.run("list tables")


@pytest.mark.kernel
def test_apply_and_listing(kbackend: KernelBackend, lab_id: str) -> None:
    assert kbackend.listing("n1") is None and kbackend.current("n1") is None
    kbackend.apply("n1", T1, ir.full(T1, existing=False))
    live = kbackend.listing("n1")
    assert live == ns_listing(netns_name(lab_id, "node:n1"))  # what `nft list table` shows
    assert live is not None and "chain b {" in live and "192.0.2.1" in live
    assert kbackend.current("n1") == T1  # these rules print exactly as written
    assert kbackend.listing("n2") is None  # only n1's namespace has it
    kbackend.apply("n1", T2, ir.diff(T1, T2))
    assert kbackend.current("n1") == T2
    kbackend.delete("n1")
    kbackend.delete("n1")
    assert kbackend.listing("n1") is None


@pytest.mark.kernel
@pytest.mark.parametrize("bad_rule", ["tcp dport 99999 accept", "jump nowhere", "ip saddr @nosuchset drop"])
def test_apply_is_atomic(kbackend: KernelBackend, bad_rule: str) -> None:
    kbackend.apply("n1", T1, ir.full(T1, existing=False))
    before = kbackend.listing("n1")
    ops: list[ir.Op] = [
        ir.DefineChain(ir.Chain("a", ("tcp dport 2222 accept",)), new=False),  # a valid change first
        ir.SetElements("deny", add=("192.0.2.77",)),
        ir.DefineChain(ir.Chain("b", ("udp dport 1 drop", bad_rule, "udp dport 2 drop")), new=False),
        ir.DefineChain(ir.Chain("z", ("tcp dport 3 accept",)), new=True),
    ]
    with pytest.raises(ApplyError) as info:
        kbackend.apply("n1", T1, ops)
    assert "line " in info.value.message and bad_rule.split()[0] in info.value.message
    assert kbackend.listing("n1") == before  # byte-identical


@pytest.mark.kernel
def test_stale_namespace_gets_a_new_context(kbackend: KernelBackend, lab_id: str) -> None:
    from enforcer.lab.netns import create_netns, remove_netns

    kbackend.apply("n1", T1, ir.full(T1, existing=False))
    netns = netns_name(lab_id, "node:n1")
    remove_netns(netns)
    with pytest.raises(LabError, match="does not exist"):
        kbackend.listing("n1")
    kbackend.delete("n1")  # nothing to delete: fine
    create_netns(netns)
    assert kbackend.listing("n1") is None  # the new namespace, not the removed one
    kbackend.apply("n1", T1, ir.full(T1, existing=False))
    assert ns_listing(netns).startswith("table inet flowtui")


@pytest.mark.kernel
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(tables(), min_size=2, max_size=5))
def test_kernel_incremental_equals_full(kbackend: KernelBackend, versions: list[ir.Table]) -> None:
    for node in ("n1", "n2"):
        kbackend.delete(node)
    current: ir.Table | None = None
    for version in versions:
        kbackend.apply("n1", version, ir.diff(current, version) if current else ir.full(version, existing=False))
        current = version
    assert current is not None
    kbackend.apply("n2", current, ir.full(current, existing=False))
    incremental, rebuilt = kbackend.listing("n1"), kbackend.listing("n2")
    assert incremental is not None and rebuilt is not None
    # `nft list` prints blocks in creation order; otherwise the texts are identical.
    assert canonical(incremental) == canonical(rebuilt)
    assert parse_listing(kbackend.listing("n1", stateless=True) or "") == current  # these rules print as written


def big_table(chains: int, variant: int) -> ir.Table:
    rules = {f"c{i}": (f"ip saddr 10.{i // 256}.{i % 256}.0/24 counter accept", f"tcp dport {i + 1} drop")
             for i in range(chains)}
    rules["c500"] = (f"tcp dport {2000 + variant} drop",) if variant % 2 else ("tcp dport 1 accept",)
    rules["input"] = tuple(f'iifname "cali{i}" jump c{i}' for i in range(chains))
    return table(rules, {"s": frozenset(f"192.0.2.{i}" for i in range(1, 200))}, {"input": BASE})


@pytest.mark.kernel
def test_one_chain_change_in_a_big_table(kbackend: KernelBackend) -> None:
    """A one-chain change among 1,000 chains rewrites that chain only, and the kernel holds the
    result (its latency is a benchmark figure: bench/bench_dataplane.py)."""
    current = big_table(1000, 0)
    kbackend.apply("n1", current, ir.full(current, existing=False))
    for variant in range(1, 5):
        new = big_table(1000, variant)
        ops = ir.diff(current, new)
        assert [type(op) for op in ops] == [ir.DefineChain] and ops[0].chain.name == "c500"  # type: ignore[union-attr]
        kbackend.apply("n1", new, ops)
        current = new
    assert parse_listing(kbackend.listing("n1", stateless=True) or "") == current


GATES = ir.Table("inet", TABLE_NAME, {
    "input": ir.Chain("input", ("meta mark & 0x0 | 0x5 @disabled counter", "ip saddr @a4 counter",
                                "ip6 saddr @a6 counter"), BASE),
}, {
    "disabled": ir.NftSet("disabled", "mark"),
    "a4": ir.NftSet("a4", "ipv4_addr", (), frozenset({"192.0.2.1"})),
    "a6": ir.NftSet("a6", "ipv6_addr"),
})


def _elements(backend: KernelBackend, node: str) -> dict[str, set[str]]:
    live = parse_listing(backend.listing(node, stateless=True) or "")
    norm = {"mark": lambda e: hex(int(e, 0))}
    return {n: {norm.get(s.type, str)(e) for e in s.elements} for n, s in live.sets.items()}


@pytest.mark.kernel
def test_element_changes_skip_libnftables(kbackend: KernelBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Element-only changes go to the kernel as their own nfnetlink batch: libnftables (whose cache
    fill grows with the ruleset) is not called, and the kernel holds exactly the new elements."""
    from enforcer.nft.libnft import Nft

    kbackend.apply("n1", GATES, ir.full(GATES, existing=False))
    new = ir.Table(GATES.family, GATES.name, GATES.chains, {
        "disabled": ir.NftSet("disabled", "mark", (), frozenset({"0x5", "0xffff"})),
        "a4": ir.NftSet("a4", "ipv4_addr", (), frozenset({"192.0.2.2", "198.51.100.7"})),
        "a6": ir.NftSet("a6", "ipv6_addr", (), frozenset({"2001:db8::9"})),
    })
    ops = ir.diff(GATES, new)
    real_run = Nft.run

    def no_library(self: Nft, script: str, *, flags: int = 0) -> str:
        raise AssertionError(f"libnftables was used for an element-only change: {script}")

    monkeypatch.setattr(Nft, "run", no_library)
    kbackend.apply("n1", new, ops)
    monkeypatch.setattr(Nft, "run", real_run)
    assert _elements(kbackend, "n1") == {"disabled": {"0x5", "0xffff"}, "a4": {"192.0.2.2", "198.51.100.7"},
                                         "a6": {"2001:db8::9"}}
    kbackend.apply("n1", GATES, ir.diff(new, GATES))
    assert _elements(kbackend, "n1") == {"disabled": set(), "a4": {"192.0.2.1"}, "a6": set()}


@pytest.mark.kernel
def test_element_batch_is_atomic(kbackend: KernelBackend) -> None:
    kbackend.apply("n1", GATES, ir.full(GATES, existing=False))
    before = kbackend.listing("n1")
    ops: list[ir.Op] = [ir.SetElements("disabled", add=("0x7",)), ir.SetElements("a4", add=("192.0.2.9",)),
                        ir.SetElements("a6", delete=("2001:db8::1",))]  # not there: the kernel refuses
    with pytest.raises(ApplyError) as info:
        kbackend.apply("n1", GATES, ops)
    assert "delete element inet flowtui a6 { 2001:db8::1 }" in info.value.message
    assert "ENOENT" in info.value.message and "nothing applied" in info.value.message
    assert kbackend.listing("n1") == before  # the valid additions did not happen either


@pytest.mark.kernel
def test_random_sequence_on_both_backends(kbackend: KernelBackend) -> None:
    """The fake and the kernel accept and refuse the same transactions, ending in the same table."""
    rng = random.Random(7)
    fake = FakeBackend()
    current = T1
    for backend in (fake, kbackend):
        backend.apply("n1", T1, ir.full(T1, existing=False))
    for _ in range(20):
        names = [f"k{i}" for i in range(rng.randint(0, 5))]
        chains = {n: (f"tcp dport {rng.randint(1, 9)} accept",) for n in names}
        chains["input"] = tuple(f"jump {n}" for n in names)
        new = table(chains, {"deny": frozenset(f"192.0.2.{rng.randint(1, 9)}" for _ in range(3))}, {"input": BASE})
        for backend in (fake, kbackend):
            backend.apply("n1", new, ir.diff(current, new))
        current = new
    assert fake.current("n1") == kbackend.current("n1") == current


@pytest.mark.kernel
def test_contexts_are_thread_safe(kbackend: KernelBackend) -> None:
    """Threads applying to two nodes and listing at once: every call completes and both tables end right."""
    for node in ("n1", "n2"):
        kbackend.apply(node, T1, ir.full(T1, existing=False))
    errors: list[BaseException] = []

    def work(node: str) -> None:
        try:
            current = T1
            for i in range(30):
                new = table({**{n: c.rules for n, c in T1.chains.items()}, "a": (f"tcp dport {i + 1} accept",)},
                            {"deny": T1.sets["deny"].elements}, {"input": BASE})
                kbackend.apply(node, new, ir.diff(current, new))
                assert kbackend.listing(node) is not None
                current = new
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(node,)) for node in ("n1", "n2", "n1", "n2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    for node in ("n1", "n2"):
        assert kbackend.current(node) is not None


def test_element_batches_are_encoded_as_the_kernel_expects() -> None:
    """BEGIN, one message per (set, add|delete) with an ack asked, END; 4-byte aligned; the
    nftables subsystem in BEGIN/END; keys in the sets' byte orders."""
    import struct

    from enforcer.nft import elements

    ops: list[ir.Op] = [ir.SetElements("disabled", add=("0x12",), delete=("0x5",)),
                        ir.SetElements("a4", add=("192.0.2.1",))]
    data, what = elements.batch(GATES, ops, 100)
    assert list(what) == [101, 102, 103]
    assert what[101] == "delete element inet flowtui disabled { 0x5 }"
    kinds, offset = [], 0
    while offset < len(data):
        length, kind, flags, seq, _ = struct.unpack_from("=IHHII", data, offset)
        assert length % 4 == 0 and seq == 100 + len(kinds)
        kinds.append((kind, flags))
        offset += length
    assert offset == len(data)
    begin, end = kinds[0], kinds[-1]
    assert begin[0] == elements.NFNL_MSG_BATCH_BEGIN and end[0] == elements.NFNL_MSG_BATCH_END
    assert struct.unpack_from("!H", data, 16 + 2)[0] == elements.NFNL_SUBSYS_NFTABLES  # res_id, big endian
    assert [k for k, _ in kinds[1:-1]] == [0x0A0E, 0x0A0C, 0x0A0C]  # del, new, new
    assert all(f & elements.NLM_F_ACK for _, f in kinds[1:-1])
    assert struct.pack("=I", 0x12) in data and bytes([192, 0, 2, 1]) in data


@pytest.mark.parametrize("ops", [
    [ir.SetElements("iv", add=("10.0.0.0/8",), flush=True)],  # an interval set rebuilt: libnftables
    [ir.SetElements("m", add=('192.0.2.1 : 0x1',))],  # a map to data, not verdicts
    [ir.SetElements("iv", add=("10.0.0.0/8",))],  # an interval set
    [ir.SetElements("a4", add=("not-an-address",))],
    [ir.SetElements("nosuchset", add=("0x1",))],
    [ir.SetElements("disabled", add=("0x1",)), ir.DefineChain(ir.Chain("input", ()), new=False)],
    [],
])
def test_other_changes_go_through_libnftables(ops: list[ir.Op]) -> None:
    from enforcer.nft import elements

    t = ir.Table(GATES.family, GATES.name, GATES.chains, {
        **GATES.sets, "m": ir.NftSet("m", "ipv4_addr : mark", (), frozenset(), True),
        "iv": ir.NftSet("iv", "ipv4_addr", ("interval",))})
    assert not elements.supported(t, ops)
    assert elements.supported(t, [ir.SetElements("disabled", add=("0x1",)), ir.SetElements("a6", delete=("::1",))])


@pytest.mark.kernel
def test_generation_moves_on_every_commit_and_only_then(kbackend: KernelBackend, lab_id: str) -> None:
    """What lets a fresh process skip reading a 100k-rule table back: equal generations mean
    nothing was committed in the namespace in between, by flowtui or anyone else."""
    from enforcer.lab.netns import create_netns, remove_netns

    start = kbackend.generation("n1")
    assert start is not None
    kbackend.apply("n1", GATES, ir.full(GATES, existing=False))
    after_apply = kbackend.generation("n1")
    assert after_apply is not None and after_apply[1] != start[1]
    kbackend.listing("n1")
    kbackend.json_listing("n1")
    assert kbackend.generation("n1") == after_apply  # reads commit nothing
    kbackend.apply("n1", GATES, [ir.SetElements("disabled", add=("0x9",))])  # the nfnetlink path
    after_toggle = kbackend.generation("n1")
    assert after_toggle is not None and after_toggle[1] != after_apply[1]
    ns = netns_name(lab_id, "node:n1")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "add", "table", "inet", "someone-else"], check=True)
    assert kbackend.generation("n1") != after_toggle  # another tool's commit counts too
    assert kbackend.generation("n2") != kbackend.generation("n1")  # namespaces are told apart
    remove_netns(ns)
    assert kbackend.generation("n1") is None
    create_netns(ns)
    again = kbackend.generation("n1")
    assert again is not None


# ---- decision maps: toggles and edits as one nfnetlink batch -----------------------------------

_DP = "ipv4_addr . inet_proto . inet_service : verdict"
_ALLOW = 'counter log prefix "ft:A{0}" group 1 snaplen 128 meta mark set mark | 0x10000 return comment "r{0}"'
_DENY = ('counter limit rate 1000/second burst 1000 packets counter log prefix "ft:D{0}" group 1 snaplen 128 '
         'drop comment "r{0}"')
_LOG = 'counter log prefix "ft:L{0}" group 2 snaplen 128 comment "r{0}"'


def _decision_table(outcomes: dict[str, tuple[str, ...]], dp: set[str], dn: set[str], disabled: set[str],
                    dispatch: frozenset[str] = frozenset(), eot: frozenset[str] = frozenset(),
                    protos: frozenset[str] = frozenset(), classes: frozenset[str] = frozenset()) -> ir.Table:
    chains = {"input": ir.Chain("input", ("meta mark & 0x0 | 0x5 @disabled counter",
                                          "ip saddr . meta l4proto . th dport vmap @dp4-x",
                                          "ip saddr . meta l4proto vmap @dn4-x"), BASE)}
    chains.update({n: ir.Chain(n, rules) for n, rules in outcomes.items()})
    return ir.Table("inet", TABLE_NAME, chains, {
        "disabled": ir.NftSet("disabled", "mark", (), frozenset(disabled)),
        "dp4-x": ir.NftSet("dp4-x", _DP, ("interval",), frozenset(dp), is_map=True),
        "dn4-x": ir.NftSet("dn4-x", "ipv4_addr . inet_proto : verdict", ("interval",), frozenset(dn), is_map=True),
        "wl-from": ir.NftSet("wl-from", "ifname : verdict", (), dispatch, is_map=True),
        "eot-ingress": ir.NftSet("eot-ingress", "mark : verdict", (), eot, is_map=True),
        "dn4-y": ir.NftSet("dn4-y", "inet_proto : verdict", ("interval",), protos, is_map=True),
        "da4-y": ir.NftSet("da4-y", "ipv4_addr : verdict", ("interval",), classes, is_map=True),
    })


def _random_decision_table(rng: random.Random) -> ir.Table:
    outcomes = {f"dx-{k}": rng.choice([(_ALLOW.format(k),), (_DENY.format(k), "drop"),
                                       (_LOG.format(k + 50), _ALLOW.format(k))]) for k in rng.sample(range(9), 3)}
    names = sorted(outcomes)
    cuts = sorted(rng.sample(range(1, 255), 2))
    nets = [(0, cuts[0] - 1), (cuts[0], cuts[1] - 1), (cuts[1], 255)]
    ports = sorted(rng.sample(range(1, 65535), 2))
    dp, dn = set(), set()
    for a, b in nets:
        addr = f"{a}.0.0.0-{b}.255.255.255"
        for proto in (6, 17, 132, 136):
            for p0, p1 in ((0, ports[0] - 1), (ports[0], ports[1]), (ports[1] + 1, 65535)):
                port = str(p0) if p0 == p1 else f"{p0}-{p1}"
                dp.add(f"{addr} . {proto} . {port} : goto {rng.choice(names)}")
        for q0, q1 in ((0, 5), (7, 16), (18, 131), (133, 135), (137, 255)):
            dn.add(f"{addr} . {q0}-{q1} : goto {rng.choice(names)}")
    dispatch = frozenset(f'"cali{k:x}" : goto {rng.choice(names)}' for k in rng.sample(range(40), 5))
    eot = frozenset(f"{k:#x} : goto {rng.choice(names)}" for k in rng.sample(range(1, 40), 4))
    # Single-field interval maps (the kernel's rbtree): partitions of the whole field, with
    # single values and a last range that ends at the field's maximum (no interval-end element).
    bounds = sorted(rng.sample(range(1, 255), 4))
    starts = [0, *bounds]
    protos = frozenset(
        f"{a if a == b else f'{a}-{b}'} : goto {rng.choice(names)}"
        for a, b in zip(starts, [x - 1 for x in starts[1:]] + [255], strict=True))
    cut = sorted(rng.sample(range(1, 255), 2))
    classes = frozenset({f"0.0.0.0-{cut[0] - 1}.255.255.255 : goto {rng.choice(names)}",
                         f"{cut[0]}.0.0.0 : goto {rng.choice(names)}",
                         f"{cut[0]}.0.0.1-{cut[1]}.255.255.255 : goto {rng.choice(names)}",
                         f"{cut[1] + 1}.0.0.0-255.255.255.255 : goto {rng.choice(names)}"})
    return _decision_table(outcomes, dp, dn, {f"{g:#x}" for g in rng.sample(range(1, 9), rng.randint(0, 3))},
                           dispatch, eot, protos, classes)


def _one_element_moved(table: ir.Table, rng: random.Random) -> ir.Table:
    outcomes = sorted(n for n in table.chains if n.startswith("dx-"))
    sets = dict(table.sets)
    for name, nset in table.sets.items():
        if nset.is_map and nset.elements:
            victim = rng.choice(sorted(nset.elements))
            key = victim.rsplit(" : ", 1)[0]
            target = next(o for o in outcomes if not victim.endswith(f"goto {o}"))
            sets[name] = replace(nset, elements=(nset.elements - {victim}) | {f"{key} : goto {target}"})
    return ir.Table(table.family, table.name, table.chains, sets)


@pytest.mark.kernel
def test_decision_map_changes_are_one_batch_equal_to_a_full_apply(kbackend: KernelBackend,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Decision-map toggles and edits (map elements replaced by exact ranges, outcome chains made
    and removed) go to the kernel without libnftables, and after any sequence the table lists
    exactly as a fresh full apply of the same table."""
    from enforcer.nft import elements
    from enforcer.nft.libnft import Nft
    from tests.test_compiler import canonical_kernel_table

    rng = random.Random(14)
    current = _random_decision_table(rng)
    kbackend.apply("n1", current, ir.full(current, existing=False))
    real_run = Nft.run
    for step in range(10):
        # Alternately a new table (most elements change: maps rebuilt in the batch) and one
        # element of each map sent to another outcome (exact ranges replaced in the big map).
        new = _random_decision_table(rng) if step % 2 == 0 else _one_element_moved(current, rng)
        ops = ir.diff(current, new)
        assert elements.supported(new, ops), ops
        dp = next(o for o in ops if isinstance(o, ir.SetElements) and o.name == "dp4-x")
        assert dp.flush == (step % 2 == 0), dp

        def no_library(self: Nft, script: str, *, flags: int = 0) -> str:
            raise AssertionError(f"libnftables was used for a decision-map change: {script}")

        monkeypatch.setattr(Nft, "run", no_library)
        kbackend.apply("n1", new, ops)
        monkeypatch.setattr(Nft, "run", real_run)
        kbackend.delete("n2")
        kbackend.apply("n2", new, ir.full(new, existing=False))
        # Elements compared as sets: the kernel lists a pipapo map's elements in insertion order.
        incremental = canonical_kernel_table(kbackend.netns("n1"))
        assert incremental == canonical_kernel_table(kbackend.netns("n2"))
        assert "dx-" in incremental
        current = new


@pytest.mark.kernel
def test_a_refused_decision_batch_changes_nothing(kbackend: KernelBackend) -> None:
    rng = random.Random(3)
    current = _random_decision_table(rng)
    kbackend.apply("n1", current, ir.full(current, existing=False))
    before = kbackend.listing("n1", stateless=True)
    new = _random_decision_table(rng)
    ops = ir.diff(current, new)
    # Not there: ENOENT. (A range INSIDE an element is not refused: the kernel's pipapo delete
    # finds the enclosing element by the start key and removes it, so deletes must be exact.)
    ops.append(ir.SetElements("dp4-x", delete=("9.9.9.9-9.9.9.10 . 7 . 1-2",)))
    with pytest.raises(ApplyError, match="ENOENT"):
        kbackend.apply("n1", new, ops)
    assert kbackend.listing("n1", stateless=True) == before


def test_outcome_rules_are_encoded_or_refused() -> None:
    from enforcer.nft import elements

    for rule in (_ALLOW.format(3), _DENY.format(4), _LOG.format(5), "drop", "accept"):
        exprs, _ = elements.rule_expressions(rule)
        assert exprs
    assert elements.rule_expressions(_ALLOW.format(3))[1] == b"\x00\x03r3\x00"
    for rule in ("tcp dport 22 accept", "jump x", "counter log prefix \"a\" level warn drop", ""):
        with pytest.raises(ValueError):
            elements.rule_expressions(rule)
