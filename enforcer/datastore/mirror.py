"""What an agent knows of etcd between reads: the keys it reads, kept current by its watch.

    mirror = Mirror.listed(datastore.kv)          # one list: every key of the desired state
    for event in datastore.kv.watch(..., mirror.revision + 1):
        mirror.apply(event)                       # a put or a delete, as etcd ordered them
    with datastore.one_read(mirror.read()):       # the reconciler reads the mirror, not etcd
        reconciler.reconcile([node])

Felix does the same (libcalico-go's watchersyncer keeps a cache fed by the watch): an event
then costs no round trip to etcd and no decoding of every key again, and the eight agents of a
lab do not all list the whole store at once after every write. The mirror holds exactly what a
list at `revision` returns: the watch resumes right after the list, so every change after it
arrives, in order. A caller drops the mirror (and lists again) whenever the watch breaks.
"""

from __future__ import annotations

from collections.abc import Mapping

from enforcer.datastore.etcd import DESIRED_PREFIXES, EtcdKV, KVPair, WatchEvent

PREFIXES = DESIRED_PREFIXES  # what `EtcdDatastore` reads


class Mirror:
    def __init__(self, revision: int, kvs: Mapping[str, KVPair]) -> None:
        self.revision = revision
        self._listed = revision
        self._kvs = {k: v for k, v in kvs.items() if k.startswith(PREFIXES)}

    @classmethod
    def listed(cls, kv: EtcdKV) -> Mirror:
        return cls(*kv.list(*PREFIXES))

    def apply(self, event: WatchEvent) -> bool:
        """One change from the watch (one at or before the list's revision is ignored: the list
        held it). A transaction's changes share one revision: each is applied. True when what a
        read returns changed."""
        if event.kv.revision <= self._listed:
            return False
        self.revision = max(self.revision, event.kv.revision)
        if not event.kv.key.startswith(PREFIXES):
            return False  # the watch's ranges also span keys between the prefixes
        if event.kind == "delete":
            self._kvs.pop(event.kv.key, None)
        else:
            self._kvs[event.kv.key] = event.kv
        return True

    def read(self) -> tuple[int, Mapping[str, KVPair]]:
        """(revision, every key) as `EtcdKV.list` of the desired state's prefixes would return them now."""
        return self.revision, self._kvs


__all__ = ["PREFIXES", "Mirror"]
