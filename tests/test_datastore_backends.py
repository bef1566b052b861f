"""The same datastore behaviour on both backends (a directory and a real etcd), and what only
etcd has: Calico's key layout, compare-and-swap under concurrent writers, TLS, and clear errors
when the datastore cannot be reached."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import requests

from enforcer.datastore import (
    Ambiguous,
    BadDatastoreURL,
    Datastore,
    DatastoreError,
    DesiredState,
    NotFound,
    ObjectKey,
    TLSFiles,
    open_datastore,
    parse_datastore_url,
)
from enforcer.datastore.etcd import (
    CALICO_PREFIX,
    Compacted,
    EtcdDatastore,
    EtcdKV,
    EtcdUnavailable,
    KeyExists,
    RevisionConflict,
    etcd_key,
)
from enforcer.loader import LoadError, load_paths
from tests.conftest import require_etcd
from tests.test_datastore import GNP, NP, SCENARIOS, strip

ROOT = Path(__file__).resolve().parents[1]
FLOWTUI = [sys.executable, "-c", "from flowtui.cli import main; main()"]  # the CLI of this tree


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture(params=["file", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> DesiredState:
    if request.param == "file":
        return Datastore(tmp_path / "state")
    url = request.getfixturevalue("etcd_url")
    return open_datastore(url, tmp_path / "local")


def everything(store: DesiredState) -> dict[str, str]:
    """All the backend holds, with a digest of each piece (files, or etcd keys and revisions)."""
    if isinstance(store, Datastore):
        return {str(p.relative_to(store.path)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(store.path.rglob("*")) if p.is_file()}
    assert isinstance(store, EtcdDatastore)
    revision, kvs = store.kv.list("/")
    return {k: f"{kv.revision}:{hashlib.sha256(kv.value).hexdigest()}" for k, kv in kvs.items()}


def test_stored_resources_are_what_the_files_say(store: DesiredState) -> None:
    changes = store.apply_documents([str(SCENARIOS)])
    assert changes.changed and {c.action for c in changes.changes} == {"created"}
    assert strip(store.resources()) == strip(load_paths([str(SCENARIOS)]))
    assert {p.revision for p in store.resources().policies} == {changes.revision}
    again = store.apply_documents([str(SCENARIOS)])
    assert not again.changed and again.revision == changes.revision == store.revision


def test_invalid_input_changes_nothing(store: DesiredState, tmp_path: Path) -> None:
    store.apply_documents([write(tmp_path / "a.yaml", GNP.format(name="a", order=1))])
    before = everything(store)
    bad = write(tmp_path / "bad.yaml", GNP.format(name="b", order=2) + "---\n"
                + GNP.format(name="c", order="not-a-number"))
    with pytest.raises(LoadError) as err:
        store.apply_documents([bad])
    assert "bad.yaml" in str(err.value)
    assert everything(store) == before and [o.key.name for o in store.objects()] == ["a"]


def test_the_merged_result_is_validated(store: DesiredState, tmp_path: Path) -> None:
    # two objects of one input file that only clash once merged with what is stored
    store.apply_documents([write(tmp_path / "t.yaml", "apiVersion: projectcalico.org/v3\nkind: Tier\n"
                                 "metadata: {name: security}\nspec: {order: 100}\n")])
    before = everything(store)
    clash = write(tmp_path / "clash.yaml", "apiVersion: projectcalico.org/v3\nkind: Tier\n"
                  "metadata: {name: other}\nspec: {order: 100}\n")
    try:
        store.apply_documents([clash])
    except LoadError:
        assert everything(store) == before  # refused: nothing written
    else:
        assert {o.key.name for o in store.objects("tier")} == {"security", "other"}


def test_the_toggle_is_one_write_and_keeps_the_generation(store: DesiredState, tmp_path: Path) -> None:
    applied = store.apply_documents([write(tmp_path / "a.yaml", GNP.format(name="a", order=1) + "---\n"
                                           + GNP.format(name="b", order=2))])
    before = everything(store)
    toggled = store.set_disabled("gnp", "a", None, True)
    assert [c.action for c in toggled.changes] == ["disabled"] and toggled.revision > applied.revision
    after = everything(store)
    assert len({k for k in after if after[k] != before.get(k)} | (before.keys() - after.keys())) == 1
    policies = {p.name: p for p in store.resources().policies}
    assert policies["a"].disabled and not policies["b"].disabled
    assert policies["a"].revision == applied.revision  # the generation: rule ids stay
    # re-applying the same file keeps the toggle; a reopened store sees it
    store.apply_documents([str(tmp_path / "a.yaml")])
    reopened = open_datastore(getattr(store, "url", None) and str(store.url), store.path.parents[2]) \
        if isinstance(store, EtcdDatastore) else Datastore(store.path)
    assert {p.name: p.disabled for p in reopened.resources().policies} == {"a": True, "b": False}
    assert store.set_disabled("gnp", "a", None, True).changes[0].action == "unchanged"
    assert store.set_disabled("gnp", "a", None, False).changes[0].action == "enabled"


def test_only_policies_toggle(store: DesiredState) -> None:
    store.apply_documents([str(SCENARIOS)])
    with pytest.raises(DatastoreError, match="not a policy"):
        store.set_disabled("pod", "frontend", "production", True)


def test_find_delete_and_ambiguity(store: DesiredState, tmp_path: Path) -> None:
    store.apply_documents([write(tmp_path / "np.yaml", NP.format(name="x", namespace="a") + "---\n"
                                 + NP.format(name="x", namespace="b"))])
    with pytest.raises(Ambiguous):
        store.find("np", "x")
    assert store.find("np", "x", "a").key == ObjectKey("NetworkPolicy", "a", "x")
    with pytest.raises(NotFound):
        store.delete("np", "x", "c")
    deleted = store.delete("np", "x", "a")
    assert [c.action for c in deleted.changes] == ["deleted"]
    assert [o.key.namespace for o in store.objects("np")] == ["b"]
    gone = store.delete_documents([str(tmp_path / "np.yaml")])
    assert sorted(c.action for c in gone.changes) == ["deleted", "not found"] and not store.objects()


def test_preview_writes_nothing(store: DesiredState) -> None:
    before = everything(store)
    preview = store.preview_documents([str(SCENARIOS)])
    assert {c.action for c in preview.changes.changes} == {"created"} and preview.resources.policies
    assert everything(store) == before


# ---- etcd only -------------------------------------------------------------------------------


def test_urls() -> None:
    assert parse_datastore_url("file:///var/lib/flowtui").path == "/var/lib/flowtui"
    url = parse_datastore_url("etcds://10.0.0.1:2379,[fd00::1]:2380,etcd-3")
    assert url.tls and url.endpoints == (("10.0.0.1", 2379), ("fd00::1", 2380), ("etcd-3", 2379))
    assert str(url) == "etcds://10.0.0.1:2379,[fd00::1]:2380,etcd-3:2379"
    for bad in ("mysql://x", "file://relative", "etcd://host:port", "etcd://a/b"):
        with pytest.raises(BadDatastoreURL):
            parse_datastore_url(bad)


def _etcdctl(endpoint: str, *args: str) -> str:
    done = subprocess.run(["etcdctl", "--endpoints", endpoint, *args], capture_output=True, text=True, timeout=20,
                          env={**os.environ, "ETCDCTL_API": "3"}, check=True)
    return done.stdout


def test_etcdctl_lists_what_flowtui_apply_stored(etcd_url: str, tmp_path: Path) -> None:
    """Through the CLI: Calico's kinds at Calico's keys, as JSON v3 objects; flowtui's own kinds
    under /flowtui/."""
    env = {**os.environ, "FLOWTUI_DATASTORE": etcd_url, "FLOWTUI_HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(ROOT)}
    lab = f"t{os.getpid() % 100000:05x}"[:6]  # a lab that is not up: apply stores, enforces nothing
    done = subprocess.run([*FLOWTUI, "apply", "--lab", lab, "-f", str(SCENARIOS)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    endpoint = etcd_url.split("://", 1)[1]
    listed = _etcdctl(endpoint, "get", "--prefix", CALICO_PREFIX + "globalnetworkpolicies/").splitlines()
    keys, values = listed[0::2], listed[1::2]
    expected = sorted(p.name for p in load_paths([str(SCENARIOS)]).policies if p.kind == "GlobalNetworkPolicy")
    assert sorted(k.rsplit("/", 1)[1] for k in keys) == expected
    body = json.loads(values[0])
    assert body["kind"] == "GlobalNetworkPolicy" and body["apiVersion"] == "projectcalico.org/v3"
    assert body["metadata"]["name"] == keys[0].rsplit("/", 1)[1] and "spec" in body
    np_keys = _etcdctl(endpoint, "get", "--prefix", "--keys-only", CALICO_PREFIX + "networkpolicies/").split()
    assert np_keys == [CALICO_PREFIX + "networkpolicies/staging/log-and-deny-frontend"]
    pods = _etcdctl(endpoint, "get", "--prefix", "--keys-only", "/flowtui/resources/core/pods/").split()
    assert "/flowtui/resources/core/pods/production/frontend" in pods
    got = subprocess.run([*FLOWTUI, "get", "gnp", "-o", "json"], capture_output=True, text=True, env=env, timeout=60)
    assert got.returncode == 0, got.stderr
    assert sorted(item["metadata"]["name"] for item in json.loads(got.stdout)["items"]) == expected


def test_objects_written_by_calicoctl_are_read(etcd_url: str, tmp_path: Path) -> None:
    ds = open_datastore(etcd_url, tmp_path)
    body = {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "ext"},
            "spec": {"selector": "all()", "ingress": [{"action": "Allow"}]}}
    _etcdctl(etcd_url.split("://", 1)[1], "put", CALICO_PREFIX + "globalnetworkpolicies/ext", json.dumps(body))
    assert [p.name for p in ds.resources().policies] == ["ext"]
    assert ds.set_disabled("gnp", "ext", None, True).changes[0].action == "disabled"
    assert ds.resources().policies[0].disabled


def test_concurrent_applies_lose_nothing(etcd_url: str, tmp_path: Path) -> None:
    """Writers in separate processes, each applying its own objects and all rewriting one shared
    object: every object lands, and the shared one ends as the last successful write said."""
    writer = textwrap.dedent("""
        import sys
        from enforcer.datastore import open_datastore
        url, me, rounds, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
        ds = open_datastore(url, folder + "/local-" + me)
        for i in range(rounds):
            ds.apply_documents([f"{folder}/{me}-{i}.yaml"])
    """)
    writers, rounds = 4, 6
    for w in range(writers):
        for i in range(rounds):
            write(tmp_path / f"w{w}-{i}.yaml", GNP.format(name=f"w{w}-{i}", order=i) + "---\n"
                  + GNP.format(name="shared", order=w * 100 + i))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", writer, etcd_url, f"w{w}", str(rounds), str(tmp_path)],
                              env=env, stderr=subprocess.PIPE, text=True) for w in range(writers)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    ds = open_datastore(etcd_url, tmp_path)
    names = {o.key.name for o in ds.objects("gnp")}
    assert names == {"shared"} | {f"w{w}-{i}" for w in range(writers) for i in range(rounds)}
    shared = next(p for p in ds.resources().policies if p.name == "shared")
    assert shared.order is not None and int(shared.order) % 100 == rounds - 1  # some writer's last round


def test_a_lost_race_is_retried_against_the_new_state(etcd_url: str, tmp_path: Path) -> None:
    """A writer whose snapshot went stale between reading and committing re-validates: its
    transaction compares revisions, so the other write is never overwritten blindly."""
    a, b = open_datastore(etcd_url, tmp_path / "a"), open_datastore(etcd_url, tmp_path / "b")
    assert isinstance(a, EtcdDatastore)
    first = write(tmp_path / "one.yaml", GNP.format(name="one", order=1))
    second = write(tmp_path / "two.yaml", GNP.format(name="two", order=2))
    real = a._snapshot
    raced = threading.Event()

    def stale_once():  # type: ignore[no-untyped-def]
        snap = real()
        if not raced.is_set():
            raced.set()
            b.apply_documents([second])  # lands between a's read and a's commit
        return snap

    a._snapshot = stale_once  # type: ignore[method-assign]
    a.apply_documents([first])
    assert {o.key.name for o in b.objects()} == {"one", "two"}


def test_one_read_serves_a_reconciles_reads_from_one_etcd_list(etcd_url: str, tmp_path: Path) -> None:
    """Inside `one_read` the catalog and the resources come from one list at one revision (a
    reconcile's reads: one round trip); outside it, and for writes, every read is fresh."""
    a, b = open_datastore(etcd_url, tmp_path / "a"), open_datastore(etcd_url, tmp_path / "b")
    assert isinstance(a, EtcdDatastore)
    a.apply_documents([write(tmp_path / "one.yaml", GNP.format(name="one", order=1))])
    lists = []
    real = a.kv.list

    def counted(*prefixes: str):  # type: ignore[no-untyped-def]
        lists.append(prefixes)
        return real(*prefixes)

    a.kv.list = counted  # type: ignore[method-assign]
    with a.one_read():
        catalog = a.catalog()
        b.apply_documents([write(tmp_path / "two.yaml", GNP.format(name="two", order=2))])
        with a.one_read():  # nested: still the outer read
            assert a.revision == catalog.revision
        assert {p.name for p in a.resources().policies} == {"one"}
        assert len(lists) == 1
    assert len(lists) == 1
    assert {p.name for p in a.resources().policies} == {"one", "two"}
    assert a.catalog().revision > catalog.revision
    assert len(lists) == 3


def test_unreachable_endpoints_fail_fast_and_name_them(tmp_path: Path) -> None:
    from tests.etcd_server import free_port

    port = free_port()
    url = f"etcd://127.0.0.1:{port},127.0.0.2:{port}"
    start = time.monotonic()
    with pytest.raises(EtcdUnavailable) as err:
        open_datastore(url, tmp_path).resources()
    assert time.monotonic() - start < 5
    assert f"127.0.0.1:{port}: connection refused" in str(err.value) and f"127.0.0.2:{port}" in str(err.value)
    # the CLI: a message and exit 1, no traceback
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWTUI_HOME": str(tmp_path)}
    done = subprocess.run([*FLOWTUI, "get", "gnp", "--datastore", url],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: etcd datastore {url} unavailable")


def test_a_silent_endpoint_times_out(tmp_path: Path) -> None:
    import socket

    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"etcd://127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(EtcdUnavailable, match="no answer within 1 s"):
            EtcdDatastore(parse_datastore_url(url), state_dir=tmp_path, timeout=1).resources()
        assert time.monotonic() - start < 4


@pytest.fixture(scope="module")
def etcd_tls():  # type: ignore[no-untyped-def]
    require_etcd()
    from tests.etcd_server import etcd_server

    with etcd_server(tls=True) as server:
        yield server


def test_tls_client_certificates(etcd_tls, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tls = etcd_tls.tls
    good = TLSFiles(tls.ca, tls.client_cert, tls.client_key)
    ds = open_datastore(etcd_tls.url, tmp_path, good)
    ds.apply_documents([write(tmp_path / "a.yaml", GNP.format(name="a", order=1))])
    assert [p.name for p in ds.resources().policies] == ["a"]
    start = time.monotonic()
    with pytest.raises(EtcdUnavailable, match="not signed by the CA given"):
        _ = open_datastore(etcd_tls.url, tmp_path, TLSFiles(tls.other_ca, tls.client_cert, tls.client_key)).revision
    with pytest.raises(EtcdUnavailable, match=etcd_tls.endpoint):  # no client certificate: refused
        _ = open_datastore(etcd_tls.url, tmp_path, TLSFiles(tls.ca)).revision
    assert time.monotonic() - start < 5
    # plain HTTP to a TLS endpoint
    with pytest.raises(EtcdUnavailable, match=etcd_tls.endpoint):
        _ = open_datastore(f"etcd://{etcd_tls.endpoint}", tmp_path, TLSFiles()).revision
    # the CLI with the wrong CA: one line, exit 1
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWTUI_HOME": str(tmp_path)}
    done = subprocess.run([*FLOWTUI, "get", "gnp", "--datastore", etcd_tls.url,
                           "--etcd-ca", tls.other_ca, "--etcd-cert", tls.client_cert, "--etcd-key", tls.client_key],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "--etcd-ca" in done.stderr
    done = subprocess.run([*FLOWTUI, "get", "gnp", "-o", "json", "--datastore",
                           etcd_tls.url, "--etcd-ca", tls.ca, "--etcd-cert", tls.client_cert, "--etcd-key",
                           tls.client_key], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [item["metadata"]["name"] for item in json.loads(done.stdout)["items"]] == ["a"]


def test_etcd_key_layout() -> None:
    assert etcd_key(ObjectKey("GlobalNetworkPolicy", None, "a")) == CALICO_PREFIX + "globalnetworkpolicies/a"
    assert etcd_key(ObjectKey("NetworkPolicy", "ns", "b")) == CALICO_PREFIX + "networkpolicies/ns/b"
    assert etcd_key(ObjectKey("Tier", None, "t")) == CALICO_PREFIX + "tiers/t"
    assert etcd_key(ObjectKey("Pod", "ns", "p")) == "/flowtui/resources/core/pods/ns/p"
    assert etcd_key(ObjectKey("KubernetesNetworkPolicy", "ns", "k")).startswith("/flowtui/resources/networking.k8s.io/")


def test_kv_verbs_compare_revisions(etcd_url: str) -> None:
    """libcalico-go's Create/Update/Apply/Delete/Get/List on single keys, with revisions."""
    kv = EtcdKV(parse_datastore_url(etcd_url), TLSFiles())
    made = kv.create("/flowtui/test/a", "1")
    assert kv.get("/flowtui/test/a") == made
    with pytest.raises(KeyExists):
        kv.create("/flowtui/test/a", "2")
    updated = kv.update("/flowtui/test/a", "2", made.revision)
    assert updated.value == b"2" and updated.revision > made.revision and updated.created == made.created
    with pytest.raises(RevisionConflict):
        kv.update("/flowtui/test/a", "3", made.revision)  # stale: nothing written
    assert kv.get("/flowtui/test/a") == updated
    applied = kv.apply("/flowtui/test/b", "x")
    revision, listed = kv.list("/flowtui/test/")
    assert listed == {"/flowtui/test/a": updated, "/flowtui/test/b": applied} and revision == applied.revision
    with pytest.raises(RevisionConflict):
        kv.delete("/flowtui/test/a", made.revision)
    kv.delete("/flowtui/test/a", updated.revision)
    with pytest.raises(NotFound):
        kv.delete("/flowtui/test/a")
    assert kv.get("/flowtui/test/a") is None


def test_watch_from_a_revision_and_compaction(etcd_url: str) -> None:
    kv = EtcdKV(parse_datastore_url(etcd_url), TLSFiles())
    start, _ = kv.list("/flowtui/w/")
    first = kv.apply("/flowtui/w/a", "1")
    kv.apply("/flowtui/other", "not watched")
    second = kv.apply("/flowtui/w/b", "2")
    gone = kv.delete("/flowtui/w/a")
    events = kv.watch("/flowtui/w/", start + 1)
    seen = [next(events) for _ in range(3)]
    events.close()
    assert [(e.kind, e.kv.key, e.kv.revision) for e in seen] == [
        ("put", "/flowtui/w/a", first.revision), ("put", "/flowtui/w/b", second.revision),
        ("delete", "/flowtui/w/a", gone)]
    requests.post(f"http://{etcd_url.split('://', 1)[1]}/v3/kv/compaction", json={"revision": gone},
                  timeout=5).raise_for_status()
    with pytest.raises(Compacted) as err:
        next(kv.watch("/flowtui/w/", start + 1))
    assert err.value.revision == gone


def test_a_dead_endpoint_is_skipped(etcd_url: str, tmp_path: Path) -> None:
    from tests.etcd_server import free_port

    live = etcd_url.split("://", 1)[1]
    ds = open_datastore(f"etcd://127.0.0.1:{free_port()},{live}", tmp_path)
    ds.apply_documents([write(tmp_path / "a.yaml", GNP.format(name="a", order=1))])
    assert [o.key.name for o in ds.objects()] == ["a"]


def test_one_member_of_three_down_changes_nothing(tmp_path: Path) -> None:
    require_etcd()
    from tests.etcd_server import etcd_cluster

    with etcd_cluster(3) as cluster:
        ds = open_datastore(cluster.url, tmp_path)
        ds.apply_documents([write(tmp_path / "a.yaml", GNP.format(name="a", order=1))])
        cluster.members[0].process.kill()  # the first endpoint tried
        cluster.members[0].process.wait()
        start = time.monotonic()
        ds.apply_documents([write(tmp_path / "b.yaml", GNP.format(name="b", order=2))])
        assert ds.set_disabled("gnp", "a", None, True).changes[0].action == "disabled"
        assert time.monotonic() - start < 5
        other = open_datastore(f"etcd://{cluster.members[2].endpoint}", tmp_path)
        assert {p.name: p.disabled for p in other.resources().policies} == {"a": True, "b": False}
        cluster.members[1].process.kill()  # quorum lost: a clear error, not a hang
        cluster.members[1].process.wait()
        start = time.monotonic()
        with pytest.raises(DatastoreError, match=cluster.members[2].endpoint):
            ds.apply_documents([write(tmp_path / "c.yaml", GNP.format(name="c", order=3))])
        assert time.monotonic() - start < 10


def test_local_records_are_locked_as_with_a_directory(etcd_url: str, tmp_path: Path) -> None:
    """Rule ids and applied tables stay on this machine: reconcilers here serialise on its lock."""
    ds = open_datastore(etcd_url, tmp_path)
    probe = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)\n")
    with ds.locked(), ds.locked(exclusive=False):  # re-entrant
        held = subprocess.run([sys.executable, "-c", probe, str(ds.path / "lock")], timeout=30)
    free = subprocess.run([sys.executable, "-c", probe, str(ds.path / "lock")], timeout=30)
    assert (held.returncode, free.returncode) == (3, 0)
    assert oct(ds.path.stat().st_mode & 0o777) == "0o700"


def test_an_apply_larger_than_etcd_allows_changes_nothing(etcd_url: str, tmp_path: Path) -> None:
    """etcd's default --max-txn-ops is 128: an apply of 70 objects (141 operations) is refused
    whole, with a message saying what to change; nothing is stored."""
    ds = open_datastore(etcd_url, tmp_path)
    big = write(tmp_path / "big.yaml", "---\n".join(GNP.format(name=f"p{i}", order=i) for i in range(70)))
    before = everything(ds)
    with pytest.raises(DatastoreError, match=r"--max-txn-ops 141 or more.*nothing was stored|nothing was stored"
                                             r".*--max-txn-ops 141"):
        ds.apply_documents([big])
    assert everything(ds) == before and not ds.objects()


def test_cli_datastore_options_are_checked(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWTUI_HOME": str(tmp_path)}
    env.pop("FLOWTUI_DATASTORE", None)
    cases = [
        (["get", "gnp", "--datastore", "mysql://db"], "unknown datastore scheme 'mysql'"),
        (["get", "gnp", "--etcd-ca", str(ROOT / "README.md")], "need --datastore etcd://"),
        (["get", "gnp", "--datastore", "etcd://127.0.0.1:1", "--etcd-cert", str(ROOT / "README.md")],
         "--etcd-cert and --etcd-key go together"),
        (["get", "gnp", "--datastore", "etcd://127.0.0.1:1", "--etcd-ca", str(tmp_path / "nope.crt")],
         "no such file"),
        (["agent", "--node", "node-a"], "flowtui agent needs an etcd datastore"),
    ]
    for args, message in cases:
        done = subprocess.run([*FLOWTUI, *args], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)


def test_what_the_lab_cannot_build_is_refused_at_its_input_line(etcd_url: str, tmp_path: Path) -> None:
    """As with the directory: the lab is planned from the merged result before the transaction,
    errors name the input's FILE:LINE (not the etcd key), and nothing is stored."""
    from tests.test_check_before_commit import DUPLICATE_ADDRESS

    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWTUI_HOME": str(tmp_path / "home"),
           "FLOWTUI_DATASTORE": etcd_url}
    bad = tmp_path / "dup.yaml"
    bad.write_text(DUPLICATE_ADDRESS)
    lab = ["--lab", "tnolab"]
    dry = subprocess.run([*FLOWTUI, "apply", "--dry-run", *lab, "-f", str(bad)], capture_output=True, text=True,
                         env=env, timeout=60)
    assert dry.returncode == 2 and f"({bad}:1)" in dry.stderr and f"({bad}:7)" in dry.stderr, dry.stderr
    good = tmp_path / "good.yaml"
    good.write_text(DUPLICATE_ADDRESS.split("---\n")[0])
    assert subprocess.run([*FLOWTUI, "apply", *lab, "-f", str(good)], env=env, timeout=60,
                          capture_output=True).returncode == 0
    ds = open_datastore(etcd_url, tmp_path / "reader")
    before = everything(ds)
    clash = tmp_path / "clash.yaml"
    clash.write_text(DUPLICATE_ADDRESS.split("---\n")[1])
    done = subprocess.run([*FLOWTUI, "apply", *lab, "-f", str(clash)], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 2 and "address 10.244.1.10 is used by both pod default/a" in done.stderr
    assert "nothing was changed" in done.stderr and "etcd://" not in done.stderr
    assert everything(ds) == before
