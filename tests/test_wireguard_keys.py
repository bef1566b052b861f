"""WireGuard keys without root: Curve25519 derivation, storage permissions, key encodings."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from enforcer.wireguard.keys import (
    KeyStore,
    KeyStoreError,
    clamp,
    decode_key,
    generate_private_key,
    is_key,
    key_from_hex,
    key_to_hex,
    public_key,
)

# RFC 7748 §6.1: Alice's X25519 private key and public key.
RFC_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
RFC_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_public_key_matches_rfc7748() -> None:
    assert public_key(b64(RFC_PRIVATE)) == b64(RFC_PUBLIC)


def test_generated_keys_are_clamped_and_distinct() -> None:
    keys = {generate_private_key() for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        raw = decode_key(key)
        assert raw == clamp(raw)
        assert is_key(public_key(key))


@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools not installed")
def test_public_key_agrees_with_wg_pubkey() -> None:
    private = generate_private_key()
    done = subprocess.run(["wg", "pubkey"], input=private + "\n", capture_output=True, text=True, check=True)
    assert public_key(private) == done.stdout.strip()


def test_hex_round_trip_and_bad_keys() -> None:
    key = generate_private_key()
    assert key_from_hex(key_to_hex(key)) == key
    assert len(key_to_hex(key)) == 64
    for bad in ("", "not base64!", b64(b"short"), b64(bytes(33))):
        assert not is_key(bad)
        with pytest.raises(KeyStoreError):
            decode_key(bad)
    with pytest.raises(KeyStoreError):
        key_from_hex("zz" * 32)


def test_store_creates_private_files_once(tmp_path: Path) -> None:
    store = KeyStore.for_datastore(tmp_path)
    first = store.ensure("node-a", 4)
    assert store.ensure("node-a", 4) == first  # stable: the node keeps its identity
    v6 = store.ensure("node-a", 6)
    assert v6.public != first.public  # one key pair per family, as Calico
    path = store.path("node-a", 4)
    assert path == tmp_path / "wireguard" / "keys" / "v4" / "node-a.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (tmp_path / "wireguard", tmp_path / "wireguard" / "keys", path.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert path.read_text() == first.private + "\n"  # the form `wg genkey` writes
    assert first.private not in repr(first)
    assert store.stored() == {("node-a", 4): first.public, ("node-a", 6): v6.public}
    assert not list(path.parent.glob(".*"))  # no temporary files left


def test_store_tightens_loose_permissions_and_rejects_garbage(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    pair = store.ensure("n1", 4)
    path = store.path("n1", 4)
    os.chmod(path, 0o644)
    assert store.load("n1", 4) == pair
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("garbage\n")
    with pytest.raises(KeyStoreError, match="n1.key"):
        store.load("n1", 4)


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "x" * 0 + "-bad"])
def test_store_refuses_unsafe_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyStoreError):
        KeyStore(tmp_path).path(name, 4)
    with pytest.raises(KeyStoreError):
        KeyStore(tmp_path).path("ok", 5)
