"""Read the resources users already have, validate them as Calico does, build a `ResourceSet`.

    from enforcer.loader import load_paths, load_text, LoadError, Problem

    resources = load_paths(["policies/", "cluster.yaml", "-"])   # "-" is stdin

Inputs are YAML (multi-document) or JSON files, directories (searched recursively for `.yaml`,
`.yml` and `.json`, in sorted order, skipping hidden entries) and stdin. `kind: List` and the
`*List` kinds that `kubectl get -o yaml` and `calicoctl get -o yaml` print are expanded.

Supported kinds: `projectcalico.org/v3` GlobalNetworkPolicy, NetworkPolicy, the three Staged
kinds, Tier, GlobalNetworkSet, NetworkSet, HostEndpoint, Profile, FelixConfiguration;
the same Calico kinds (but Profile) in their `crd.projectcalico.org/v1` form (`crd.py`);
`networking.k8s.io/v1` NetworkPolicy (converted to Calico form, see `knp.py`);
`policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy and the legacy v1alpha1
AdminNetworkPolicy / BaselineAdminNetworkPolicy (converted, see `cnp.py`); `v1` Namespace,
Pod, Node, ServiceAccount, Service; the workload controllers of `apps/v1` and `batch/v1`
(`workloads.py`); `lab.flowtui.dev/v1` ExternalHost. Every other kind (ConfigMap, Ingress,
IPPool...) is skipped and counted in `ResourceSet.skipped`; an unknown kind of a group flowtui
reads (`projectcalico.org`, `networking.k8s.io`...) is an error.

Namespaced objects without `metadata.namespace` go into `namespace` (kubectl's `-n`), else into
`default`.

Errors: every problem of every file is collected and raised together in one `LoadError`; each
is a `Problem` with file, 1-based line, field path and message. A file with any problem
contributes nothing. Bad input never raises anything but `LoadError`.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

from enforcer.loader.documents import looks_like_json, parse_json, parse_yaml
from enforcer.loader.fields import LoadError, Problem, Reporter
from enforcer.loader.objects import Loaded, expand, load_object, skipped_kind
from enforcer.model import (
    ExternalHost,
    FelixConfiguration,
    HostEndpoint,
    Namespace,
    NetworkSet,
    Node,
    Pod,
    Policy,
    Profile,
    ResourceSet,
    Service,
    ServiceAccount,
    Tier,
    Workload,
)

__all__ = ["LoadError", "Problem", "gather_sources", "load_paths", "load_text", "skipped_line"]

T = TypeVar("T")
EXTENSIONS = (".yaml", ".yml", ".json")
STDIN = "<stdin>"


def load_text(text: str, filename: str, namespace: str | None = None) -> ResourceSet:
    """Load one file's text. `filename` is used in problems and chooses the format: `.json` is
    JSON, `-` or `<stdin>` is sniffed (JSON if it starts with `{` or `[`), anything else YAML.
    `namespace` is kubectl's `-n`: see `load_paths`."""
    return _load([(filename, text)], [], namespace)


def gather_sources(paths: Sequence[str]) -> tuple[list[tuple[str, str]], list[Problem]]:
    """(file, text) of every input — files, directories (recursively, sorted) and `-` (stdin), in
    the order given — and a Problem for each one that cannot be read."""
    sources: list[tuple[str, str]] = []
    problems: list[Problem] = []
    for path in paths:
        if path == "-":
            # Bytes, so that invalid UTF-8 is reported like a file's (a text stdin would let it
            # through as surrogates); a stdin replaced by a text-only stream is read as text.
            raw = getattr(sys.stdin, "buffer", None)
            if raw is None:
                sources.append((STDIN, sys.stdin.read()))
            else:
                _decode(STDIN, raw.read(), sources, problems)
        elif os.path.isdir(path):
            for file in _walk(path):
                _read(file, sources, problems)
        else:
            _read(path, sources, problems)
    return sources, problems


def load_paths(paths: Sequence[str], namespace: str | None = None) -> ResourceSet:
    """Load files, directories (recursively) and `-` (stdin), in the order given.

    `namespace` is kubectl's `-n NS`: a namespaced object written without `metadata.namespace`
    goes into it (else into `default`, as `kubectl apply -f` does), and one written with another
    namespace is an error."""
    sources, problems = gather_sources(paths)
    return _load(sources, problems, namespace)


