"""`flowtui demo`: the article's scenarios in a lab, with live traffic, on the dashboard."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import click


@click.command()
@click.option("--headless", is_flag=True, help="No dashboard: run for --duration seconds and print a summary.")
@click.option("--duration", type=float, help="Seconds of traffic (headless default 20; dashboard: until you quit).")
@click.option("--export", "export_dir", type=click.Path(file_okay=False),
              help="After the run, write every table as Parquet (+ resources.yaml) here: a replayable recording.")
@click.option("--no-lab", is_flag=True, help="No lab, no root: decide the article's flows and explain them.")
@click.option("--lab", "lab_id", default="demo", show_default=True, metavar="ID", help="Lab id of the demo.")
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="Datastore and flow store directory [default: $FLOWTUI_HOME/demo, else a temporary one].")
@click.option("--flood-pps", default=2000, show_default=True, help="Packets/s of the deny-listed UDP flood.")
@click.option("--scale", default=1.0, show_default=True, help="Multiply the other traffic's rates.")
@click.option("--read-only", is_flag=True, help="Dashboard without policy changes.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Headless summary format.")
def demo(headless: bool, duration: float | None, export_dir: str | None, no_lab: bool, lab_id: str,
         state_dir: str | None, flood_pps: int, scale: float, read_only: bool, output: str) -> None:
    """See Calico policy at work: allowed and denied traffic, by which policy and which rule.

    Builds a lab of network namespaces from the Calico article's five scenarios (production and
    staging namespaces with frontend and transaction tiers, a favorite worker node protected by a
    host endpoint policy, a DoS deny list with outside attackers), enforces the policies with
    nftables, starts the flow collector and a traffic generator (allowed service calls, denied
    cross-tier attempts, pings, a deny-listed UDP flood), and opens the dashboard. Quit with `q`
    (or Ctrl-C): everything is removed, including after a crash the next time the demo starts.

    Needs root and a terminal. Without them (or with --no-lab) the flows are decided by the
    evaluator instead and explained step by step; `flowtui tui --logs sample-logs/` replays a
    recorded demo.

    `--headless --duration N` runs the same without a terminal and prints flows by verdict and
    policy and the loss accounting; `--export DIR` keeps the recording
    (`flowtui demo --headless --duration 20 --export sample-logs/` made the shipped one).
    """
    if no_lab or os.geteuid() != 0:
        if not no_lab:
            click.echo("note: not root, so no lab: deciding the article's flows with the evaluator instead "
                       "(`flowtui tui --logs sample-logs/` replays a recorded demo)\n", err=True)
        _evaluate_only()
        return
    if not headless and not (sys.stdin.isatty() and sys.stdout.isatty()):
        click.echo("note: no terminal for the dashboard, so no lab: deciding the article's flows with the "
                   "evaluator instead (`flowtui demo --headless` runs the lab without a terminal)\n", err=True)
        _evaluate_only()
        return
    from flowtui.demo.session import DemoOptions, DemoSession

    opts = DemoOptions(
        lab_id=lab_id,
        state_dir=Path(state_dir) if state_dir else None,
        duration=duration if duration is not None else (20.0 if headless else None),
        flood_pps=flood_pps,
        scale=scale,
        round_seconds=min(60.0, duration) if duration else 60.0,
    )
    session = DemoSession(opts, echo=lambda m: click.echo(m, err=True))
    stop = threading.Event()
    previous = _install_signals(stop, raise_interrupt=not headless)
    try:
        try:
            session.start()
        except (PermissionError, RuntimeError, OSError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        if headless:
            session.wait(opts.duration or 20.0, stop)
        else:
            _dashboard(session, read_only)
        # headless: the round ends with the duration; wait for its agents' reports (a bound: the
        # join returns as soon as they are in, which under load takes more than a moment)
        summary = session.stop(grace=30.0 if headless else 0.0)
        if export_dir:
            from flowtui.demo.summary import export

            written = export(session.db, Path(export_dir), session.datastore)
            click.echo(f"exported {len(written)} files to {export_dir} (replay: flowtui tui --logs {export_dir})",
                       err=True)
        if output == "json":
            click.echo(json.dumps(summary.to_json(), indent=2, default=str))
        else:
            from flowtui.demo.summary import render

            click.echo(render(summary))
    except KeyboardInterrupt:
        click.echo("interrupted: cleaning up", err=True)
        sys.exit(130)
    finally:
        session.close()
        _restore_signals(previous)


def _dashboard(session: Any, read_only: bool) -> None:
    from flowtui.tui.app import make_app, run_app

    if read_only:
        session.control.read_only = True
    run_app(make_app(session.source, session.control))


def _install_signals(stop: threading.Event, *, raise_interrupt: bool) -> dict[int, Any]:
    """SIGTERM and SIGHUP end the demo like Ctrl-C does (the `finally` cleans up)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        if raise_interrupt or signum == signal.SIGINT:
            raise KeyboardInterrupt

    previous: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_signals(previous: dict[int, Any]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)


def _evaluate_only() -> None:
    from flowtui.cli.common import scenario_dir
    from flowtui.demo.evaluate_only import decide_probes, render

    path = scenario_dir()
    click.echo(f"Scenarios: {path}\n")
    click.echo(render(decide_probes(path)))
