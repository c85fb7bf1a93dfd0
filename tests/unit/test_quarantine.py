"""Quarantine: an agent's deletion becomes a move into the session's trash, and `restore`
gives back identical bytes and metadata. Real files in tmp dirs, real pinned fds."""
from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from aarm_sandbox.cli.restore import restore_cmd
from aarm_sandbox.enforce.quarantine import Quarantine, list_quarantined, restore

SESSION = "test-session"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


@pytest.fixture
def trash_root(tmp_path: Path) -> Path:
    return tmp_path / "state" / "aarm-sandbox" / "trash" / SESSION


@pytest.fixture
def quarantine(trash_root: Path):
    with Quarantine(SESSION, trash_root) as q:
        yield q


def pinned(directory: Path) -> int:
    return os.open(directory, os.O_PATH | os.O_DIRECTORY)


def stash(q: Quarantine, path: Path, *, is_dir: bool = False) -> tuple[int, str | None]:
    fd = pinned(path.parent)
    try:
        return q.stash(fd, os.fsencode(path.name), str(path), is_dir=is_dir)
    finally:
        os.close(fd)


def rm_rf(q: Quarantine, top: Path) -> None:
    """Delete a tree the way rm -rf does: children first, then each emptied directory."""
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for name in filenames:
            assert stash(q, Path(dirpath) / name)[0] == 0
        for name in dirnames:
            child = Path(dirpath) / name
            if child.is_symlink():
                assert stash(q, child)[0] == 0
            else:
                assert stash(q, child, is_dir=True)[0] == 0
    assert stash(q, top, is_dir=True)[0] == 0


def make_file(path: Path, data: bytes, mode: int = 0o640, mtime_ns: int = 1_600_000_000_123_456_789) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(1_500_000_000_000_000_001, mtime_ns))


def manifest_lines(trash_root: Path) -> list[dict]:
    return [json.loads(line) for line in (trash_root / "manifest.jsonl").read_bytes().splitlines()]


# -- stash -------------------------------------------------------------------------------

def test_stashed_file_leaves_workspace_and_keeps_bytes_in_trash(quarantine, workspace):
    victim = workspace / "notes.txt"
    make_file(victim, b"precious\x00bytes")
    rc, trash_path = stash(quarantine, victim)
    assert rc == 0
    assert not victim.exists()
    assert Path(trash_path).read_bytes() == b"precious\x00bytes"


def test_trash_and_manifest_are_private(quarantine, workspace, trash_root):
    make_file(workspace / "f", b"x")
    stash(quarantine, workspace / "f")
    assert stat.S_IMODE(trash_root.stat().st_mode) == 0o700
    assert stat.S_IMODE((trash_root / "manifest.jsonl").stat().st_mode) == 0o600


def test_manifest_records_one_line_per_stash_with_metadata(quarantine, workspace, trash_root):
    make_file(workspace / "agent-chosen", b"abc", mode=0o604)
    make_file(workspace / "b", b"")
    stash(quarantine, workspace / "agent-chosen")
    stash(quarantine, workspace / "b")
    first, second = manifest_lines(trash_root)
    assert first["original"] == str(workspace / "agent-chosen")
    assert (first["type"], first["how"], first["size"]) == ("file", "rename", 3)
    assert stat.S_IMODE(first["mode"]) == 0o604
    assert first["mtime_ns"] == 1_600_000_000_123_456_789
    assert first["ts"].endswith("Z")
    assert first["trash"] != second["trash"]
    assert "agent" not in first["trash"].split("/")[-1]   # names never derived from agent text


def test_unlink_of_missing_name_is_enoent(quarantine, workspace):
    assert stash(quarantine, workspace / "nope") == (-errno.ENOENT, None)


def test_unlink_of_directory_is_eisdir_and_leaves_it(quarantine, workspace):
    (workspace / "d").mkdir()
    assert stash(quarantine, workspace / "d") == (-errno.EISDIR, None)
    assert (workspace / "d").is_dir()


