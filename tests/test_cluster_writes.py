"""Concurrent writers on the etcd datastore lose nothing: two `flowtui apply` at once of different
objects both land; of the same object, both land one after the other (the object's version moves
by two, the later write is what stays, the earlier one is its previous revision); and an apply
racing a live toggle of the policy it rewrites keeps the toggle (the apply's compare-and-swap
covers the keys it rewrites, not only the layout)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
import yaml

from enforcer.datastore import open_datastore
from enforcer.datastore.etcd import etcd_key

ROOT = Path(__file__).resolve().parents[1]
FLOWTUI = [sys.executable, "-c", "from flowtui.cli import main; main()"]
ROUNDS = 4


def gnp(name: str, order: float, port: int = 80) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": name},
            "spec": {"order": order, "selector": "app == 'web'", "types": ["Ingress"],
                     "ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [port]}}]}}


def write(path: Path, *docs: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    return str(path)


def applies_at_once(url: str, tmp_path: Path, files: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Start one `flowtui apply -f FILE` per file at the same moment (no lab: store only)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWTUI_HOME": str(tmp_path / "home"), "FLOWTUI_DATASTORE": url,
           "FLOWTUI_LAB": "xdnone"}
    procs = [subprocess.Popen([*FLOWTUI, "apply", "-f", f], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for f in files]
    out = []
    for proc, f in zip(procs, files, strict=True):
        stdout, stderr = proc.communicate(timeout=120)
        out.append(subprocess.CompletedProcess([f], proc.returncode, stdout, stderr))
    return out


def history(url: str, key: str) -> tuple[int, int, bytes]:
    """(version, mod_revision, value) of `key`, read straight from etcd."""
    host = url.split("://", 1)[1].split(",")[0]
    done = requests.post(f"http://{host}/v3/kv/range", json={"key": base64.b64encode(key.encode()).decode()},
                         timeout=5)
    kv = done.json()["kvs"][0]
    return int(kv["version"]), int(kv["mod_revision"]), base64.b64decode(kv["value"])


def value_at(url: str, key: str, revision: int) -> bytes:
    host = url.split("://", 1)[1].split(",")[0]
    done = requests.post(f"http://{host}/v3/kv/range", json={"key": base64.b64encode(key.encode()).decode(),
                                                             "revision": str(revision)}, timeout=5)
    return base64.b64decode(done.json()["kvs"][0]["value"])


def test_two_applies_of_different_objects_both_land(etcd_url: str, tmp_path: Path) -> None:
    for round_ in range(ROUNDS):
        files = [write(tmp_path / f"{w}-{round_}.yaml", gnp(f"{w}-{round_}", 10 + round_)) for w in ("a", "b")]
        done = applies_at_once(etcd_url, tmp_path, files)
        assert [d.returncode for d in done] == [0, 0], [d.stderr for d in done]
        names = {o.key.name for o in open_datastore(etcd_url, tmp_path / "reader").objects("gnp")}
        assert {f"a-{round_}", f"b-{round_}"} <= names, f"round {round_}: a write was lost: {sorted(names)}"


def test_two_applies_of_one_object_both_land_in_order(etcd_url: str, tmp_path: Path) -> None:
    ds = open_datastore(etcd_url, tmp_path / "reader")
    ds.apply_documents([write(tmp_path / "first.yaml", gnp("same", 1.0))])
    key = etcd_key(ds.find("gnp", "same").key)
    for round_ in range(ROUNDS):
        version, _, _ = history(etcd_url, key)
        files = [write(tmp_path / f"{w}-{round_}.yaml", gnp("same", 100.0 * round_ + w, port=1000 + w))
                 for w in (1, 2)]
        done = applies_at_once(etcd_url, tmp_path, files)
        assert [d.returncode for d in done] == [0, 0], [d.stderr for d in done]
        after, revision, value = history(etcd_url, key)
        assert after == version + 2, f"round {round_}: {after - version} of 2 writes reached the key"
        orders = {100.0 * round_ + w for w in (1, 2)}
        last = yaml.safe_load(value)["spec"]["order"]
        assert last in orders
        # the revision chain: the write before the last is the other one
        before = yaml.safe_load(value_at(etcd_url, key, revision - 1))["spec"]["order"]
        assert {last, before} == orders


def test_an_apply_racing_a_toggle_keeps_the_toggle(etcd_url: str, tmp_path: Path) -> None:
    """The toggle commits after the apply read the store and before it writes: the apply must
    lose its compare-and-swap, read again and keep the policy disabled."""
    writer = open_datastore(etcd_url, tmp_path / "writer")
    toggler = open_datastore(etcd_url, tmp_path / "toggler")
    writer.apply_documents([write(tmp_path / "v1.yaml", gnp("raced", 5.0))])
    attempts = []

    def toggle_in_between(preview: object) -> None:
        attempts.append(preview)
        if len(attempts) == 1:
            toggler.set_disabled("gnp", "raced", None, True)

    changes = writer.apply_documents([write(tmp_path / "v2.yaml", gnp("raced", 7.0))], check=toggle_in_between)
    assert len(attempts) == 2, "the apply did not notice the toggle that committed before it"
    stored = writer.find("gnp", "raced")
    assert stored.disabled, "the toggle was overwritten by an apply that read the policy before it"
    assert stored.revision == changes.revision
    body = yaml.safe_load(writer.read_document(stored))
    assert body["spec"]["order"] == 7.0  # and the apply's own change is there too
