"""etcd user/password authentication against a real etcd with `auth enable`: a role granting
/calico/ and /flowtui/, a writer, a reader; the right password works for apply, get and an
agent's watch; a wrong one is one clear line naming the endpoint, fast, with nothing written; a
user without write permission changes nothing; expired tokens are renewed by the client."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from enforcer.agent import Agent
from enforcer.datastore import BadDatastoreURL, Login, open_datastore, parse_datastore_url, read_password
from enforcer.datastore.etcd import EtcdAuthFailed, EtcdDatastore, EtcdRefused
from enforcer.nft.backend import FakeBackend
from enforcer.nft.compiler import CompileOptions, compile_node
from enforcer.reconcile import Reconciler
from tests.conftest import require_etcd
from tests.test_agent import until
from tests.test_datastore import GNP, SCENARIOS
from tests.test_datastore_backends import write

ROOT = Path(__file__).resolve().parents[1]
FLOWTUI = [sys.executable, "-c", "from flowtui.cli import main; main()"]
TOKEN_TTL = 2  # seconds: short, so that a test sees tokens expire
PASSWORDS = {"root": "root-secret", "writer": "writer-secret", "reader": "reader-secret"}


def _etcdctl(endpoint: str, *argv: str, user: str | None = "root") -> str:
    login = ["--user", f"{user}:{PASSWORDS[user]}"] if user else []
    done = subprocess.run(["etcdctl", "--endpoints", endpoint, *login, *argv], capture_output=True, text=True,
                          env={**os.environ, "ETCDCTL_API": "3"}, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[str]:
    """An etcd with auth enabled, as an operator would set it up with etcdctl; its endpoint."""
    require_etcd()
    from tests.etcd_server import etcd_server

    with etcd_server(extra=("--auth-token", "simple", "--auth-token-ttl", str(TOKEN_TTL))) as server:
        e = server.endpoint
        for user, password in PASSWORDS.items():
            _etcdctl(e, "user", "add", f"{user}:{password}", user=None)
        _etcdctl(e, "role", "add", "root", user=None)
        _etcdctl(e, "user", "grant-role", "root", "root", user=None)
        for role, access in (("flowtui", "readwrite"), ("flowtui-read", "read")):
            _etcdctl(e, "role", "add", role, user=None)
            for prefix in ("/calico/", "/flowtui/"):
                _etcdctl(e, "role", "grant-permission", role, "--prefix=true", access, prefix, user=None)
        _etcdctl(e, "user", "grant-role", "writer", "flowtui", user=None)
        _etcdctl(e, "user", "grant-role", "reader", "flowtui-read", user=None)
        _etcdctl(e, "auth", "enable", user=None)
        yield e


def _everything(endpoint: str) -> str:
    """Every key and value, read as root."""
    return _etcdctl(endpoint, "get", "--prefix", "/")


def _store(endpoint: str, tmp_path: Path, user: str, password: str | None = None, local: str = "") -> EtcdDatastore:
    """`user`'s client, with local records in its own directory (`local`, default the user)."""
    ds = open_datastore(f"etcd://{endpoint}", tmp_path / (local or user),
                        login=Login(user, password or PASSWORDS[user]))
    assert isinstance(ds, EtcdDatastore)
    return ds


