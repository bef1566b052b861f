"""Writing files under the state directory: atomic, durable when asked, with explicit modes.

Everything flowtui writes there is private to root whatever the umask: files 0600, the
directories it creates 0700 (directories that already exist keep their mode: a user may have
chosen one). The writing itself is `enforcer.safefile`'s (O_EXCL|O_NOFOLLOW temporary names,
explicit modes); this module adds the directory chain and fsynced line appends.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from enforcer import safefile
from enforcer.safefile import sync_dir as fsync_dir

FILE_MODE = safefile.PRIVATE
DIR_MODE = safefile.PRIVATE_DIR


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


def atomic_write(path: Path, text: str | bytes, *, durable: bool = True, sync_dir: bool = False) -> None:
    """Write `text` to `path` through a temporary file and a rename (never a half-written file),
    mode 0600, its missing directories 0700. `durable` fsyncs the file before the rename;
    `sync_dir` also fsyncs the directory after it (the rename itself survives a power loss)."""
    make_dirs(path.parent)
    safefile.atomic_write(path, text, FILE_MODE, fsync=durable, fsync_dir=sync_dir)


def append_lines(path: Path, lines: Iterable[str]) -> None:
    """Append `lines` (each without its newline) to `path` as one write, then fsync: a crash
    leaves at most a torn last line, which readers recognise by its missing newline."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if not data:
        return
    make_dirs(path.parent)
    created = not path.exists()
    with safefile.open_append(path, FILE_MODE) as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    if created:
        fsync_dir(path.parent)


__all__ = ["DIR_MODE", "FILE_MODE", "append_lines", "atomic_write", "fsync_dir", "make_dirs"]
