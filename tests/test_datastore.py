"""The datastore: validation before writing, revisions, the live toggle, locking, atomic layout."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from enforcer.datastore import (
    DEFAULT_HOME,
    KIND_INFO,
    Ambiguous,
    DamagedDatastore,
    Datastore,
    DatastoreError,
    NotFound,
    ObjectKey,
    UnknownKind,
    default_home,
    resolve_kind,
    resolve_kinds,
)
from enforcer.datastore import store as store_module
from enforcer.loader import LoadError, load_paths
from enforcer.loader.objects import KINDS

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "flowtui" / "scenarios" / "article"

GNP = """\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: {name}
spec:
  order: {order}
  selector: app == 'web'
  ingress:
  - action: Allow
    protocol: TCP
    destination:
      ports: ["1000:1059", 80]
"""

NP = """\
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  selector: all()
  ingress: [{{action: Deny}}]
"""


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` with a digest of its content."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def strip(value: Any) -> Any:
    """A model value without origins and revisions, for comparing two loads of the same objects."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return tuple((f.name, strip(getattr(value, f.name))) for f in dataclasses.fields(value)
                     if f.name not in ("origin", "revision"))
    if isinstance(value, tuple | list):
        return tuple(strip(v) for v in value)
    return value


@pytest.fixture
def ds(tmp_path: Path) -> Datastore:
    return Datastore(tmp_path / "state")


def test_stored_resources_are_what_the_files_say(ds: Datastore) -> None:
    changes = ds.apply_documents([str(SCENARIOS)])
    assert changes.revision == 1 and changes.changed
    assert {c.action for c in changes.changes} == {"created"}
    assert strip(ds.resources()) == strip(load_paths([str(SCENARIOS)]))
    assert {p.revision for p in ds.resources().policies} == {1}
    # origins point at the stored documents, which are YAML files with the object's lines
    origin = ds.resources().policies[0].origin
    assert origin.file.startswith(str(ds.path / "objects")) and Path(origin.file).exists()


def test_yaml_round_trip_keeps_meaning(ds: Datastore, tmp_path: Path) -> None:
    src = write(tmp_path / "p.yaml", GNP.format(name="web", order=10))
    ds.apply_documents([src])
    (policy,) = ds.resources().policies
    (original,) = load_paths([src]).policies
    assert strip(policy) == strip(original)
    (stored, doc), = ds.object_documents("gnp")
    assert doc["spec"]["ingress"][0]["destination"]["ports"] == ["1000:1059", 80]  # still a string
    assert stored.source == f"{src}:1"


def test_invalid_input_changes_nothing(ds: Datastore, tmp_path: Path) -> None:
    ds.apply_documents([write(tmp_path / "ok.yaml", GNP.format(name="web", order=10))])
    before = tree(ds.path)
    bad = write(tmp_path / "bad.yaml", GNP.format(name="web", order="ten") + "---\n" + GNP.format(name="x", order=1))
    with pytest.raises(LoadError) as info:
        ds.apply_documents([write(tmp_path / "new.yaml", GNP.format(name="new", order=1)), bad])
    assert any(p.file == bad and p.line == 6 for p in info.value.problems), info.value
    assert tree(ds.path) == before and ds.revision == 1
    with pytest.raises(LoadError, match="no such file"):
        ds.apply_documents([str(tmp_path / "missing.yaml")])
    assert tree(ds.path) == before


def test_the_merged_result_is_validated(ds: Datastore, tmp_path: Path) -> None:
    ds.apply_documents([write(tmp_path / "a.yaml", GNP.format(name="a", order=1))])
    (stored,) = ds.objects()
    (ds.path / stored.file).write_text("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n"
                                       "metadata: {name: a}\nspec: {order: nope}\n")  # damaged on disk
    ds2 = Datastore(ds.path)  # no cache
    before = tree(ds.path)
    # Edited behind the datastore's back: its checksum no longer matches, so it is refused as damage
    # (naming the file) before it could be loaded, and the write changes nothing.
    with pytest.raises(DamagedDatastore, match=re.escape(str(ds.path / stored.file))):
        ds2.apply_documents([write(tmp_path / "b.yaml", GNP.format(name="b", order=2))])
    assert tree(ds.path) == before


def test_duplicates_across_files_are_refused(ds: Datastore, tmp_path: Path) -> None:
    one = write(tmp_path / "one.yaml", GNP.format(name="web", order=1))
    two = write(tmp_path / "two.yaml", GNP.format(name="web", order=2))
    with pytest.raises(LoadError, match="defined twice") as info:
        ds.apply_documents([one, two])
    assert info.value.problems[0].file == two
    assert not (ds.path / "state.json").exists()


