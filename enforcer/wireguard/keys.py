"""WireGuard key pairs (Curve25519), one per node and IP family, kept on disk with 0600 permissions.

Keys are 32 bytes, written base64 as `wg genkey` writes them (44 characters). Private keys are
generated from the OS's random source and clamped as `wg genkey` clamps them; the public key is
X25519(private, 9), computed with the `cryptography` package when it is importable, else with
`wg pubkey` (wireguard-tools), so either one is enough.

Layout (under the datastore directory, `KeyStore.for_datastore`):

    wireguard/            0700
      keys/v4/<node>.key  0600  the node's IPv4 tunnel (ftwg0) private key, base64 + newline
      keys/v6/<node>.key  0600  the node's IPv6 tunnel (ftwg0v6) private key

Calico keeps one key pair per family as well (`wireguard.cali` and `wg-v6.cali`); it keeps the
private key only in the kernel device. flowtui keeps it in a file so a node keeps its identity
across restarts of the userspace daemon and across turning encryption off and on; only the
public key is published (`enforcer.wireguard.publish`).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

KEY_LEN = 32
DIR_MODE = 0o700
FILE_MODE = 0o600
_NODE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")


class KeyStoreError(Exception):
    """A key is malformed, or cannot be read, written or derived; the message says why."""


def decode_key(text: str) -> bytes:
    """The 32 bytes of a base64 WireGuard key; KeyStoreError if it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyStoreError(f"not a base64 WireGuard key: {exc}") from exc
    if len(raw) != KEY_LEN:
        raise KeyStoreError(f"a WireGuard key is {KEY_LEN} bytes, this one is {len(raw)}")
    return raw


def encode_key(raw: bytes) -> str:
    if len(raw) != KEY_LEN:
        raise KeyStoreError(f"a WireGuard key is {KEY_LEN} bytes, not {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


def is_key(text: str) -> bool:
    try:
        decode_key(text)
    except KeyStoreError:
        return False
    return True


def key_to_hex(text: str) -> str:
    """Base64 → the lower-case hex form the userspace configuration protocol (UAPI) uses."""
    return decode_key(text).hex()


def key_from_hex(text: str) -> str:
    """UAPI hex → base64."""
    try:
        return encode_key(bytes.fromhex(text))
    except ValueError as exc:
        raise KeyStoreError(f"not a hex WireGuard key: {exc}") from exc


def clamp(raw: bytes) -> bytes:
    """Curve25519 clamping, as `wg genkey` applies it."""
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def generate_private_key() -> str:
    return encode_key(clamp(os.urandom(KEY_LEN)))


def public_key(private: str) -> str:
    """The public key of a base64 private key."""
    raw = decode_key(private)
    try:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    except ImportError:
        return _wg_pubkey(private)
    pub = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return encode_key(pub)


def _wg_pubkey(private: str) -> str:
    try:
        done = subprocess.run(["wg", "pubkey"], input=private + "\n", capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KeyStoreError(f"cannot derive a public key: neither `cryptography` nor `wg` is usable ({exc})") from exc
    if done.returncode != 0:
        raise KeyStoreError(f"`wg pubkey` failed: {done.stderr.strip()}")
    out = done.stdout.strip()
    decode_key(out)
    return out


@dataclass(frozen=True)
class KeyPair:
    private: str = ""  # base64; never printed (repr hides it)
    public: str = ""

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public!r})"


class KeyStore:
    """Private keys of every node and family under `root` (created 0700; files 0600)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @classmethod
    def for_datastore(cls, datastore_dir: str | os.PathLike[str]) -> KeyStore:
        return cls(Path(datastore_dir) / "wireguard" / "keys")

    def path(self, node: str, family: int) -> Path:
        if family not in (4, 6):
            raise KeyStoreError(f"IP family {family}: use 4 or 6")
        if not _NODE.fullmatch(node):
            raise KeyStoreError(f"invalid node name {node!r}")
        return self.root / f"v{family}" / f"{node}.key"

    def _private_dirs(self, path: Path) -> None:
        for folder in (self.root.parent, self.root, path.parent):
            folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            if folder.stat().st_mode & 0o077:
                os.chmod(folder, DIR_MODE)

    def load(self, node: str, family: int) -> KeyPair | None:
        """The stored key pair, None if there is none. A file readable by others is made 0600."""
        path = self.path(node, family)
        try:
            st = path.stat()
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyStoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if st.st_mode & 0o077:
            os.chmod(path, FILE_MODE)
        try:
            private = encode_key(decode_key(text))
        except KeyStoreError as exc:
            raise KeyStoreError(f"{path}: {exc}") from exc
        return KeyPair(private, public_key(private))

    def ensure(self, node: str, family: int) -> KeyPair:
        """The node's key pair for `family`, generated and stored (0600, atomically) if missing."""
        found = self.load(node, family)
        if found is not None:
            return found
        path = self.path(node, family)
        self._private_dirs(path)
        private = generate_private_key()
        tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            os.write(fd, (private + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a key another process stored meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        loaded = self.load(node, family)
        assert loaded is not None
        return loaded

    def stored(self) -> dict[tuple[str, int], str]:
        """(node, family) → public key, for every stored key."""
        out: dict[tuple[str, int], str] = {}
        for family in (4, 6):
            folder = self.root / f"v{family}"
            if not folder.is_dir():
                continue
            for entry in sorted(folder.iterdir()):
                if entry.suffix == ".key" and not entry.name.startswith("."):
                    pair = self.load(entry.stem, family)
                    if pair is not None:
                        out[(entry.stem, family)] = pair.public
        return out


__all__ = [
    "KeyStoreError",
    "KeyPair",
    "KeyStore",
    "clamp",
    "decode_key",
    "encode_key",
    "generate_private_key",
    "is_key",
    "key_from_hex",
    "key_to_hex",
    "public_key",
]
