"""The `/` filter language: compiled to SQL and run against real stream rows of a recording."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtui.demo.synthetic import article_recording
from flowtui.tui import queries
from flowtui.tui.filters import FilterError, compile_filter
from flowtui.tui.sources import StoreSource


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSource]:
    db = article_recording(tmp_path_factory.mktemp("rec") / "flows.duckdb", events=2000)
    src = StoreSource(db)
    yield src
    src.close()


def rows(src: StoreSource, text: str) -> list[dict[str, object]]:
    where = compile_filter(text).where
    return src.query(queries.filtered(queries.stream_sql("events"), where)).to_pylist()


def test_keys_select_what_they_say(source: StoreSource) -> None:
    every = rows(source, "")
    denied = rows(source, "verdict:deny")
    assert denied and all(r["verdict"] == "deny" for r in denied)
    assert len(rows(source, "verdict:deny,log")) == len(denied) + len(rows(source, "verdict:log"))
    prod = rows(source, "ns:production")
    assert prod and all("production" in (r["src_namespace"], r["dst_namespace"]) for r in prod)
    to_prod = rows(source, "to-namespace:production")
    assert to_prod and all(r["dst_namespace"] == "production" for r in to_prod)
    pod = rows(source, "from-pod:staging/frontend")
    assert pod and all((r["src_namespace"], r["src_name"]) == ("staging", "frontend") for r in pod)
    assert all(r["dport"] == 9000 for r in rows(source, "port:9000"))
    assert all(8000 <= r["dport"] <= 9999 for r in rows(source, "dport:8000-9999"))
    udp = rows(source, "proto:udp")
    assert udp and all(r["proto"] == 17 for r in udp)
    labeled = rows(source, "from-label:tier=frontend")
    assert labeled and all("tier=frontend" in r["src_labels"] for r in labeled)
    assert rows(source, "label:tier") and len(rows(source, "label:tier")) <= len(every)
    dos = rows(source, "policy:dos-mitigation")
    assert dos and all(r["policy_name"] == "dos-mitigation" for r in dos)
    assert rows(source, "policy:gnp/dos-*") == dos
    assert rows(source, "policy:np/staging/log-and-deny-frontend")
    eot = rows(source, "rule:-1")
    assert eot and all(r["policy_kind"] == "EndOfTier" for r in eot)
    assert rows(source, "rule:eot") == eot
    assert all(r["dst_type"] == "hep" for r in rows(source, "to-type:hep"))
    att = rows(source, "from:external:attacker")
    assert att and all(r["src_name"] == "attacker" for r in att)
    assert rows(source, "ip:198.51.100.0/24") and all(
        "198.51.100." in (r["src_ip"] + r["dst_ip"]) for r in rows(source, "ip:198.51.100.0/24"))
    assert rows(source, "10.244.*")
    assert rows(source, "tier:default") and rows(source, "node:node-b")


def test_negation_whole_and_per_term(source: StoreSource) -> None:
    every = rows(source, "")
    for text in ("verdict:allow", "ns:production port:9000", "policy:dos-mitigation", "frontend"):
        assert len(rows(source, text)) + len(rows(source, "!" + text)) == len(every), text
    not_dos = rows(source, "-policy:dos-mitigation verdict:deny")
    assert not_dos and all(r["verdict"] == "deny" and r["policy_name"] != "dos-mitigation" for r in not_dos)
    assert rows(source, "not policy:dos-mitigation verdict:deny") == not_dos


def test_hubble_flags_and_free_text(source: StoreSource) -> None:
    assert rows(source, "--from-pod production/frontend --verdict DROPPED") == rows(
        source, "from-pod:production/frontend verdict:deny")
    assert rows(source, "--to-port=9000") == rows(source, "to-port:9000")
    free = rows(source, "attacker")
    assert free and all("attacker" in (r["src_name"] or "") + (r["dst_name"] or "") for r in free)
    assert rows(source, '"staging"') == rows(source, "staging")


def test_errors_name_the_offending_term() -> None:
    with pytest.raises(FilterError) as err:
        compile_filter("verdict:maybe")
    assert err.value.term == "maybe"
    for bad in ("port:x", "port:70000", "proto:bogus", "colour:red", "rule:x", "not", "--verdict", 'policy:"open',
                "ip:2001:db8::/32"):
        with pytest.raises(FilterError):
            compile_filter(bad)


def test_described_and_shown_as_sql() -> None:
    f = compile_filter("!verdict:deny ns:prod")
    assert f.negated and f.describe() == "NOT verdict:deny AND ns:prod"
    assert f.sql().startswith("SELECT * FROM stream\nWHERE NOT (")
    assert compile_filter("   ").where is None and compile_filter("").describe() == "all flows"
    quoted = compile_filter('policy:"it\'s"').where
    assert quoted is not None and "'it''s'" in quoted


_EMPTY: list[object] = []


def empty_store() -> object:
    """An in-memory store with the schema and no rows: compiled filters must bind against it."""
    if not _EMPTY:
        import duckdb

        from flowtui.store import schema

        con = duckdb.connect()
        for stmt in schema.statements():
            con.execute(stmt)
        _EMPTY.append(con)
    return _EMPTY[0]


def binds(where: str | None) -> None:
    con = empty_store()
    for kind in ("events", "flows"):
        con.execute(queries.filtered(queries.stream_sql(kind), where)).fetchall()  # type: ignore[attr-defined]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_any_text_compiles_or_fails_cleanly(text: str) -> None:
    try:
        f = compile_filter(text)
    except FilterError:
        return
    binds(f.where)


def test_compiled_sql_binds_for_every_key() -> None:
    texts = ["verdict:deny", "ns:a", "pod:a/b", "label:a=b", "label:a", "port:1-2", "proto:tcp", "ip:10.0.0.0/8",
             "to:node:n", "type:hep", "policy:gnp/x", "tier:t", "rule:0", "node:n", "free", "-ns:a",
             "--from-ip 10.0.0.1", "!verdict:allow x", "fd00::1", "to:hep:h"]
    for text in texts:
        binds(compile_filter(text).where)


@pytest.mark.parametrize(("text", "needs"), [
    ("pod:ns-001/none", ("ep_type = 'wep' AND ep_name = 'none' AND ep_namespace = 'ns-001'",)),
    ("verdict:deny ns:a,b", ("((ep_namespace = 'a') OR (ep_namespace = 'b'))",)),
    ("--to-pod web label:app=x", ("ep_type = 'wep' AND ep_name = 'web'", "list_contains(ep_labels, 'app=x')")),
    ("from:node:n1 type:hep", ("ep_type = 'node' AND ep_name = 'n1'", "ep_type = 'hep'")),
    # no need: a negated term or filter keeps rows without the endpoint; an address is no endpoint
    ("-pod:a/b", ()), ("!pod:a/b", ()), ("not ns:a", ()), ("from:10.0.0.1", ()), ("to:ns/p,10.0.0.0/8", ()),
    ("frontend", ()), ("port:80 node:n1 policy:p", ()),
])
def test_endpoint_needs_are_what_some_endpoint_must_meet(text: str, needs: tuple[str, ...]) -> None:
    assert compile_filter(text).endpoint_needs == needs


def test_a_filter_its_endpoints_rule_out_keeps_no_row(source: StoreSource) -> None:
    """`nothing_can_match` never rules out a filter that keeps rows (the needs are necessary), and
    rules out the ones naming endpoints the recording lacks."""
    from flowtui.tui.sources import endpoint_ids, nothing_can_match

    pod = next(r for r in source.recent(None, 500).to_pylist() if r["dst_type"] == "wep" and r["dst_labels"])
    real = [f"pod:{pod['dst_namespace']}/{pod['dst_name']}", f"to-pod:{pod['dst_name']}", f"ns:{pod['dst_namespace']}",
            f"label:{pod['dst_labels'][0]}", f"from-ns:{pod['dst_namespace']} verdict:deny", "type:wep,hep"]
    absent = ["pod:nowhere/none", f"ns:{pod['dst_namespace']} label:no-such=label", "to:node:no-such-node"]
    with source.connect() as con:
        for text in real + absent:
            f = compile_filter(text)
            kept = source.query(queries.filtered(queries.stream_sql(source.stream_kind), f.where)).num_rows
            ruled_out = nothing_can_match(endpoint_ids(con, f.endpoint_needs))
            assert not (ruled_out and kept), text
            assert ruled_out == (text in absent), text
