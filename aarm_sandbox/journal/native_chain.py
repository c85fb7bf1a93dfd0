"""Fast-path receipts encoded and chained in C (native/aarm_receipt.c).

The native fast path's records are the journal's highest-volume receipts. Encoding each
in Python (JCS text, two SHA-256) cost ~9 µs of CPU; on a 2-core host that work ran beside
the sandbox and slowed its decisions by about a third. Here the decision loop's drain
packs a batch of ring records into one bytes object (`FastRun`), the journal queues it in
order with every other record, and the writer chains a whole run with one C call (GIL
released). The bytes are exactly Journal._chain_fast's, which stays the reference: a
record C cannot encode (a name that is not UTF-8) is encoded by it.
"""
from __future__ import annotations

import errno as _errno
import os
import struct
import sys

from aarm_sandbox._native import ffi, lib

# struct aarm_packed_record: ts_ns, notif_id, result, tid, nr, kind, flags, performed,
# exe_len, path_len, pad
_HEADER = struct.Struct("=QQqIiiIIIII")
_OUT_CAP = 4 * lib.AARM_RECEIPT_LINE_MAX
_MAX_CHUNKS = 256
_TEMPLATE_MAX = 12000       # bytes of template pieces C has room for in a line


class FastRun:
    """A batch of fast-path records waiting in the journal queue, packed (what is left of
    it: `offset`)."""
    __slots__ = ("packed", "offset", "count")

    def __init__(self, packed: bytes, count: int):
        self.packed = packed
        self.offset = 0
        self.count = count


class Packer:
    """Packs drained ring records (one per drain thread at a time: the caller's lock)."""

    def __init__(self, capacity: int):
        self._buf = ffi.new("char[]", capacity * lib.AARM_PACKED_RECORD_MAX)
        self._cap = capacity * lib.AARM_PACKED_RECORD_MAX

    def pack(self, records, n: int) -> bytes:
        size = lib.aarm_receipt_pack(records, n, self._buf, self._cap)
        return ffi.buffer(self._buf, size)[:]


def unpack_one(packed: bytes, offset: int):
    """(header fields, exe bytes or None, path bytes, size) of the record at offset."""
    ts, notif, result, tid, nr, kind, flags, performed, el, pl, _ = _HEADER.unpack_from(packed, offset)
    start = offset + _HEADER.size
    exe = packed[start:start + el] if el else None
    path = packed[start + el:start + el + pl]
    size = (_HEADER.size + el + pl + 7) & ~7
    return (ts, notif, result, tid, nr, kind, flags, performed), exe, path, size


class NativeChain:
    """The C encoder for one journal: its template (session, identity, policy, reasons)
    and scratch buffers. Only the writer's drain (under the journal's drain lock) uses it."""

    def __init__(self, *, session_id: str, identity_j: bytes, identity_no_exe_j: bytes,
                 policy_j: bytes, reasons_j: dict[int, bytes], types: dict[int, str],
                 syscalls: dict[int, str]):
        keep = self._keep = []

        def cstr(b: bytes):
            c = ffi.new("char[]", b)
            keep.append(c)
            return c

        t = self.tmpl = ffi.new("struct aarm_receipt_tmpl *")
        sid = session_id.encode()
        t.sid, t.sid_len = cstr(sid), len(sid)
        t.identity_j, t.identity_len = cstr(identity_j), len(identity_j)
        t.identity_no_exe_j, t.identity_no_exe_len = cstr(identity_no_exe_j), len(identity_no_exe_j)
        t.policy_j, t.policy_len = cstr(policy_j), len(policy_j)
        for kind, type_ in types.items():
            t.type_name[kind] = cstr(type_.encode())
            r = reasons_j[kind]
            t.reason_j[kind], t.reason_len[kind] = cstr(r), len(r)
        nsys = max(syscalls) + 1
        sysnames = ffi.new("char *[]", nsys)
        for nr, name in syscalls.items():
            sysnames[nr] = cstr(name.encode())
        keep.append(sysnames)
        t.syscall_name, t.nsyscall = sysnames, nsys
        nerr = max(_errno.errorcode) + 1
        errnames = ffi.new("char *[]", nerr)
        for num, name in _errno.errorcode.items():
            errnames[num] = cstr(name.encode())
        keep.append(errnames)
        t.errno_name, t.nerrno = errnames, nerr
        self.usable = (sum(len(x) for x in (sid, sid, identity_j, identity_no_exe_j, policy_j))
                       + max(len(r) for r in reasons_j.values())) < _TEMPLATE_MAX
        # C writes names as UTF-8; Python's reference decodes with the filesystem encoding
        self.usable = self.usable and sys.getfilesystemencoding() == "utf-8"
        self.state = ffi.new("struct aarm_chain_state *")
        self.state.clock_sec = -1
        self._out = ffi.new("char[]", _OUT_CAP)
        self._ends = ffi.new("uint32_t[]", _MAX_CHUNKS)
        self._offset = ffi.new("size_t *")
        self._nchunks = ffi.new("uint32_t *")
        self._encoded = ffi.new("uint32_t *")

    def chain(self, journal, run: FastRun, max_records: int, chunk_bytes: int,
              lines: list[bytes]) -> int:
        """Chain up to max_records of run's records onto journal's chain, appending the
        lines (grouped in chunks of at most chunk_bytes) to lines; returns how many were
        chained, -1 when the next one must be encoded by Python."""
        st = self.state
        st.seq = journal.seq
        st.since_checkpoint = journal._since_checkpoint
        ffi.memmove(st.prev, bytes.fromhex(journal.prev_hash), 32)
        ffi.memmove(st.context, journal.context, 32)
        self._offset[0] = run.offset
        packed = run.packed
        n = lib.aarm_receipt_chain(st, self.tmpl, packed, len(packed), self._offset, max_records,
                                   self._out, _OUT_CAP, chunk_bytes, self._ends, _MAX_CHUNKS,
                                   self._nchunks, self._encoded)
        if n < 0:
            return -1
        done = self._encoded[0]
        if done:
            data = ffi.buffer(self._out, n)[:]
            start = 0
            ends = self._ends
            for i in range(self._nchunks[0]):
                end = ends[i]
                lines.append(data[start:end])
                start = end
            run.offset = self._offset[0]
            journal.seq = st.seq
            journal._since_checkpoint = st.since_checkpoint
            journal.prev_hash = ffi.buffer(st.prev, 32)[:].hex()
            journal.context = ffi.buffer(st.context, 32)[:]
        return done



def python_tuple(run: FastRun, types: dict[int, str], syscalls: dict[int, str],
                 reasons: dict[int, str]) -> tuple:
    """The record at run.offset as Journal._chain_fast takes it; consumes it."""
    (ts, notif, result, tid, nr, kind, flags, performed), exe, path, size = \
        unpack_one(run.packed, run.offset)
    run.offset += size
    return (types[kind], os.fsdecode(path), syscalls.get(nr, str(nr)), tid, flags, result,
            ts, notif, os.fsdecode(exe) if exe is not None else None, reasons[kind],
            bool(performed))