def test_rmdir_of_non_empty_directory_is_enotempty(quarantine, workspace):
    (workspace / "d").mkdir()
    (workspace / "d" / "child").write_bytes(b"c")
    assert stash(quarantine, workspace / "d", is_dir=True) == (-errno.ENOTEMPTY, None)
    assert (workspace / "d" / "child").read_bytes() == b"c"


def test_rmdir_of_a_file_is_enotdir(quarantine, workspace):
    (workspace / "f").write_bytes(b"x")
    assert stash(quarantine, workspace / "f", is_dir=True) == (-errno.ENOTDIR, None)
    assert (workspace / "f").exists()


def test_symlink_is_stashed_as_symlink_and_target_untouched(quarantine, workspace):
    target = workspace / "target"
    make_file(target, b"target bytes")
    link = workspace / "link"
    link.symlink_to("target")
    rc, trash_path = stash(quarantine, link)
    assert rc == 0
    assert os.readlink(trash_path) == "target"
    assert target.read_bytes() == b"target bytes"
    assert restore(SESSION, root=quarantine.root)[0].status == "restored"
    assert os.readlink(link) == "target"


def test_hard_link_other_name_keeps_content(quarantine, workspace):
    make_file(workspace / "one", b"shared")
    os.link(workspace / "one", workspace / "two")
    assert stash(quarantine, workspace / "one")[0] == 0
    assert (workspace / "two").read_bytes() == b"shared"


# -- restore -----------------------------------------------------------------------------

def test_restore_gives_back_bytes_mode_times_owner_and_inode(quarantine, workspace):
    victim = workspace / "data.bin"
    make_file(victim, os.urandom(4096), mode=0o751)
    before = os.lstat(victim)
    data = victim.read_bytes()
    stash(quarantine, victim)
    results = restore(SESSION, root=quarantine.root)
    assert [(r.path, r.status) for r in results] == [(str(victim), "restored")]
    after = os.lstat(victim)
    assert victim.read_bytes() == data
    assert (after.st_mode, after.st_mtime_ns, after.st_uid, after.st_gid, after.st_ino) == \
        (before.st_mode, before.st_mtime_ns, before.st_uid, before.st_gid, before.st_ino)


def test_rm_rf_tree_restores_fully_with_directory_modes_and_mtimes(quarantine, workspace):
    top = workspace / "project"
    (top / "src" / "deep").mkdir(parents=True)
    make_file(top / "README", b"readme")
    make_file(top / "src" / "main.py", b"print(1)\n", mode=0o755)
    make_file(top / "src" / "deep" / "x", b"x" * 10000)
    (top / "src" / "empty").mkdir()
    (top / "src" / "link").symlink_to("main.py")
    os.chmod(top / "src" / "deep", 0o500)
    os.chmod(top / "src", 0o750)
    for i, d in enumerate([top / "src" / "deep", top / "src" / "empty", top / "src", top]):
        os.utime(d, ns=(1_400_000_000_000_000_000 + i, 1_450_000_000_000_000_000 + i))
    snapshot = snapshot_tree(top)
    os.chmod(top / "src" / "deep", 0o700)         # rm -rf as the owner needs to enter it
    os.utime(top / "src" / "deep", ns=(1_400_000_000_000_000_000, 1_450_000_000_000_000_000))
    rm_rf(quarantine, top)
    assert not top.exists()
    results = restore(SESSION, root=quarantine.root)
    assert all(r.status == "restored" for r in results), results
    snapshot[str(top / "src" / "deep")] = snapshot[str(top / "src" / "deep")][:1] + (
        stat.S_IFDIR | 0o700,) + snapshot[str(top / "src" / "deep")][2:]
    assert snapshot_tree(top) == snapshot


def snapshot_tree(top: Path) -> dict[str, tuple]:
    """What must come back: type, mode, mtime and content (or link target) of every entry."""
    seen = {}
    for path in [top, *top.rglob("*")]:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            content = path.read_bytes()
        else:
            content = None
        seen[str(path)] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_mtime_ns, content)
    return seen


