"""Files at predictable names: a planted symlink is never followed, modes never follow the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from enforcer.safefile import PRIVATE, SHARED, atomic_open, atomic_write, open_append, private_dir
from flowtui.cli.main import cli
from flowtui.store.duckdb_store import DuckStore, snapshot_path


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file an attacker wants overwritten (in real life /etc/shadow or a flowtui state file)."""
    target = tmp_path / "victim"
    target.write_text("precious\n")
    return target


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_snapshot_does_not_follow_planted_symlinks(tmp_path: Path, victim: Path, umask_000: None) -> None:
    db = tmp_path / "flows.duckdb"
    snap = snapshot_path(db)
    old_tmp = snap.with_name(snap.name + ".tmp")  # the name the snapshot writer used to open
    old_tmp.symlink_to(victim)
    store = DuckStore(db, snapshot_interval=60)
    try:
        assert store.snapshot(wait=True)
        assert store.stats.snapshots == 1
        snap.unlink()
        snap.symlink_to(victim)  # and at the snapshot's own name
        assert store.snapshot(wait=True)
        assert store.stats.snapshots == 2
    finally:
        store.close(snapshot=False)
    assert victim.read_text() == "precious\n"
    assert old_tmp.is_symlink()  # untouched, never opened
    assert not snap.is_symlink() and snap.is_file()  # the symlink itself was replaced
    assert mode(snap) == PRIVATE and mode(db) == PRIVATE  # under umask 000
    with duckdb.connect(str(snap), read_only=True) as con:  # a complete database
        assert con.execute("SELECT count(*) FROM flows").fetchone() == (0,)
    assert leftovers(tmp_path) == [old_tmp.name]


def test_atomic_write_replaces_a_symlink_never_its_target(tmp_path: Path, victim: Path, umask_000: None) -> None:
    target = tmp_path / "out.txt"
    target.symlink_to(victim)
    atomic_write(target, "new\n", SHARED)
    assert victim.read_text() == "precious\n"
    assert target.read_text() == "new\n" and not target.is_symlink()
    assert mode(target) == SHARED
    atomic_write(target, b"private", PRIVATE)
    assert mode(target) == PRIVATE
    assert leftovers(tmp_path) == []


def test_atomic_open_leaves_the_target_untouched_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "export.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("half of the new\n")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old\n"
    assert leftovers(tmp_path) == []
    with atomic_open(target, fsync=True) as handle:
        handle.write("new\n")
    assert target.read_text() == "new\n"


def test_temp_names_are_unpredictable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real_open = os.open

    def spy(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(".tmp"):
            seen.append(os.path.basename(path))
            assert flags & os.O_EXCL and flags & os.O_NOFOLLOW and flags & os.O_CREAT
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", spy)
    for _ in range(3):
        atomic_write(tmp_path / "x", "x")
    assert len(set(seen)) == 3 and all(name.startswith(".x.") and len(name) == len(".x.") + 16 + 4 for name in seen)


def test_open_append_refuses_a_symlink(tmp_path: Path, victim: Path, umask_000: None) -> None:
    log = tmp_path / "ftwg0.log"
    log.symlink_to(victim)
    with pytest.raises(OSError):
        open_append(log)
    assert victim.read_text() == "precious\n"
    log.unlink()
    with open_append(log) as handle:
        handle.write(b"line\n")
    assert mode(log) == PRIVATE


def test_private_dir_is_0700_whatever_the_umask_and_no_symlink(tmp_path: Path, umask_000: None) -> None:
    made = private_dir(tmp_path / "run" / "ft-lab-node-a")
    assert mode(made) == 0o700
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run" / "planted").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(NotADirectoryError):
        private_dir(tmp_path / "run" / "planted")


def test_export_does_not_follow_a_symlink_at_its_old_temporary_name(tmp_path: Path, victim: Path) -> None:
    db = tmp_path / "flows.duckdb"
    DuckStore(db, snapshot_interval=None).close(snapshot=False)
    out = tmp_path / "flows.jsonl"
    out.with_name(out.name + ".tmp").symlink_to(victim)
    result = CliRunner().invoke(cli, ["export", "--format", "jsonl", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious\n"
    assert out.is_file() and mode(out) == SHARED