def test_revisions(ds: Datastore, tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", GNP.format(name="a", order=1))
    b = write(tmp_path / "b.yaml", GNP.format(name="b", order=1))
    assert ds.apply_documents([a, b]).revision == 1
    again = ds.apply_documents([a, b])
    assert again.revision == 1 and not again.changed and {c.action for c in again.changes} == {"unchanged"}
    changed = ds.apply_documents([write(tmp_path / "a.yaml", GNP.format(name="a", order=2)), b])
    assert changed.revision == 2
    assert [(c.key.name, c.action, c.revision) for c in changed.changes] == [("a", "configured", 2),
                                                                          ("b", "unchanged", 1)]
    revisions = {p.name: p.revision for p in ds.resources().policies}
    assert revisions == {"a": 2, "b": 1}
    (obj,) = ds.objects("gnp", name="a")
    assert (obj.created, obj.revision) == (1, 2)
    deleted = ds.delete("gnp", "b")
    assert deleted.revision == 3 and [str(c) for c in deleted.changes] == ["gnp/b deleted"]
    recreated = ds.apply_documents([b])
    assert recreated.revision == 4 and ds.objects("gnp", name="b")[0].revision == 4  # never reused


def test_the_toggle_persists(ds: Datastore, tmp_path: Path) -> None:
    src = write(tmp_path / "p.yaml", GNP.format(name="web", order=1))
    ds.apply_documents([src])
    changes = ds.set_disabled("GlobalNetworkPolicy", "web", None, True)
    assert [str(c) for c in changes.changes] == ["gnp/web disabled"] and changes.revision == 2
    assert ds.set_disabled("gnp", "web", None, True).changes[0].action == "unchanged"
    reopened = Datastore(ds.path)
    (policy,) = reopened.resources().policies
    # The object's revision moves (2); the policy's is its generation, which a toggle keeps (1),
    # so its rule ids and compiled layout stay.
    assert policy.disabled and policy.revision == 1 and reopened.find("gnp", "web").revision == 2
    (_, doc), = reopened.object_documents("gnp", name="web")
    assert doc["metadata"]["annotations"] == {"flowtui.dev/disabled": "true"}
    # applying the file again (which says nothing about the toggle) keeps it off
    assert not reopened.apply_documents([src]).changed
    assert reopened.resources().policies[0].disabled
    reopened.set_disabled("gnp", "web", None, False)
    (_, doc), = reopened.object_documents("gnp", name="web")
    assert "annotations" not in doc["metadata"] and not reopened.resources().policies[0].disabled
    # a file that sets the annotation itself wins
    annotated = GNP.format(name="web", order=1).replace("  name: web\n",
                                                        "  name: web\n  annotations: {flowtui.dev/disabled: 'true'}\n")
    reopened.apply_documents([write(tmp_path / "q.yaml", annotated)])
    assert reopened.resources().policies[0].disabled and reopened.objects()[0].disabled


def test_toggle_journal_crashes_and_folding(ds: Datastore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds.apply_documents([write(tmp_path / "a.yaml", GNP.format(name="a", order=1))])
    journal = ds.path / "toggles.jsonl"
    ds.set_disabled("gnp", "a", None, True)
    # an append a crash cut short (no newline): that toggle never returned, readers ignore it
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"revision": 3, "obj')
    assert Datastore(ds.path).catalog().revision == 2 and Datastore(ds.path).objects()[0].disabled
    other = Datastore(ds.path)
    other.set_disabled("gnp", "a", None, False)  # cuts the torn line before its own
    assert journal.read_bytes().count(b"\n") == 2 and journal.read_bytes().startswith(whole)
    assert not Datastore(ds.path).objects()[0].disabled and Datastore(ds.path).revision == 3
    # lines a later index write folded (a crash before the journal was removed) are skipped
    index_text = (ds.path / "state.json").read_bytes()
    ds.apply_documents([write(tmp_path / "b.yaml", GNP.format(name="b", order=2))])
    journal.write_bytes(whole)
    assert Datastore(ds.path).revision == 4 and not Datastore(ds.path).objects("gnp", name="a")[0].disabled
    # damage in the middle is refused, naming the file and line
    journal.write_bytes(b"not json\n")
    with pytest.raises(DamagedDatastore, match=r"toggles.jsonl:1: damaged toggle"):
        Datastore(ds.path).catalog()
    journal.write_bytes(whole.replace(b'"revision": 2', b'"revision": 7', 1))
    with pytest.raises(DamagedDatastore, match=r"toggles.jsonl:1: toggle at revision 7 does not follow revision 4"):
        Datastore(ds.path).catalog()
    from enforcer.datastore.integrity import repair

    assert repair(Datastore(ds.path)).ok and not journal.exists()  # rebuilt from the documents
    assert index_text != (ds.path / "state.json").read_bytes()
    # past JOURNAL_FOLD lines, a toggle folds the journal into the index itself
    monkeypatch.setattr(store_module, "JOURNAL_FOLD", 3)
    fresh = Datastore(ds.path)
    for k in range(4):
        fresh.set_disabled("gnp", "b", None, k % 2 == 0)
    assert not journal.exists()
    index = json.loads((ds.path / "state.json").read_text())
    revision = json.loads(index_text)["revision"]
    assert index["revision"] > revision and Datastore(ds.path).revision == index["revision"]
    assert not Datastore(ds.path).objects("gnp", name="b")[0].disabled


def test_only_policies_toggle(ds: Datastore) -> None:
    ds.apply_documents([str(SCENARIOS)])
    with pytest.raises(DatastoreError, match="not a policy"):
        ds.set_disabled("pod", "frontend", "production", True)


def test_find_delete_and_ambiguity(ds: Datastore, tmp_path: Path) -> None:
    ds.apply_documents([write(tmp_path / "np.yaml", NP.format(name="deny", namespace="a") + "---\n"
                              + NP.format(name="deny", namespace="b"))])
    with pytest.raises(Ambiguous, match="np/a/deny, np/b/deny"):
        ds.find("np", "deny")
    assert ds.find("networkpolicies", "deny", "b").key == ObjectKey("NetworkPolicy", "b", "deny")
    with pytest.raises(NotFound, match="in namespace c"):
        ds.delete("np", "deny", "c")
    with pytest.raises(NotFound):
        ds.delete("knp", "deny", "a")  # Kubernetes' NetworkPolicy is another kind
    ds.delete("policy", "deny", "a")
    assert [o.key.namespace for o in ds.objects()] == ["b"]
    changes = ds.delete_documents([write(tmp_path / "np2.yaml", NP.format(name="deny", namespace="b") + "---\n"
                                         + NP.format(name="gone", namespace="b"))])
    assert [c.action for c in changes.changes] == ["deleted", "not found"]
    assert ds.objects() == [] and changes.not_found


def test_delete_documents_needs_only_the_envelope(ds: Datastore, tmp_path: Path) -> None:
    ds.apply_documents([write(tmp_path / "a.yaml", GNP.format(name="a", order=1))])
    envelope = write(tmp_path / "env.yaml", "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n"
                                            "metadata: {name: a}\nspec: {order: not-a-number}\n")
    assert ds.delete_documents([envelope]).changed
    with pytest.raises(LoadError, match="unknown or missing"):
        ds.delete_documents([write(tmp_path / "x.yaml",
                                   "apiVersion: projectcalico.org/v3\nkind: Thing\nmetadata: {name: a}\n")])


def test_stdin_and_lists(ds: Datastore, monkeypatch: pytest.MonkeyPatch) -> None:
    items = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "resourceVersion": "77", "uid": "u"}},
    ]}
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(items)))
    changes = ds.apply_documents(["-"])
    assert [str(c) for c in changes.changes] == ["namespace/x created"]
    (obj, doc), = ds.object_documents("ns")
    assert obj.source == "<stdin>:1" and doc["metadata"] == {"name": "x"}  # server fields dropped