def test_name_with_newline_and_invalid_utf8_round_trips(quarantine, workspace, trash_root):
    raw_name = b"evil\nname\xff\xfe"
    victim = Path(os.fsdecode(os.fsencode(str(workspace)) + b"/" + raw_name))
    make_file(victim, b"odd")
    assert stash(quarantine, victim)[0] == 0
    assert "b64" in manifest_lines(trash_root)[0]["original"]
    results = restore(SESSION, root=quarantine.root)
    assert results[0].status == "restored"
    assert os.fsencode(results[0].path) == os.fsencode(str(victim))
    assert victim.read_bytes() == b"odd"


def test_restore_refuses_to_overwrite_existing_file_unless_forced(quarantine, workspace):
    victim = workspace / "f"
    make_file(victim, b"old")
    stash(quarantine, victim)
    victim.write_bytes(b"new")
    assert restore(SESSION, root=quarantine.root)[0].status == "exists"
    assert victim.read_bytes() == b"new"
    assert restore(SESSION, root=quarantine.root, force=True)[0].status == "restored"
    assert victim.read_bytes() == b"old"


def test_restoring_twice_is_a_no_op_the_second_time(quarantine, workspace):
    victim = workspace / "f"
    make_file(victim, b"once")
    stash(quarantine, victim)
    assert restore(SESSION, root=quarantine.root)[0].status == "restored"
    victim.write_bytes(b"changed after restore")
    assert restore(SESSION, root=quarantine.root, force=True) == []
    assert victim.read_bytes() == b"changed after restore"
    assert list_quarantined(SESSION, root=quarantine.root) == []


def test_restore_only_the_requested_path(quarantine, workspace):
    make_file(workspace / "keep-in-trash", b"1")
    make_file(workspace / "wanted", b"2")
    stash(quarantine, workspace / "keep-in-trash")
    stash(quarantine, workspace / "wanted")
    results = restore(SESSION, [str(workspace / "wanted")], root=quarantine.root)
    assert [r.path for r in results] == [str(workspace / "wanted")]
    assert (workspace / "wanted").read_bytes() == b"2"
    assert not (workspace / "keep-in-trash").exists()


def test_restoring_a_child_recreates_its_stashed_parent_directory(quarantine, workspace):
    top = workspace / "dir"
    top.mkdir()
    make_file(top / "a", b"a")
    make_file(top / "b", b"b")
    os.chmod(top, 0o710)
    rm_rf(quarantine, top)
    results = restore(SESSION, [str(top / "a")], root=quarantine.root)
    assert {r.path: r.status for r in results} == {str(top): "restored", str(top / "a"): "restored"}
    assert stat.S_IMODE(top.stat().st_mode) == 0o710
    assert not (top / "b").exists()


def test_newest_version_of_a_path_wins_and_older_stays_in_trash(quarantine, workspace):
    victim = workspace / "f"
    make_file(victim, b"v1")
    stash(quarantine, victim)
    make_file(victim, b"v2")
    stash(quarantine, victim)
    statuses = [r.status for r in restore(SESSION, root=quarantine.root, force=True)]
    assert statuses == ["restored", "exists"]
    assert victim.read_bytes() == b"v2"


def test_restore_refuses_to_walk_through_a_parent_replaced_by_symlink_after_stash(quarantine, workspace, tmp_path):
    inner = workspace / "sub"
    inner.mkdir()
    make_file(inner / "f", b"x")
    stash(quarantine, inner / "f")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    inner.rmdir()
    inner.symlink_to(elsewhere)
    result = restore(SESSION, root=quarantine.root)[0]
    assert result.status.startswith("error:")
    assert not (elsewhere / "f").exists()


# -- across filesystems ------------------------------------------------------------------

@pytest.fixture
def no_rename_across(monkeypatch):
    """Every rename fails with EXDEV, as between the workspace and a trash on another fs."""
    def exdev(*args, **kwargs):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
    monkeypatch.setattr(os, "rename", exdev)
    monkeypatch.setattr("aarm_sandbox.enforce.quarantine._renameat2", None)


