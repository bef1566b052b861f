"""`flowtui datastore check|repair`: what the file datastore holds, verified; and what can be rebuilt.

Checked: the index (`state.json`: present when documents exist, parseable), every indexed
document (readable, its checksum, loadable as the object the index says), `rules.jsonl` and
`ids.jsonl` (every line whole, no id with two meanings, every rule id allocated), and each
applied node's record of the revision it enforces (an apply that stopped between the datastore's
commit and the kernel's leaves the node behind).

Repaired, and only that:
- a lost or damaged index is rebuilt from the documents (their names carry the revision; the
  newest of each object wins; a document that does not load is left out and named). Toggles
  the index alone held are lost: every policy is then as its document says (reported);
- a torn last line of `rules.jsonl`/`ids.jsonl` (an append a crash interrupted) is cut;
  unreadable lines are dropped (named); ids that `rules.jsonl` knows and `ids.jsonl` lost are
  restored where the rule determines its key, and every id up to the highest ever used is
  reserved, so no id is ever given a second meaning;
- with `drop_damaged`, objects whose document is damaged are removed from the index (the user
  re-applies them); without it they are reported and left alone.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from enforcer.datastore.backend import DesiredState
from enforcer.datastore.kinds import BY_API_KIND, ObjectKey
from enforcer.datastore.records import StoredObject
from enforcer.datastore.sources import annotation, parse_stored
from enforcer.datastore.store import INDEX, Catalog, DamagedDatastore, Datastore, DatastoreError, _digest
from enforcer.loader import LoadError, load_text
from enforcer.loader.metadata import DISABLED_ANNOTATION
from enforcer.ruleids import IdAllocator, RuleIdError, RuleRef, RuleTable, key_of, ref_from_json

_REVISION = re.compile(r"@(\d+)\.yaml$")


@dataclass
class Report:
    """Findings, each a line naming its file. `problems`: damage (check exits 1); `notes`: facts."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    behind: dict[str, int | None] = field(default_factory=dict)  # node -> revision it enforces
    revision: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and not self.behind

    def behind_lines(self) -> list[str]:
        return [f"node {node} enforces revision {enforced}, the datastore is at {self.revision}: an apply stopped "
                f"before the kernel took it (`flowtui datastore repair` or the next apply enforces it)"
                for node, enforced in sorted(self.behind.items())]

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "revision": self.revision, "problems": self.problems, "repaired": self.repaired,
                "notes": self.notes, "behind": self.behind}


# ---- check -------------------------------------------------------------------------------------


def check(ds: Datastore) -> Report:
    """Every finding about `ds`; writes nothing."""
    report = Report()
    with ds.locked(exclusive=False):
        try:
            catalog: Catalog | None = ds.catalog()
        except DatastoreError as exc:
            report.problems.append(str(exc))
            catalog = None
        if catalog is not None:
            report.revision = catalog.revision
            _check_documents(ds, catalog, report)
        _check_rule_ids(ds, report)
        if catalog is not None:
            report.behind = nodes_behind(ds, catalog.revision)
    return report


def _check_documents(ds: Datastore, catalog: Catalog, report: Report) -> None:
    referenced = set()
    for obj in catalog.objects.values():
        referenced.add(obj.file)
        try:
            load_text(ds.read_document(obj), str(ds.path / obj.file))
        except DatastoreError as exc:
            report.problems.append(str(exc))
        except LoadError as exc:
            report.problems.append(f"stored document {ds.path / obj.file} ({obj.key}) does not load: {exc}")
    stray = [f for f in ds.document_files() if f not in referenced]
    if stray:
        report.notes.append(f"{len(stray)} document files the index does not name (superseded or left by an "
                            f"interrupted write; the next write removes them): {', '.join(stray[:3])}"
                            + (", ..." if len(stray) > 3 else ""))
    report.notes.append(f"{INDEX}: revision {catalog.revision}, {len(catalog.objects)} objects")


