"""A real etcd for tests: single member on loopback, random ports, temp data dir, always stopped.

`etcd_unavailable()` says why etcd cannot run here (no `etcd` binary); tests that need it skip,
or fail under `CI=true` (`run.sh` installs `etcd-server`), as kernel tests do (conftest.py).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 20.0


def etcd_unavailable() -> str | None:
    if shutil.which("etcd") is None:
        return "etcd tests need `etcd` on PATH (apt-get install etcd-server)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class TLSMaterial:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str  # a CA that signed nothing here: the "wrong CA" case


@dataclass
class EtcdServer:
    """One member; `process` is replaced by `restart()` (the cluster stops whichever runs)."""

    endpoint: str  # host:port
    tls: TLSMaterial | None
    process: subprocess.Popen[bytes]
    argv: tuple[str, ...] = ()
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"{'etcds' if self.tls else 'etcd'}://{self.endpoint}"

    def restart(self) -> None:
        """Start the member again (same ports, same data) after it was stopped or killed."""
        assert self.process.poll() is not None, "the member is still running"
        assert self.log is not None
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not _healthy(self.endpoint, self.tls):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not restart: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)


def make_tls(folder: Path) -> TLSMaterial:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, and an unrelated CA
    (made as the lab makes its etcd's: `enforcer.lab.tls`)."""
    from enforcer.lab.tls import issue, new_authority, write_authority

    ca = new_authority("flowtui test etcd CA")
    server = issue(ca, "server", folder, server=True, addresses=["127.0.0.1"])
    client = issue(ca, "client", folder, server=False)
    return TLSMaterial(ca=write_authority(ca, folder / "ca.crt"),
                       other_ca=write_authority(new_authority("flowtui unrelated CA"), folder / "other-ca.crt"),
                       server_cert=server.cert, server_key=server.key, client_cert=client.cert,
                       client_key=client.key)


def _healthy(endpoint: str, tls: TLSMaterial | None) -> bool:
    import requests

    scheme = "https" if tls else "http"
    try:
        resp = requests.get(f"{scheme}://{endpoint}/health", timeout=1,
                            verify=tls.ca if tls else True,
                            cert=(tls.client_cert, tls.client_key) if tls else None)
        return resp.ok and resp.json().get("health") == "true"
    except (requests.RequestException, ValueError):
        return False


@dataclass(frozen=True)
class EtcdCluster:
    members: tuple[EtcdServer, ...]

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(m.endpoint for m in self.members)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def etcd_cluster(members: int = 1, tls: bool | TLSMaterial = False,
                 extra: tuple[str, ...] = ()) -> Iterator[EtcdCluster]:
    """`members` etcd members on 127.0.0.1 (random ports, temp data dirs) forming one cluster,
    each stopped (and its files removed) afterwards; TLS between clients and members with `tls`
    (True: certificates made here; or the TLSMaterial given)."""
    with tempfile.TemporaryDirectory(prefix="ft-etcd-") as tmp:
        folder = Path(tmp)
        material = tls if isinstance(tls, TLSMaterial) else make_tls(folder) if tls else None
        scheme = "https" if tls else "http"
        ports = [(free_port(), free_port()) for _ in range(members)]
        initial = ",".join(f"ft{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
        started: list[EtcdServer] = []
        logs = []
        try:
            for i, (client, peer) in enumerate(ports):
                endpoint = f"127.0.0.1:{client}"
                argv = ["etcd", "--name", f"ft{i}", "--data-dir", str(folder / f"data{i}"),
                        "--listen-client-urls", f"{scheme}://{endpoint}",
                        "--advertise-client-urls", f"{scheme}://{endpoint}",
                        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                        "--initial-cluster", initial, "--initial-cluster-token", folder.name,
                        "--quota-backend-bytes", str(256 << 20), *extra]
                if material is not None:
                    argv += ["--cert-file", material.server_cert, "--key-file", material.server_key,
                             "--trusted-ca-file", material.ca, "--client-cert-auth"]
                log = open(folder / f"etcd{i}.log", "wb")  # noqa: SIM115 - closed below
                logs.append(log)
                started.append(EtcdServer(endpoint, material,
                                          subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT),
                                          tuple(argv), folder / f"etcd{i}.log"))
            deadline = time.monotonic() + START_TIMEOUT
            for i, member in enumerate(started):
                while not _healthy(member.endpoint, material):
                    if member.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"etcd member ft{i} did not start: "
                                           f"{(folder / f'etcd{i}.log').read_text()[-2000:]}")
                    time.sleep(0.1)
            yield EtcdCluster(tuple(started))
        finally:
            for member in started:
                _stop(member.process)
            for log in logs:
                log.close()


@contextmanager
def etcd_server(tls: bool | TLSMaterial = False, extra: tuple[str, ...] = ()) -> Iterator[EtcdServer]:
    """One etcd member on 127.0.0.1 (random ports, temp data dir), stopped and removed after;
    `extra`: more etcd flags (`--max-txn-ops`...)."""
    with etcd_cluster(1, tls, extra) as cluster:
        yield cluster.members[0]
