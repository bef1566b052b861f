"""One node's collector for the cluster flows dataset: what `flowtui collect --node` and
`flowtui agent --flows-dir` run (the agent in a thread beside its reconcile loop).

It reads the node's own namespace only (or the host's, for an agent with `--host`), names
events from the datastore the agent enforces (its rule table on this machine and its
resources, re-read when the datastore's revision moves), keeps a local store of its own
(`local_store`: the collector's crash recovery and `flowtui status` need one), and appends its
rows to the dataset (`flowtui.collector.dataset`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from enforcer.datastore import DesiredState
from enforcer.model import ResourceSet
from flowtui.collector.config import CollectorConfig
from flowtui.collector.service import Collector

log = logging.getLogger(__name__)


def local_store(home: str | Path, lab_id: str | None, node: str) -> Path:
    """The node collector's own DuckDB store: on this machine (not in a shared flows directory),
    one per lab and node, so several nodes of a lab collect side by side."""
    return Path(home) / "collector" / f"{lab_id or 'host'}-{node}.duckdb"


def datastore_loader(ds: DesiredState, lab_id: str | None) -> Callable[[], ResourceSet]:
    """The datastore's resources (with the lab's addresses when reading a lab), as `apply` sees them."""

    def load() -> ResourceSet:
        resources = ds.resources()
        if lab_id:
            from enforcer.lab import lab_resources, plan_lab

            resources = lab_resources(resources, plan_lab(resources, lab_id))
        return resources

    return load


def node_config(ds: DesiredState, *, node: str, netns: str | None, flows_dir: Path, db: Path,
                lab_id: str | None, **options: Any) -> CollectorConfig:
    """A collector of one node that also appends to the dataset in `flows_dir`."""
    return CollectorConfig(
        db=db,
        namespaces=(netns,),
        node=node,
        flows_dir=flows_dir,
        rules_path=ds.rules_path,
        load_resources=datastore_loader(ds, lab_id),
        resource_paths=(str(ds.rules_path),),
        resources_stamp=lambda: ds.revision,
        **options,
    )


class NodeFlows:
    """A node collector running in a thread: `start()` returns once its sockets are bound."""

    def __init__(self, cfg: CollectorConfig) -> None:
        self.collector = Collector(cfg)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.collector.start()
        self._thread = threading.Thread(target=self._run, name="flowtui node flows", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.collector.run(stop=self._stop)
        except RuntimeError:
            log.exception("the node's flow collector failed (what it collected until then is written)")

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.collector.summary()
