"""TLS material for an etcd cluster: one CA, a certificate per member, a client certificate.

Member certificates serve clients and peers alike (etcd's peer connections authenticate both
ways, and its HTTP gateway dials its own gRPC port with the server certificate), so they carry
both server and client authentication. Keys are ECDSA P-256, files are mode 0600. The lab writes
one set per lab (`enforcer.lab.cluster`); the tests' single-host etcd uses the same functions.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID = datetime.timedelta(days=365)
SKEW = datetime.timedelta(minutes=5)  # clocks of the machines that check these may lag a little


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class KeyPair:
    cert: str  # file paths
    key: str


def new_authority(name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - SKEW).not_valid_after(now + VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return Authority(cert, key)


def _write(path: Path, data: bytes) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return str(path)


def write_authority(ca: Authority, path: Path) -> str:
    return _write(path, ca.cert.public_bytes(serialization.Encoding.PEM))


def issue(ca: Authority, name: str, folder: Path, *, server: bool,
          addresses: Iterable[str] = (), dns: Iterable[str] = ()) -> KeyPair:
    """A certificate for `name` signed by `ca`, written as `<folder>/<name>.crt` and `.key`.
    `server`: also good as a server (and peer) certificate for `addresses` and `dns` names."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - SKEW).not_valid_after(now + VALID)
               .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    names += [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return KeyPair(
        cert=_write(folder / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM)),
        key=_write(folder / f"{name}.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())),
    )


__all__ = ["Authority", "KeyPair", "issue", "new_authority", "write_authority"]
