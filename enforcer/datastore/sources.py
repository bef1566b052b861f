"""Reading what a user applies: files, directories and stdin, validated, split into documents.

The same inputs as `enforcer.loader.load_paths` (directories recursively, `.yaml`/`.yml`/`.json`,
hidden entries skipped, `-` for stdin, `kind: List` expanded), read once, so that stdin can be
both validated and stored. Each object becomes a `Document`: its key and its mapping exactly as
written (as the loader parsed it), with the API server's metadata fields (`uid`,
`resourceVersion`, ...) left out.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from enforcer.datastore.kinds import BY_API_KIND, KindInfo, ObjectKey
from enforcer.loader import (  # the loader's own reading rules, shared on purpose
    LoadError,
    Problem,
    _is_json,
    gather_sources,
    load_text,
)
from enforcer.loader.crd import as_v3 as v3_form
from enforcer.loader.documents import Mapping, Node, Scalar, parse_json, parse_yaml
from enforcer.loader.documents import Sequence as SeqNode
from enforcer.loader.fields import Reporter
from enforcer.loader.metadata import DEFAULT_NAMESPACE, META_SERVER_FIELDS
from enforcer.loader.objects import expand, skipped_kind
from enforcer.model import Origin

Source = tuple[str, str]  # (file name as shown in problems, text)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass(frozen=True)
class Document:
    key: ObjectKey
    info: KindInfo
    body: dict[str, Any]
    origin: Origin


def read_sources(paths: Sequence[str]) -> list[Source]:
    """The text of every input, read as `load_paths` reads it; unreadable inputs raise LoadError."""
    if not paths:
        raise LoadError([Problem("<input>", 0, "", "no input: give files or directories (or - for stdin)")])
    sources, problems = gather_sources(paths)
    if problems:
        raise LoadError(problems)
    return sources


def plain(node: Node) -> Any:
    """A parsed node as plain data (dicts in written key order, lists, scalars)."""
    if isinstance(node, Mapping):
        return {k: plain(e.value) for k, e in node.entries.items()}
    if isinstance(node, SeqNode):
        return [plain(n) for n in node.items]
    assert isinstance(node, Scalar)
    return node.value


def _peek_str(node: Mapping, key: str) -> str:
    entry = node.entries.get(key)
    value = entry.value if entry is not None else None
    return value.value if isinstance(value, Scalar) and isinstance(value.value, str) else ""


def _documents_of(filename: str, text: str, problems: list[Problem], namespace: str | None) -> list[Document]:
    nodes, _ = parse_json(text) if _is_json(filename, text) else parse_yaml(text)
    out: list[Document] = []
    for node in nodes:
        for item, api_default, kind_default in expand(node, filename, Reporter(filename)):
            if not isinstance(item, Mapping):
                problems.append(Problem(filename, item.line, "", "a document must be a mapping"))
                continue
            if skipped_kind(item, api_default, kind_default) is not None:
                continue  # a kind flowtui does not read (the loader counts it)
            converted, api_default = v3_form(item, _peek_str(item, "apiVersion") or api_default,
                                             _peek_str(item, "kind") or kind_default, Reporter(filename))
            written: dict[str, Any] = plain(converted)
            body: dict[str, Any] = {}
            if written.get("apiVersion", api_default):
                body["apiVersion"] = written.get("apiVersion", api_default)
            if written.get("kind", kind_default):
                body["kind"] = written.get("kind", kind_default)
            body.update((k, v) for k, v in written.items() if k not in body)
            info = BY_API_KIND.get((str(body.get("apiVersion")), str(body.get("kind"))))
            meta = body.get("metadata")
            if info is None or not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
                what = "apiVersion/kind" if info is None else "metadata.name"
                problems.append(Problem(filename, item.line, "", f"unknown or missing {what}"))
                continue
            for field in META_SERVER_FIELDS:
                meta.pop(field, None)
            if info.namespaced and namespace and meta.get("namespace") not in (None, "", namespace):
                message = f"the object's namespace {meta['namespace']!r} does not match {namespace!r} (-n)"
                problems.append(Problem(filename, item.line, "metadata.namespace", message))
                continue
            if info.namespaced and not meta.get("namespace"):
                meta["namespace"] = namespace or DEFAULT_NAMESPACE  # stored as kubectl would store it
            written_ns = meta.get("namespace") if info.namespaced else None
            key = ObjectKey(info.model_kind, str(written_ns) if written_ns is not None else None, meta["name"])
            out.append(Document(key, info, body, Origin(filename, item.line)))
    return out


def documents(sources: Sequence[Source], *, validate: bool = True, namespace: str | None = None) -> list[Document]:
    """Every object of `sources`, in order. With `validate`, everything is first loaded by the
    loader and any problem raises LoadError (FILE:LINE messages), as does an object defined in
    two places. Without it only the envelope is needed (apiVersion, kind, metadata.name).
    `namespace` is kubectl's `-n` (see `load_paths`); a namespaced document is stored with the
    namespace it was put in."""
    problems: list[Problem] = []
    if validate:
        for filename, text in sources:
            try:
                load_text(text, filename, namespace)
            except LoadError as err:
                problems += err.problems
    if problems:
        raise LoadError(problems)
    found: list[Document] = []
    for filename, text in sources:
        _, errors = parse_json(text) if _is_json(filename, text) else parse_yaml(text)
        if errors:
            problems += [Problem(filename, e.line, "", e.message) for e in errors]
        else:
            found += _documents_of(filename, text, problems, namespace)
    seen: dict[ObjectKey, Document] = {}
    for doc in found:
        first = seen.setdefault(doc.key, doc)
        if first is not doc:
            message = f"defined twice: here and at {first.origin} (each kind/namespace/name must be unique)"
            problems.append(Problem(doc.origin.file, doc.origin.line, "metadata.name", message, str(doc.key)))
    if problems:
        raise LoadError(sorted(problems, key=lambda p: (p.file, p.line)))
    return found


def skipped_in(sources: Sequence[Source]) -> tuple[tuple[str, int], ...]:
    """(kind, how many) of the objects of `sources` that flowtui skips (ConfigMaps, Ingresses...)."""
    counts: Counter[str] = Counter()
    for filename, text in sources:
        nodes, _ = parse_json(text) if _is_json(filename, text) else parse_yaml(text)
        for node in nodes:
            for item, api_default, kind_default in expand(node, filename, Reporter(filename)):
                kind = skipped_kind(item, api_default, kind_default)
                if kind is not None:
                    counts[kind] += 1
    return tuple(sorted(counts.items()))


def dump(body: dict[str, Any]) -> str:
    """A stored document's YAML text (key order as written; strings quoted where YAML 1.1 would
    read them as something else, such as `"1000:1059"`)."""
    text: str = yaml.dump(body, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return text


def parse_stored(text: str, filename: str) -> dict[str, Any]:
    """A stored document read back exactly as the loader reads it."""
    nodes, errors = parse_yaml(text)
    if errors or len(nodes) != 1 or not isinstance(nodes[0], Mapping):
        raise ValueError(f"{filename}: not a stored document")
    body: dict[str, Any] = plain(nodes[0])
    return body


def with_annotation(body: dict[str, Any], key: str, value: str | None) -> dict[str, Any]:
    """A copy of `body` with metadata.annotations[key] set (or removed when `value` is None)."""
    out = copy.deepcopy(body)
    meta = out.setdefault("metadata", {})
    annotations = meta.get("annotations") or {}
    if value is None:
        annotations.pop(key, None)
    else:
        annotations[key] = value
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    return out


def annotation(body: dict[str, Any], key: str) -> str | None:
    meta = body.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    value = annotations.get(key) if isinstance(annotations, dict) else None
    return value if isinstance(value, str) else None


__all__ = ["Document", "Source", "annotation", "documents", "dump", "parse_stored", "read_sources", "skipped_in",
           "with_annotation"]
