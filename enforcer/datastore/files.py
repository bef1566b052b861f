"""Writing files under the state directory: atomic, durable when asked, with explicit modes.

Everything flowtui writes there is private to root whatever the umask: files 0600, the
directories it creates 0700 (directories that already exist keep their mode: a user may have
chosen one). Temporary names are created with O_EXCL|O_NOFOLLOW, so a planted file or symlink
makes the write fail instead of redirecting it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
_TMP_STEM = 100  # bytes of the target's name kept in its temporary name (NAME_MAX is 255)


def make_dirs(path: Path) -> None:
    """Create `path` and its missing parents with mode 0700 (exactly, whatever the umask)."""
    missing: list[Path] = []
    here = path
    while not here.exists():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:
            continue  # another process made it: its mode is its own
        os.chmod(folder, DIR_MODE)  # mkdir's mode is filtered by the umask


def fsync_dir(path: Path) -> None:
    """fsync a directory: renames and new entries in it survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private(path: Path, *, exclusive: bool = True, append: bool = False) -> int:
    """Open `path` for writing, mode 0600, never through a symlink; a file descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_EXCL if exclusive else 0
    flags |= os.O_APPEND if append else 0
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # the umask filters the creation mode; an existing file keeps nothing else
    except BaseException:
        os.close(fd)
        raise
    return fd


def atomic_write(path: Path, text: str | bytes, *, durable: bool = True, sync_dir: bool = False) -> None:
    """Write `text` to `path` through a temporary file and a rename (never a half-written file),
    mode 0600. `durable` fsyncs the file before the rename; `sync_dir` also fsyncs the directory
    after it (the rename itself survives a power loss)."""
    make_dirs(path.parent)
    stem = path.name.encode()[:_TMP_STEM].decode(errors="ignore")
    tmp = path.parent / f".{stem}.{os.getpid()}.{threading.get_ident()}.tmp"
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        fd = create_private(tmp)
    except FileExistsError:  # left by a crashed process with our pid: ours to replace
        os.unlink(tmp)
        fd = create_private(tmp)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)


def append_lines(path: Path, lines: Iterable[str]) -> None:
    """Append `lines` (each without its newline) to `path` as one write, then fsync: a crash
    leaves at most a torn last line, which readers recognise by its missing newline."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if not data:
        return
    make_dirs(path.parent)
    created = not path.exists()
    fd = create_private(path, exclusive=False, append=True)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


__all__ = ["DIR_MODE", "FILE_MODE", "append_lines", "atomic_write", "create_private", "fsync_dir", "make_dirs"]