def _cli(tmp_path: Path, *argv: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWTUI_HOME": str(tmp_path / "home")}
    env.pop("FLOWTUI_ETCD_PASSWORD", None)
    if password is not None:
        env["FLOWTUI_ETCD_PASSWORD"] = password
    return subprocess.run([*FLOWTUI, *argv], capture_output=True, text=True, env=env, timeout=60)


def test_urls_and_passwords(tmp_path: Path) -> None:
    url = parse_datastore_url("etcd://alice@10.0.0.1:2379,10.0.0.2:2379")
    assert url.user == "alice" and url.endpoints == (("10.0.0.1", 2379), ("10.0.0.2", 2379))
    assert str(url) == "etcd://10.0.0.1:2379,10.0.0.2:2379"  # the store's name: the same whoever logs in
    with pytest.raises(BadDatastoreURL, match="never in the URL"):
        parse_datastore_url("etcd://alice:secret@10.0.0.1:2379")
    with pytest.raises(BadDatastoreURL, match="needs a password"):
        open_datastore("etcd://alice@10.0.0.1:2379", tmp_path)
    with pytest.raises(BadDatastoreURL, match="not a directory"):
        open_datastore(f"file://{tmp_path}", tmp_path, login=Login("alice", "x"))
    secret = tmp_path / "pw"
    secret.write_text("s3cret\nignored\n")
    assert read_password(str(secret), {}) == "s3cret"
    assert read_password(None, {"FLOWTUI_ETCD_PASSWORD": "from-env"}) == "from-env"
    assert read_password(None, {}) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(BadDatastoreURL, match="first line is empty"):
        read_password(str(tmp_path / "empty"), {})
    with pytest.raises(BadDatastoreURL, match="cannot read"):
        read_password(str(tmp_path / "missing"), {})


def test_the_right_password_applies_gets_and_an_agent_watches(auth_etcd: str, tmp_path: Path) -> None:
    secret = tmp_path / "writer.pw"
    secret.write_text(PASSWORDS["writer"] + "\n")
    policy = write(tmp_path / "a.yaml", GNP.format(name="auth-a", order=1))
    done = _cli(tmp_path, "apply", "--lab", "pbnone", "-f", policy, "--datastore", f"etcd://writer@{auth_etcd}",
                "--etcd-password-file", str(secret))
    assert done.returncode == 0, done.stderr
    got = _cli(tmp_path, "get", "gnp", "--datastore", f"etcd://{auth_etcd}", "--etcd-user", "writer",
               password=PASSWORDS["writer"])
    assert got.returncode == 0, got.stderr
    assert "auth-a" in got.stdout
    # an agent logged in: lists, then watches (two ranges the role covers, once the spanning one is
    # refused) and programs a change
    writer = _store(auth_etcd, tmp_path, "writer")
    writer.apply_documents([str(SCENARIOS)])
    ds = _store(auth_etcd, tmp_path, "writer", local="agent")
    backend = FakeBackend()
    events: list[dict[str, object]] = []
    agent = Agent(ds, Reconciler(ds, backend, compile_node, CompileOptions(), lambda: ["node-a"]), "node-a",
                  events.append, backoff=(0.1, 0.3), heartbeat=0.3)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        until(lambda: agent.state == "in-sync", what="the first reconcile")
        change = writer.set_disabled("gnp", "auth-a", None, True)
        until(lambda: agent.revision >= change.revision, what="the watched toggle")
        # the role covers the two prefixes, not the range between them: the spanning watch was
        # refused and the agent watches them apart
        assert [e for e in events if e["event"] == "watch"], events
        until(lambda: agent.revision >= change.revision, what="the watched toggle")
        assert agent.state == "in-sync"
        # tokens expire (TTL 2 s, simple tokens): the agent logs in again, the watch goes on
        time.sleep(TOKEN_TTL + 1.5)
        change = writer.set_disabled("gnp", "auth-a", None, False)
        until(lambda: agent.revision >= change.revision, what="a change after the token expired")
        assert agent.state == "in-sync", agent.error
        assert not [e for e in events if e["event"] in ("degraded", "failed")], events  # renewals are silent
    finally:
        agent.stop()
        thread.join(30)
    assert not thread.is_alive()


def test_an_expired_token_is_renewed(auth_etcd: str, tmp_path: Path) -> None:
    ds = _store(auth_etcd, tmp_path, "writer")
    _ = ds.revision
    [(member, first)] = ds.kv._tokens.items()
    time.sleep(TOKEN_TTL + 1.5)
    _ = ds.revision  # etcd says "invalid auth token": logged in again, the request answered
    assert ds.kv._tokens[member] != first
    start, _ = ds.kv.list("/flowtui/")
    time.sleep(TOKEN_TTL + 1.5)
    ds.kv.apply("/flowtui/test/renewed", "1")
    events = ds.kv.watch("/flowtui/test/", start + 1)  # a new watch needs a valid token too
    assert next(events).kv.key == "/flowtui/test/renewed"


@pytest.mark.parametrize("how", ["wrong password", "no login"])
def test_a_refused_login_is_one_clear_line_and_writes_nothing(auth_etcd: str, tmp_path: Path, how: str) -> None:
    before = _everything(auth_etcd)
    policy = write(tmp_path / "b.yaml", GNP.format(name="auth-b", order=2))
    login: tuple[str, ...] = ("--etcd-user", "writer") if how == "wrong password" else ()
    done = _cli(tmp_path, "apply", "--lab", "pbnone", "-f", policy, "--datastore", f"etcd://{auth_etcd}", *login,
                password="not-the-password" if login else None)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert auth_etcd in lines[0] and "authentication failed" in lines[0]
    assert ("'writer'" in lines[0]) == bool(login)
    assert _everything(auth_etcd) == before
    start = time.monotonic()  # timed in this process: a loaded machine's Python start is not the client's
    with pytest.raises(EtcdAuthFailed, match="authentication failed"):
        _ = _store(auth_etcd, tmp_path, "writer", "wrong").revision
    assert time.monotonic() - start < 5  # one refused request: never a hang


def test_a_user_without_write_permission_changes_nothing(auth_etcd: str, tmp_path: Path) -> None:
    writer = _store(auth_etcd, tmp_path, "writer")
    writer.apply_documents([write(tmp_path / "c.yaml", GNP.format(name="auth-c", order=3))])
    before = _everything(auth_etcd)
    reader = _store(auth_etcd, tmp_path, "reader")
    assert "auth-c" in [p.name for p in reader.resources().policies]  # reading is allowed
    with pytest.raises(EtcdRefused, match="permission denied for user 'reader'"):
        reader.apply_documents([write(tmp_path / "d.yaml", GNP.format(name="auth-d", order=4))])
    with pytest.raises(EtcdRefused, match="permission denied"):
        reader.set_disabled("gnp", "auth-c", None, True)
    done = _cli(tmp_path, "delete", "gnp", "auth-c", "--lab", "pbnone", "--datastore", f"etcd://reader@{auth_etcd}",
                password=PASSWORDS["reader"])
    assert done.returncode == 1 and "permission denied" in done.stderr and "Traceback" not in done.stderr
    assert _everything(auth_etcd) == before
