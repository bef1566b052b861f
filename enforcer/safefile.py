"""Writing files at predictable names without following what someone planted there.

flowtui runs as root and writes at names anyone can predict (`<db>.snapshot.duckdb`, exports,
runtime files under /run). A plain `open(name, "w")` follows a symlink planted at that name (or
at its `.tmp` sibling) and overwrites the symlink's target. So every such write goes through here:

* `atomic_write` / `atomic_open`: the content goes to a temporary file in the same directory,
  created with `O_CREAT | O_EXCL | O_NOFOLLOW` under an unpredictable name (nothing can be
  planted there in advance: an existing name, symlink or not, is an error, never opened), given
  its mode with `fchmod` (so the umask does not decide it), optionally fsynced, then renamed
  over the target. `rename` replaces a symlink at the target itself, never its target; readers
  see the old file or the new one, never a part.
* `open_append`: a log that grows in place, opened with `O_NOFOLLOW` (a symlink is an error)
  and its mode set when created.

Modes: `PRIVATE` (0600) for state, stores and runtime files; `SHARED` (0644) for documents made
to be read by other tools and users (exports, query results, screenshots).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

PRIVATE = 0o600
SHARED = 0o644
PRIVATE_DIR = 0o700
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TMP_STEM = 100  # bytes of the target's name kept in a temporary name (NAME_MAX is 255)


def create_temp(target: str | os.PathLike[str], mode: int = PRIVATE) -> tuple[int, Path]:
    """A new, empty file next to `target` (same directory, so a rename is atomic) with an
    unpredictable name and exactly `mode`: (descriptor, path). Never opens an existing file."""
    target = Path(target)
    stem = target.name.encode()[:_TMP_STEM].decode(errors="ignore")
    for _ in range(16):
        tmp = target.with_name(f".{stem}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, _CREATE, mode)
        except FileExistsError:
            continue  # 64 random bits taken: someone is guessing; draw again
        try:
            os.fchmod(fd, mode)  # os.open's mode went through the umask
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        return fd, tmp
    raise FileExistsError(f"cannot create a temporary file next to {target}")


def commit(fd: int, tmp: Path, target: str | os.PathLike[str], *, fsync: bool = False,
           fsync_dir: bool | None = None) -> None:
    """Close `fd` (fsynced first with `fsync`) and rename `tmp` over `target`; on failure the
    temporary file is removed and `target` is untouched. `fsync_dir` (default: as `fsync`) also
    fsyncs the directory after the rename; a caller writing many files there syncs it once."""
    try:
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _discard(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, target)
    except BaseException:
        _discard(tmp)
        raise
    if fsync if fsync_dir is None else fsync_dir:
        sync_dir(Path(target).parent)


def _discard(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def sync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory, so that a rename or a new name in it survives a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(target: str | os.PathLike[str], data: bytes | str, mode: int = PRIVATE, *,
                 fsync: bool = False, fsync_dir: bool | None = None) -> None:
    """Replace `target` with `data` (str is written as UTF-8) in one atomic step, with `mode`."""
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = create_temp(target, mode)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        _discard(tmp)
        raise
    commit(fd, tmp, target, fsync=fsync, fsync_dir=fsync_dir)


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike[str], mode: int = PRIVATE, *, fsync: bool = False,
                buffering: int = -1) -> Iterator[IO[str]]:
    """`with atomic_open(path) as f: f.write(...)` (UTF-8 text): `path` is replaced when the block
    ends without an exception; after an exception it is untouched and nothing is left behind."""
    fd, tmp = create_temp(target, mode)
    try:
        with os.fdopen(os.dup(fd), "w", encoding="utf-8", buffering=buffering) as handle:
            yield handle
    except BaseException:
        os.close(fd)
        _discard(tmp)
        raise
    commit(fd, tmp, target, fsync=fsync)


def open_append(path: str | os.PathLike[str], mode: int = PRIVATE) -> IO[bytes]:
    """A log file opened for appending; refuses a symlink at `path`; `mode` when it is created."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        if os.fstat(fd).st_mode & 0o7777 != mode:
            os.fchmod(fd, mode)
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise


def private_dir(path: str | os.PathLike[str]) -> Path:
    """`path` (and its parents) as a directory; the last one with mode 0700, whatever the umask.
    A symlink at `path` is refused: the directory's contents must be where they are said to be."""
    path = Path(path)
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if path.is_symlink():
        raise NotADirectoryError(f"{path} is a symbolic link")
    if path.stat().st_mode & 0o7777 != PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR)
    return path


__all__ = ["PRIVATE", "PRIVATE_DIR", "SHARED", "atomic_open", "atomic_write", "commit", "create_temp",
           "open_append", "private_dir", "sync_dir"]
