"""The "quarantine" MODIFY transform: a deletion becomes a move into a per-session trash.

An agent's `rm -rf` is the one action that cannot be taken back after the fact, so a
policy can say MODIFY/quarantine for file.delete: instead of unlinkat() on the pinned
parent directory fd, the supervisor calls `Quarantine.stash`, which moves the entry out
of the workspace into a trash directory the sandbox never sees (the caller masks it; the
trash must never be writable by the sandbox). `restore` — `aarm-sandbox restore` — puts
the entries back with identical bytes and metadata.

Everything the target names is resolved relative to the parent fd the caller pinned
(never a path walk through something the agent controls), symlinks are moved or copied
as symlinks and never followed, and names inside the trash are counters, never agent
text. Each stash appends one JSON line to ROOT/manifest.jsonl; each restore appends a
{"restored": NAME} line, so a second restore never puts an entry back twice.
"""
from __future__ import annotations

import base64
import ctypes
import errno
import os
import stat
import threading
import uuid
from datetime import datetime
from pathlib import Path
from typing import Iterable, NamedTuple

import orjson

from aarm_sandbox.journal.canonical import raw_bytes_value
from aarm_sandbox.journal.writer import rfc3339
from aarm_sandbox.xdg import state_dir

MANIFEST_NAME = "manifest.jsonl"
ITEMS_DIR = "items"
COPY_CHUNK_BYTES = 1 << 20
NEW_PARENT_MODE = 0o755
RENAME_NOREPLACE = 1


# --------------------------------------------------------------------------------------
# shared helpers

def default_trash_root(session_id: str) -> Path:
    """Where a session's trash lives."""
    return state_dir() / "trash" / session_id


def _entry_type(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    return "other"


def _same_object(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _unchanged_since_copy(copied: os.stat_result, now: os.stat_result) -> bool:
    return (_same_object(copied, now) and copied.st_size == now.st_size
            and copied.st_mtime_ns == now.st_mtime_ns)


_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def rename_noreplace(src_dir_fd: int, src: bytes, dst_dir_fd: int, dst: bytes) -> None:
    """renameat2(RENAME_NOREPLACE): move without ever replacing what is at `dst`. Raises
    OSError(EEXIST) if something is there; falls back to check-then-rename where the
    filesystem or libc has no renameat2 (a narrow race, only in restore)."""
    if _renameat2 is not None:
        if _renameat2(src_dir_fd, src, dst_dir_fd, dst, RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err))
    if _lstat_or_none(dst, dst_dir_fd) is not None:
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
    os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)


def _fstat_or_none(fd: int) -> os.stat_result | None:
    try:
        return os.fstat(fd)
    except OSError:
        return None


def _lstat_or_none(name: bytes, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _copy_bytes(src_fd: int, dst_fd: int) -> None:
    while True:
        try:
            sent = os.sendfile(dst_fd, src_fd, None, COPY_CHUNK_BYTES)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
            break
        if sent == 0:
            return
    while chunk := os.read(src_fd, COPY_CHUNK_BYTES):      # fallback: plain read/write
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst_fd, view):]


def _copy_xattrs(src_fd: int, dst_fd: int) -> None:
    """Best effort: security.* and trusted.* need privileges we may not have."""
    try:
        names = os.listxattr(src_fd)
    except OSError:
        return
    for name in names:
        try:
            os.setxattr(dst_fd, name, os.getxattr(src_fd, name))
        except OSError:
            pass


def _apply_file_metadata(fd: int, st: os.stat_result | dict) -> None:
    """Owner (best effort: only root or the same uid can), then mode (chown clears
    set-id bits), then times last (every other change would touch them)."""
    uid, gid, mode, atime, mtime = _meta(st)
    try:
        os.fchown(fd, uid, gid)
    except OSError:
        pass
    os.fchmod(fd, stat.S_IMODE(mode))
    os.utime(fd, ns=(atime, mtime))


