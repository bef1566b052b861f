"""The agent's Prometheus metrics, in a registry of its own (several agents can run in one process).

    metrics = AgentMetrics(node="node-a")
    server = metrics.serve("127.0.0.1:9091")          # GET /metrics; server.close() to stop
    metrics.state("in-sync"); metrics.revision(42)
    metrics.programmed(0.012)                          # seconds from change seen to kernel commit
    metrics.collector(lambda: CollectorCounts(received=10, stored=9, lost={"rcvbuf_overrun": 1}))

Families (every one labelled `node`):

| metric | type | what |
|---|---|---|
| `flowtui_policy_programming_seconds` | histogram | a datastore change seen by the watch -> its kernel commit |
| `flowtui_table_rules`, `flowtui_table_chains` | gauge | rules and chains in the node's `inet flowtui` table |
| `flowtui_table_set_elements`, `flowtui_table_sets` | gauge | elements of every set and map, and their number |
| `flowtui_workload_chains{layout,cause}` | gauge | workload chains: `decision` maps, or the `walk` and why (`cause`) |
| `flowtui_decision_map_elements` | gauge | elements of the node's decision maps (what the node budget counts) |
| `flowtui_datastore_state{state}` | gauge | 1 for the current state of starting, in-sync, degraded, failed; 0 else |
| `flowtui_datastore_revision` | gauge | the datastore revision the node enforces |
| `flowtui_reconciles_total{result}` | counter | reconciles by outcome: applied, unchanged, failed |
| `flowtui_reconcile_errors_total` | counter | reconciles that failed, and datastore errors (degraded spells) |
| `flowtui_relists_total` | counter | full lists after a compaction or a lost watch |
| `flowtui_nflog_events_{received,stored}_total`, `..._lost_total{cause}` | counter | the collector's counts |

The NFLOG counters come from the flow collector (`--flows-dir`), which calls `collector(read)`
once with a function returning its cumulative counts; every scrape calls it, so the metric is
exactly the collector's own accounting (no second count to drift from it).
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from enforcer.nft import ir
from enforcer.nft.decision import WALK_CAUSES, ChainLayout

STATES = ("starting", "in-sync", "degraded", "failed")
# Programming latency buckets (seconds): a toggle is well under a millisecond, a first table of
# thousands of rules a second or more.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BadAddress(ValueError):
    """A --metrics address that is not HOST:PORT."""


@dataclass(frozen=True)
class CollectorCounts:
    """The flow collector's cumulative NFLOG accounting since the agent started."""

    received: int = 0
    stored: int = 0
    lost: Mapping[str, int] = field(default_factory=dict)  # cause -> events


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` (every address) or `[V6]:PORT` -> (host, port); BadAddress else."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadAddress(f"{text!r}: expected HOST:PORT (e.g. 127.0.0.1:9091 or [::1]:9091) with a port 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise BadAddress(f"{text!r}: {host!r} is not an IPv6 address") from exc
    elif ":" in host:
        raise BadAddress(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:{port}")
    return (host or "0.0.0.0", int(port))


class _NflogCounts(Collector):
    def __init__(self, node: str) -> None:
        self.node = node
        self.read: Callable[[], CollectorCounts] | None = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = self.read() if self.read is not None else CollectorCounts()
        for name, what, value in (("received", "NFLOG events the collector received", counts.received),
                                  ("stored", "NFLOG events the collector stored", counts.stored)):
            family = CounterMetricFamily(f"flowtui_nflog_events_{name}", what, labels=["node"])
            family.add_metric([self.node], value)
            yield family
        lost = CounterMetricFamily("flowtui_nflog_events_lost", "NFLOG events lost, by cause",
                                   labels=["node", "cause"])
        for cause, value in sorted(counts.lost.items()):
            lost.add_metric([self.node, cause], value)
        yield lost


class AgentMetrics:
    """One agent's metrics (see the module's docstring); thread-safe like prometheus_client."""

    def __init__(self, node: str, registry: CollectorRegistry | None = None) -> None:
        self.node = node
        self.registry = registry if registry is not None else CollectorRegistry()
        r, labels = self.registry, ["node"]
        self._latency = Histogram("flowtui_policy_programming_seconds",
                                  "From a datastore change seen by the agent's watch to its kernel commit",
                                  labels, registry=r, buckets=BUCKETS).labels(node)
        self._rules = Gauge("flowtui_table_rules", "Rules in the node's inet flowtui table", labels, registry=r)
        self._chains = Gauge("flowtui_table_chains", "Chains in the node's inet flowtui table", labels, registry=r)
        self._elements = Gauge("flowtui_table_set_elements", "Elements of every set and map of the node's table",
                               labels, registry=r)
        self._sets = Gauge("flowtui_table_sets", "Sets and maps in the node's table", labels, registry=r)
        self._chain_layouts = Gauge("flowtui_workload_chains",
                                    "Workload chains by layout (decision maps or the rule walk) and why the walk",
                                    ["node", "layout", "cause"], registry=r)
        self._map_elements = Gauge("flowtui_decision_map_elements", "Elements of the node's decision maps", labels,
                                   registry=r)
        self._state = Gauge("flowtui_datastore_state", "1 for the agent's current datastore state, 0 for the others",
                            ["node", "state"], registry=r)
        self._revision = Gauge("flowtui_datastore_revision", "The datastore revision the node enforces", labels,
                               registry=r).labels(node)
        self._reconciles = Counter("flowtui_reconciles", "Reconciles of the node by result", ["node", "result"],
                                   registry=r)
        self._errors = Counter("flowtui_reconcile_errors", "Failed reconciles and datastore errors", labels,
                               registry=r).labels(node)
        self._relists = Counter("flowtui_relists", "Full lists after a compaction or a lost watch", labels,
                                registry=r).labels(node)
        for result in ("applied", "unchanged", "failed"):
            self._reconciles.labels(node, result)  # present (at 0) from the first scrape
        self._nflog = _NflogCounts(node)
        r.register(self._nflog)
        self.state("starting")

    # ---- what the agent reports ----------------------------------------------------------------

    def state(self, current: str) -> None:
        if current not in STATES:
            raise ValueError(f"unknown agent state {current!r} (one of {', '.join(STATES)})")
        for state in STATES:
            self._state.labels(self.node, state).set(1 if state == current else 0)

    def revision(self, revision: int) -> None:
        self._revision.set(revision)

    def programmed(self, seconds: float) -> None:
        self._latency.observe(seconds)

    def reconciled(self, result: str) -> None:
        self._reconciles.labels(self.node, result).inc()
        if result == "failed":
            self._errors.inc()

    def datastore_error(self) -> None:
        self._errors.inc()

    def relisted(self) -> None:
        self._relists.inc()

    def table(self, table: ir.Table | None) -> None:
        """The node's table as it now is in the kernel (None: none)."""
        chains = table.chains.values() if table is not None else ()
        sets = table.sets.values() if table is not None else ()
        self._chains.labels(self.node).set(len(chains))
        self._rules.labels(self.node).set(sum(len(c.rules) for c in chains))
        self._sets.labels(self.node).set(len(sets))
        self._elements.labels(self.node).set(sum(len(s.elements) for s in sets))

    def layouts(self, layouts: Iterable[ChainLayout]) -> None:
        """How the node's last compile laid out its workload chains (`CompiledNode.layouts`)."""
        counts = {("decision", ""): 0, **{("walk", cause): 0 for cause in WALK_CAUSES}}
        elements = 0
        for chain in layouts:
            counts[(chain.layout, chain.cause)] += 1
            elements += chain.elements if chain.layout == "decision" else 0
        for (layout, cause), n in counts.items():
            self._chain_layouts.labels(self.node, layout, cause).set(n)
        self._map_elements.labels(self.node).set(elements)

    # ---- the flow collector's hook ---------------------------------------------------------------

    def collector(self, read: Callable[[], CollectorCounts]) -> None:
        """Report the collector's NFLOG counts: `read()` returns its cumulative counts and is
        called at every scrape (from the HTTP server's thread: make it cheap and thread-safe)."""
        self._nflog.read = read

    # ---- serving ---------------------------------------------------------------------------------

    def serve(self, address: str) -> MetricsServer:
        """Serve /metrics on `address` (HOST:PORT) from a daemon thread. The socket is bound here,
        in the calling thread's namespace. BadAddress, or OSError naming the address."""
        host, port = parse_address(address)
        try:
            server, thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve metrics on {address}: {exc.strerror or exc}") from exc
        return MetricsServer(address, server, thread)


@dataclass
class MetricsServer:
    address: str
    server: Any  # wsgiref server from prometheus_client
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


__all__ = ["STATES", "AgentMetrics", "BadAddress", "CollectorCounts", "MetricsServer", "parse_address"]
