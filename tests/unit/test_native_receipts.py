"""Fast-path receipts chained in C (native/aarm_receipt.c) are byte for byte the receipts the
Python encoder (Journal._chain_fast, the reference `journal verify` re-encodes) writes, for
every odd name, kind and outcome, across checkpoints; a name C cannot encode is encoded by
Python in its place in the chain."""
from __future__ import annotations

import errno
import hashlib
import json
import os

import pytest

from aarm_sandbox._native import ffi, lib
from aarm_sandbox.intercept.fastpath import KIND_TYPE, SYSCALL_NAMES
from aarm_sandbox.journal import chain
from aarm_sandbox.journal import writer as writer_mod
from aarm_sandbox.journal.native_chain import Packer
from aarm_sandbox.journal.writer import Journal

ODD_NAMES = [b"/ws/plain.txt", b"/ws/new\nline", b"/ws/tab\tcr\r", b"/ws/esc\x1b[31m", b"/ws/del\x7f",
             b'/ws/quote"back\\', "/ws/bidi\u202eevil".encode(), "/ws/ls\u2028ps".encode(),
             "/ws/emoji \U0001f600".encode(), "/ws/é".encode(), b"/ws/" + bytes(range(1, 32)),
             "/ws/\U0010ffff".encode()]
# Not UTF-8 (the general path stores them as {"b64": ...}): a stray byte, an overlong '/',
# an encoded surrogate, a code point above U+10FFFF, a truncated sequence.
NOT_UTF8 = [b"/ws/latin1-\xe9", b"/ws/\xc0\xaf", b"/ws/\xed\xa0\x80", b"/ws/\xf4\x90\x80\x80", b"/ws/\xe2\x82"]
REASONS = {k: f"profile default default for {t}" for k, t in KIND_TYPE.items()}
NR = {name: nr for nr, name in SYSCALL_NAMES.items()}


def _records(specs):
    recs = ffi.new("struct aarm_fast_record[]", len(specs))
    for i, (kind, nr, path, exe, flags, result, performed) in enumerate(specs):
        r = recs[i]
        r.ts_ns = 1_764_000_000_123_456_789 + i * 1_000_003_000
        r.notif_id = 2 ** 63 + i * 7919
        r.tid = 4000 + i
        r.nr, r.kind, r.flags, r.result, r.performed = nr, kind, flags, result, performed
        ffi.memmove(r.path, path, len(path))
        r.path_len = len(path)
        if exe is not None:
            ffi.memmove(r.exe, exe, len(exe))
            r.exe_len = len(exe)
    return recs


def _specs():
    kinds = [(lib.AARM_FAST_WRITE, NR["openat"], 0o1101), (lib.AARM_FAST_CREATE, NR["open"], 0o101),
             (lib.AARM_FAST_DELETE, NR["unlinkat"], 0x200), (lib.AARM_FAST_DELETE, NR["unlink"], 0),
             (lib.AARM_FAST_MKDIR, NR["mkdirat"], 0), (lib.AARM_FAST_CHMOD, NR["chmod"], 0o4755),
             (lib.AARM_FAST_CHMOD, NR["fchmodat"], 0), (lib.AARM_FAST_UTIME, 999, 0)]
    outcomes = [(3, 1), (0, 1), (-errno.ENOENT, 0), (-errno.EMFILE, 1), (-200, 0), (-errno.EWOULDBLOCK, 0)]
    exes = [b"/usr/bin/python3", None, "/opt/bïn/tool\n".encode()]
    specs = []
    for i, name in enumerate(ODD_NAMES + NOT_UTF8):
        kind, nr, flags = kinds[i % len(kinds)]
        result, performed = outcomes[i % len(outcomes)]
        specs.append((kind, nr, name, exes[i % len(exes)], flags, result, performed))
    # and a program name that is not UTF-8
    specs.append((lib.AARM_FAST_WRITE, NR["creat"], b"/ws/ok", b"/bin/\xff", 0, 4, 1))
    return specs


def _journal(path, **kw) -> Journal:
    return Journal(str(path), "sess-receipts-1", intent="tidy up",
                   identity={"user": "dev", "uid": 1000, "host": "box"},
                   policy={"profile": "default", "version": "1", "sha256": "ab" * 32}, **kw)


@pytest.fixture
def frozen_time(monkeypatch):
    """Checkpoints carry the writer's clock: the same instant in both journals."""
    monkeypatch.setattr(writer_mod.time, "time_ns", lambda: 1_764_000_500_000_000_000)


@pytest.mark.parametrize("every", [1000, 4])
@pytest.mark.parametrize("run_size", [1, 5, 64])
def test_native_receipts_are_byte_identical_to_the_python_encoder(tmp_path, frozen_time, every, run_size):
    specs = _specs()
    recs = _records(specs)
    native = _journal(tmp_path / "native.jsonl", checkpoint_every=every)
    assert native.use_native_fast(KIND_TYPE, SYSCALL_NAMES, REASONS)
    assert native._native is not None
    packer = Packer(len(specs))
    for start in range(0, len(specs), run_size):
        n = min(run_size, len(specs) - start)
        native.append_fast_run(packer.pack(recs + start, n), n)
    native._drain()

    reference = _journal(tmp_path / "python.jsonl", checkpoint_every=every)
    for i, (kind, nr, path, exe, flags, result, performed) in enumerate(specs):
        r = recs[i]
        reference.append_fast(KIND_TYPE[kind], os.fsdecode(path), SYSCALL_NAMES.get(nr, str(nr)),
                              r.tid, flags, result, r.ts_ns, r.notif_id,
                              None if exe is None else os.fsdecode(exe), REASONS[kind], bool(performed))
    reference._drain()

    got = (tmp_path / "native.jsonl").read_bytes()
    want = (tmp_path / "python.jsonl").read_bytes()
    assert got.count(b'"type":"receipt"') == len(specs)
    assert got.splitlines() == want.splitlines()
    # and the chain holds: every line's hash is its body's, linked to the one before
    prev = chain.genesis("sess-receipts-1")
    for line in got.splitlines():
        rec = json.loads(line)
        assert rec["prev_hash"] == prev
        assert rec["hash"] == hashlib.sha256(chain.body_of(rec)).hexdigest()
        prev = rec["hash"]
    assert native.seq == reference.seq and native.prev_hash == reference.prev_hash
    assert native.context == reference.context


