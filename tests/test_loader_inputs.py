"""Inputs: Lists, directories, stdin, JSON (with line numbers), YAML details, robustness."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enforcer.loader import LoadError, load_paths, load_text
from enforcer.model import Origin, PortRange

GOOD = Path(__file__).parent / "fixtures" / "good"


def test_kubectl_list_and_typed_calicoctl_list() -> None:
    file = str(GOOD / "list.yaml")
    loaded = load_paths([file])
    assert [(n.name, n.origin) for n in loaded.namespaces] == [("alpha", Origin(file, 6))]
    assert [(p.kind, p.name, p.origin.line) for p in loaded.policies] == [
        ("KubernetesNetworkPolicy", "deny", 10),
        ("GlobalNetworkPolicy", "one", 23),
        ("GlobalNetworkPolicy", "two", 27),  # apiVersion and kind inherited from GlobalNetworkPolicyList
    ]
    assert loaded.policies[2].order == 2.0


def test_json_list_with_line_numbers() -> None:
    file = str(GOOD / "calico-list.json")
    loaded = load_paths([file])
    (gnp,) = loaded.policies
    assert gnp.origin == Origin(file, 5)
    assert gnp.ingress[0].origin == Origin(file, 13)
    assert gnp.ingress[0].destination.ports == (PortRange(22, 22), PortRange(80, 81))
    assert loaded.namespaces[0].origin == Origin(file, 21)


def test_json_problem_lines() -> None:
    text = json.dumps(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "NetworkPolicy",
            "metadata": {"name": "j", "namespace": "n"},
            "spec": {"ingress": [{"action": "Allow", "destination": {"ports": [80]}}], "order": "x"},
        },
        indent=2,
    )
    with pytest.raises(LoadError) as info:
        load_text(text, "p.json")
    lines = text.splitlines()
    found = {p.path: p.line for p in info.value.problems}
    assert found == {
        "spec.ingress[0].destination.ports": 1 + next(i for i, t in enumerate(lines) if '"ports"' in t),
        "spec.order": 1 + next(i for i, t in enumerate(lines) if '"order"' in t),
    }


def test_json_duplicate_keys_and_extra_data() -> None:
    with pytest.raises(LoadError) as info:
        load_text(
            '{"apiVersion": "v1", "kind": "Namespace",\n "kind": "Namespace", "metadata": {"name": "d"}}', "d.json"
        )
    assert [(p.line, p.message) for p in info.value.problems] == [(2, 'duplicate key "kind" (first at line 1)')]
    with pytest.raises(LoadError) as info:
        load_text("{}\n{}", "two.json")
    assert [(p.line, p.message) for p in info.value.problems] == [
        (2, "JSON syntax error: extra data after the JSON value")
    ]


def test_directory_is_searched_recursively_in_sorted_order() -> None:
    loaded = load_paths([str(GOOD / "dir")])
    # .txt files, hidden files and hidden directories are skipped; empty documents are dropped
    assert [n.name for n in loaded.namespaces] == ["dir-a", "dir-b", "dir-c"]
    assert loaded.namespaces[2].origin == Origin(str(GOOD / "dir" / "sub" / "c.json"), 1)


def test_stdin_yaml_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("apiVersion: v1\nkind: Namespace\nmetadata: {name: from-stdin}\n"))
    loaded = load_paths(["-", str(GOOD / "dir" / "a.yaml")])
    assert [(n.name, n.origin.file) for n in loaded.namespaces] == [
        ("from-stdin", "<stdin>"),
        ("dir-a", str(GOOD / "dir" / "a.yaml")),
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO('\n  {"apiVersion": "v1", "kind": "Namespace",\n"metadata": 1}'))
    with pytest.raises(LoadError) as info:
        load_paths(["-"])
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.path) == ("<stdin>", 3, "metadata")


def test_empty_documents_are_skipped() -> None:
    assert load_text("---\n---\n# nothing\n...\n", "e.yaml") == load_text("", "e.yaml")


def test_yaml_merge_keys_and_anchors() -> None:
    text = """\
