"""A real etcd for tests: single member on loopback, random ports, temp data dir, always stopped.

`etcd_unavailable()` says why etcd cannot run here (no `etcd` binary); tests that need it skip,
or fail under `CI=true` (`run.sh` installs `etcd-server`), as kernel tests do (conftest.py).
"""

from __future__ import annotations

import datetime
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


def _ca(name: str) -> tuple[object, object]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_tls(folder: Path) -> TLSMaterial:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, and an unrelated CA."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert, ca_key = _ca("flowtui test etcd CA")
    other_cert, _ = _ca("flowtui unrelated CA")
    now = datetime.datetime.now(datetime.UTC)
    files = {}

    def write(name: str, data: bytes) -> str:
        path = folder / name
        path.write_bytes(data)
        path.chmod(0o600)
        return str(path)

    def pem_cert(cert: object) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined, no-any-return]

    # etcd's HTTP gateway dials its own gRPC port with the server's certificate: that one must be
    # good for client authentication too (else every gateway request is "connection closed").
    for role, usage in (("server", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                        ("client", [ExtendedKeyUsageOID.CLIENT_AUTH])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"flowtui-{role}")]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())  # type: ignore[attr-defined]
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
                .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
        files[f"{role}_cert"] = write(f"{role}.crt", pem_cert(cert))
        files[f"{role}_key"] = write(f"{role}.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return TLSMaterial(ca=write("ca.crt", pem_cert(ca_cert)), other_ca=write("other-ca.crt", pem_cert(other_cert)),
                       **files)


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
