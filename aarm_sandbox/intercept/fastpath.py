"""Native fast path: the hottest *allowed* file operations decided and performed in C.

The C loop (native/aarm_fastpath.c) handles write-opens, creates, unlinks, mkdirs, chmods and
utimensats whose
canonical path provably gets the profile's default ALLOW: it must lie under a directory the
profile's "outside" rules treat as inside (the writable set), and it must not possibly
match any rule that applies to that action type (each rule glob is reduced to a literal
prefix plus the literal pieces that any match must contain: a conservative "may match").
Everything else, including every denial, goes to the Python pipeline unchanged. Each
handled decision leaves a record that becomes a normal receipt in the journal; unlinks and
O_TRUNC opens are preceded by an intent line the C code writes to the journal itself (see
set_intent).
"""
from __future__ import annotations

import os
import re
import threading
import time

from aarm_sandbox._native import ffi, lib
from aarm_sandbox.actions import action as A
from aarm_sandbox.decode.handlers import Notification
from aarm_sandbox.journal.native_chain import Packer
from aarm_sandbox.context.count_budget import BUDGET_KINDS, budget_rules
from aarm_sandbox.policy.compiler import CompiledPolicy, literal_prefix
from aarm_sandbox.policy.decision import Result

KINDS = ((lib.AARM_FAST_WRITE, A.FILE_WRITE), (lib.AARM_FAST_CREATE, A.FILE_CREATE),
         (lib.AARM_FAST_DELETE, A.FILE_DELETE), (lib.AARM_FAST_MKDIR, A.FILE_MKDIR),
         (lib.AARM_FAST_CHMOD, A.FILE_CHMOD), (lib.AARM_FAST_UTIME, A.FILE_UTIME))
KIND_TYPE = dict(KINDS)
SYSCALL_NAMES = {2: "open", 257: "openat", 85: "creat", 87: "unlink", 263: "unlinkat",
                 84: "rmdir", 83: "mkdir", 258: "mkdirat", 90: "chmod", 268: "fchmodat",
                 452: "fchmodat2", 280: "utimensat", 91: "fchmod"}
_DRAIN_BATCH = 64          # records per batch: the journal's BATCH, so that its inline back-
                           # pressure (one batch per append over HIGH_WATER) keeps pace with runs
_WILD = re.compile(r"\*\*|\*|\?|\[[^\]]*\]")


def glob_parts(glob: str) -> tuple[str, bool, list[str], bool]:
    """(literal prefix, exact, literal pieces after the prefix, anchored) of a policy glob:
    anchored when it ends with a literal piece, which then ends every path it matches
    (rule regexes are anchored at both ends): "{workspace}/**/.git" says nothing about
    .git/objects/..., which may go fast."""
    prefix = literal_prefix(glob)
    if prefix == glob:
        return glob, True, [], False
    rest = glob[len(prefix):]
    tokens = _WILD.split(rest)
    return prefix, False, [p for p in tokens if p], tokens[-1] != ""


def _expand_dir_globs(globs: list[str]) -> list[str]:
    # "D/**" also matches D itself (compiler.glob_to_regex): keep that visible here.
    out = []
    for g in globs:
        out.append(g)
        if g.endswith("/**"):
            out.append(g[:-3])
    return out


def fast_spec(policy: CompiledPolicy, extra_danger: list[str],
              delete_danger: list[str] = ()) -> dict[int, tuple[list, list] | None]:
    """For each fast kind: (allow globs, danger globs), or None when the kind must always
    go to Python. The count rule of budget_rules() is not a danger: see counted_globs.
    delete_danger: dangers of deletes only (the sandbox's mount points)."""
    spec: dict[int, tuple[list, list] | None] = {}
    profile = policy.profile
    budgeted = {r.id for r in budget_rules(policy).values()}
    for kind, type_ in KINDS:
        if policy.default_by_type[type_] is not Result.ALLOW:
            spec[kind] = None
            continue
        allow: list[str] | None = None
        danger: list[str] = list(extra_danger)
        if type_ == A.FILE_DELETE:
            danger += delete_danger
        ok = True
        for rule in profile.rules:
            if rule.id not in {r.id for r in policy.rules_by_type[type_]}:
                continue
            inside = policy.expand_patterns(rule.paths)
            outside = policy.expand_patterns(rule.outside)
            if rule.id in budgeted and kind in BUDGET_KINDS:
                continue        # kept by spending budget units (counted_globs)
            if inside:
                danger.extend(_expand_dir_globs(inside))
            elif outside and rule.existed_at_start is None and rule.count_over is None:
                if allow is not None:
                    ok = False  # several "outside" rules: keep it simple, no fast path
                allow = [g for g in outside if g.endswith("/**") and not any(c in g[:-3] for c in "*?[")]
            else:
                ok = False      # a rule on every path of this type: no fast path
        if not ok:
            spec[kind] = None
            continue
        spec[kind] = (allow if allow is not None else ["/**"], list(dict.fromkeys(danger)))
    return spec


