"""The dashboard driven with Textual's pilot: keys in, state and messages out (no root, no kernel).

The data is a synthetic recording of the article's flows (`flowtui.demo.synthetic`); policy
changes go through a real datastore and reconciler with the in-memory nftables backend.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.message import Message
from textual.pilot import Pilot

from enforcer.datastore import Datastore
from enforcer.nft.backend import FakeBackend
from enforcer.nft.compiler import CompileOptions, compile_node
from enforcer.reconcile import Reconciler
from flowtui.cli.common import scenario_dir
from flowtui.demo.synthetic import START, SyntheticFeed, article_recording
from flowtui.tui.app import FlowtuiApp, make_app
from flowtui.tui.control import PolicyControl, PolicyRef
from flowtui.tui.messages import (
    FlowsArrived,
    PoliciesLoaded,
    PolicyApplied,
    PolicyToggled,
    QueryFinished,
    WhatIfComputed,
)
from flowtui.tui.screens.detail import DetailScreen
from flowtui.tui.screens.help import HelpScreen
from flowtui.tui.screens.policies import PoliciesScreen
from flowtui.tui.screens.sql import SqlScreen
from flowtui.tui.screens.text import ConfirmScreen, TextScreen
from flowtui.tui.screens.whatif import WhatIfScreen
from flowtui.tui.sources import LiveSource, StoreSource, Tap, TappedStore
from flowtui.tui.widgets.stream.flow_stream import FlowStream

SIZE = (150, 42)


def sync(test: Callable[..., Any]) -> Callable[..., None]:
    """Run an async test in its own event loop (no asyncio plugin needed)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return article_recording(tmp_path_factory.mktemp("rec") / "article.duckdb", events=3000)


@pytest.fixture
def datastore(tmp_path: Path) -> Datastore:
    ds = Datastore(tmp_path / "state")
    ds.apply_documents([str(scenario_dir())])
    return ds


def live_control(ds: Datastore) -> tuple[PolicyControl, FakeBackend]:
    backend = FakeBackend()
    rec = Reconciler(ds, backend, compile_node, CompileOptions(), lambda: ["node-a", "node-b"])
    rec.reconcile()
    return PolicyControl(datastore=ds, reconciler=rec), backend


def file_control() -> PolicyControl:
    return PolicyControl(files=[str(scenario_dir())], read_only=True, why_read_only="a recording")