def test_cross_filesystem_stash_copies_bytes_mode_mtime_and_unlinks_source(
        quarantine, workspace, trash_root, no_rename_across):
    victim = workspace / "big"
    data = os.urandom(3 * (1 << 20) + 17)
    make_file(victim, data, mode=0o621)
    rc, trash_path = stash(quarantine, victim)
    assert rc == 0
    assert not victim.exists()
    copied = os.lstat(trash_path)
    assert Path(trash_path).read_bytes() == data
    assert stat.S_IMODE(copied.st_mode) == 0o621
    assert copied.st_mtime_ns == 1_600_000_000_123_456_789
    assert manifest_lines(trash_root)[0]["how"] == "copy"


def test_cross_filesystem_restore_copies_back_with_metadata(quarantine, workspace, no_rename_across):
    victim = workspace / "f"
    make_file(victim, b"across", mode=0o600)
    link = workspace / "l"
    link.symlink_to("f")
    stash(quarantine, victim)
    stash(quarantine, link)
    assert [r.status for r in restore(SESSION, root=quarantine.root)] == ["restored", "restored"]
    assert victim.read_bytes() == b"across"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert os.lstat(victim).st_mtime_ns == 1_600_000_000_123_456_789
    assert os.readlink(link) == "f"


def test_cross_filesystem_fifo_is_recorded_only(quarantine, workspace, trash_root, no_rename_across):
    os.mkfifo(workspace / "pipe")
    assert stash(quarantine, workspace / "pipe") == (0, None)
    entry = manifest_lines(trash_root)[0]
    assert (entry["type"], entry["how"]) == ("other", "record-only")
    assert not (workspace / "pipe").exists()


def test_cross_filesystem_entry_replaced_during_copy_is_not_unlinked(
        quarantine, workspace, monkeypatch, no_rename_across):
    victim = workspace / "f"
    make_file(victim, b"original")
    real_copy = Quarantine._copy_entry

    def copy_then_swap(self, parent_fd, name, trash_name):
        result = real_copy(self, parent_fd, name, trash_name)
        victim.unlink()
        victim.write_bytes(b"swapped in")
        return result
    monkeypatch.setattr(Quarantine, "_copy_entry", copy_then_swap)
    assert stash(quarantine, victim) == (-errno.EAGAIN, None)
    assert victim.read_bytes() == b"swapped in"
    assert os.listdir(quarantine.root / "items") == []


# -- CLI ---------------------------------------------------------------------------------

def test_cli_restore_exit_codes_and_escaped_output(quarantine, workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert restore_cmd("no-such-session", []) == 2
    assert "no quarantine for session no-such-session" in capsys.readouterr().err
    victim = workspace / "bad\x1b[31mname"
    make_file(victim, b"x")
    stash(quarantine, victim)
    assert restore_cmd(SESSION, [], list_only=True) == 0
    listed = capsys.readouterr().out
    assert "\x1b" not in listed and "\\x1b" in listed
    assert restore_cmd(SESSION, []) == 0
    assert victim.read_bytes() == b"x"
    assert restore_cmd(SESSION, [str(workspace / "never-stashed")]) == 1


def test_restore_never_walks_through_a_symlink_even_one_older_than_the_stash(quarantine, workspace,
                                                                           trash_root, tmp_path):
    """A symlink made long before and moved into place with its directory keeps its old
    ctime: restore (run by a human, often as root) must not follow it anywhere."""
    real = tmp_path / "real"
    real.mkdir()
    (workspace / "a").mkdir()
    make_file(workspace / "a" / "f", b"agent bytes")
    stash(quarantine, workspace / "a" / "f")
    (workspace / "a").rmdir()
    (workspace / "a").symlink_to(real)           # an "old" link moved where a/ was
    manifest = trash_root / "manifest.jsonl"       # as if stashed long after the link
    manifest.write_bytes(manifest.read_bytes().replace(b'"ts":"', b'"ts":"2999-01-01T00:00:00Z","old_ts":"'))
    assert restore(SESSION, root=quarantine.root)[0].status != "restored"
    assert not (real / "f").exists()