def test_kind_names() -> None:
    assert {k.model_kind for k in KIND_INFO} == {k.model_kind for k in KINDS.values()}
    assert resolve_kind("gnp").model_kind == "GlobalNetworkPolicy"
    assert resolve_kind("NetworkPolicies").model_kind == "NetworkPolicy"
    assert resolve_kind("knp").model_kind == "KubernetesNetworkPolicy"
    for name, kind in [("GNS", "GlobalNetworkSet"), ("netset", "NetworkSet"), ("hep", "HostEndpoint"),
                       ("pods", "Pod"), ("ns", "Namespace"), ("node", "Node"), ("Profiles", "Profile"),
                       ("tier", "Tier"), ("sa", "ServiceAccount"), ("ext", "ExternalHost"), ("sgnp",
                       "StagedGlobalNetworkPolicy"), ("felixconfig", "FelixConfiguration")]:
        assert resolve_kind(name).model_kind == kind, name
    assert len(resolve_kinds("policy")) == 7
    assert resolve_kind("cnp").model_kind == "ClusterNetworkPolicy"
    assert resolve_kind("clusternetworkpolicies").api_version == "policy.networking.k8s.io/v1alpha2"
    assert resolve_kind("caliconetworkpolicy").model_kind == "NetworkPolicy"
    with pytest.raises(UnknownKind, match="unknown kind 'gnpx'"):
        resolve_kinds("gnpx")
    with pytest.raises(UnknownKind, match="several kinds"):
        resolve_kind("policies")


