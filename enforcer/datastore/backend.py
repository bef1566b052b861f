"""The datastore interface the rest of flowtui uses, and how a datastore URL picks a backend.

Two backends keep the desired state: `Datastore` (a directory, `file:///var/lib/flowtui`, the
default) and `EtcdDatastore` (`etcd://HOST:PORT[,HOST:PORT...]`, `etcds://` for TLS). Callers see
only `DesiredState`: objects with revisions, validated writes that change everything or nothing,
and the live toggle. The etcd backend stores Calico's kinds where Calico's etcdv3 mode keeps them
(`etcd.py`); both keep rule ids and applied tables in a local directory (`ids_path` ...), and
etcd shares the rule ids' meanings between machines (`shared.py`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from enforcer.datastore.store import Catalog
from enforcer.datastore.records import ChangeSet, Preview, StoredObject
from enforcer.model import ResourceSet

DATASTORE_ENV = "FLOWTUI_DATASTORE"
PASSWORD_ENV = "FLOWTUI_ETCD_PASSWORD"  # etcd's password: from here or a file, never from the command line


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
    # rule ids shared by the machines of one store: a block lease (`ruleids.Lease`; None: this
    # machine alone numbers its ids), publishing new refs, and the table that resolves them all
    @property
    def id_lease(self) -> Any: ...
    def publish_rules(self, refs: Sequence[Any]) -> None: ...
    def rule_table(self) -> Any: ...


@dataclass(frozen=True)
class TLSFiles:
    """Client TLS for etcd: the CA that signed the servers, and this client's certificate/key."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def given(self) -> bool:
        return any((self.ca, self.cert, self.key))


@dataclass(frozen=True)
class Login:
    """etcd user/password authentication (etcd's `auth enable`): the client trades them for a
    token per member and trades again when a token expires."""

    user: str
    password: str = field(repr=False)


def read_password(path: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The password in file `path` (its first line), else $FLOWTUI_ETCD_PASSWORD, else None.
    BadDatastoreURL when the file cannot be read or is empty."""
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                line = handle.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadDatastoreURL(f"--etcd-password-file {path}: cannot read: {getattr(exc, 'strerror', None) or exc}"
                                  ) from None
        if not line:
            raise BadDatastoreURL(f"--etcd-password-file {path}: the first line is empty (it holds the password)")
        return line
    return (env if env is not None else os.environ).get(PASSWORD_ENV) or None


class BadDatastoreURL(ValueError):
    pass


@dataclass(frozen=True)
class DatastoreURL:
    scheme: str  # file | etcd
    path: str = ""  # file
    endpoints: tuple[tuple[str, int], ...] = ()  # etcd
    tls: bool = False
    user: str | None = None  # etcd://USER@HOST:PORT: the login's user (not part of the store's name)

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.path}"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.endpoints)
        return f"{'etcds' if self.tls else 'etcd'}://{hosts}"


def parse_datastore_url(text: str) -> DatastoreURL:
    """`file:///DIR`, a bare directory, or `etcd[s]://[USER@]HOST:PORT[,HOST:PORT...]`
    (BadDatastoreURL; a password in the URL is refused: it would show in `ps` and in logs)."""
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
    user = None
    if "@" in rest:
        user, _, rest = rest.rpartition("@")
        if ":" in user:
            raise BadDatastoreURL(f"etcd URL with a password: give it with --etcd-password-file FILE or "
                                  f"${PASSWORD_ENV}, never in the URL (it would show in ps and in logs)")
        if not user:
            raise BadDatastoreURL(f"{text!r}: empty user name before '@'")
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
    return DatastoreURL("etcd", endpoints=tuple(endpoints), tls=scheme == "etcds", user=user)


def open_datastore(url: str | None, state_dir: str | os.PathLike[str] | None = None,
                   tls: TLSFiles | None = None, login: Login | None = None) -> DesiredState:
    """The datastore `url` names (None: the directory `state_dir`). For etcd, `state_dir` keeps
    this machine's rule ids and applied tables. TLS files imply TLS (`etcds://`); `login`
    (or a user in the URL, with `login`'s password) logs in to etcd."""
    from enforcer.datastore.store import Datastore

    if not url:
        return Datastore(state_dir)
    parsed = parse_datastore_url(url)
    if parsed.scheme == "file":
        if tls is not None and tls.given:
            raise BadDatastoreURL("--etcd-ca/--etcd-cert/--etcd-key are for an etcd datastore, not a directory")
        if login is not None:
            raise BadDatastoreURL("--etcd-user is for an etcd datastore, not a directory")
        return Datastore(parsed.path)
    from enforcer.datastore.etcd import EtcdDatastore

    if parsed.user is not None:  # etcd://USER@...: the password still comes from a file or the environment
        if login is not None and login.user and login.user != parsed.user:
            raise BadDatastoreURL(f"two users given: {parsed.user!r} in the URL and {login.user!r} (--etcd-user)")
        login = Login(parsed.user, login.password if login is not None else "")
    if login is not None and not login.user:
        raise BadDatastoreURL("an etcd password without a user: give --etcd-user USER")
    if login is not None and not login.password:
        raise BadDatastoreURL(f"etcd user {login.user!r} needs a password: --etcd-password-file FILE "
                              f"or ${PASSWORD_ENV}")
    return EtcdDatastore(parsed, tls or TLSFiles(), state_dir, login=login)


__all__ = ["DATASTORE_ENV", "PASSWORD_ENV", "BadDatastoreURL", "DatastoreURL", "DesiredState", "Login", "TLSFiles",
           "open_datastore", "parse_datastore_url", "read_password"]
