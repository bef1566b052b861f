"""The demo, end to end: lab, policies, collector, traffic, and a clean teardown. Needs root.

    with DemoSession(DemoOptions()) as demo:     # lab `demo` built, policies enforced,
        demo.start()                              # collector and traffic running
        ...                                       # demo.source (live data), demo.control
        summary = demo.stop()                     # traffic and collector stopped, store closed
    # leaving the block removes the lab (and the temporary state directory)

Teardown is idempotent and runs whatever happened: `close()` stops what is running and calls
`lab_down`, which finds the lab's namespaces by name (and kills what runs inside them), so even a
crashed earlier run is cleaned by the next one (`start()` removes a leftover `demo` lab first).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enforcer.datastore import HOME_ENV, Datastore
from enforcer.datastore.files import make_dirs
from flowtui.demo.summary import DemoSummary, summarize

log = logging.getLogger(__name__)
DEMO_LAB = "demo"
# Conntrack reports a connection's packets and bytes when its entry ends; a closed TCP connection
# waits 120 s in TIME_WAIT by default. Short timeouts in the demo's node namespaces (only there)
# put the counts of allowed flows on screen within seconds.
SHORT_CONNTRACK_TIMEOUTS = (
    ("net/netfilter/nf_conntrack_tcp_timeout_time_wait", "2"),
    ("net/netfilter/nf_conntrack_tcp_timeout_close_wait", "2"),
    ("net/netfilter/nf_conntrack_tcp_timeout_fin_wait", "2"),
    ("net/netfilter/nf_conntrack_tcp_timeout_last_ack", "2"),
    ("net/netfilter/nf_conntrack_tcp_timeout_close", "2"),
    ("net/netfilter/nf_conntrack_icmp_timeout", "3"),
    ("net/netfilter/nf_conntrack_icmpv6_timeout", "3"),
    ("net/netfilter/nf_conntrack_udp_timeout", "5"),
)


@dataclass
class DemoOptions:
    lab_id: str = DEMO_LAB
    state_dir: Path | None = None  # default: $FLOWTUI_HOME/demo, else a temporary directory
    scenario: Path | None = None  # default: the shipped article scenarios
    duration: float | None = None  # traffic for this long (None: until stop())
    round_seconds: float = 60.0
    flood_pps: int = 2000
    scale: float = 1.0
    bucket_seconds: float = 1.0
    keep_state: bool = False


class DemoSession:
    def __init__(self, options: DemoOptions | None = None, echo: Callable[[str], None] | None = None) -> None:
        self.opts = options or DemoOptions()
        self.echo = echo or (lambda _m: None)
        self.lab_id = self.opts.lab_id
        self._temp = False
        self.state_dir = self._state_dir()
        self.db = self.state_dir / "flows.duckdb"
        self.datastore = Datastore(self.state_dir)
        self.plan: Any = None
        self.collector: Any = None
        self.store: Any = None
        self.traffic: Any = None
        self.control: Any = None
        self.source: Any = None
        self._collector_thread: threading.Thread | None = None
        self._collector_stop = threading.Event()
        self._collector_summary: dict[str, Any] | None = None
        self._collector_error: BaseException | None = None
        self._started = 0.0
        self._closed = False
        self.lab_built = False

    def _state_dir(self) -> Path:
        if self.opts.state_dir is not None:
            return Path(self.opts.state_dir)
        home = os.environ.get(HOME_ENV)
        if home:
            return Path(home) / "demo"
        self._temp = True
        return Path(tempfile.mkdtemp(prefix="flowtui-demo-"))

    def __enter__(self) -> DemoSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- starting ----------------------------------------------------------------------------

    def start(self) -> None:
        """Build the lab, store and enforce the scenarios, start the collector and the traffic."""
        from enforcer.lab import lab_down, lab_up, plan_lab
        from flowtui.cli.common import scenario_dir
        from flowtui.demo.traffic import TrafficGenerator, article_mix
        from flowtui.tui.control import lab_control

        if os.geteuid() != 0:
            raise PermissionError("the demo lab needs root (network namespaces and nftables); "
                                  "try `flowtui demo --no-lab`, or `flowtui tui --logs sample-logs/`")
        self._started = time.monotonic()
        removed = lab_down(self.lab_id)
        if removed:
            self.echo(f"removed {removed} namespaces left by an earlier demo")
        self._reset_state_dir()
        scenario = self.opts.scenario or scenario_dir()
        changes = self.datastore.apply_documents([str(scenario)])
        self.echo(f"datastore {self.state_dir}: {len(changes.changes)} objects from {scenario}")
        self.plan = plan_lab(self.datastore.resources(), self.lab_id)
        self.lab_built = True  # from here on, close() must take the lab down
        lab_up(self.plan)
        self.echo(f"lab {self.lab_id}: {len(self.plan.nodes)} nodes, {len(self.plan.pods)} pods, "
                  f"{len(self.plan.externals)} outside hosts")
        nodes = [n.name for n in self.plan.nodes]
        self.control = lab_control(self.datastore, self.lab_id, lab_nodes=lambda: list(nodes))
        result = self.control.reconciler.reconcile()
        if not result.ok:
            raise RuntimeError("enforcing the scenarios failed: " + "; ".join(str(n) for n in result.failed))
        self.echo(f"policies enforced on {len(result.nodes)} nodes in {result.total_ms:.0f} ms")
        self._short_conntrack_timeouts()
        self._start_collector()
        self.traffic = TrafficGenerator(
            self.lab_id, article_mix(self.plan, flood_pps=self.opts.flood_pps, scale=self.opts.scale),
            round_seconds=self.opts.round_seconds, duration=self.opts.duration,
        )
        self.traffic.start()
        self.echo("traffic generator started")

    def _short_conntrack_timeouts(self) -> None:
        from enforcer.lab.netns import write_sysctls

        for node in self.plan.nodes:
            for key, value in SHORT_CONNTRACK_TIMEOUTS:
                try:
                    write_sysctls(node.netns, ((key, value),))
                except Exception as exc:  # a kernel without the key: counts just arrive later
                    log.debug("%s: %s", node.netns, exc)

    def _reset_state_dir(self) -> None:
        if self.state_dir.exists() and not self._temp:
            for child in self.state_dir.iterdir():  # the demo owns this directory
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        make_dirs(self.state_dir)  # 0700, as every directory flowtui makes for state

    def _start_collector(self) -> None:
        from flowtui.collector.service import Collector, CollectorConfig, lab_namespaces
        from flowtui.tui.sources import LiveSource, Tap, TappedStore

        namespaces = tuple(lab_namespaces(self.lab_id))
        datastore, lab_id = self.datastore, self.lab_id

        def load_resources() -> Any:
            from enforcer.lab import lab_resources, plan_lab

            res = datastore.resources()
            return lab_resources(res, plan_lab(res, lab_id))

        cfg = CollectorConfig(
            db=self.db,
            namespaces=namespaces,
            rules_path=self.datastore.rules_path,
            load_resources=load_resources,
            resource_paths=(str(self.state_dir / "state.json"),),
            bucket_seconds=self.opts.bucket_seconds,
            batch_seconds=0.1,
            counters_interval=1.0,
            snapshot_interval=2.0,
        )
        self.store = TappedStore(cfg.db, tap=Tap(), snapshot_interval=cfg.snapshot_interval)
        self.collector = Collector(cfg, store=self.store)
        self.collector.start()
        self._collector_thread = threading.Thread(target=self._run_collector, name="flowtui demo collector",
                                                  daemon=True)
        self._collector_thread.start()
        self.source = LiveSource(self.store, label=f"live: lab {self.lab_id}, {self.db}",
                                 rules_path=self.datastore.rules_path, collector_state=self.collector_state)
        self.echo(f"collector reading NFLOG in {len(namespaces)} node namespaces into {self.db}")

    def _run_collector(self) -> None:
        try:
            self.collector.run(None, self._collector_stop)
            self._collector_summary = self.collector.summary()
        except BaseException as exc:  # reported by stop()
            self._collector_error = exc
            log.exception("the demo's collector failed")

    def collector_state(self) -> str:
        if self.collector is None:
            return "not started"
        if self._collector_error is not None or self.collector.error is not None:
            return f"failed: {self._collector_error or self.collector.error}"
        alive = self._collector_thread is not None and self._collector_thread.is_alive()
        traffic = ""
        if self.traffic is not None:
            traffic = ", traffic on" if self.traffic.running else ", traffic done"
        return ("running" if alive and not self._collector_stop.is_set() else "stopped") + traffic

    # ---- stopping ----------------------------------------------------------------------------

    def wait(self, seconds: float, stop: threading.Event | None = None) -> None:
        """Let the demo run (headless) for `seconds` of traffic, or until `stop` is set.

        The seconds count from the traffic's start: its agents start first, which takes seconds
        on a loaded machine (bounded by the generator's own start-up timeout)."""
        from flowtui.demo.traffic import AGENT_START_TIMEOUT

        stop = stop or threading.Event()
        if self.traffic is not None:
            give_up = time.monotonic() + AGENT_START_TIMEOUT + 10  # then the summary shows the errors
            while not stop.is_set() and not self._collector_failed() and self.traffic.running:
                if self.traffic.wait_started(0.2) or time.monotonic() > give_up:
                    break
        end = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < end and not self._collector_failed():
            stop.wait(min(0.2, max(0.0, end - time.monotonic())))

    def _collector_failed(self) -> bool:
        return self.collector is not None and self.collector.error is not None

    def stop(self, grace: float = 0.0) -> DemoSummary:
        """Stop the traffic (after up to `grace` seconds for a round to end and report), then the
        collector (which drains and closes the store); summarize."""
        if self.traffic is not None:
            self.traffic.stop(grace=grace)
        if self._collector_thread is not None:
            self._collector_stop.set()
            self._collector_thread.join(timeout=60)
            self._collector_thread = None
        if self.source is not None:
            self.source.close()
        if self._collector_error is not None:
            raise RuntimeError(f"the collector failed: {self._collector_error}") from self._collector_error
        summary = summarize(self.db, self._collector_summary or {}, seconds=time.monotonic() - self._started,
                            lab_id=self.lab_id, state_dir=str(self.state_dir))
        if self.traffic is not None:
            summary.traffic = self.traffic.stats.by_kind
            summary.traffic_errors = list(self.traffic.stats.errors)
        return summary

    def close(self) -> None:
        """Stop everything still running and remove the lab; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.traffic is not None:
                self.traffic.stop()
            if self._collector_thread is not None and self._collector_thread.is_alive():
                self._collector_stop.set()
                self._collector_thread.join(timeout=30)
        finally:
            if self.lab_built or self.plan is not None:
                from enforcer.lab import lab_down

                try:
                    removed = lab_down(self.lab_id)
                    self.echo(f"lab {self.lab_id} removed ({removed} namespaces)")
                except Exception as exc:
                    self.echo(f"warning: removing lab {self.lab_id} failed: {exc} "
                              f"(run `flowtui lab down --lab {self.lab_id}`)")
            if self._temp and not self.opts.keep_state:
                shutil.rmtree(self.state_dir, ignore_errors=True)
