"""The collector's configuration, and one reading point (a namespace's sockets)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from enforcer.model import ResourceSet
from flowtui.collector.conntrack import ConntrackSocket
from flowtui.collector.nflog import NflogConfig, NflogSocket
from flowtui.store.duckdb_store import Retention


@dataclass
class CollectorConfig:
    """Everything `Collector` needs; the defaults are what `flowtui collect` uses."""

    db: Path
    namespaces: tuple[str | None, ...] = (None,)  # None = this process's namespace (the host)
    nflog: NflogConfig = field(default_factory=NflogConfig)
    rules_path: Path | None = None  # default: rules.jsonl next to the database
    load_resources: Callable[[], ResourceSet] | None = None
    resource_paths: tuple[str, ...] = ()  # re-run load_resources when these change
    bucket_seconds: float = 15.0  # flow time buckets (Calico's Goldmane uses 15 s)
    keep_events: bool = True  # raw events as well as flows
    conntrack: bool = True  # DESTROY events: packets and bytes of allowed connections
    counters: bool = True  # poll nft counters of `ft:` rules (rate limiting, tail loss)
    counters_interval: float = 5.0
    batch_seconds: float = 1.0  # insert at least this often
    max_batch_events: int = 131_072  # rows per events insert, >= one DuckDB row group (122,880)
    buffer_bytes: int = 4 << 20  # the reader's pool: 32 x 4 MiB holds ~650k events of backlog
    buffers: int = 32
    handoff_seconds: float = 0.05  # a partly filled buffer goes to an idle writer after this
    snapshot_interval: float | None = 5.0  # read-only copy for readers (None: no snapshots)
    retention: Retention = field(default_factory=Retention)
    retention_interval: float = 60.0
    stats_interval: float = 1.0
    duckdb_threads: int | None = None  # DuckDB's own default when None
    nflog_socket: Callable[[str | None, NflogConfig], NflogSocket] = NflogSocket  # injectable (tests)
    slow_writer_seconds: float = 0.0  # tests and benchmarks: extra time per batch, a slow disk
    clock_offset_seconds: float = 0.0  # tests and benchmarks: event and bucket times this far ahead (an hour's end)
    # Node mode (the cluster flows dataset, `flowtui.collector.dataset`): one namespace, one node.
    node: str | None = None  # the node's name (default: from the namespace, or the host name)
    flows_dir: Path | None = None  # also append this node's rows to the dataset there
    flush_seconds: float = 2.0  # dataset parts at least this often (a row is <= ~3 s behind live)
    dataset_give_up_seconds: float = 30.0  # retry an unwritable part this long, then count it lost
    # Re-load resources when this value changes (a datastore without a file to watch: etcd's revision)
    resources_stamp: Callable[[], object] | None = None

    def rules_file(self) -> Path:
        return self.rules_path if self.rules_path is not None else Path(self.db).parent / "rules.jsonl"


@dataclass
class Source:
    index: int
    source_id: int
    netns: str | None
    node: str
    nflog: NflogSocket
    conntrack: ConntrackSocket | None = None
