"""The dashboard over the cluster flows dataset (`--cluster DIR`): every node's flows, followed live.

Each node's collector adds Parquet parts every couple of seconds; the views read the files
that exist when a query starts, so polling sees new flows without reopening anything. Only
when a table gets its first files (a node's first connections, say) are the views made again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from flowtui.interop.cluster import ClusterError, attach_cluster, tables_found
from flowtui.tui.sources import DataSource, SourceError, _stream_kind, close_connection


class ClusterSource(DataSource):
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._con = duckdb.connect(":memory:")
        self._lock = threading.Lock()
        self._busy: set[duckdb.DuckDBPyConnection] = set()
        self._found: frozenset[str] = frozenset()
        try:
            self._attach()
            self.stream_kind = _stream_kind(self._con)
        except (ClusterError, duckdb.Error) as exc:
            self._con.close()
            raise SourceError(str(exc)) from exc
        self.mode = "attach"
        self.label = f"cluster: {self.path} ({', '.join(self.nodes) or 'no nodes yet'})"

    def _attach(self) -> None:
        self._found = tables_found(self.path)
        self.nodes = attach_cluster(self._con, self.path)

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            if tables_found(self.path) != self._found:
                self._attach()
            cur = self._con.cursor()
            self._busy.add(cur)
        try:
            yield cur
        finally:
            with self._lock:
                self._busy.discard(cur)
            cur.close()

    def close(self) -> None:
        with self._lock:
            busy = list(self._busy)
        close_connection(self._con, busy)
