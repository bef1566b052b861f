"""The datastore: the desired state on disk, with revisions, a lock and atomic writes.

Layout of the directory (`/var/lib/flowtui`, or `$FLOWTUI_HOME`, or the CLI's `--state-dir`):

    lock                      flock(2) target: writers take it exclusively, readers shared
    state.json                the index: datastore revision and every object's key, revision,
                              creation revision, update time, source, document file and the
                              file's sha256 (checked on every read: damage is refused, never loaded)
    objects/<apiVersion>/<Kind>/<namespace or _>/<name>@<revision>.yaml
                              one document per object, as written (re-dumped YAML); names over
                              120 bytes are cut and get a hash suffix (`_file_stem`)
    toggles.jsonl             live toggles since state.json was last written: one line per toggle,
                              the toggled object's index entry and the revision it made (`journal.py`)
    ids.jsonl                 rule id allocations (`enforcer.ruleids.IdAllocator`)
    rules.jsonl               id -> rule, append-only (`enforcer.ruleids.RuleTable`)
    applied/<node>.json       the table last applied to each node (`enforcer.reconcile`)

A change writes the new document files (new names: the revision is part of the name, each
fsynced, then their directories), then replaces `state.json` (temp file, fsync, rename, directory
fsync: the commit point), then removes the files it superseded. A crash at any point leaves the
previous or the new state, never a mix; stray files are swept by the next write. A missing
`state.json` is an empty datastore only when no document exists: beside documents it is damage
(`DamagedDatastore`; `integrity.repair` rebuilds it), so no write can sweep them. Files are 0600
and directories 0700 whatever the umask (`files.py`).

A live toggle is one fsynced line appended to `toggles.jsonl` (its commit point), not a rewrite
of the index: O(1) in the number of objects (a 2,000-object index is ~600 KB to write and fsync; a
line is one block). Readers apply the lines over the index; lines at or below the index's revision
were folded into it already (every other write folds them, then removes the journal), and a torn
last line is a toggle that never returned. Past `JOURNAL_FOLD` lines a toggle folds them itself.

Revisions: the datastore revision goes up by one for every write that changes something; each
changed object gets that revision (so an object's revision is unique over time, as Kubernetes'
resourceVersion is). Each object also keeps the revision of its last change other than a live
toggle (its generation, as Kubernetes' metadata.generation): loaded policies carry that as
`Policy.revision`, so a rule id keyed on it is never reused for different rules, and a toggle
changes neither the policy's rule ids nor the compiled layout (only its gate).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from enforcer.datastore.files import FILE_MODE, atomic_write, fsync_dir, make_dirs
from enforcer.datastore.journal import Journal, JournalDamage, file_stamp
from enforcer.datastore.kinds import BY_MODEL_KIND, KIND_INFO, KindInfo, ObjectKey, resolve_kinds
from enforcer.datastore.records import Change, ChangeSet, Preview, StoredObject
from enforcer.datastore.sources import (
    Document,
    annotation,
    documents,
    dump,
    parse_stored,
    read_sources,
    skipped_in,
    with_annotation,
)
from enforcer.loader import LoadError, Problem, load_text
from enforcer.loader.metadata import DISABLED_ANNOTATION
from enforcer.model import FelixConfiguration, ResourceSet

DEFAULT_HOME = "/var/lib/flowtui"
HOME_ENV = "FLOWTUI_HOME"
FORMAT = 1
INDEX = "state.json"
JOURNAL = "toggles.jsonl"
JOURNAL_FOLD = 256  # toggles kept beside the index before one folds them into it
LOCK = "lock"
OBJECTS = "objects"
_KIND_ORDER = {k.model_kind: i for i, k in enumerate(KIND_INFO)}


def default_home() -> Path:
    """`$FLOWTUI_HOME` if set, else /var/lib/flowtui."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME)


class DatastoreError(Exception):
    """The datastore cannot do what was asked (the message says why); nothing was changed."""


class NotFound(DatastoreError):
    pass


class Ambiguous(DatastoreError):
    pass


