"""The datastore interface the rest of flowtui uses, and how a datastore URL picks a backend.

Two backends keep the desired state: `Datastore` (a directory, `file:///var/lib/flowtui`, the
default) and `EtcdDatastore` (`etcd://HOST:PORT[,HOST:PORT...]`, `etcds://` for TLS). Callers see
only `DesiredState`: objects with revisions, validated writes that change everything or nothing,
and the live toggle. The etcd backend stores Calico's kinds where Calico's etcdv3 mode keeps them
(`etcd.py`); both keep rule ids and applied tables in a local directory (`ids_path` ...).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from enforcer.datastore.store import Catalog
from enforcer.datastore.records import ChangeSet, Preview, StoredObject
from enforcer.model import ResourceSet

DATASTORE_ENV = "FLOWTUI_DATASTORE"


class DesiredState(Protocol):
    """What `flowtui apply/get/delete/policy`, the reconciler, the TUI and what-if read and write."""

    path: Path  # local directory: rule ids, rules, applied tables (and, for files, the objects)

    @property
    def ids_path(self) -> Path: ...
    @property
    def rules_path(self) -> Path: ...
    @property
    def applied_dir(self) -> Path: ...
    @property
    def revision(self) -> int: ...
    def catalog(self) -> Catalog: ...
    def read_document(self, obj: StoredObject) -> str: ...
    def locked(self, exclusive: bool = True) -> AbstractContextManager[None]: ...
    def one_read(self) -> AbstractContextManager[None]: ...
    def objects(self, kind: str | None = None, *, name: str | None = None,
                namespace: str | None = None) -> list[StoredObject]: ...
    def object_documents(self, kind: str | None = None, *, name: str | None = None,
                         namespace: str | None = None) -> list[tuple[StoredObject, dict[str, Any]]]: ...
    def find(self, kind: str, name: str, namespace: str | None = None) -> StoredObject: ...
    def resources(self) -> ResourceSet: ...
    def apply_documents(self, paths: Sequence[str], namespace: str | None = None,
                        check: Callable[[Preview], object] | None = None) -> ChangeSet: ...
    def preview_documents(self, paths: Sequence[str], namespace: str | None = None) -> Preview: ...
    def delete(self, kind: str, name: str, namespace: str | None = None) -> ChangeSet: ...
    def delete_documents(self, paths: Sequence[str], namespace: str | None = None) -> ChangeSet: ...
    def set_disabled(self, kind: str, name: str, namespace: str | None, disabled: bool) -> ChangeSet: ...


@dataclass(frozen=True)
class TLSFiles:
    """Client TLS for etcd: the CA that signed the servers, and this client's certificate/key."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def given(self) -> bool:
        return any((self.ca, self.cert, self.key))


class BadDatastoreURL(ValueError):
    pass


@dataclass(frozen=True)
class DatastoreURL:
    scheme: str  # file | etcd
    path: str = ""  # file
    endpoints: tuple[tuple[str, int], ...] = ()  # etcd
    tls: bool = False

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.path}"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.endpoints)
        return f"{'etcds' if self.tls else 'etcd'}://{hosts}"


def parse_datastore_url(text: str) -> DatastoreURL:
    """`file:///DIR`, a bare directory, or `etcd[s]://HOST:PORT[,HOST:PORT...]` (BadDatastoreURL)."""
    text = text.strip()
    if "://" not in text:
        if not text:
            raise BadDatastoreURL("empty datastore URL")
        return DatastoreURL("file", os.path.abspath(text))
    scheme, _, rest = text.partition("://")
    if scheme == "file":
        if not rest.startswith("/"):
            raise BadDatastoreURL(f"{text!r}: a file datastore URL names an absolute directory (file:///var/lib/flowtui)")
        return DatastoreURL("file", rest.rstrip("/") or "/")
    if scheme not in ("etcd", "etcds"):
        raise BadDatastoreURL(f"{text!r}: unknown datastore scheme {scheme!r} (use file://, etcd:// or etcds://)")
    endpoints = []
    for part in rest.rstrip("/").split(","):
        try:
            split = urlsplit(f"//{part}")
            host, port = split.hostname, split.port
        except ValueError as exc:
            raise BadDatastoreURL(f"{text!r}: endpoint {part!r}: {exc}") from None
        if not host or split.path or split.query:
            raise BadDatastoreURL(f"{text!r}: endpoint {part!r} is not HOST:PORT")
        endpoints.append((host, port or 2379))
    return DatastoreURL("etcd", endpoints=tuple(endpoints), tls=scheme == "etcds")


def open_datastore(url: str | None, state_dir: str | os.PathLike[str] | None = None,
                   tls: TLSFiles | None = None) -> DesiredState:
    """The datastore `url` names (None: the directory `state_dir`). For etcd, `state_dir` keeps
    this machine's rule ids and applied tables. TLS files imply TLS (`etcds://`)."""
    from enforcer.datastore.store import Datastore

    if not url:
        return Datastore(state_dir)
    parsed = parse_datastore_url(url)
    if parsed.scheme == "file":
        if tls is not None and tls.given:
            raise BadDatastoreURL("--etcd-ca/--etcd-cert/--etcd-key are for an etcd datastore, not a directory")
        return Datastore(parsed.path)
    from enforcer.datastore.etcd import EtcdDatastore

    return EtcdDatastore(parsed, tls or TLSFiles(), state_dir)


__all__ = ["DATASTORE_ENV", "BadDatastoreURL", "DatastoreURL", "DesiredState", "TLSFiles",
           "open_datastore", "parse_datastore_url"]
