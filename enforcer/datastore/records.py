"""What the datastore hands out: stored objects (its index entries) and the changes a write made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from enforcer.datastore.kinds import BY_MODEL_KIND, KindInfo, ObjectKey
from enforcer.model import ResourceSet


@dataclass(frozen=True)
class StoredObject:
    key: ObjectKey
    api_version: str
    kind: str
    revision: int  # of its last change
    created: int  # datastore revision that created it
    updated: str  # ISO 8601 time of its last change
    file: str  # document file, relative to the datastore directory
    source: str  # FILE:LINE it was last applied from
    disabled: bool = False  # policies: flowtui.dev/disabled is "true"
    position: int = 0  # among the objects created by the same write: keeps the files' order
    # Datastore revision of its last change other than a live toggle (Kubernetes' metadata.generation
    # to `revision`'s resourceVersion): policies carry it as `Policy.revision`, so a toggle keeps
    # the policy's rule ids and the dataplane's layout, and only flips its gate. 0: same as revision.
    generation: int = 0
    # sha256 of the document file's bytes: every read checks it (a truncated or emptied document
    # is damage, never a policy with less in it). "" in stores written before it existed.
    sha256: str = ""

    @property
    def spec_revision(self) -> int:
        return self.generation or self.revision

    @property
    def order(self) -> tuple[int, int]:
        """Load order: creation revision, then position in what was applied."""
        return (self.created, self.position)

    @property
    def info(self) -> KindInfo:
        return BY_MODEL_KIND[self.key.kind]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.key.kind,
            "namespace": self.key.namespace,
            "name": self.key.name,
            "apiVersion": self.api_version,
            "writtenKind": self.kind,
            "revision": self.revision,
            "created": self.created,
            "updated": self.updated,
            "file": self.file,
            "source": self.source,
            "disabled": self.disabled,
            "position": self.position,
            "generation": self.spec_revision,
            **({"sha256": self.sha256} if self.sha256 else {}),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> StoredObject:
        key = ObjectKey(raw["kind"], raw["namespace"], raw["name"])
        return cls(key, raw["apiVersion"], raw["writtenKind"], int(raw["revision"]), int(raw["created"]),
                   raw["updated"], raw["file"], raw["source"], bool(raw.get("disabled", False)),
                   int(raw.get("position", 0)), int(raw.get("generation", 0)), str(raw.get("sha256", "")))


@dataclass(frozen=True)
class Change:
    key: ObjectKey
    action: str  # created | configured | unchanged | deleted | disabled | enabled | not found
    revision: int

    def __str__(self) -> str:
        return f"{self.key} {self.action}"


@dataclass(frozen=True)
class ChangeSet:
    revision: int  # the datastore revision after the change
    changes: tuple[Change, ...]
    skipped: tuple[tuple[str, int], ...] = ()  # kinds of the input flowtui does not read: (kind, how many)

    @property
    def changed(self) -> bool:
        return any(c.action not in ("unchanged", "not found") for c in self.changes)

    @property
    def not_found(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.action == "not found")


@dataclass(frozen=True)
class Preview:
    """What applying would do, and the resources that would result; nothing written."""

    changes: ChangeSet
    resources: ResourceSet
    # stored document path → where it was read from ("FILE:LINE" of the input): the resources'
    # origins are stored paths, errors about them should name what the user wrote
    sources: Mapping[str, str] = field(default_factory=dict)


__all__ = ["Change", "ChangeSet", "Preview", "StoredObject"]
