"""SQL: run a file from `queries/` or ad-hoc SQL against the flow store; results in a table;
export them to CSV or Parquet."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from flowtui.tui.messages import ExportFinished, QueryFinished
from flowtui.tui.screens.base import DashboardScreen

SHOW_ROWS = 1_000
BUILTIN = {
    "(example) denied flows by policy": (
        "SELECT policy_kind, policy_namespace, policy_name, rule_index, count(*) AS events\n"
        "FROM events_v WHERE action = 'Deny'\nGROUP BY ALL ORDER BY events DESC"),
    "(example) top talkers": (
        "SELECT src_ip, dst_ip, proto, dport, action, sum(events) AS events, sum(packets) AS packets\n"
        "FROM flows GROUP BY ALL ORDER BY events DESC LIMIT 50"),
    "(example) loss by cause": "SELECT * FROM loss_latest ORDER BY run_id DESC, cause",
    "(example) rules never hit": (
        "SELECT r.* FROM rules r LEFT JOIN (SELECT DISTINCT rule_id FROM events) e ON e.rule_id = r.id\n"
        "WHERE e.rule_id IS NULL ORDER BY r.tier, r.name, r.rule"),
    "(example) tables and columns": (
        "SELECT table_name, column_name, data_type, comment FROM duckdb_columns()\n"
        "WHERE schema_name = 'main' ORDER BY table_name, column_index"),
}


def query_files(directory: Path | None) -> dict[str, tuple[str, str]]:
    """The query library (`flowtui.query.library`: $FLOWTUI_QUERIES, then `queries/`; or only
    `directory`), name -> (summary, SQL), then the built-in examples."""
    from flowtui.query.library import QueryFileError, default_dirs, discover

    dirs = [directory] if directory is not None else default_dirs()
    out: dict[str, tuple[str, str]] = {}
    try:
        for name, q in discover(dirs).items():
            out[name] = (q.summary, q.sql)
    except (QueryFileError, OSError):  # a malformed file: list the files as they are
        for d in dirs:
            for file in sorted(d.glob("*.sql")) if d.is_dir() else []:
                out.setdefault(file.stem, ("", file.read_text(encoding="utf-8")))
    out.update({name: ("", sql) for name, sql in BUILTIN.items()})
    return out


def export_table(table: pa.Table, path: Path) -> None:
    """CSV or Parquet by the file's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    else:
        import pyarrow.csv as pacsv

        plain = table
        for i, f in enumerate(table.schema):  # CSV cannot hold lists: write them as text
            if pa.types.is_list(f.type) or pa.types.is_large_list(f.type):
                plain = plain.set_column(i, f.name, pa.array([None if v is None else ";".join(map(str, v))
                                                              for v in table.column(i).to_pylist()]))
        pacsv.write_csv(plain, path)


class SqlScreen(DashboardScreen):
    BINDINGS = [
        Binding("ctrl+r", "run", "Run", priority=True),
        Binding("ctrl+e", "export", "Export CSV/Parquet", priority=True),
        Binding("ctrl+o", "focus_list", "Queries", priority=True),
        Binding("escape", "leave_editor", "Leave editor", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.queries: dict[str, tuple[str, str]] = {}
        self.result: pa.Table | None = None
        self.last_sql = ""

    def compose(self) -> ComposeResult:
        yield Static(id="sql-title", classes="screen-title")
        with Horizontal(id="sql-main"):
            yield OptionList(id="query-list")
            with Vertical(id="sql-pane"):
                yield TextArea("SELECT * FROM flows_v ORDER BY start_time DESC LIMIT 100", id="sql-editor",
                               show_line_numbers=True)
                yield Static("", id="sql-status")
                yield DataTable(id="sql-results", zebra_stripes=True)
        yield from self.chrome()

    def on_mount(self) -> None:
        self.queries = query_files(self.dash.queries_dir)
        options = self.query_one(OptionList)
        for name in self.queries:
            options.add_option(Option(name, id=name))
        title = Text(" SQL ", style="bold reverse")
        title.append(f"  against {self.dash.source.label} · {len(self.queries)} queries (ctrl+o) · ctrl+r runs, "
                     "ctrl+e exports")
        self.query_one("#sql-title", Static).update(title)
        self.query_one("#sql-editor", TextArea).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        name = str(event.option.id)
        summary, sql = self.queries.get(name, ("", ""))
        self.query_one("#sql-editor", TextArea).load_text(sql)
        self.query_one("#sql-editor", TextArea).focus()
        self.action_run()
        if summary:
            self.notify(summary, title=name, timeout=6)

    def action_focus_list(self) -> None:
        self.query_one(OptionList).focus()

    def action_run(self, sql: str | None = None) -> None:
        sql = sql if sql is not None else self.query_one("#sql-editor", TextArea).text
        if not sql.strip():
            return
        self.last_sql = sql
        self.query_one("#sql-status", Static).update(Text("running…", "italic dim"))
        self.run_query(sql)

    @work(thread=True, group="sql", exclusive=True, exit_on_error=False, description="running SQL")
    def run_query(self, sql: str) -> None:
        start = time.perf_counter()
        try:
            table = self.dash.source.script(sql)
        except Exception as exc:  # shown in the status line, not as a crash
            self.post_message(QueryFinished(None, time.perf_counter() - start, str(exc)))
            return
        self.post_message(QueryFinished(table, time.perf_counter() - start))

    def on_query_finished(self, message: QueryFinished) -> None:
        status = self.query_one("#sql-status", Static)
        if message.error is not None or message.table is None:
            status.update(Text(f"✗ {message.error}", "bold red"))
            return
        table = message.table
        self.result = table
        shown = min(table.num_rows, SHOW_ROWS)
        more = f" (showing the first {shown:,})" if shown < table.num_rows else ""
        status.update(Text(f"{table.num_rows:,} rows{more} in {message.seconds * 1e3:.0f} ms", "green"))
        grid = self.query_one("#sql-results", DataTable)
        with self.app.batch_update():
            grid.clear(columns=True)
            for name in table.column_names:
                grid.add_column(name)
            for row in table.slice(0, shown).to_pylist():
                grid.add_row(*(("" if v is None else str(v))[:80] for v in row.values()))

    def action_export(self) -> None:
        if self.result is None:
            self.notify("run a query first", severity="warning")
            return
        from flowtui.tui.screens.text import PromptScreen

        default = f"flowtui-export-{time.strftime('%Y%m%d-%H%M%S')}.csv"

        def chosen(value: str | None) -> None:
            if value:
                self.export(self.last_sql, Path(value).expanduser())

        self.app.push_screen(PromptScreen("Export the whole result to (.csv or .parquet):", default), chosen)

    @work(thread=True, group="export", exit_on_error=False, description="exporting a result")
    def export(self, sql: str, path: Path) -> None:
        try:
            table = self.dash.source.script(sql)  # the whole result, not only the rows on screen
            export_table(table, path)
        except Exception as exc:
            self.post_message(ExportFinished(str(path), 0, str(exc)))
            return
        self.post_message(ExportFinished(str(path), table.num_rows))

    def on_export_finished(self, message: ExportFinished) -> None:
        if message.error:
            self.notify(f"export failed: {message.error}", severity="error")
        else:
            self.notify(f"exported {message.rows:,} rows to {message.path}")

    def action_leave_editor(self) -> None:
        """Escape: focus the results, where the screen keys (1-5, ?, :) work again."""
        self.query_one("#sql-results").focus()
