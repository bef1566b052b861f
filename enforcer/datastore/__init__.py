"""The desired state: what `flowtui apply` stores and the reconciler enforces (a directory, or etcd).

    ds = Datastore()                                 # $FLOWTUI_HOME or /var/lib/flowtui
    ds.apply_documents(["policies/"])                # validated first; LoadError changes nothing
    ds.set_disabled("gnp", "deny-db", None, True)    # the live toggle (an annotation)
    res = ds.resources()                             # a ResourceSet; Policy.revision = object revision
    ds.delete("gnp", "deny-db")

Objects are keyed by (kind, namespace, name) and stored as the documents the user wrote; the
loader reads them back, so what is stored is exactly what `flowtui check` accepts. Writers
serialise on a file lock; every write is atomic. See `store.py` for the directory layout, and
`kinds.py` for the kind names users may type (`gnp`, `np`, `knp`, `pods`, ...).

`open_datastore(url)` picks the backend from a datastore URL (`file:///var/lib/flowtui`, or
`etcd://HOST:PORT[,...]` for `etcd.EtcdDatastore`, Calico's etcdv3 key layout); both satisfy
`DesiredState` (`backend.py`).
"""

from enforcer.datastore.backend import (
    DATASTORE_ENV,
    PASSWORD_ENV,
    BadDatastoreURL,
    DatastoreURL,
    DesiredState,
    Login,
    TLSFiles,
    open_datastore,
    parse_datastore_url,
    read_password,
)
from enforcer.datastore.kinds import KIND_INFO, KindInfo, ObjectKey, UnknownKind, resolve_kind, resolve_kinds
from enforcer.datastore.store import (
    DEFAULT_HOME,
    HOME_ENV,
    Ambiguous,
    Catalog,
    Change,
    ChangeSet,
    DamagedDatastore,
    Datastore,
    DatastoreError,
    NotFound,
    Preview,
    StoredObject,
    atomic_write,
    default_home,
)

__all__ = [
    "DATASTORE_ENV",
    "PASSWORD_ENV",
    "BadDatastoreURL",
    "Login",
    "read_password",
    "DatastoreURL",
    "DesiredState",
    "TLSFiles",
    "open_datastore",
    "parse_datastore_url",
    "DEFAULT_HOME",
    "HOME_ENV",
    "KIND_INFO",
    "Ambiguous",
    "Catalog",
    "Change",
    "ChangeSet",
    "DamagedDatastore",
    "Datastore",
    "DatastoreError",
    "KindInfo",
    "NotFound",
    "ObjectKey",
    "Preview",
    "StoredObject",
    "UnknownKind",
    "atomic_write",
    "default_home",
    "resolve_kind",
    "resolve_kinds",
]
