"""The demo's pieces without a lab: the traffic plan and agents (on loopback), the summary, the
fallback without root, the CLI wiring."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from enforcer.lab import plan_lab
from enforcer.loader import load_paths
from flowtui.cli.common import scenario_dir
from flowtui.demo.traffic import Job, TrafficStats, article_mix, client


def test_article_mix_covers_every_kind_and_scenario() -> None:
    plan = article_mix(plan_lab(load_paths([str(scenario_dir())]), "demo"))
    kinds = {j.kind for s in plan.sources for j in s.jobs}
    assert kinds == {"call", "attempt", "ping", "flood"}
    what = " ".join(j.what for s in plan.sources for j in s.jobs)
    for policy in ("deny-frontend-to-transaction", "allow-cluster-internal", "deny-other-ingress", "Log, then Deny",
                   "favorite-worker-host", "end-of-tier deny", "failsafe", "dos-mitigation", "kns profile"):
        assert policy in what, policy
    flood = next(j for s in plan.sources for j in s.jobs if j.kind == "flood")
    assert flood.dst == "10.244.2.10" and flood.port == 9000  # production/transaction
    # every call has a listener
    served = {(t, p) for t, ports in plan.servers.items() for p in ports}
    addr = {str(a): p.key for p in plan_lab(load_paths([str(scenario_dir())]), "demo").pods for a in p.addresses}
    for s in plan.sources:
        for j in s.jobs:
            if j.kind == "call" and j.dst in addr:
                assert (addr[j.dst], j.port) in served
    assert len(plan.describe()) == sum(len(s.jobs) for s in plan.sources)
    scaled = article_mix(plan_lab(load_paths([str(scenario_dir())]), "demo"), scale=2.0, flood_pps=100)
    assert scaled.sources[0].jobs[0].every == plan.sources[0].jobs[0].every / 2


def test_agents_are_bounded_and_report(tmp_path: Path) -> None:
    """A server and a client on loopback: calls answered, attempts refused, a capped flood."""
    server = subprocess.Popen([sys.executable, "-m", "flowtui.demo.traffic", "serve", "--deadline", "10", "18765"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        report = client({"until": time.monotonic() + 1.5, "jobs": [
            {"kind": "call", "dst": "127.0.0.1", "proto": "tcp", "port": 18765, "every": 0.1},
            {"kind": "attempt", "dst": "127.0.0.1", "proto": "tcp", "port": 18766, "every": 0.2},
            {"kind": "flood", "dst": "127.0.0.1", "proto": "udp", "port": 18767, "pps": 1000, "payload": 32},
        ]})
        assert time.monotonic() - t0 < 3.0  # the deadline holds
        assert report["counts"]["call"]["ok"] >= 5
        assert report["counts"]["attempt"].get("refused", 0) >= 3
        assert 500 <= report["counts"]["flood"]["sent"] <= 2000  # paced, not as fast as possible
        assert server.stdin is not None
        server.stdin.close()  # the server ends when its stdin closes
        assert server.wait(timeout=5) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        assert server.stdout is not None
        server.stdout.close()
    stats = TrafficStats()
    stats.add(report)
    stats.add(report)
    assert stats.by_kind["call"]["ok"] == 2 * report["counts"]["call"]["ok"]
    assert Job("call", "x").every == 1.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_slow_starting_agents_share_the_rounds_start_and_end(tmp_path: Path) -> None:
    """Agents that take seconds to start (a loaded machine) still send for the whole duration,
    all in the same window: the duration counts from every agent being ready, not from `start()`,
    and not from each agent's own start-up. The headless demo's wait-then-stop sees every report."""
    from flowtui.demo.session import DemoOptions, DemoSession
    from flowtui.demo.traffic import SourcePlan, TrafficGenerator, TrafficPlan

    port, closed = _free_port(), _free_port()
    delays = {"server": 0.0, "fast": 0.2, "slow": 4.0}  # seconds before an agent's Python starts

    def launch(target: str, argv: list[str]) -> subprocess.Popen[str]:
        code = (f"import sys, time; time.sleep({delays[target]}); sys.argv = ['traffic', *{argv!r}]; "
                "from flowtui.demo.traffic import main; main()")
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)

    plan = TrafficPlan({"server": (port,)}, (
        SourcePlan("fast", (Job("call", "127.0.0.1", "tcp", port, 0.1),)),
        SourcePlan("slow", (Job("call", "127.0.0.1", "tcp", port, 0.1),
                            Job("attempt", "127.0.0.1", "tcp", closed, 0.2))),
    ))
    duration = 2.0
    gen = TrafficGenerator("unused", plan, duration=duration, launch=launch)
    session = DemoSession(DemoOptions(state_dir=tmp_path / "demo"))
    session.traffic = gen
    t0 = time.monotonic()
    gen.start()
    try:
        session.wait(duration)  # what `demo --headless` does, then stop(grace=...)
        waited = time.monotonic() - t0
        gen.stop(grace=30.0)
    finally:
        gen.stop()
    assert gen.started.is_set()
    assert waited >= delays["slow"] + duration  # the slow agent's start-up was not counted as traffic
    assert gen.stats.rounds == 1 and not gen.stats.errors
    calls = gen.stats.by_kind["call"]
    # both clients called for the whole duration: ~20 calls each at 0.1 s; none failed (the
    # server outlived the clients' shared end)
    assert calls.get("failed", 0) == 0 and calls["ok"] >= 2 * 0.6 * duration / 0.1, calls
    assert gen.stats.by_kind["attempt"]["refused"] >= 0.6 * duration / 0.2
    assert not gen.running


def test_summary_names_rules_and_renders(tmp_path: Path) -> None:
    from flowtui.demo.summary import export, render, summarize, who
    from flowtui.demo.synthetic import article_recording

    db = article_recording(tmp_path / "r.duckdb", events=1000)
    s = summarize(db, {"lost": {"kernel_ratelimit": 5}, "stats": {"received": 1000, "stored": 995}}, seconds=3.0,
                  lab_id="demo", state_dir=str(tmp_path))
    names = {(f["verdict"], f["decided_by"]) for f in s.flows}
    assert ("deny", "GlobalNetworkPolicy dos-mitigation ingress rule 0") in names
    assert ("deny", "end of tier default ingress (attributed to favorite-worker-host)") in names
    assert s.lost["kernel_ratelimit"] == 5 and set(s.lost) >= {"rcvbuf_overrun", "writer_backlog"}
    text = render(s)
    assert "flows by verdict" in text and "loss by cause" in text and "dos-mitigation" in text
    assert json.loads(json.dumps(s.to_json(), default=str))["verdicts"]["deny"] > 0
    assert who({"kind": "Profile", "name": "kns.prod"}) == "Profile kns.prod"
    assert who({"kind": "Failsafe", "name": "tcp:2379", "direction": "egress"}) == "Failsafe tcp:2379 egress"
    written = export(db, tmp_path / "out")
    assert (tmp_path / "out" / "events.parquet") in written


def test_demo_without_a_lab_decides_and_explains() -> None:
    from flowtui.cli.main import cli

    result = CliRunner().invoke(cli, ["demo", "--no-lab"])
    assert result.exit_code == 0, result.output
    assert "deny-frontend-to-transaction" in result.output and "step by step" in result.output


def test_cli_help_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flowtui.cli.main import cli

    runner = CliRunner()
    for cmd in (["tui", "--help"], ["demo", "--help"]):
        result = runner.invoke(cli, cmd)
        assert result.exit_code == 0 and ("Examples" in result.output or "--headless" in result.output)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["tui"])
    assert result.exit_code != 0 and "--db FILE" in result.output
    result = runner.invoke(cli, ["tui", "--db", str(tmp_path / "missing.duckdb")])
    assert result.exit_code != 0 and "no such file" in result.output


def test_tui_command_builds_the_app_for_a_recording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`flowtui tui --logs DIR` with resources.yaml: policies from the recording, read-only."""
    from flowtui.cli.main import cli
    from flowtui.demo.summary import export
    from flowtui.demo.synthetic import article_recording
    from flowtui.tui import app as app_module

    db = article_recording(tmp_path / "r.duckdb", events=500)
    export(db, tmp_path / "logs")
    (tmp_path / "logs" / "resources.yaml").write_text((scenario_dir() / "00-cluster.yaml").read_text())
    built = {}

    def fake_run(self: app_module.FlowtuiApp) -> None:
        built["app"] = self

    monkeypatch.setattr(app_module.FlowtuiApp, "run", fake_run)
    result = CliRunner().invoke(cli, ["tui", "--logs", str(tmp_path / "logs")])
    assert result.exit_code == 0, result.output
    app = built["app"]
    assert app.source.label.startswith("replay:") and not app.control.can_change
    assert app.control.files and app.control.resources().pods
    result = CliRunner().invoke(cli, ["tui", "--db", str(db), "-f", str(scenario_dir()), "--read-only"])
    assert result.exit_code == 0, result.output
    assert built["app"].read_only and built["app"].control.resources().policies


def test_headless_modules_never_import_textual() -> None:
    code = ("import sys; import flowtui.tui.sources, flowtui.tui.filters, flowtui.tui.queries, flowtui.tui.control, "
            "flowtui.tui.ring, flowtui.tui.flowtable, flowtui.tui.explain, flowtui.tui.policyview, "
            "flowtui.tui.whatif_run, "
            "flowtui.demo.session, flowtui.demo.traffic, flowtui.demo.summary, flowtui.demo.synthetic; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'textual'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