base: &base
  apiVersion: v1
  kind: Namespace
---
<<: {apiVersion: v1, kind: Namespace}
metadata: &meta {name: merged, labels: {a: b}}
"""
    with pytest.raises(LoadError):  # the first document is not a resource
        load_text(text, "m.yaml")
    (namespace,) = load_text(text.split("---\n")[1], "m.yaml").namespaces
    assert (namespace.name, namespace.labels) == ("merged", (("a", "b"), ("kubernetes.io/metadata.name", "merged")))


def test_alias_bomb_is_a_problem_not_a_hang() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    with pytest.raises(LoadError) as info:
        load_text("\n".join(lines), "bomb.yaml")
    assert "refused as an alias bomb" in str(info.value)


def test_recursive_alias_is_a_problem() -> None:
    with pytest.raises(LoadError) as info:
        load_text("a: &a [*a]\n", "r.yaml")
    assert "recursive alias" in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("key: !custom value\n", "could not determine a constructor"),
        ("a: [1, 2\n", "YAML syntax error"),
        ("\x00\n", "character #x0000 is not allowed in YAML"),
        ("{bad json\n", "YAML syntax error"),
    ],
)
def test_yaml_errors_are_problems(text: str, fragment: str) -> None:
    with pytest.raises(LoadError) as info:
        load_text(text, "y.yaml")
    assert fragment in str(info.value)
    assert all(p.file == "y.yaml" for p in info.value.problems)


def test_unreadable_inputs(tmp_path: Path) -> None:
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(LoadError) as info:
        load_paths([str(binary), str(tmp_path / "missing.json")])
    assert [(p.line, p.message) for p in info.value.problems] == [
        (1, "not UTF-8 text (byte 0: 0xff)"), (0, "no such file or directory")]
    assert str(info.value.problems[1]) == f"{tmp_path / 'missing.json'}: no such file or directory"


# Documents made of arbitrary YAML-able values, with the real field names sprinkled in, must
# never make the loader raise anything but LoadError, nor hit its internal-error safety net.
FIELDS = [
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "spec",
    "ingress",
    "egress",
    "action",
    "protocol",
    "ports",
    "nets",
    "selector",
    "source",
    "destination",
    "icmp",
    "http",
    "items",
    "podSelector",
    "from",
    "to",
    "ipBlock",
    "cidr",
    "status",
    "types",
    "addresses",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70000),
    st.floats(allow_nan=False),
    st.sampled_from(["", "TCP", "Allow", "10.0.0.0/8", "all()", "global()", "a == 'b'", "80:90", "Egress"]),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), inner),
    max_leaves=25,
)
kinds = st.sampled_from(
    [
        ("projectcalico.org/v3", k)
        for k in (
            "GlobalNetworkPolicy",
            "NetworkPolicy",
            "StagedNetworkPolicy",
            "StagedKubernetesNetworkPolicy",
            "Tier",
            "HostEndpoint",
            "Profile",
            "NetworkSet",
            "FelixConfiguration",
        )
    ]
    + [("networking.k8s.io/v1", "NetworkPolicy"), ("v1", "Pod"), ("v1", "Node"), ("lab.flowtui.dev/v1", "ExternalHost")]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=kinds, metadata=values, spec=values, as_json=st.booleans())
def test_fuzz_only_load_error(kind: tuple[str, str], metadata: object, spec: object, as_json: bool) -> None:
    document = {"apiVersion": kind[0], "kind": kind[1], "metadata": metadata, "spec": spec}
    text = json.dumps(document) if as_json else yaml.safe_dump(document)
    try:
        load_text(text, "fuzz.json" if as_json else "fuzz.yaml")
    except LoadError as exc:
        assert "internal error" not in str(exc)