async def until(pilot: Pilot[Any], cond: Callable[[], Any], timeout: float = 15.0) -> None:
    """Poll for a condition with a deadline (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.02)


def count(seen: list[Message], kind: type[Message]) -> int:
    """Messages of a kind (a bubbling message reaches the hook once per node it visits)."""
    return len({id(m) for m in seen if isinstance(m, kind)})


async def settle(pilot: Pilot[Any]) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def app_for(recording: Path, control: PolicyControl | None = None, **kw: Any) -> tuple[FlowtuiApp, list[Message]]:
    app = make_app(StoreSource(recording), control or file_control(), queries_dir=Path("/nonexistent"), **kw)
    return app, []


def stream(app: FlowtuiApp) -> FlowStream:
    return app.screen.query_one(FlowStream)


def held(app: FlowtuiApp) -> list[dict[str, Any]]:
    s = stream(app)
    return s.ring.rows(s.ring.first, s.ring.end)


@sync
async def test_flows_stream_filter_negation_and_sql(recording: Path) -> None:
    app, seen = app_for(recording)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await until(pilot, lambda: len(stream(app).ring) > 0)
        assert app.screen.view == "flows" and stream(app).view == "flows"  # flows, not packets, by default
        flows = held(app)
        keys = {(r["proto"], r["src_ip"], r["dst_ip"], r["dport"], r["icmp_type"], r["verdict"], r["rule_id"],
                 r["prefix"]) for r in flows}
        assert len(keys) == len(flows) < 100  # one row per flow
        assert sum(r["events"] for r in flows) == 3000 + 107  # every event, and the Log events they fired
        assert all(r["packets"] >= r["events"] >= 1 and r["first_seen"] <= r["last_seen"] for r in flows)
        total = len(flows)
        assert any(isinstance(m, FlowsArrived) and m.reset for m in seen)
        assert stream(app).cursor == stream(app).ring.end - 1  # following the newest
        await pilot.press("slash")
        await pilot.press(*"verdict:deny", "enter")
        await until(pilot, lambda: app.filter.text == "verdict:deny" and held(app) and all(
            r["verdict"] == "deny" for r in held(app)))
        denied = len(stream(app).ring)
        await pilot.press("exclamation_mark", "enter")  # `/!`: the same filter, negated
        await until(pilot, lambda: app.filter.negated)
        await settle(pilot)
        rows = held(app)
        assert rows and all(r["verdict"] != "deny" for r in rows)
        assert len(rows) + denied == total
        await pilot.press("s")
        assert isinstance(app.screen, TextScreen) and "WHERE NOT (" in app.screen.body
        await pilot.press("escape")
        await pilot.press("x")  # clear
        await until(pilot, lambda: app.filter.empty and len(stream(app).ring) == total)
        await pilot.press("e")  # raw events: one row per logged packet
        await until(pilot, lambda: stream(app).view == "events" and len(stream(app).ring) == 3000 + 107)
        assert "Events" in str(app.screen.query_one("#flows-title").render())
        await pilot.press("e")
        await until(pilot, lambda: stream(app).view == "flows" and len(stream(app).ring) == total)


@sync
async def test_an_invalid_filter_is_explained_and_not_applied(recording: Path) -> None:
    app, _ = app_for(recording)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(stream(app).ring) > 0)
        await pilot.press("slash", *"verdict:maybe", "enter")
        await pilot.pause()
        error = app.screen.query_one("#filter-error")
        assert "verdict 'maybe'" in str(error.render())
        assert app.filter.empty


@sync
async def test_follow_and_cursor_keys(recording: Path) -> None:
    app, _ = app_for(recording)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(stream(app).ring) > 0)
        s = stream(app)
        end = s.ring.end - 1
        await pilot.press("up", "up")
        assert s.cursor == end - 2 and not s.follow
        await pilot.press("g")
        assert s.cursor == s.ring.first and s.scroll_offset.y == 0
        await pilot.press("f")
        assert s.follow and s.cursor == end


@sync
async def test_detail_shows_the_trace_rule_and_verdicts(recording: Path) -> None:
    app, _ = app_for(recording)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(stream(app).ring) > 0)
        app.set_filter_text("policy:deny-frontend-to-transaction verdict:deny")
        await until(pilot, lambda: stream(app).selected is not None and stream(app).selected["policy_name"]
                    == "deny-frontend-to-transaction")
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        await until(pilot, lambda: app.screen.explanation is not None)
        exp = app.screen.explanation
        assert exp.decision is not None and exp.decision.enforced.verdict == "deny" and exp.agrees
        assert exp.policy_ref == PolicyRef("GlobalNetworkPolicy", None, "deny-frontend-to-transaction")
        matched = [ln.text.strip() for ln in exp.rule_lines if ln.matched]
        assert "protocol: TCP" in matched and any("selector: tier == 'frontend'" in m for m in matched)
        assert "tier default: policies in order" in exp.trace
        await pilot.press("w")  # on to the what-if editor with this policy
        assert isinstance(app.screen, WhatIfScreen)
        await until(pilot, lambda: app.screen.ref is not None)
        assert app.screen.ref == exp.policy_ref and "deny-frontend-to-transaction" in app.screen.editor.text


@sync
async def test_detail_lists_log_rules_and_pending(recording: Path) -> None:
    app, _ = app_for(recording)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(stream(app).ring) > 0)
        app.set_filter_text("verdict:log")
        await until(pilot, lambda: stream(app).selected is not None and stream(app).selected["verdict"] == "log")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen.explanation is not None)
        exp = app.screen.explanation
        assert [h.name for h in exp.decision.enforced.logged] == ["log-and-deny-frontend"]
        assert exp.decision.pending.verdict == exp.decision.enforced.verdict  # nothing staged


@sync
async def test_conversations_and_back_to_flows(recording: Path) -> None:
    app, _ = app_for(recording)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: getattr(app.screen, "rows", None))
        rows = app.screen.rows
        assert rows[0]["source"] == "external:attacker" and rows[0]["denied"] > 0
        await pilot.press("enter")
        assert app.current_mode == "flows" and app.filter.text.startswith('from:"external:attacker"')
        await until(pilot, lambda: len(stream(app).ring) > 0 and all(
            r["src_name"] == "attacker" for r in stream(app).ring.rows(stream(app).ring.first, stream(app).ring.end)))


@sync
async def test_policies_toggle_reaches_the_dataplane(recording: Path, datastore: Datastore) -> None:
    control, backend = live_control(datastore)
    app, seen = app_for(recording, control)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await pilot.press("3")
        screen = app.screen
        assert isinstance(screen, PoliciesScreen)
        await until(pilot, lambda: screen.lines)
        names = [ln.text for ln in screen.shown]
        assert names.index("gnp dos-mitigation") < names.index("gnp deny-frontend-to-transaction")  # by order
        unused = [ln for ln in screen.lines if ln.unused]
        assert unused and all(ln.activity.hits == 0 for ln in unused)
        dos_rule = next(ln for ln in screen.lines if ln.level == "rule" and ln.ref and ln.ref.name == "dos-mitigation")
        assert dos_rule.activity.hits > 1000 and dos_rule.activity.last is not None
        before = sum(len(h) for h in backend.history.values())
        row = names.index("gnp deny-frontend-to-transaction")
        screen.query_one("DataTable").move_cursor(row=row)
        await pilot.press("space")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: any(isinstance(m, PolicyToggled) for m in seen))
        result = next(m for m in seen if isinstance(m, PolicyToggled)).result
        assert result.ok and result.enforced_ms is not None and result.enforced_ms < 1000
        assert datastore.find("gnp", "deny-frontend-to-transaction").disabled
        assert sum(len(h) for h in backend.history.values()) > before  # one more transaction (node-b)
        await until(pilot, lambda: any(ln.state == "disabled" for ln in screen.lines))
        # and back on
        await pilot.press("space")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: count(seen, PolicyToggled) == 2)
        assert not datastore.find("gnp", "deny-frontend-to-transaction").disabled


@sync
async def test_read_only_refuses_changes(recording: Path, datastore: Datastore) -> None:
    control, backend = live_control(datastore)
    app, seen = app_for(recording, control, read_only=True)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await pilot.press("3")
        await until(pilot, lambda: any(isinstance(m, PoliciesLoaded) for m in seen))
        await pilot.press("down", "space")
        assert not isinstance(app.screen, ConfirmScreen)
        assert not any(isinstance(m, PolicyToggled) for m in seen)
        assert "READ-ONLY" in str(app.screen.query_one("StatusBar").render())


@sync
async def test_whatif_preview_errors_apply_and_stage(recording: Path, datastore: Datastore) -> None:
    control, backend = live_control(datastore)
    app, seen = app_for(recording, control)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        app.open_whatif(PolicyRef("GlobalNetworkPolicy", None, "deny-frontend-to-transaction"))
        screen = app.screen
        assert isinstance(screen, WhatIfScreen)
        await until(pilot, lambda: any(isinstance(m, WhatIfComputed) for m in seen))
        first = [m for m in seen if isinstance(m, WhatIfComputed)][-1].result
        assert first.ok and not any(c.flows for c in first.report.categories.values())  # unchanged: no change
        # edit: the deny rule becomes an allow
        screen.editor.load_text(screen.editor.text.replace("action: Deny", "action: Allow"))
        await until(pilot, lambda: screen.outcome is not None and screen.outcome.ok
                    and screen.outcome.report.categories["newly_allowed"].flows > 0)
        groups = screen.outcome.report.categories["newly_allowed"].groups
        assert any(g.destination.endswith("/transaction") for g in groups)
        assert screen.query_one("#whatif-table").row_count > 0
        # an invalid edit: the problem is shown at its line, nothing replayed
        broken = screen.editor.text.replace("action: Allow", "action: Maybe")
        screen.editor.load_text(broken)
        await until(pilot, lambda: screen.outcome is not None and screen.outcome.problems)
        line = next(i for i, text in enumerate(broken.splitlines()) if "Maybe" in text)
        assert line in screen.editor.problems
        # discard, edit again, apply
        await pilot.press("ctrl+g")
        assert screen.editor.text == screen.original
        screen.editor.load_text(screen.original.replace("action: Deny", "action: Allow"))
        await until(pilot, lambda: screen.outcome is not None and screen.outcome.ok
                    and screen.outcome.report.categories["newly_allowed"].flows > 0)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: any(isinstance(m, PolicyApplied) for m in seen))
        applied = next(m for m in seen if isinstance(m, PolicyApplied))
        assert applied.result.ok and not applied.staged
        doc = datastore.object_documents("gnp", name="deny-frontend-to-transaction")[0][1]
        assert doc["spec"]["ingress"][0]["action"] == "Allow"
        # stage a deny again, ordered before it: a staged policy, nothing enforced
        transactions = sum(len(h) for h in backend.history.values())
        screen.editor.load_text(screen.editor.text.replace("action: Allow", "action: Deny").replace(
            "order: 5", "order: 4"))
        await pilot.press("ctrl+t")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: count(seen, PolicyApplied) == 2)
        staged = datastore.object_documents("sgnp", name="deny-frontend-to-transaction")
        assert staged and staged[0][1]["kind"] == "StagedGlobalNetworkPolicy"
        assert sum(len(h) for h in backend.history.values()) == transactions  # observe only
        # back to what is enforced (Allow): the staged Deny shows as the flows' pending verdict
        await pilot.press("ctrl+g")
        await until(pilot, lambda: screen.outcome is not None and screen.outcome.ok
                    and screen.outcome.report.categories["pending_denied"].flows > 0)


@sync
async def test_sql_runs_queries_and_exports(recording: Path, tmp_path: Path) -> None:
    app, seen = app_for(recording)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await pilot.press("5")
        screen = app.screen
        assert isinstance(screen, SqlScreen) and "(example) loss by cause" in screen.queries
        from flowtui.tui.screens.sql import query_files

        library = query_files(None)
        assert "top_denied" in library and library["top_denied"][0]  # the query library, with summaries
        screen.query_one("#sql-editor").load_text("SELECT verdict, count(*) AS n FROM events_v, "
                                                  "(SELECT lower(action) AS verdict) GROUP BY ALL ORDER BY n DESC")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: any(isinstance(m, QueryFinished) for m in seen))
        done = [m for m in seen if isinstance(m, QueryFinished)][-1]
        assert done.error is None and done.table is not None and done.table.column_names == ["verdict", "n"]
        assert screen.query_one("#sql-results").row_count == done.table.num_rows
        for name in ("out.parquet", "out.csv"):
            await pilot.press("ctrl+e")
            field = app.screen.query_one("#prompt-input")
            field.value = str(tmp_path / name)
            await pilot.press("enter")
            await until(pilot, lambda name=name: (tmp_path / name).exists())
        import pyarrow.parquet as pq

        assert pq.read_table(tmp_path / "out.parquet").num_rows == done.table.num_rows
        assert (tmp_path / "out.csv").read_text().startswith('"verdict","n"')
        # a library query by name, as `:sql top_denied` runs it (the test app lists no query files)
        app.screen.queries["top_denied"] = library["top_denied"]
        finished = count(seen, QueryFinished)
        app.run_command("sql top_denied")
        await until(pilot, lambda: count(seen, QueryFinished) > finished)
        last = [m for m in seen if isinstance(m, QueryFinished)][-1]
        assert last.error is None and last.table is not None and "policy" in last.table.column_names
        screen.query_one("#sql-editor").load_text("SELECT nope FROM nowhere")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: [m for m in seen if isinstance(m, QueryFinished)][-1].error is not None)


@sync
async def test_help_palette_and_command_bar(recording: Path) -> None:
    app, _ = app_for(recording)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        keys = dict(app.screen.keys)
        assert keys.get("/") == "Filter" and "Follow" in keys.values()
        await pilot.press("escape")
        await pilot.press("colon", *"pol", "enter")
        assert app.current_mode == "policies"
        await pilot.press("colon", *"filter verdict:deny", "enter")
        assert app.filter.text == "verdict:deny" and app.current_mode == "flows"
        await pilot.press("colon", *"whatif dos-mitigation", "enter")
        assert app.current_mode == "whatif"
        await until(pilot, lambda: app.screen.ref == PolicyRef("GlobalNetworkPolicy", None, "dos-mitigation"))
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Go to Policies" in titles and "What-if: gnp/dos-mitigation" in titles
        await pilot.press("escape")  # leave the editor: the screen keys work again
        await pilot.press("1")
        assert app.current_mode == "flows"
        await pilot.press("colon", "q", "enter")
    assert app.return_code == 0


@sync
async def test_live_source_streams_pauses_and_resumes(tmp_path: Path) -> None:
    tap = Tap()
    store = TappedStore(tmp_path / "live.duckdb", tap=tap, snapshot_interval=None)
    feed = SyntheticFeed(store)
    start = int((START.timestamp() - START.astimezone().utcoffset().total_seconds()) * 1e6)  # type: ignore[union-attr]
    feed.push(500, start, 1000)
    app = make_app(LiveSource(store, collector_state=lambda: "running"), file_control(),
                   queries_dir=Path("/nonexistent"))
    try:
        async with app.run_test(size=SIZE) as pilot:
            folded = lambda: stream(app).ring.total_appended  # noqa: E731 (events folded into flows)
            await until(pilot, lambda: folded() >= 500)
            await asyncio.to_thread(feed.push, 2000, start + 1_000_000, 500)
            await until(pilot, lambda: folded() >= 2500)  # tailed within a poll or two
            assert app.status is not None and app.status.mode == "live"
            await pilot.press("space")  # pause
            held_before = folded()
            await asyncio.to_thread(feed.push, 1000, start + 3_000_000, 500)
            await until(pilot, lambda: app.screen.held_rows >= 1000)
            assert folded() == held_before
            await pilot.press("space")  # resume: what was held is shown
            assert folded() >= held_before + 1000
    finally:
        store.close(snapshot=False)


@sync
async def test_screen_keys_from_the_whatif_editor_and_while_typing(recording: Path) -> None:
    app, _ = app_for(recording)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        screen = app.screen
        assert app.current_mode == "whatif" and isinstance(screen, WhatIfScreen)
        screen.editor.focus()
        screen.editor.load_text("order: ")
        screen.editor.move_cursor((0, 7))
        await pilot.press("1", "2")  # text in the editor, not screen switches
        assert app.current_mode == "whatif" and screen.editor.text == "order: 12"
        await pilot.press("alt+1")  # from inside the editor
        assert app.current_mode == "flows"
        await pilot.press("4")
        assert app.current_mode == "whatif" and app.focused is screen.editor  # the editor kept its focus
        await pilot.press("f3")
        assert app.current_mode == "policies"
        await pilot.press("1")  # no editor focused: plain digits switch
        assert app.current_mode == "flows"
        await pilot.press("slash", *"port:1234", "enter")  # digits typed into the filter stay text
        assert app.current_mode == "flows" and app.filter.text == "port:1234"
        await pilot.press("question_mark")  # a dialog keeps its keys
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("2")
        assert isinstance(app.screen, HelpScreen) and app.current_mode == "flows"
        keys = dict(app.screen.keys)
        assert keys.get("e") == "Flows/Events" and keys.get("2  alt+2  f2") == "Convs"


@sync
async def test_a_flood_is_one_row_whose_counts_grow_in_place(tmp_path: Path) -> None:
    tap = Tap()
    store = TappedStore(tmp_path / "live.duckdb", tap=tap, snapshot_interval=None)
    feed = SyntheticFeed(store)
    start = int((START.timestamp() - START.astimezone().utcoffset().total_seconds()) * 1e6)  # type: ignore[union-attr]
    feed.push(5000, start, 100)
    app = make_app(LiveSource(store, collector_state=lambda: "running"), file_control(),
                   queries_dir=Path("/nonexistent"))
    try:
        async with app.run_test(size=SIZE) as pilot:
            s = stream(app)
            await until(pilot, lambda: s.ring.total_appended >= 5000)

            def flood() -> tuple[int, dict[str, Any]]:
                rows = held(app)
                top = max(rows, key=lambda r: r["packets"])
                return s.ring.first + rows.index(top), top

            index, before = flood()
            assert before["policy_name"] == "dos-mitigation" and before["src_name"] == "attacker"
            assert before["ports"] > 100 and len(s.ring) < 40  # thousands of source ports, one row
            rows_before = len(s.ring)
            await asyncio.to_thread(feed.push, 5000, start + 500_000, 100)
            await until(pilot, lambda: s.ring.total_appended >= 10_000)
            index_after, after = flood()
            assert index_after == index and after["packets"] > before["packets"] and after["rate"] > 0
            assert after["last_seen"] > before["last_seen"] and len(s.ring) == rows_before
            line = "".join(seg.text for seg in s._strip(after, SIZE[0], False))
            assert "external:attacker" in line and "gnp:dos-mitigation" in line
    finally:
        store.close(snapshot=False)


@sync
async def test_busiest_first_puts_the_flood_on_top(recording: Path) -> None:
    app, _ = app_for(recording)
    async with app.run_test(size=SIZE) as pilot:
        s = stream(app)
        await until(pilot, lambda: len(s.ring) > 0)
        await pilot.press("o")
        assert s.busiest_first and not s.follow and s.cursor == s.ring.first
        top = held(app)
        assert top[0]["policy_name"] == "dos-mitigation" and top[0]["src_name"] == "attacker"
        assert [r["packets"] for r in top] == sorted((r["packets"] for r in top), reverse=True)
        assert s.selected is not None and s.selected["policy_name"] == "dos-mitigation"
        assert "busiest first" in str(app.screen.query_one("#flows-title").render())
        app.set_filter_text("verdict:allow")  # a reload keeps the ranking
        await until(pilot, lambda: app.filter.text == "verdict:allow" and held(app) and all(
            r["verdict"] == "allow" for r in held(app)))
        assert s.busiest_first and [r["packets"] for r in held(app)] == sorted(
            (r["packets"] for r in held(app)), reverse=True)
        await pilot.press("o")
        assert not s.busiest_first and s.follow