@dataclass(frozen=True)
class Catalog:
    """The index at one revision: every stored object by key. `layout` is the revision of the
    last write that was not a live toggle: equal layouts mean equal stored objects but for their
    toggles (what the reconciler compiles is then the same)."""

    revision: int
    objects: Mapping[ObjectKey, StoredObject]
    layout: int = 0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


NAME_BYTES = 120  # longer names are cut and get a hash suffix: file names stay far below NAME_MAX


def _file_stem(name: str) -> str:
    """`name`, or for a long one (Kubernetes allows 253 characters; NAME_MAX is 255 bytes, and the
    revision and the temporary file's suffixes come on top) its first characters and a hash of
    the whole: readable, bounded, unique. The index names every file, so stores written with
    full long names are read as they are."""
    if len(name.encode()) <= NAME_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{name.encode()[:NAME_BYTES - 17].decode(errors='ignore')}~{digest}"


def _object_file(info: KindInfo, key: ObjectKey, revision: int) -> str:
    folder = f"{OBJECTS}/{info.api_version.replace('/', '_')}/{info.kind}/{_file_stem(key.namespace or '_')}"
    return f"{folder}/{_file_stem(key.name)}@{revision}.yaml"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DamagedDatastore(DatastoreError):
    """Stored state that is missing, truncated or contradicts itself: refused, never guessed."""


def parse_index(data: bytes, path: Path) -> Catalog:
    """state.json, strictly: DamagedDatastore naming the file (and the entry) for anything else."""
    try:
        raw = json.loads(data)
    except ValueError as exc:  # UnicodeDecodeError is one
        raise DamagedDatastore(f"{path} is damaged ({len(data)} bytes, not JSON: {exc}); `flowtui datastore "
                               f"repair` rebuilds it from the stored documents") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise DamagedDatastore(f"{path}: unknown format {found!r} (expected {FORMAT})")
    entries = raw.get("objects")
    if not isinstance(entries, list):
        raise DamagedDatastore(f"{path}: no objects list")
    objects: dict[ObjectKey, StoredObject] = {}
    for number, entry in enumerate(entries):
        try:
            obj = StoredObject.from_json(entry)
            if obj.key.kind not in BY_MODEL_KIND or not isinstance(obj.key.name, str) or not obj.key.name:
                raise ValueError(f"kind {obj.key.kind!r}, name {obj.key.name!r}")
            if not isinstance(obj.file, str) or not obj.file.startswith(OBJECTS + "/") or ".." in obj.file.split("/"):
                raise ValueError(f"file {obj.file!r} is not under {OBJECTS}/")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DamagedDatastore(f"{path}: object #{number + 1} is damaged ({exc!r})") from exc
        if objects.setdefault(obj.key, obj) is not obj:
            raise DamagedDatastore(f"{path}: {obj.key} is listed twice")
    try:
        revision = int(raw["revision"])
        layout = int(raw.get("layout", revision))
    except (KeyError, TypeError, ValueError) as exc:
        raise DamagedDatastore(f"{path}: no valid revision ({exc!r})") from exc
    return Catalog(revision, objects, layout)