def _walk(directory: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(root, f) for f in files if f.endswith(EXTENSIONS) and not f.startswith(".")]
    return sorted(found)


def _read(path: str, sources: list[tuple[str, str]], problems: list[Problem]) -> None:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        problems.append(Problem(path, 0, "", "no such file or directory"))
        return
    except OSError as exc:
        problems.append(Problem(path, 0, "", f"cannot read: {exc.strerror or exc}"))
        return
    _decode(path, data, sources, problems)


def _decode(name: str, data: bytes, sources: list[tuple[str, str]], problems: list[Problem]) -> None:
    try:
        sources.append((name, data.decode("utf-8-sig")))
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        problems.append(Problem(name, line, "", f"not UTF-8 text (byte {exc.start}: {data[exc.start]:#04x})"))


def _is_json(filename: str, text: str) -> bool:
    if filename in ("-", STDIN):
        return looks_like_json(text)
    return filename.lower().endswith(".json")


def _load_file(
    filename: str, text: str, namespace: str | None = None, skipped: Counter[str] | None = None
) -> tuple[list[Loaded], list[Problem]]:
    nodes, errors = parse_json(text) if _is_json(filename, text) else parse_yaml(text)
    problems = [Problem(filename, e.line, "", e.message) for e in errors]
    reporter = Reporter(filename)
    loaded: list[Loaded] = []
    for node in nodes:
        for item, api_version, kind in expand(node, filename, reporter):
            other = skipped_kind(item, api_version, kind)
            if other is not None:
                if skipped is not None:
                    skipped[other] += 1
                continue
            try:
                result = load_object(item, filename, api_version, kind, namespace)
            except Exception as exc:  # a loader bug must still come out as a Problem
                message = f"internal error while loading this object: {exc!r} (please report)"
                result = Loaded(None, None, [Problem(filename, item.line, "", message)])
            loaded.append(result)
    problems += reporter.problems
    for result in loaded:
        problems += result.problems
    problems.sort(key=lambda p: p.line)
    return loaded, problems


def _load(sources: list[tuple[str, str]], problems: list[Problem], namespace: str | None = None) -> ResourceSet:
    good: list[Loaded] = []
    skipped: Counter[str] = Counter()
    for filename, text in sources:
        loaded, file_problems = _load_file(filename, text, namespace, skipped)
        if file_problems:
            problems += file_problems
        else:
            good += loaded
    problems += _duplicates(good)
    if problems:
        raise LoadError(problems)
    res = _resource_set([item.value for item in good if item.value is not None])
    return replace(res, skipped=tuple(sorted(skipped.items()))) if skipped else res


def skipped_line(skipped: Sequence[tuple[str, int]]) -> str | None:
    """The one line that says which kinds were skipped: `skipped 2 ConfigMap, 1 Ingress (...)`."""
    if not skipped:
        return None
    counts = ", ".join(f"{n} {kind}" for kind, n in skipped)
    return f"skipped {counts}: kinds flowtui does not read"


def _duplicates(loaded: list[Loaded]) -> list[Problem]:
    first: dict[tuple[str, str, str], Loaded] = {}
    problems = []
    for item in loaded:
        if item.obj is None:
            continue
        key = item.obj.key
        if key in first:
            earlier = first[key].obj
            assert earlier is not None
            problems.append(
                Problem(
                    item.obj.origin.file,
                    item.obj.meta.line,
                    "metadata.name",
                    f"defined twice: here and at {earlier.origin} (each kind/namespace/name must be unique)",
                    item.obj.r.obj,
                )
            )
        else:
            first[key] = item
    return problems


def _of(values: list[object], cls: type[T]) -> tuple[T, ...]:
    return tuple(v for v in values if isinstance(v, cls))


def _resource_set(values: list[object]) -> ResourceSet:
    felix = _of(values, FelixConfiguration)
    return ResourceSet(
        policies=_of(values, Policy),
        tiers=_of(values, Tier),
        profiles=_of(values, Profile),
        namespaces=_of(values, Namespace),
        service_accounts=_of(values, ServiceAccount),
        pods=_of(values, Pod),
        nodes=_of(values, Node),
        host_endpoints=_of(values, HostEndpoint),
        network_sets=_of(values, NetworkSet),
        felix=felix[0] if felix else FelixConfiguration(),
        external_hosts=_of(values, ExternalHost),
        workloads=_of(values, Workload),
        services=_of(values, Service),
    )