def counted_globs(rule) -> list[str]:
    """What a delete must may-match to spend a unit (danger-style, conservative)."""
    return _expand_dir_globs(list(rule.inside_globs))


class _Keep:
    """Keeps the cffi allocations alive as long as the C context may read them."""

    def __init__(self):
        self.objs: list = []

    def cstr(self, s: str):
        b = ffi.new("char[]", os.fsencode(s))
        self.objs.append(b)
        return b


def _globs(keep: _Keep, globs: list[str]):
    arr = ffi.new("struct aarm_fast_glob[]", max(1, len(globs)))
    keep.objs.append(arr)
    for i, g in enumerate(globs):
        prefix, exact, segs, anchored = glob_parts(g)
        arr[i].prefix = keep.cstr(prefix)
        arr[i].prefix_len = len(os.fsencode(prefix))
        arr[i].exact = int(exact)
        arr[i].anchored = int(anchored)
        seg_arr = ffi.new("char *[]", [keep.cstr(s) for s in segs] + [ffi.NULL])
        keep.objs.append(seg_arr)
        arr[i].segments = seg_arr
        arr[i].nsegments = len(segs)
    return arr


class FastPath:
    def __init__(self, listener: int, root_fd: int, policy: CompiledPolicy, extra_danger: list[str],
                 ring_capacity: int = 1024, delete_danger: list[str] = ()):
        self.spec = fast_spec(policy, extra_danger, list(delete_danger))
        self.budget_rules = budget_rules(policy)
        keep = _Keep()
        kinds = ffi.new("struct aarm_fast_kind[]", lib.AARM_FAST_NKINDS)
        for kind, _type in KINDS:
            s = self.spec.get(kind)
            if s is None:
                kinds[kind].enabled = 0
                continue
            allow, danger = s
            kinds[kind].enabled = 1
            kinds[kind].allow = _globs(keep, allow)
            kinds[kind].nallow = len(allow)
            kinds[kind].danger = _globs(keep, danger)
            kinds[kind].ndanger = len(danger)
            rule = self.budget_rules.get(kind)
            if rule is not None:
                counted = counted_globs(rule)
                kinds[kind].counted = _globs(keep, counted)
                kinds[kind].ncounted = len(counted)
        ctx = lib.aarm_fast_new(listener, root_fd, kinds, ring_capacity)
        if ctx == ffi.NULL:
            raise OSError(ffi.errno, f"cannot create the native fast path: {os.strerror(ffi.errno)}")
        self._attach(ctx)
        self._keep = keep            # aarm_fast_new deep-copies, but keep them anyway
        self.reason = {t: f"profile {policy.profile.id} default for {t}" for _k, t in KINDS}

    def _attach(self, ctx) -> None:
        self.ctx = ctx
        self._notif = ffi.new("struct aarm_notif *")
        self._records = ffi.new("struct aarm_fast_record[]", _DRAIN_BATCH)
        self._packer = Packer(_DRAIN_BATCH)
        self._lock = threading.Lock()

    def set_intent(self, fd: int, prefix: bytes) -> None:
        """Write an intent line to fd before every unlink / O_TRUNC open the C path performs:
        prefix + '"notif":ID,"action":...,"syscall":...,"tid":TID,"target":{"b64":...}}' + newline,
        one write(2); if it fails, the notification comes to Python instead. fd must be open for
        writing with O_APPEND (C keeps its own dup: the caller may close fd); -1 turns intents
        off. Safe while next() runs in another thread."""
        r = lib.aarm_fast_set_intent(self.ctx, fd, prefix, len(prefix))
        if r < 0:
            raise OSError(-r, f"fast path intent fd: {os.strerror(-r)}")

    def set_intent_log(self, log, prefix: bytes) -> None:
        """As set_intent, the lines appended to a mapped intents file (journal.IntentLog),
        shared with the journal's own intent lines; None turns intents off."""
        r = lib.aarm_fast_set_intent_log(self.ctx, log.ptr if log is not None else ffi.NULL,
                                         prefix, len(prefix))
        if r < 0:
            raise OSError(-r, f"fast path intent log: {os.strerror(-r)}")

    def set_nosym_root(self, fd: int) -> bool:
        """Let deletes and mkdirs of canonical absolute paths walk fd, a copy of the
        sandbox's mount tree that follows no symlink (see Sandbox.nosym_root), instead of
        pinning each parent directory. False (parents stay pinned) when fd is not such a
        copy of this session's root."""
        return lib.aarm_fast_set_nosym_root(self.ctx, fd) == 0

    def next(self) -> Notification | int:
        """The next notification the fast path did not handle, or -errno."""
        n = self._notif
        r = lib.aarm_fast_next(self.ctx, n)
        if r < 0:
            return r
        d = n.data
        a = d.args
        return Notification(n.id, n.pid, d.nr, d.arch, (a[0], a[1], a[2], a[3], a[4], a[5]),
                            bool(n.flags & lib.AARM_NOTIF_FLAG_INTENT))

    @property
    def wake_fd(self) -> int:
        """Readable when the record ring is filling up (owned by the fast path)."""
        return lib.aarm_fast_wake_fd(self.ctx)

    def wake_drainer(self) -> None:
        os.eventfd_write(self.wake_fd, 1)

    def disable(self) -> None:
        lib.aarm_fast_set_enabled(self.ctx, 0)

    def budget_add(self, kind: int, delta: int) -> int:
        """Add to the kind's count budget (see count_budget); returns the new value."""
        return lib.aarm_fast_budget_add(self.ctx, kind, delta)

    def invalidate_umask(self) -> None:
        lib.aarm_fast_invalidate_umask(self.ctx)

    def umask_pending(self, tid: int, mask: int) -> None:
        """tid's umask(mask) is about to be answered CONTINUE: no umask is cached until
        the thread shows it carried it out."""
        lib.aarm_fast_umask_pending(self.ctx, tid, mask)

    def invalidate_exe(self) -> None:
        """An exec was allowed: cached program names may be stale."""
        lib.aarm_fast_invalidate_exe(self.ctx)

    def drain_batches(self, on_batch, batch: int = _DRAIN_BATCH, polite=None) -> int:
        """Hand handled decisions over in ring order, a batch at a time:
        on_batch(records, n) with the cffi array of `struct aarm_fast_record` (valid only
        during the call; `pack` it to keep it). `polite`: the decision thread's claim
        (intercept.claim), waited for between batches of `batch`."""
        total = 0
        while True:
            if polite is not None:
                polite.wait()           # between batches, never holding the lock
            with self._lock:            # a batch at a time, in ring order
                n = lib.aarm_fast_drain(self.ctx, self._records, min(batch, _DRAIN_BATCH))
                if n:
                    on_batch(self._records, n)
            total += n
            if n < min(batch, _DRAIN_BATCH):
                return total

    def pack(self, records, n: int) -> bytes:
        """Records of the current batch, packed for the journal (native_chain.FastRun)."""
        return self._packer.pack(records, n)

    def drain(self, sink, batch: int = _DRAIN_BATCH, polite=None) -> int:
        """Turn handled decisions into receipts via
        sink(type, path, syscall, tid, flags, result, ts_ns, notif, exe, counted, performed): ts_ns
        CLOCK_REALTIME nanoseconds, notif the seccomp notification id, exe the acting program
        as /proc/TID/exe showed it when the operation was answered, or None when unknown (never
        looked up again here: by now the TID may run another program); counted: it spent a
        unit of the kind's count budget (the sink counts it or gives it back); performed: the
        operation happened (an open whose fd could not be installed has result < 0 and
        performed True). `polite`: the
        decision thread's claim (intercept.claim), waited for between batches of `batch`.
        (The supervisor takes whole batches: drain_batches.)"""
        unpack = ffi.unpack

        def each(records, n):
            for i in range(n):
                rec = records[i]
                path = os.fsdecode(unpack(rec.path, rec.path_len))
                exe = os.fsdecode(unpack(rec.exe, rec.exe_len)) if rec.exe_len else None
                sink(KIND_TYPE[rec.kind], path, SYSCALL_NAMES.get(rec.nr, str(rec.nr)),
                     rec.tid, rec.flags, rec.result, rec.ts_ns, rec.notif_id, exe,
                     bool(rec.counted), bool(rec.performed))
        return self.drain_batches(each, batch, polite)

    def close(self) -> None:
        if self.ctx != ffi.NULL:
            lib.aarm_fast_free(self.ctx)
            self.ctx = ffi.NULL


def drain_periodically(fast: FastPath, on_batch, stop: threading.Event, on_error=None,
                       interval: float = 0.02) -> None:
    """Drain whenever C says the ring is filling (its wake eventfd), and every `interval`
    for stragglers. A full ring would hand the next decision to the Python loop, which
    drains all of it inline first (~10 ms for 1024 receipts, measured as one stalled
    call per 1025 under a write-open loop); waking early keeps that off the hot path.
    An exception ends the thread after on_error(e) (the caller fails closed)."""
    import select
    from aarm_sandbox.intercept.claim import CLAIM
    from aarm_sandbox.journal.writer import background_priority
    try:
        background_priority()
        wake = fast.wake_fd
        poller = select.poll()
        poller.register(wake, select.POLLIN)
        timeout_ms = int(interval * 1000)
        while not stop.is_set():
            if poller.poll(timeout_ms):
                try:
                    os.eventfd_read(wake)
                except BlockingIOError:
                    pass
            fast.drain_batches(on_batch, batch=16, polite=CLAIM)
        fast.drain_batches(on_batch)
    except Exception as e:  # noqa: BLE001 - records may be lost: no further actions
        if on_error is None:
            raise
        on_error(e)
    time.sleep(0)