class LocalRecords:
    """A datastore's records on this machine, in directory `path`: the rule ids and what each node
    has applied, and the lock that every user of them on this machine takes (flock; re-entrant in
    one thread). The directory datastore keeps its documents there too; etcd keeps none."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mutex = threading.RLock()
        self._depth = 0
        self._exclusive = False

    @property
    def ids_path(self) -> Path:
        return self.path / "ids.jsonl"

    @property
    def rules_path(self) -> Path:
        return self.path / "rules.jsonl"

    @property
    def applied_dir(self) -> Path:
        return self.path / "applied"

    # ---- rule ids shared with other machines (a remote store overrides these) ------------------

    @property
    def id_lease(self) -> Any:
        """`ruleids.Lease` when rule ids come from blocks leased from a shared store; None here."""
        return None

    def publish_rules(self, refs: Sequence[Any]) -> None:
        """Give other machines new rule refs before any kernel logs their ids (here: nobody)."""

    def rule_table(self) -> Any:
        """Every rule id this machine can resolve (`ruleids.RuleTable`): rules.jsonl, and for a
        shared store what the other machines published."""
        from enforcer.ruleids import RuleTable

        return RuleTable.load(self.rules_path)

    @contextmanager
    def one_read(self) -> Iterator[None]:
        """Reads in the block may share one read of the store (a remote store overrides this:
        one round trip instead of one per call); here every read is local and cheap."""
        yield

    # ---- locking -----------------------------------------------------------------------------

    @contextmanager
    def locked(self, exclusive: bool = True) -> Iterator[None]:
        """Hold the datastore lock (re-entrant in one thread; an exclusive hold covers shared)."""
        with self._mutex:
            if self._depth:
                if exclusive and not self._exclusive:
                    raise RuntimeError("cannot take the datastore lock exclusively while holding it shared")
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            fd = self._open_lock(exclusive)
            try:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                self._depth, self._exclusive = 1, exclusive
                yield
            finally:
                self._depth, self._exclusive = 0, False
                if fd is not None:
                    os.close(fd)  # releases the flock

    def _open_lock(self, exclusive: bool) -> int | None:
        lock = self.path / LOCK
        if exclusive:
            try:
                make_dirs(self.path)
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
                os.fchmod(fd, FILE_MODE)
                return fd
            except OSError as exc:
                raise DatastoreError(f"cannot write the datastore {self.path}: {exc.strerror or exc}") from exc
        try:
            return os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # nothing was ever stored here
        except OSError as exc:
            raise DatastoreError(f"cannot read the datastore {self.path}: {exc.strerror or exc}") from exc


class Datastore(LocalRecords):
    """The desired state in directory `path` (default: `default_home()`). Safe to share between
    threads and between processes (flock); every public method takes the lock it needs."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(Path(path) if path is not None else default_home())
        self._cache: dict[str, ResourceSet] = {}
        # The index with the journal's toggles, and the stamps ((inode, mtime, size) of state.json,
        # (inode, mtime, size) of the journal) it was read at; `_base`: state.json alone.
        self._index: tuple[tuple[tuple[int, int, int], tuple[int, int, int] | None], Catalog] | None = None
        self._base: Catalog | None = None
        self._journal_lines = 0  # lines in the journal (the toggles not folded into state.json)

    # ---- reading -----------------------------------------------------------------------------

    def _read_index(self) -> Catalog:
        """The index with the toggle journal over it, parsed again only when state.json was
        replaced (every commit renames a new file over it, so its inode changes) or the journal
        grew: live toggles read it on every run. A missing index is emptiness only when no
        document exists either; otherwise it is damage (DamagedDatastore), never an empty catalog
        a write would then sweep the documents from."""
        path = self.path / INDEX
        try:
            st = path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            journal = file_stamp(self.path / JOURNAL)
            if self._index is not None and self._index[0] == (stamp, journal):
                return self._index[1]
            if self._index is not None and self._index[0][0] == stamp and self._base is not None:
                index = self._base  # only the journal changed: state.json is not parsed again
            else:
                index = parse_index(path.read_bytes(), path)
        except FileNotFoundError:
            found = self.document_files()
            if found:
                raise DamagedDatastore(
                    f"{path} is missing but {len(found)} stored documents exist under {self.path / OBJECTS}: the "
                    f"index is lost, nothing is read or written until `flowtui datastore repair` rebuilds it "
                    f"from them") from None
            if any(_size(p) for p in (self.ids_path, self.rules_path)):  # only ever written after a commit
                raise DamagedDatastore(
                    f"{path} is missing but {self.rules_path.name} and {self.ids_path.name} say objects were "
                    f"stored here: the index is lost (`flowtui datastore repair` rebuilds it)") from None
            return Catalog(0, {}, 0)
        except OSError as exc:
            raise DatastoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
        self._base = index
        try:
            revision, objects, self._journal_lines = Journal(self.path / JOURNAL).over(index.revision, index.objects)
        except JournalDamage as exc:
            raise DamagedDatastore(f"{exc}; `flowtui datastore repair` rebuilds the index from the documents "
                                   f"(the journal's toggles are then lost)") from exc
        toggled = index if revision == index.revision else Catalog(revision, objects, index.layout)
        self._index = ((stamp, journal), toggled)
        return toggled

    def document_files(self) -> list[str]:
        """Every file under objects/, relative to the datastore (stray temporary files included)."""
        root = self.path / OBJECTS
        return sorted(os.path.relpath(os.path.join(folder, f), self.path)
                      for folder, _dirs, files in os.walk(root) for f in files)

    def read_document(self, obj: StoredObject) -> str:
        """The text of `obj`'s document, verified against the index's checksum (DamagedDatastore
        naming the file when it was truncated, emptied, replaced or is not UTF-8)."""
        path = self.path / obj.file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DamagedDatastore(f"cannot read stored document {path} ({obj.key}): {exc.strerror or exc}; "
                                   f"re-apply it (last from {obj.source}) or see `flowtui datastore check`") from exc
        if obj.sha256 and _digest(data) != obj.sha256:
            raise DamagedDatastore(f"stored document {path} ({obj.key}) is damaged: {len(data)} bytes that are not "
                                   f"what was stored (checksum differs); re-apply it (last from {obj.source}) or "
                                   f"see `flowtui datastore check`")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DamagedDatastore(f"stored document {path} ({obj.key}) is not UTF-8: {exc}") from exc
        if not obj.sha256:  # written before checksums: the document must at least be the object
            try:
                body = parse_stored(text, str(path))
            except ValueError as exc:
                raise DamagedDatastore(f"stored document {path} ({obj.key}) is damaged: {exc}") from exc
            meta = body.get("metadata")
            if body.get("kind") != obj.kind or not isinstance(meta, dict) or meta.get("name") != obj.key.name:
                raise DamagedDatastore(f"stored document {path} is not {obj.key} (damaged or replaced)")
        return text

    def _document(self, obj: StoredObject) -> dict[str, Any]:
        """The stored document, with the live toggle's annotation as the index says (a toggle
        changes the index only, not the document file)."""
        path = self.path / obj.file
        try:
            body = parse_stored(self.read_document(obj), str(path))
        except ValueError as exc:
            raise DamagedDatastore(f"stored document {path} ({obj.key}) is damaged: {exc}") from exc
        if obj.info.is_policy and (annotation(body, DISABLED_ANNOTATION) == "true") != obj.disabled:
            body = with_annotation(body, DISABLED_ANNOTATION, "true" if obj.disabled else None)
        return body

    def catalog(self) -> Catalog:
        """The index as it is now (re-read only when another write replaced it)."""
        with self.locked(exclusive=False):
            return self._read_index()

    @property
    def revision(self) -> int:
        with self.locked(exclusive=False):
            return self._read_index().revision

    def objects(
        self, kind: str | None = None, *, name: str | None = None, namespace: str | None = None
    ) -> list[StoredObject]:
        """Stored objects, by kind (any name of it, or `policy`), then namespace, then name."""
        kinds = {k.model_kind for k in resolve_kinds(kind)} if kind else None
        with self.locked(exclusive=False):
            found = self._read_index().objects.values()
        return sorted(
            (o for o in found if (kinds is None or o.key.kind in kinds) and (name is None or o.key.name == name)
             and (namespace is None or not o.info.namespaced or o.key.namespace == namespace)),
            key=lambda o: (_KIND_ORDER.get(o.key.kind, 99), o.key.namespace or "", o.key.name),
        )

    def object_documents(
        self, kind: str | None = None, *, name: str | None = None, namespace: str | None = None
    ) -> list[tuple[StoredObject, dict[str, Any]]]:
        """`objects()` with each one's stored document."""
        with self.locked(exclusive=False):
            return [(o, self._document(o)) for o in self.objects(kind, name=name, namespace=namespace)]

    def find(self, kind: str, name: str, namespace: str | None = None) -> StoredObject:
        """The one object of that kind (any name of it, or `policy`) and name; NotFound or
        Ambiguous otherwise. `namespace` None means any namespace."""
        with self.locked(exclusive=False):
            return self._find(self._read_index(), kind, name, namespace)

    def _find(self, index: Catalog, kind: str, name: str, namespace: str | None) -> StoredObject:
        kinds = resolve_kinds(kind)
        wanted = {k.model_kind for k in kinds}
        if all(not k.namespaced or namespace is not None for k in kinds):  # every key known: look up
            wanted_keys = (ObjectKey(k.model_kind, namespace if k.namespaced else None, name) for k in kinds)
            matches = [o for key in wanted_keys if (o := index.objects.get(key)) is not None]
        else:
            matches = [
                o for o in index.objects.values()
                if o.key.kind in wanted and o.key.name == name
                and (namespace is None or not o.info.namespaced or o.key.namespace == namespace)
            ]
        if not matches:
            where = f" in namespace {namespace}" if namespace and any(k.namespaced for k in kinds) else ""
            raise NotFound(f"{kind} {name!r} not found{where}")
        if len(matches) > 1:
            keys = ", ".join(sorted(str(o.key) for o in matches))
            raise Ambiguous(f"{kind} {name!r} is ambiguous: {keys} (give the kind or -n NAMESPACE)")
        return matches[0]

    def resources(self) -> ResourceSet:
        """Every stored object loaded through the loader, policies with their revision."""
        with self.locked(exclusive=False):
            index = self._read_index()
            res = self._load(index.objects.values(), {})
        live = {str(self.path / o.file) for o in index.objects.values()}
        for stale in self._cache.keys() - live:
            del self._cache[stale]
        return res

    def _load(self, objects: Iterable[StoredObject], pending: dict[str, str]) -> ResourceSet:
        """Load `objects` (documents from `pending` or from disk); LoadError if any is invalid."""
        parts: list[tuple[StoredObject, ResourceSet]] = []
        problems: list[Problem] = []
        for obj in sorted(objects, key=lambda o: o.order):
            path = str(self.path / obj.file)
            res = None if obj.file in pending else self._cache.get(path)
            if res is None:
                text = pending[obj.file] if obj.file in pending else self.read_document(obj)
                try:
                    res = load_text(text, path)
                except LoadError as err:
                    problems += err.problems
                    continue
                if obj.file not in pending:
                    self._cache[path] = res
            parts.append((obj, res))
        if problems:
            raise LoadError(problems)
        return _merge(parts)

    # ---- writing -----------------------------------------------------------------------------

    def _commit(self, revision: int, objects: dict[ObjectKey, StoredObject], files: dict[str, str],
                superseded: Sequence[str] | None = None, layout: int | None = None) -> None:
        """Write `files`, then the index (the commit point), then remove what the index no longer
        names: `superseded` files when the caller knows them, else by sweeping the directory; and
        the toggle journal, whose toggles `objects` holds (lines at or below `revision` are folded).
        `layout`: the layout revision to keep (live toggles); default: this revision."""
        layout = revision if layout is None else layout
        for rel, text in files.items():
            atomic_write(self.path / rel, text)
        for folder in {(self.path / rel).parent for rel in files}:
            fsync_dir(folder)  # the documents' names are durable before the index names them
        ordered = sorted(objects.values(), key=lambda o: o.order)
        text = (f'{{"format": {FORMAT}, "revision": {revision}, "layout": {layout}, "objects": [\n'
                + ",\n".join(json.dumps(o.to_json()) for o in ordered) + "\n]}\n")
        atomic_write(self.path / INDEX, text, sync_dir=True)
        Journal(self.path / JOURNAL).remove()  # after the commit: its lines are in the index now
        st = (self.path / INDEX).stat()
        self._base = Catalog(revision, objects, layout)
        self._index = (((st.st_ino, st.st_mtime_ns, st.st_size), None), self._base)
        self._journal_lines = 0
        if superseded is None:
            self._sweep({o.file for o in objects.values()})
            return
        for rel in superseded:
            try:
                os.unlink(self.path / rel)
            except FileNotFoundError:
                pass

    def replace_index(self, revision: int, objects: Mapping[ObjectKey, StoredObject]) -> None:
        """Commit `objects` as the whole index at `revision` (repair): no document is written or
        removed, the documents must already be there."""
        with self.locked():
            self._index = self._base = None
            # Toggles the lost index held are lost with it (the documents do not carry them);
            # the repaired revision may be lower than the journal's, so it goes first.
            Journal(self.path / JOURNAL).remove()
            self._commit(revision, dict(objects), {}, superseded=())

    def _sweep(self, referenced: set[str]) -> None:
        """Remove document files the index no longer names (superseded, or left by a crash)."""
        root = self.path / OBJECTS
        for folder, _dirs, files in os.walk(root, topdown=False):
            for file in files:
                rel = os.path.relpath(os.path.join(folder, file), self.path)
                if rel not in referenced:
                    os.unlink(os.path.join(folder, file))
            if folder != str(root) and not os.listdir(folder):
                os.rmdir(folder)

    def _plan_apply(
        self, docs: Sequence[Document]
    ) -> tuple[ChangeSet, dict[ObjectKey, StoredObject], dict[str, str], ResourceSet]:
        index = self._read_index()
        revision = index.revision + 1
        objects = dict(index.objects)
        files: dict[str, str] = {}
        changes: list[Change] = []
        now = _now()
        for position, doc in enumerate(docs):
            old = index.objects.get(doc.key)
            body = doc.body
            if old is not None:
                stored = self._document(old)
                toggle = annotation(stored, DISABLED_ANNOTATION)
                if toggle is not None and annotation(body, DISABLED_ANNOTATION) is None:
                    body = with_annotation(body, DISABLED_ANNOTATION, toggle)  # the live toggle survives
                if stored == body:
                    changes.append(Change(doc.key, "unchanged", old.revision))
                    continue
            rel = _object_file(doc.info, doc.key, revision)
            files[rel] = dump(body)
            digest = _digest(files[rel].encode("utf-8"))
            created = old.created if old is not None else revision
            disabled = annotation(body, DISABLED_ANNOTATION) == "true"
            objects[doc.key] = StoredObject(doc.key, doc.info.api_version, doc.info.kind, revision, created, now, rel,
                                            str(doc.origin), disabled, old.position if old else position,
                                            sha256=digest)
            changes.append(Change(doc.key, "configured" if old is not None else "created", revision))
        resources = self._load(objects.values(), files)  # the merged result must load
        return ChangeSet(revision if files else index.revision, tuple(changes)), objects, files, resources

    def apply_documents(
        self, paths: Sequence[str], namespace: str | None = None, check: Callable[[Preview], object] | None = None
    ) -> ChangeSet:
        """Store the objects of `paths` (files, directories, `-`), replacing same-key objects.

        Validates the input and then the merged result (stored objects plus these) before writing
        anything: any problem raises LoadError and nothing changes. `check`, given the merged
        result under the lock, may raise to refuse it too (the CLI plans the lab with it, so that
        nothing is stored that the lab or the kernel would refuse). A policy disabled with
        `set_disabled` stays disabled unless the new document sets `flowtui.dev/disabled` itself.
        `namespace`: kubectl's `-n` (see `enforcer.loader.load_paths`).
        """
        sources = read_sources(paths)
        docs = documents(sources, namespace=namespace)
        with self.locked():
            changes, objects, files, resources = self._plan_apply(docs)
            if files and check is not None:
                check(Preview(changes, resources, self._sources(objects)))
            if files:
                self._commit(changes.revision, objects, files)
            return replace(changes, skipped=skipped_in(sources))

    def preview_documents(self, paths: Sequence[str], namespace: str | None = None) -> Preview:
        """What `apply_documents(paths)` would do and the resources it would leave; no writes."""
        sources = read_sources(paths)
        docs = documents(sources, namespace=namespace)
        with self.locked(exclusive=False):
            changes, objects, _, resources = self._plan_apply(docs)
            return Preview(replace(changes, skipped=skipped_in(sources)), resources, self._sources(objects))

    def _sources(self, objects: Mapping[ObjectKey, StoredObject]) -> dict[str, str]:
        return {str(self.path / o.file): o.source for o in objects.values()}

    def delete(self, kind: str, name: str, namespace: str | None = None) -> ChangeSet:
        """Remove one object (NotFound / Ambiguous otherwise). Nothing cascades."""
        with self.locked():
            index = self._read_index()
            obj = self._find(index, kind, name, namespace)
            objects = {k: o for k, o in index.objects.items() if k != obj.key}
            self._commit(index.revision + 1, objects, {})
            return ChangeSet(index.revision + 1, (Change(obj.key, "deleted", index.revision + 1),))

    def delete_documents(self, paths: Sequence[str], namespace: str | None = None) -> ChangeSet:
        """Remove the objects named in `paths` (only apiVersion, kind and metadata are needed);
        absent ones are reported as "not found". `namespace`: kubectl's `-n`."""
        docs = documents(read_sources(paths), validate=False, namespace=namespace)
        with self.locked():
            index = self._read_index()
            revision = index.revision + 1
            objects = dict(index.objects)
            changes = []
            for doc in docs:
                if objects.pop(doc.key, None) is None:
                    changes.append(Change(doc.key, "not found", 0))
                else:
                    changes.append(Change(doc.key, "deleted", revision))
            if len(objects) == len(index.objects):
                return ChangeSet(index.revision, tuple(changes))
            self._commit(revision, objects, {})
            return ChangeSet(revision, tuple(changes))

    def set_disabled(self, kind: str, name: str, namespace: str | None, disabled: bool) -> ChangeSet:
        """The live toggle: annotate a policy `flowtui.dev/disabled: "true"` (or remove it).

        Written to the toggle journal only (one fsynced line; no document read or written, the
        index folds it in later): the annotation is the index's `disabled`, which reading a
        document (`get -o yaml`) and loading resources apply. The toggle keeps the policy's
        generation."""
        with self.locked():
            index = self._read_index()
            obj = self._find(index, kind, name, namespace)
            if not obj.info.is_policy:
                raise DatastoreError(f"{obj.key} is not a policy: only policies can be disabled")
            if obj.disabled == disabled:
                return ChangeSet(index.revision, (Change(obj.key, "unchanged", obj.revision),))
            revision = index.revision + 1
            changed = replace(obj, revision=revision, updated=_now(), disabled=disabled, generation=obj.spec_revision)
            objects = {**index.objects, obj.key: changed}
            if self._journal_lines >= JOURNAL_FOLD:
                self._commit(revision, objects, {}, superseded=(), layout=index.layout)
            else:
                journal = Journal(self.path / JOURNAL)
                journal.append(revision, changed)
                assert self._index is not None  # read just above
                self._index = ((self._index[0][0], file_stamp(journal.path)), Catalog(revision, objects, index.layout))
                self._journal_lines += 1
            return ChangeSet(revision, (Change(obj.key, "disabled" if disabled else "enabled", revision),))


