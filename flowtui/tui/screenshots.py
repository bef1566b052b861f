"""SVG screenshots of every screen, driven with Textual's pilot over a synthetic recording of the
article's flows (the tests' snapshots), or over the live demo (the README's pictures, root).

    python -m flowtui.tui.screenshots docs/screens          # synthetic recording: flows.svg, ...
    python -m flowtui.tui.screenshots --live docs/screens   # the demo lab, 20 s of traffic first
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from enforcer.safefile import SHARED, atomic_write

SIZE = (140, 40)
SHOTS = ("flows", "detail", "conversations", "policies", "whatif", "whatif-error", "sql", "help")


def replay_app(db: Path, queries_dir: Path | None = None) -> Any:
    """The dashboard on a recording, with a label that does not depend on where it lies."""
    from flowtui.cli.common import scenario_dir
    from flowtui.tui.app import make_app
    from flowtui.tui.control import PolicyControl
    from flowtui.tui.sources import StoreSource

    source = StoreSource(db)
    source.label = f"replay: {db.name}"
    control = PolicyControl(files=[str(scenario_dir())], read_only=True, why_read_only="a recording")
    return make_app(source, control, queries_dir=queries_dir or Path("/nonexistent"))


async def _until(pilot: Any, cond: Callable[[], Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("the screen did not get ready")
        await pilot.pause(0.02)


async def _ready(pilot: Any) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.05)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def capture(app: Any, size: tuple[int, int] = SIZE) -> dict[str, str]:
    """Drive `app` through its screens; name -> SVG."""
    from flowtui.tui.control import PolicyRef
    from flowtui.tui.messages import QueryFinished
    from flowtui.tui.widgets.stream.flow_stream import FlowStream

    shots: dict[str, str] = {}
    async with app.run_test(size=size) as pilot:
        stream = app.screen.query_one(FlowStream)
        await _until(pilot, lambda: len(stream.ring) > 0 and app.status is not None)
        await _ready(pilot)  # everything, the flood too: one row per flow, not per packet
        await pilot.press("up", "up", "up")
        shots["flows"] = app.export_screenshot()

        app.set_filter_text("policy:deny-frontend-to-transaction verdict:deny")
        await _until(pilot, lambda: stream.selected is not None
                     and stream.selected.get("policy_name") == "deny-frontend-to-transaction")
        await pilot.press("enter")
        await _until(pilot, lambda: getattr(app.screen, "explanation", None) is not None)
        await _ready(pilot)
        shots["detail"] = app.export_screenshot()
        await pilot.press("escape")

        app.set_filter_text("")
        await pilot.press("2")
        await _until(pilot, lambda: getattr(app.screen, "rows", None))
        await _ready(pilot)
        shots["conversations"] = app.export_screenshot()

        await pilot.press("3")
        await _until(pilot, lambda: getattr(app.screen, "lines", None))
        await _ready(pilot)
        shots["policies"] = app.export_screenshot()

        app.open_whatif(PolicyRef("GlobalNetworkPolicy", None, "deny-frontend-to-transaction"))
        screen = app.screen
        await _until(pilot, lambda: screen.ref is not None and screen.outcome is not None)
        screen.editor.cursor_blink = False
        screen.editor.load_text(screen.editor.text.replace("action: Deny", "action: Allow"))
        await _until(pilot, lambda: screen.outcome is not None and screen.outcome.ok
                     and screen.outcome.report.categories["newly_allowed"].flows > 0)
        screen.outcome.seconds = 0.0  # the replay time varies: not in the picture
        screen._show_report(screen.outcome)
        await _ready(pilot)
        shots["whatif"] = app.export_screenshot()
        screen.editor.load_text(screen.editor.text.replace("protocol: TCP", "protocol: TCPX"))
        await _until(pilot, lambda: screen.outcome is not None and bool(screen.outcome.problems))
        await _ready(pilot)
        shots["whatif-error"] = app.export_screenshot()
        await pilot.press("escape")

        await pilot.press("5")
        sql = app.screen
        sql.query_one("#sql-editor").cursor_blink = False
        sql.query_one("#sql-editor").load_text(
            "SELECT policy_kind, policy_name, rule_index, action, count(*) AS events\n"
            "FROM events_v GROUP BY ALL ORDER BY events DESC, policy_name, rule_index")  # ties: a stable order
        table = app.source.query(sql.query_one("#sql-editor").text)
        sql.result = table
        sql.on_query_finished(QueryFinished(table, 0.0))
        await _ready(pilot)
        shots["sql"] = app.export_screenshot()
        await pilot.press("escape")

        await pilot.press("1")
        await _ready(pilot)
        await pilot.press("question_mark")
        await _ready(pilot)
        shots["help"] = app.export_screenshot()
    return shots


def recording(directory: Path) -> Path:
    from flowtui.demo.synthetic import article_recording

    return article_recording(directory / "article.duckdb", events=3000)


def live_shots(seconds: float = 20.0) -> dict[str, str]:
    """Screenshots of the dashboard on the running demo (root)."""
    from flowtui.demo.session import DemoOptions, DemoSession
    from flowtui.tui.app import make_app

    with tempfile.TemporaryDirectory() as tmp, DemoSession(DemoOptions(
            lab_id="shots", state_dir=Path(tmp) / "state", duration=seconds + 120)) as demo:
        demo.start()
        time.sleep(seconds)
        demo.source.label = "live: lab demo"
        app = make_app(demo.source, demo.control)
        return asyncio.run(capture(app))


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    live = "--live" in args
    args = [a for a in args if a != "--live"]
    out = Path(args[0] if args else "docs/screens")
    out.mkdir(parents=True, exist_ok=True)
    if live:
        shots = live_shots()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            shots = asyncio.run(capture(replay_app(recording(Path(tmp)))))
    for name, svg in shots.items():
        atomic_write(out / f"{name}.svg", svg, SHARED)
        print(out / f"{name}.svg")


if __name__ == "__main__":
    main()