def _torn(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return False
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except OSError:
        return False


def _check_rule_ids(ds: Datastore, report: Report) -> None:
    for path in (ds.rules_path, ds.ids_path):
        if _torn(path):
            report.problems.append(f"{path}: its last line is torn (an append a crash interrupted); repair cuts it")
    try:
        rules = RuleTable.load(ds.rules_path)
        ids = IdAllocator.load(ds.ids_path, rules)
    except RuleIdError as exc:
        report.problems.append(str(exc))
        return
    report.notes.append(f"rules.jsonl: {len(rules)} rule ids; ids.jsonl: {len(ids.items())} allocations")


def enforced_revisions(ds: DesiredState) -> dict[str, int]:
    """The datastore revision each node's applied record says it enforces (records written before
    this existed name none and are left out)."""
    found: dict[str, int] = {}
    try:
        names = sorted(os.listdir(ds.applied_dir))
    except FileNotFoundError:
        return found
    for name in names:
        if not name.endswith(".state.json"):
            continue
        try:
            state = json.loads((ds.applied_dir / name).read_bytes())
        except (OSError, ValueError):
            continue
        enforced = state.get("revision") if isinstance(state, dict) else None
        if isinstance(enforced, int) and not isinstance(enforced, bool):
            found[name[: -len(".state.json")]] = enforced
    return found


def nodes_behind(ds: DesiredState, revision: int) -> dict[str, int | None]:
    """Nodes whose applied record names a datastore revision older than `revision` (what they
    enforce): an apply stopped between the datastore's commit and the kernel's."""
    return {node: enforced for node, enforced in enforced_revisions(ds).items() if enforced < revision}


# ---- repair ------------------------------------------------------------------------------------


def repair(ds: Datastore, *, drop_damaged: bool = False) -> Report:
    """Rebuild what can be rebuilt (see the module's docstring), then check again."""
    done: list[str] = []
    with ds.locked():
        try:
            catalog: Catalog | None = ds.catalog()
        except DamagedDatastore:
            catalog = None  # lost or damaged: rebuilt from the documents
        if catalog is None:
            done += _rebuild_index(ds)
        elif drop_damaged:
            done += _drop_damaged(ds, catalog)
        done += _repair_rule_ids(ds)
        report = check(ds)
    report.repaired = done
    return report


def _rebuild_index(ds: Datastore) -> list[str]:
    newest: dict[ObjectKey, tuple[int, StoredObject]] = {}
    done: list[str] = []
    for rel in ds.document_files():
        match = _REVISION.search(rel)
        if match is None or os.path.basename(rel).startswith("."):
            continue
        path = ds.path / rel
        try:
            data = path.read_bytes()
            text = data.decode("utf-8")
            body = parse_stored(text, str(path))
            load_text(text, str(path))
        except (OSError, ValueError, LoadError) as exc:
            done.append(f"left out {path}: it does not load ({str(exc).splitlines()[0]})")
            continue
        info = BY_API_KIND.get((str(body.get("apiVersion")), str(body.get("kind"))))
        meta = body.get("metadata")
        if info is None or not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            done.append(f"left out {path}: not a stored object")
            continue
        namespace = meta.get("namespace") if info.namespaced else None
        key = ObjectKey(info.model_kind, str(namespace) if namespace is not None else None, meta["name"])
        revision = int(match.group(1))
        updated = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
        obj = StoredObject(key, info.api_version, info.kind, revision, revision, updated, rel,
                           f"{path} (rebuilt by repair)", annotation(body, DISABLED_ANNOTATION) == "true",
                           generation=revision, sha256=_digest(data))
        old = newest.get(key)
        if old is not None:
            older = min(old[1], obj, key=lambda o: o.revision)
            done.append(f"{key}: kept revision {max(old[0], revision)}, not {older.revision} ({ds.path / older.file})")
        if old is None or old[0] < revision:
            newest[key] = (revision, obj)
    objects = {k: o for k, (_, o) in newest.items()}
    # Revisions never go back: past every document and every revision a node says it enforces.
    revision = max([*(o.revision for o in objects.values()), *enforced_revisions(ds).values()], default=0) + 1
    ds.replace_index(revision, objects)
    done.append(f"rebuilt {INDEX} from {len(objects)} documents at revision {revision}; toggles only the lost index "
                f"held are gone: every policy is as its document says")
    return done


def _drop_damaged(ds: Datastore, catalog: Catalog) -> list[str]:
    keep = dict(catalog.objects)
    done = []
    for key, obj in catalog.objects.items():
        try:
            load_text(ds.read_document(obj), str(ds.path / obj.file))
        except (DatastoreError, LoadError) as exc:
            del keep[key]
            done.append(f"removed {key} from the index: {str(exc).splitlines()[0]} (re-apply {obj.source})")
    if done:
        ds.replace_index(catalog.revision + 1, keep)
    return done


def _repair_rule_ids(ds: Datastore) -> list[str]:
    done: list[str] = []
    refs: dict[int, RuleRef] = {}
    rows, changed = _lines(ds.rules_path, done)
    for number, row in rows:
        try:
            ref = ref_from_json(row, f"{ds.rules_path}:{number}")
        except RuleIdError as exc:
            done.append(f"dropped {exc}")
            changed = True
            continue
        if refs.setdefault(ref.id, ref) != ref:
            done.append(f"dropped {ds.rules_path}:{number}: id {ref.id} again with another meaning (the first stays)")
            changed = True
    rules = RuleTable(refs.values())
    if changed:
        rules.dump(ds.rules_path)
        done.append(f"rewrote {ds.rules_path}: {len(rules)} rule ids")
    known: dict[tuple[object, ...], int] = {}
    owners: dict[tuple[bool, int], tuple[object, ...]] = {}
    reserved = 0
    rows, changed = _lines(ds.ids_path, done)
    for number, row in rows:
        if set(row) == {"reserved"} and isinstance(row["reserved"], int):
            reserved = max(reserved, row["reserved"])
            continue
        key, rule_id = row.get("key"), row.get("id")
        if not isinstance(key, list) or not key or not isinstance(rule_id, int) or rule_id < 1:
            done.append(f"dropped {ds.ids_path}:{number}: not an id allocation")
            changed = True
            continue
        space = (key[0] == "gate", rule_id)
        if tuple(key) in known or space in owners:
            done.append(f"dropped {ds.ids_path}:{number}: {key} / id {rule_id} allocated twice (the first stays)")
            changed = True
            continue
        known[tuple(key)], owners[space] = rule_id, tuple(key)
    restored = 0
    for ref in rules:
        if (False, ref.id) in owners:
            continue
        key_ = key_of(ref)
        if key_ is not None and key_ not in known:
            known[key_], owners[(False, ref.id)] = ref.id, key_
            restored += 1
        changed = True
    top = max((r.id for r in rules), default=0)
    if top > reserved and changed:
        reserved = top
    if changed:
        IdAllocator(known, reserved).dump(ds.ids_path)
        done.append(f"rewrote {ds.ids_path}: {len(known)} allocations, {restored} restored from rules.jsonl, ids up "
                    f"to {reserved} reserved (never given again)")
    return done


def _lines(path: Path, done: list[str]) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
    """Readable lines of an append-only file, and whether any was not (named in `done`)."""
    out: list[tuple[int, dict[str, Any]]] = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return out, False
    before = len(done)
    lines = data.split(b"\n")
    if lines and lines[-1]:
        done.append(f"cut the torn last line of {path} ({len(lines[-1])} bytes)")
    for number, line in enumerate(lines[:-1], 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            done.append(f"dropped {path}:{number}: not a JSON line")
            continue
        if isinstance(row, dict):
            out.append((number, row))
        else:
            done.append(f"dropped {path}:{number}: not a JSON object")
    return out, len(done) > before


__all__ = ["Report", "check", "enforced_revisions", "nodes_behind", "repair"]