def test_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FLOWTUI_HOME", raising=False)
    assert str(default_home()) == DEFAULT_HOME
    monkeypatch.setenv("FLOWTUI_HOME", str(tmp_path))
    assert Datastore().path == tmp_path


def test_reading_an_empty_or_missing_store_writes_nothing(tmp_path: Path) -> None:
    ds = Datastore(tmp_path / "nothing-here")
    assert ds.revision == 0 and ds.objects() == [] and ds.resources().policies == ()
    assert not (tmp_path / "nothing-here").exists()


def test_layout_and_crash_leftovers(ds: Datastore, tmp_path: Path) -> None:
    ds.apply_documents([write(tmp_path / "a.yaml", GNP.format(name="a", order=1))])
    before = (ds.path / "state.json").read_bytes()
    ds.set_disabled("gnp", "a", None, True)  # a toggle writes one journal line, not the index
    files = sorted(str(p.relative_to(ds.path)) for p in ds.path.rglob("*") if p.is_file())
    assert files == ["lock", "objects/projectcalico.org_v3/GlobalNetworkPolicy/_/a@1.yaml", "state.json",
                     "toggles.jsonl"]
    assert (ds.path / "state.json").read_bytes() == before
    (line,) = (ds.path / "toggles.jsonl").read_text().splitlines()
    assert json.loads(line)["revision"] == 2 and json.loads(line)["object"]["disabled"]
    catalog = Datastore(ds.path).catalog()
    (obj,) = catalog.objects.values()
    assert catalog.revision == 2 and catalog.layout == 1 and obj.disabled and obj.generation == 1
    # the next write that is not a toggle folds the journal into the index
    ds.apply_documents([write(tmp_path / "b.yaml", GNP.format(name="b", order=2))])
    assert not (ds.path / "toggles.jsonl").exists()
    index = json.loads((ds.path / "state.json").read_text())
    assert index["revision"] == 3 and index["objects"][0]["file"].endswith("a@1.yaml")
    assert index["objects"][0]["disabled"] and index["objects"][0]["generation"] == 1 and index["layout"] == 3
    # a crash between writing a document and the index leaves a stray file: the next write sweeps it
    stray = ds.path / "objects/projectcalico.org_v3/GlobalNetworkPolicy/_/b@9.yaml"
    stray.write_text("junk")
    assert ds.resources().policies[0].name == "a"  # ignored by readers
    ds.apply_documents([write(tmp_path / "c.yaml", GNP.format(name="c", order=1))])
    assert not stray.exists()


WRITER = """
import sys
from pathlib import Path
from enforcer.datastore import Datastore
ds = Datastore(sys.argv[1])
me, rounds, tmp = sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
for i in range(rounds):
    f = tmp / f"{me}-{i}.yaml"
    f.write_text(f"apiVersion: v1\\nkind: Namespace\\nmetadata: {{name: {me}, labels: {{round: '{i}'}}}}\\n")
    ds.apply_documents([str(f)])
    ds.revision
"""


def test_concurrent_writers_serialise(ds: Datastore, tmp_path: Path) -> None:
    """Eight processes each make six changes at once: every change gets its own revision and none is
    lost (without the lock, read-modify-write races would lose some)."""
    writers, rounds = 8, 6
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(ds.path), f"w{n}", str(rounds), str(tmp_path)], env=env,
                         stderr=subprocess.PIPE, text=True)
        for n in range(writers)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert ds.revision == writers * rounds
    objects = ds.objects("ns")
    assert sorted(o.key.name for o in objects) == sorted(f"w{n}" for n in range(writers))
    labels = {n.name: dict(n.labels) for n in ds.resources().namespaces}
    assert all(lab == {"round": str(rounds - 1), "kubernetes.io/metadata.name": name} for name, lab in labels.items())
    assert len({o.revision for o in objects}) == writers  # distinct last revisions