def _merge(parts: list[tuple[StoredObject, ResourceSet]]) -> ResourceSet:
    """One ResourceSet from per-object ones, in creation order; policies get their revision."""
    felix = next(
        (res.felix for obj, res in parts if obj.key.kind == "FelixConfiguration" and obj.key.name == "default"),
        FelixConfiguration(),
    )
    return ResourceSet(
        # The index's generation and toggle, not the document's (toggles change the index only).
        policies=tuple(replace(p, revision=obj.spec_revision, disabled=obj.disabled)
                       for obj, res in parts for p in res.policies),
        tiers=tuple(t for _, res in parts for t in res.tiers),
        profiles=tuple(p for _, res in parts for p in res.profiles),
        namespaces=tuple(n for _, res in parts for n in res.namespaces),
        service_accounts=tuple(s for _, res in parts for s in res.service_accounts),
        pods=tuple(p for _, res in parts for p in res.pods),
        nodes=tuple(n for _, res in parts for n in res.nodes),
        host_endpoints=tuple(h for _, res in parts for h in res.host_endpoints),
        network_sets=tuple(n for _, res in parts for n in res.network_sets),
        felix=felix,
        external_hosts=tuple(e for _, res in parts for e in res.external_hosts),
        workloads=tuple(w for _, res in parts for w in res.workloads),
        services=tuple(s for _, res in parts for s in res.services),
    )


__all__ = [
    "DEFAULT_HOME",
    "HOME_ENV",
    "Ambiguous",
    "Catalog",
    "Change",
    "ChangeSet",
    "Datastore",
    "DatastoreError",
    "NotFound",
    "Preview",
    "DamagedDatastore",
    "StoredObject",
    "atomic_write",
    "parse_index",
    "default_home",
]