def test_a_name_that_is_not_utf8_is_stored_as_b64_in_its_place(tmp_path, frozen_time):
    specs = [(lib.AARM_FAST_CREATE, NR["openat"], b"/ws/a", None, 0o101, 3, 1),
             (lib.AARM_FAST_DELETE, NR["unlink"], b"/ws/\xff", None, 0, 0, 1),
             (lib.AARM_FAST_CREATE, NR["openat"], b"/ws/b", None, 0o101, 3, 1)]
    recs = _records(specs)
    j = _journal(tmp_path / "j.jsonl")
    assert j.use_native_fast(KIND_TYPE, SYSCALL_NAMES, REASONS)
    j.append_fast_run(Packer(3).pack(recs, 3), 3)
    j._drain()
    targets = [json.loads(line)["action"]["target"] for line in (tmp_path / "j.jsonl").read_bytes().splitlines()]
    assert targets == ["/ws/a", {"b64": "L3dzL/8="}, "/ws/b"]


def test_an_errno_of_int64_min_is_written_as_its_magnitude_like_python(tmp_path, frozen_time):
    specs = [(lib.AARM_FAST_WRITE, NR["openat"], b"/ws/x", None, 0o101, -2 ** 63, 0)]
    recs = _records(specs)
    native = _journal(tmp_path / "n.jsonl")
    assert native.use_native_fast(KIND_TYPE, SYSCALL_NAMES, REASONS)
    native.append_fast_run(Packer(1).pack(recs, 1), 1)
    native._drain()
    reference = _journal(tmp_path / "p.jsonl")
    r = recs[0]
    reference.append_fast(KIND_TYPE[specs[0][0]], "/ws/x", "openat", r.tid, 0o101, -2 ** 63, r.ts_ns,
                          r.notif_id, None, REASONS[specs[0][0]], False)
    reference._drain()
    assert (tmp_path / "n.jsonl").read_bytes() == (tmp_path / "p.jsonl").read_bytes()


def test_the_queue_stays_bounded_when_runs_arrive_faster_than_the_writer_drains(tmp_path, monkeypatch):
    """Over HIGH_WATER each append drains one batch inline: a run (at most one drain batch
    of records) must not add more than that removes, or a starved writer lets the queue
    grow without bound."""
    from aarm_sandbox.intercept.fastpath import _DRAIN_BATCH
    monkeypatch.setattr(writer_mod, "HIGH_WATER", 100)
    specs = [(lib.AARM_FAST_CREATE, NR["openat"], b"/ws/f%d" % i, None, 0o101, 3, 1)
             for i in range(_DRAIN_BATCH)]
    recs = _records(specs)
    packed = Packer(_DRAIN_BATCH).pack(recs, _DRAIN_BATCH)
    j = _journal(tmp_path / "j.jsonl")          # its writer thread never started: starved
    assert j.use_native_fast(KIND_TYPE, SYSCALL_NAMES, REASONS)
    for _ in range(1000):
        j.append_fast_run(packed, _DRAIN_BATCH)
    pending = sum((len(r.packed) - r.offset) // len(packed) * _DRAIN_BATCH for r in j.queue)
    assert len(j.queue) <= 257 and pending <= 257 * _DRAIN_BATCH, (len(j.queue), pending)


def test_a_batch_is_journaled_before_anything_else_can_fail(tmp_path, monkeypatch):
    """The ring lets go of a batch when it is drained: its receipts are queued first, so
    a failure while the session context learns it (here a closed stderr under --explain)
    loses none."""
    import io
    import sys
    from aarm_sandbox.context.session import SessionContext
    from aarm_sandbox.supervisor import Supervisor

    class Broken(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    specs = [(lib.AARM_FAST_CREATE, NR["openat"], b"/ws/f%d" % i, None, 0o101, 3, 1) for i in range(3)]
    recs = _records(specs)
    j = _journal(tmp_path / "j.jsonl")
    assert j.use_native_fast(KIND_TYPE, SYSCALL_NAMES, REASONS)
    sup = Supervisor.__new__(Supervisor)
    sup.ctx, sup.ledger, sup.journal, sup.explain = SessionContext("s"), None, j, True
    sup._kind_type = KIND_TYPE
    packer = Packer(3)
    sup.fast = type("F", (), {"pack": staticmethod(packer.pack)})()
    monkeypatch.setattr(sys, "stderr", Broken())
    sup._fast_batch(recs, 3)
    j._drain()
    lines = (tmp_path / "j.jsonl").read_bytes().splitlines()
    assert [json.loads(x)["action"]["target"] for x in lines] == ["/ws/f0", "/ws/f1", "/ws/f2"]
    assert sup.ctx.created_paths == {"/ws/f0", "/ws/f1", "/ws/f2"}
