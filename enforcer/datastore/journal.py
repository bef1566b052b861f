"""The live-toggle journal beside the index: a toggle as one fsynced line, not an index rewrite.

    toggles.jsonl    {"revision": 412, "object": {...the toggled object's index entry...}}\\n  (one per toggle)

A toggle changes one field of one index entry; writing it as a line keeps its cost independent of
the number of stored objects. Rules a reader relies on:

- a line applies over the index when its revision is the next one (lines at or below the index's
  revision were folded into it by a later write, which then removed the file: a crash in between
  leaves them, and they are skipped);
- a last line without its newline is an append a crash interrupted: its toggle never returned,
  so it is ignored (and cut before the next append, which would otherwise extend it);
- anything else (a line that does not parse, a revision gap, an object the index does not hold
  or whose document differs) is damage, reported with the file and line, never guessed around.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from enforcer.datastore.files import append_lines
from enforcer.datastore.kinds import ObjectKey
from enforcer.datastore.records import StoredObject


class JournalDamage(ValueError):
    """The journal contradicts the index or itself (the message names file and line)."""


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime, size) of `path`, None when absent: has the journal changed since?"""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""

    def over(self, revision: int, objects: Mapping[ObjectKey, StoredObject]
             ) -> tuple[int, dict[ObjectKey, StoredObject], int]:
        """(revision, objects) of the index `revision`/`objects` with the journal's toggles applied,
        and the number of whole lines the journal holds."""
        data = self._read()
        whole = data[: data.rfind(b"\n") + 1]  # a torn last line is a toggle that never returned
        out = dict(objects)
        lines = whole.splitlines()
        for number, line in enumerate(lines, 1):
            where = f"{self.path}:{number}"
            try:
                raw = json.loads(line)
                at = int(raw["revision"])
                obj = StoredObject.from_json(raw["object"])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise JournalDamage(f"{where}: damaged toggle ({exc!r})") from exc
            if at <= revision:
                continue  # folded into the index by a later write
            if at != revision + 1:
                raise JournalDamage(f"{where}: toggle at revision {at} does not follow revision {revision}")
            old = out.get(obj.key)
            if old is None or old.file != obj.file or obj.revision != at:
                raise JournalDamage(f"{where}: toggle of {obj.key} does not match the index (not stored, or "
                                    f"another document)")
            out[obj.key] = obj
            revision = at
        return revision, out, len(lines)

    def append(self, revision: int, obj: StoredObject) -> None:
        """One toggle, durable when this returns (the toggle's commit point)."""
        try:
            with open(self.path, "r+b") as handle:
                size = handle.seek(0, os.SEEK_END)
                if size and (handle.seek(size - 1), handle.read(1))[1] != b"\n":
                    # A torn append: cut it, so that this line starts whole.
                    handle.seek(0)
                    handle.truncate(handle.read().rfind(b"\n") + 1)
        except FileNotFoundError:
            pass
        append_lines(self.path, [json.dumps({"revision": revision, "object": obj.to_json()})])

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


__all__ = ["Journal", "JournalDamage", "file_stamp"]