def _apply_symlink_metadata(name: bytes, dir_fd: int, st: os.stat_result | dict) -> None:
    uid, gid, _mode, atime, mtime = _meta(st)
    try:
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        pass
    try:
        os.utime(name, ns=(atime, mtime), dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        pass


def _meta(st: os.stat_result | dict) -> tuple[int, int, int, int, int]:
    if isinstance(st, dict):
        return st["uid"], st["gid"], st["mode"], st["atime_ns"], st["mtime_ns"]
    return st.st_uid, st.st_gid, st.st_mode, st.st_atime_ns, st.st_mtime_ns


def _copy_regular_file(src_fd: int, src_st: os.stat_result, dst_name: bytes, dst_dir_fd: int) -> None:
    """Copy an already-opened regular file to a new name (O_EXCL: never onto anything)."""
    dst_fd = os.open(dst_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dst_dir_fd)
    try:
        _copy_bytes(src_fd, dst_fd)
        _copy_xattrs(src_fd, dst_fd)
        _apply_file_metadata(dst_fd, src_st)
    except BaseException:
        os.close(dst_fd)
        _unlink_quietly(dst_name, dst_dir_fd)
        raise
    os.close(dst_fd)


def _unlink_quietly(name: bytes, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _open_private_dir(path: Path) -> int:
    """Create `path` and any missing parents 0700, and open it without following a
    symlink at its last component."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


# --------------------------------------------------------------------------------------
# stash

class Quarantine:
    """One session's trash: moves deleted entries aside instead of destroying them."""

    def __init__(self, session_id: str, root: str | os.PathLike):
        """root: the trash directory for this session, e.g.
        $XDG_STATE_HOME/aarm-sandbox/trash/SESSION (created 0700 on first use, parents
        too). The sandbox never sees it (the caller masks it)."""
        self.session_id = session_id
        self.root = Path(root)
        self._lock = threading.Lock()
        self._name_prefix = uuid.uuid4().hex[:8]     # unique across supervisor restarts
        self._counter = 0
        self._items_fd: int | None = None
        self._manifest_fd: int | None = None
        # (dev, ino) of a directory we removed entries from -> (atime_ns, mtime_ns) it had
        # before, and the mtime our last removal left it with (see _remember_dir_times)
        self._dir_times: dict[tuple[int, int], tuple[int, int, int]] = {}

    # -- lifecycle -----------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._items_fd is not None:
            return
        root_fd = _open_private_dir(self.root)
        try:
            try:
                os.mkdir(ITEMS_DIR, 0o700, dir_fd=root_fd)
            except FileExistsError:
                pass
            items_fd = os.open(ITEMS_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                               dir_fd=root_fd)
            manifest_fd = os.open(MANIFEST_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, 0o600, dir_fd=root_fd)
        finally:
            os.close(root_fd)
        self._items_fd, self._manifest_fd = items_fd, manifest_fd

    def close(self) -> None:
        with self._lock:
            for fd in (self._items_fd, self._manifest_fd):
                if fd is not None:
                    os.close(fd)
            self._items_fd = self._manifest_fd = None

    def __enter__(self) -> "Quarantine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the transform -------------------------------------------------------------------

    def stash(self, parent_fd: int, name: bytes, original_path: str, *,
              is_dir: bool = False) -> tuple[int, str | None]:
        """Move the entry `name` of the directory `parent_fd` (an O_PATH or O_DIRECTORY
        fd the caller pinned) into the trash instead of deleting it. Returns
        (0, trash_path) or (-errno, None) with the errno the target's unlink/rmdir would
        have seen (ENOENT, EISDIR, ENOTDIR, ENOTEMPTY, EACCES, EPERM, EROFS, EBUSY ...),
        or -EAGAIN if the entry was replaced while it was being copied across filesystems."""
        if isinstance(original_path, bytes):
            original_path = os.fsdecode(original_path)
        with self._lock:
            try:
                self._ensure_open()
            except OSError as e:
                return -(e.errno or errno.EIO), None
            try:
                before = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            except OSError as e:
                return -(e.errno or errno.EIO), None
            if is_dir and not stat.S_ISDIR(before.st_mode):
                return -errno.ENOTDIR, None
            if not is_dir and stat.S_ISDIR(before.st_mode):
                return -errno.EISDIR, None
            parent_before = _fstat_or_none(parent_fd)
            if is_dir:
                result = self._stash_empty_dir(parent_fd, name, original_path, before)
            else:
                result = self._stash_entry(parent_fd, name, original_path)
            if result[0] == 0 and parent_before is not None:
                self._remember_dir_times(parent_fd, parent_before)
            return result

    def _remember_dir_times(self, parent_fd: int, parent_before: os.stat_result) -> None:
        """rm -rf empties a directory before removing it, so by then its mtime only says
        when we emptied it. Keep the times it had before our first removal (refreshed if
        anything else changed it since our last one) for the directory's manifest entry."""
        key = (parent_before.st_dev, parent_before.st_ino)
        known = self._dir_times.get(key)
        if known is None or known[2] != parent_before.st_mtime_ns:
            known = (parent_before.st_atime_ns, parent_before.st_mtime_ns, 0)
        after = _fstat_or_none(parent_fd)
        self._dir_times[key] = (known[0], known[1], after.st_mtime_ns if after else -1)

    def _times_before_removals(self, st: os.stat_result) -> tuple[int, int] | None:
        known = self._dir_times.pop((st.st_dev, st.st_ino), None)
        if known is None or known[2] != st.st_mtime_ns:
            return None
        return known[0], known[1]

    def _next_trash_name(self) -> bytes:
        self._counter += 1
        return f"{self._name_prefix}-{self._counter:06d}".encode()

    def _stash_empty_dir(self, parent_fd: int, name: bytes, original_path: str,
                         before: os.stat_result) -> tuple[int, str | None]:
        """rmdir semantics: only an empty directory goes, and all there is to keep is its
        metadata (its contents were stashed one by one before it)."""
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except OSError as e:
            return -(e.errno or errno.EIO), None
        self._record(original_path, None, before, "record-only", self._times_before_removals(before))
        return 0, None

    def _stash_entry(self, parent_fd: int, name: bytes, original_path: str) -> tuple[int, str | None]:
        trash_name = self._next_trash_name()
        try:
            os.rename(name, trash_name, src_dir_fd=parent_fd, dst_dir_fd=self._items_fd)
        except OSError as e:
            if e.errno == errno.EXDEV:
                return self._copy_then_unlink(parent_fd, name, original_path, trash_name)
            return -(e.errno or errno.EIO), None
        moved = os.stat(trash_name, dir_fd=self._items_fd, follow_symlinks=False)
        if stat.S_ISDIR(moved.st_mode) and self._put_back(trash_name, parent_fd, name):
            return -errno.EISDIR, None     # swapped for a directory after our lstat
        self._record(original_path, trash_name, moved, "rename")
        return 0, self._trash_path(trash_name)

    def _put_back(self, trash_name: bytes, parent_fd: int, name: bytes) -> bool:
        """Undo a rename that moved a directory (unlink would have said EISDIR). If the
        name was taken meanwhile the directory stays in the trash (recorded, not lost)."""
        try:
            rename_noreplace(self._items_fd, trash_name, parent_fd, name)
            return True
        except OSError:
            return False

    def _copy_then_unlink(self, parent_fd: int, name: bytes, original_path: str,
                          trash_name: bytes) -> tuple[int, str | None]:
        """Across filesystems: copy what is there now (opened O_NOFOLLOW relative to the
        pinned fd), then unlink it only if the name still holds exactly what was copied."""
        try:
            copied, how = self._copy_entry(parent_fd, name, trash_name)
        except OSError as e:
            return -(e.errno or errno.EIO), None
        kept = how == "copy"
        try:
            current = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            if not _unchanged_since_copy(copied, current):
                raise OSError(errno.EAGAIN, "replaced while being copied")
            os.unlink(name, dir_fd=parent_fd)
        except OSError as e:
            if kept:
                _unlink_quietly(trash_name, self._items_fd)
            return -(e.errno or errno.EIO), None
        self._record(original_path, trash_name if kept else None, copied, how)
        return 0, self._trash_path(trash_name) if kept else None

    def _copy_entry(self, parent_fd: int, name: bytes, trash_name: bytes) -> tuple[os.stat_result, str]:
        """Copy a regular file or a symlink into the trash; other types (fifo, socket,
        device) cannot be kept and are only recorded. Returns the stat of what was read."""
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=parent_fd)
            os.symlink(target, trash_name, dir_fd=self._items_fd)
            _apply_symlink_metadata(trash_name, self._items_fd, st)
            return st, "copy"
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(st.st_mode):
            return st, "record-only"
        src_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            src_st = os.fstat(src_fd)
            if not stat.S_ISREG(src_st.st_mode):
                raise OSError(errno.EAGAIN, "replaced while being copied")
            _copy_regular_file(src_fd, src_st, trash_name, self._items_fd)
            return src_st, "copy"
        finally:
            os.close(src_fd)

    # -- manifest ------------------------------------------------------------------------

    def _trash_path(self, trash_name: bytes) -> str:
        return str(self.root / ITEMS_DIR / trash_name.decode())

    def _record(self, original_path: str, trash_name: bytes | None, st: os.stat_result, how: str,
                times_ns: tuple[int, int] | None = None) -> None:
        atime_ns, mtime_ns = times_ns or (st.st_atime_ns, st.st_mtime_ns)
        entry = {
            "original": raw_bytes_value(original_path),
            "trash": f"{ITEMS_DIR}/{trash_name.decode()}" if trash_name else None,
            "type": _entry_type(st.st_mode), "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid,
            "size": st.st_size, "mtime_ns": mtime_ns, "atime_ns": atime_ns,
            "ino": st.st_ino, "dev": st.st_dev, "ts": rfc3339(), "how": how,
        }
        if how == "record-only" and entry["type"] == "other":
            entry["note"] = "content not kept: only metadata of a fifo, socket or device"
        os.write(self._manifest_fd, orjson.dumps(entry) + b"\n")


# --------------------------------------------------------------------------------------
# manifest reading

class StashEntry(NamedTuple):
    """One stash line of a manifest, plus its line number (the id a restore refers to)."""
    line_no: int
    original: bytes
    record: dict

    @property
    def key(self) -> str:
        """What a {"restored": ...} line names: the trash name, or the line number for an
        entry that has none (an empty directory, a fifo)."""
        return self.record.get("trash") or f"line:{self.line_no}"


def _original_bytes(value) -> bytes:
    if isinstance(value, dict) and "b64" in value:
        return base64.b64decode(value["b64"])
    return os.fsencode(str(value))


def read_manifest(root: Path) -> tuple[list[StashEntry], set[str]]:
    """Stash entries in stash order, and the keys already restored. A torn last line (a
    crash mid-write) is skipped, not fatal: everything before it is still restorable."""
    entries: list[StashEntry] = []
    restored: set[str] = set()
    with open(root / MANIFEST_NAME, "rb") as f:
        for line_no, line in enumerate(f, 1):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(record, dict):
                continue
            if "restored" in record:
                restored.add(str(record["restored"]))
            elif "original" in record:
                entries.append(StashEntry(line_no, _original_bytes(record["original"]), record))
    return entries, restored


def _is_selected(original: bytes, selected: list[bytes] | None) -> bool:
    if selected is None:
        return True
    return any(original == p or original.startswith(p.rstrip(b"/") + b"/") for p in selected)


# --------------------------------------------------------------------------------------
# restore

class RestoreResult(NamedTuple):
    path: str          # the original path (fsdecoded: undecodable bytes as surrogates)
    status: str        # "restored" | "exists" | "missing-from-trash" | "error: ..."


def _stash_time_ns(record: dict) -> int:
    """When the entry was stashed; 0 (trust no symlink on the way) if the line says not."""
    try:
        when = datetime.fromisoformat(str(record.get("ts")).replace("Z", "+00:00"))
    except ValueError:
        return 0
    return int(when.timestamp()) * 10**9 + when.microsecond * 1000


class _ParentUnsafe(Exception):
    """A component of the original path is now something restore must not walk through."""


class _Restorer:
    """One restore run. Paths are walked component by component with O_NOFOLLOW from "/",
    and a symlink is never followed: the recorded path is canonical (it had none when the
    entry was stashed), so one there now was put there since - also one made long before
    and moved into place with its directory, which keeps its old ctime (`mv c a` with
    c/b -> /etc/cron.d steered a restore, run as root, to write the agent's bytes there)."""

    def __init__(self, root: Path, force: bool):
        self.root = root
        self.force = force
        self.entries, self.restored = read_manifest(root)
        self.items_fd = os.open(root / ITEMS_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) \
            if (root / ITEMS_DIR).is_dir() else -1
        self.manifest_fd = os.open(root / MANIFEST_NAME, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self.results: list[RestoreResult] = []
        self.dirs_to_finish: list[tuple[bytes, dict]] = []
        self.done_this_run: set[bytes] = set()
        self.pending_dirs: dict[bytes, StashEntry] = {}

    def close(self) -> None:
        for fd in (self.items_fd, self.manifest_fd):
            if fd >= 0:
                os.close(fd)

    def run(self, selected: list[bytes] | None) -> list[RestoreResult]:
        todo = [e for e in self.entries if e.key not in self.restored and _is_selected(e.original, selected)]
        for entry in self.entries:
            if entry.record.get("type") == "dir" and entry.key not in self.restored:
                self.pending_dirs[entry.original] = entry       # the newest wins
        for entry in reversed(todo):          # rm -rf stashes children first: dirs come back first
            if entry.key not in self.restored:
                self._restore_one(entry)
        self._finish_dirs()
        return self.results

    # -- one entry -----------------------------------------------------------------------

    def _restore_one(self, entry: StashEntry) -> None:
        path = os.fsdecode(entry.original)
        if entry.original in self.done_this_run:
            self.results.append(RestoreResult(path, "exists"))   # an older version of it
            return
        try:
            status = self._place(entry)
        except _ParentUnsafe as e:
            status = f"error: {e}"
        except OSError as e:
            status = f"error: {e.strerror or e}"
        if status == "restored":
            self._mark_restored(entry)
        self.results.append(RestoreResult(path, status))

    def _place(self, entry: StashEntry) -> str:
        parent_fd, name = self._open_parent(entry.original, _stash_time_ns(entry.record))
        try:
            kind = entry.record.get("type")
            if kind == "dir":
                return self._place_dir(entry, parent_fd, name)
            existing = _lstat_or_none(name, parent_fd)
            if existing is not None and (not self.force or stat.S_ISDIR(existing.st_mode)):
                return "exists"
            if kind == "other":
                return self._place_other(entry, parent_fd, name, existing)
            return self._place_item(entry, parent_fd, name, existing)
        finally:
            os.close(parent_fd)

    def _place_dir(self, entry: StashEntry, parent_fd: int, name: bytes) -> str:
        """mkdir 0700 so the children can go in whatever the recorded mode; the recorded
        mode, owner and times are applied at the end, after the children."""
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            return "exists"
        self.dirs_to_finish.append((entry.original, entry.record))
        return "restored"

    def _place_other(self, entry: StashEntry, parent_fd: int, name: bytes,
                     existing: os.stat_result | None) -> str:
        if not stat.S_ISFIFO(entry.record.get("mode", 0)):
            return "error: content was not kept (socket or device)"
        if existing is not None:
            os.unlink(name, dir_fd=parent_fd)
        os.mkfifo(name, 0o600, dir_fd=parent_fd)
        self._apply_metadata_at(parent_fd, name, entry.record)
        return "restored"

    def _place_item(self, entry: StashEntry, parent_fd: int, name: bytes,
                    existing: os.stat_result | None) -> str:
        trash_name = os.fsencode(os.path.basename(str(entry.record.get("trash") or "")))
        if self.items_fd < 0 or not trash_name or _lstat_or_none(trash_name, self.items_fd) is None:
            return "missing-from-trash"
        try:
            if existing is not None:       # force: rename replaces atomically
                os.rename(trash_name, name, src_dir_fd=self.items_fd, dst_dir_fd=parent_fd)
            else:
                rename_noreplace(self.items_fd, trash_name, parent_fd, name)
            return "restored"
        except FileExistsError:
            return "exists"
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
        return self._copy_back(entry, trash_name, parent_fd, name, existing)

    def _copy_back(self, entry: StashEntry, trash_name: bytes, parent_fd: int, name: bytes,
                   existing: os.stat_result | None) -> str:
        if existing is not None:
            os.unlink(name, dir_fd=parent_fd)
        st = os.stat(trash_name, dir_fd=self.items_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(trash_name, dir_fd=self.items_fd), name, dir_fd=parent_fd)
            _apply_symlink_metadata(name, parent_fd, entry.record)
        else:
            src_fd = os.open(trash_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.items_fd)
            try:
                _copy_regular_file(src_fd, os.fstat(src_fd), name, parent_fd)
            finally:
                os.close(src_fd)
            self._apply_metadata_at(parent_fd, name, entry.record)
        os.unlink(trash_name, dir_fd=self.items_fd)
        return "restored"

    @staticmethod
    def _apply_metadata_at(parent_fd: int, name: bytes, record: dict) -> None:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            _apply_file_metadata(fd, record)
        finally:
            os.close(fd)

    def _mark_restored(self, entry: StashEntry) -> None:
        self.restored.add(entry.key)
        self.done_this_run.add(entry.original)
        self.pending_dirs.pop(entry.original, None)
        os.write(self.manifest_fd, orjson.dumps({"restored": entry.key, "ts": rfc3339()}) + b"\n")

    # -- parents -------------------------------------------------------------------------

    def _open_parent(self, original: bytes, stashed_ns: int) -> tuple[int, bytes]:
        """An fd of the original's parent directory, recreating missing directories on the
        way (from their manifest entries where the trash has them, else 0755)."""
        if not original.startswith(b"/"):
            raise _ParentUnsafe("original path is not absolute")
        *dirs, name = [c for c in original.split(b"/") if c]
        if not name or name in (b".", b"..") or any(c in (b".", b"..") for c in dirs):
            raise _ParentUnsafe("original path is not canonical")
        fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        walked = b""
        try:
            for component in dirs:
                walked += b"/" + component
                next_fd = self._enter(fd, component, walked, stashed_ns)
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd, name

    def _enter(self, fd: int, component: bytes, walked: bytes, stashed_ns: int) -> int:
        st = _lstat_or_none(component, fd)
        if st is None:
            self._recreate_dir(fd, component, walked)
        elif stat.S_ISLNK(st.st_mode):
            raise _ParentUnsafe(f"{os.fsdecode(walked)} is a symlink now (it was a directory "
                                "when the entry was stashed)")
        try:
            return os.open(component, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW,
                           dir_fd=fd)
        except NotADirectoryError:
            raise _ParentUnsafe(f"{os.fsdecode(walked)} is not a directory") from None

    def _recreate_dir(self, fd: int, component: bytes, walked: bytes) -> None:
        entry = self.pending_dirs.pop(walked, None)
        try:
            os.mkdir(component, 0o700 if entry else NEW_PARENT_MODE, dir_fd=fd)
        except FileExistsError:
            return
        if entry is not None:
            self.dirs_to_finish.append((walked, entry.record))
            self._mark_restored(entry)
            self.results.append(RestoreResult(os.fsdecode(walked), "restored"))

    def _finish_dirs(self) -> None:
        """Directory mode, owner and times last, deepest first: restoring the children
        changed each directory's mtime, and a read-only mode would have kept them out."""
        for original, record in reversed(self.dirs_to_finish):
            try:
                parent_fd, name = self._open_parent(original, _stash_time_ns(record))
            except (OSError, _ParentUnsafe):
                continue
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
                try:
                    _apply_file_metadata(fd, record)
                finally:
                    os.close(fd)
            except OSError:
                pass
            finally:
                os.close(parent_fd)


def restore(session_id: str, paths: Iterable[str] | None = None, *, root: str | os.PathLike | None = None,
            force: bool = False) -> list[RestoreResult]:
    """Put a session's quarantined entries back, newest stash first (directories, stashed
    after their children, come back before them). Only entries at or under `paths` if
    given. Never overwrites what is at an original path unless `force` (and never a
    directory); an older version of a path restored in the same run stays in the trash.
    Raises FileNotFoundError if the session has no trash."""
    trash_root = Path(root) if root is not None else default_trash_root(session_id)
    selected = None if paths is None else [os.fsencode(os.path.abspath(p)) for p in paths]
    restorer = _Restorer(trash_root, force)
    try:
        return restorer.run(selected)
    finally:
        restorer.close()


def list_quarantined(session_id: str, *, root: str | os.PathLike | None = None) -> list[StashEntry]:
    """Entries still in the trash (not restored), in stash order."""
    trash_root = Path(root) if root is not None else default_trash_root(session_id)
    entries, restored = read_manifest(trash_root)
    return [e for e in entries if e.key not in restored]
