"""The journal writer: receipts in a signed hash chain, off the decision path.

The decision path only appends a dict to a deque (no encoding, no hashing, no I/O). A
writer thread at the lowest priority numbers, stamps, canonically encodes and hashes the
records, writes them in groups (one write(2) per group: group commit), and every
`checkpoint_every` records or `checkpoint_ms` milliseconds adds a checkpoint signed with
Ed25519 and fsyncs; `seal()` ends the chain with a signed session.end. Signing and fsync
never touch the decision path.

What must survive a supervisor killed at any instant is handled separately: `intent()`
writes a line synchronously *before* a destructive action is performed.

If a write fails, `failed` is set and the supervisor denies every new action from then
on (fail closed), saying why on stderr.
"""
from __future__ import annotations

import base64
import os
import stat
import sys
import threading
import time
from collections import deque
from hashlib import sha256

from aarm_sandbox.journal import canonical as _canonical_mod
from aarm_sandbox.journal import chain
from aarm_sandbox.journal.canonical import canonical, encode_string
from aarm_sandbox.journal.intent_log import IntentLog
from aarm_sandbox.journal.native_chain import FastRun, python_tuple

_ERRNO = __import__("errno").errorcode
_AT_REMOVEDIR = 0x200
# "directory" of a fast-path file.delete receipt, by flags & AT_REMOVEDIR (JCS: first key).
_DIRECTORY_J = {0: b'"directory":false,', _AT_REMOVEDIR: b'"directory":true,'}
BATCH = 64
ORJSON_AFTER = 256       # records: then the faster encoder is worth its import (canonical.py)
WRITE_CHUNK = 4096       # bytes of whole lines per write(2): see Journal._write
HIGH_WATER = 20000      # queued records: beyond, the appending thread encodes them itself


def background_priority() -> None:
    """Journal work must never compete with the sandbox and the decision loop for a CPU
    (2-core hosts): SCHED_IDLE runs this thread only on otherwise idle CPU time, and any
    waking task preempts it at once (nice 19 where SCHED_IDLE is refused). Records wait
    in memory; the journal bounds that queue by draining inline (`HIGH_WATER`)."""
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 19)
        except OSError:
            pass


class Signer:
    """The session's signing key, held by the supervisor only. `deferred` names the key
    by its public half and reads the private one at the first `warm()`/`sign()`: the
    writer thread does that after the sandbox started, off the startup path."""

    def __init__(self, private_key=None, *, private_path=None, public_raw: bytes | None = None):
        from aarm_sandbox.journal.keys import key_id_of_raw
        self._key = private_key
        self._lock = threading.Lock()
        self._error: Exception | None = None
        self._path = private_path
        self._raw = (private_key.public_key().public_bytes_raw() if private_key is not None
                     else public_raw)
        self.key_id = key_id_of_raw(self._raw)
        self.public_b64 = base64.b64encode(self._raw).decode("ascii")

    @classmethod
    def deferred(cls, private_path, public_raw: bytes) -> "Signer":
        return cls(private_path=private_path, public_raw=public_raw)

    def preload(self) -> None:
        """Load the key on a thread of its own now, so neither the writer (which must get
        session.start to disk at once) nor the first signature waits for it."""
        if self._key is None:
            threading.Thread(target=self._preload, name="aarm-key", daemon=True).start()

    def _preload(self) -> None:
        try:
            self.warm()
        except Exception:  # noqa: BLE001 - kept in _error; the writer reports it
            pass

    def warm(self) -> None:
        """Load the private key (raises KeyFileError), checked against the public half
        this signer already claims in session.start."""
        with self._lock:
            if self._key is not None:
                return
            if self._error is not None:
                raise self._error
            from aarm_sandbox.journal.keys import KeyFileError, load_signing_key
            try:
                key = load_signing_key(self._path)
                # (public_bytes_raw: no serialization module on the startup path)
                if key.public_key().public_bytes_raw() != self._raw:
                    raise KeyFileError(f"{self._path} does not match its public key file; "
                                       "recreate the pair with `aarm-sandbox keygen --force`")
            except Exception as e:
                self._error = e
                raise
            self._key = key

    def sign(self, data: bytes) -> str:
        self.warm()
        return base64.b64encode(self._key.sign(data)).decode("ascii")


class _Clock:
    """RFC 3339 UTC timestamps with microseconds, from integer nanoseconds (records
    carry no floats: JCS numbers must be exact)."""

    def __init__(self):
        self._sec = -1
        self._prefix = ""

    def format(self, ns: int) -> str:
        sec, us = divmod(ns // 1000, 1_000_000)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._prefix}.{us:06d}Z"


def rfc3339(ns: int | None = None) -> str:
    """`ns` (default: now) as the journal writes timestamps: RFC 3339 UTC, microseconds
    (any thread; the writer's `_Clock` caches the second for its own hot path)."""
    sec, us = divmod((time.time_ns() if ns is None else ns) // 1000, 1_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(sec))}.{us:06d}Z"


def open_witness(path: str, session_id: str) -> int:
    """The witness file: PATH itself, or PATH/SESSION.jsonl when PATH is a directory."""
    if os.path.isdir(path):
        path = os.path.join(path, f"{session_id}.jsonl")
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _open_new(path: str) -> tuple[int, bool]:
    """A journal file is never appended to (a second session's records after the first
    one's seal would make both unverifiable): FileExistsError for an existing regular file.
    Anything else that exists (a FIFO to a collector, /dev/stderr) is written as it is.
    (fd, whether this call created the file)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600), True
    except FileExistsError:
        if stat.S_ISREG(os.stat(path).st_mode):
            raise
        return os.open(path, flags), False


class Journal:
    def __init__(self, path: str, session_id: str, *, intent: str | None = None,
                 identity: dict | None = None, policy: dict | None = None,
                 checkpoint_every: int = 1000, checkpoint_ms: int = 1000,
                 witness_fd: int = -1, flush_interval: float = 0.02):
        self.path = path
        self.session_id = session_id
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        self.fd, self.created = _open_new(path)
        # Intent lines go to a file of their own beside a regular-file journal (PATH.intents,
        # see reader.intents_path): written into the journal, each one waited for the
        # writer thread's appends to the same inode, and pulled that thread onto the
        # deciding CPU (create+unlink: 20-22 us an iteration against 13.5-13.8 us apart).
        self.intents_path: str | None = None
        self.intent_fd = self.fd
        self.intent_log: IntentLog | None = None
        self._regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
        if self._regular:
            self.intents_path = chain.intents_path(path)
            try:
                # a new regular file only: never one that is there (a symlink to /dev/null
                # or a FIFO planted at that name would swallow or block the intents)
                # read-write: mapped (IntentLog) where the filesystem allows it
                self.intent_fd = os.open(self.intents_path, os.O_RDWR | os.O_APPEND |
                                         os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                         0o600)
                self.intent_log = IntentLog.open(self.intent_fd)
            except BaseException as e:
                os.close(self.fd)
                os.unlink(path)             # (just made: nothing of this session is lost)
                if isinstance(e, OSError):
                    raise type(e)(e.errno, e.strerror, self.intents_path) from None
                raise
        self.witness_fd = witness_fd
        self.identity = identity or {}
        self.policy = policy or {}
        # receipts whose acting program could not be read say so
        self._identity_no_exe = {**self.identity, "unestablished": sorted(
            set(self.identity.get("unestablished", [])) | {"exe"})}
        # pre-encoded pieces of the fast-path template
        self._identity_j = canonical(dict(self.identity))
        self._identity_no_exe_j = canonical(dict(self._identity_no_exe))
        self._policy_j = canonical(dict(self.policy))
        self._sid_b = session_id.encode()
        self._reason_j: dict[str, bytes] = {}
        self._native = None                 # native_chain.NativeChain, once use_native_fast
        self._fast_types = self._fast_syscalls = self._fast_reasons = None
        self.checkpoint_every = checkpoint_every
        self.checkpoint_ms = checkpoint_ms
        self.queue: deque[dict] = deque()
        self.failed: str | None = None
        self.on_failure = None      # callback (e.g. switch the native fast path off)
        self.signer: Signer | None = None
        self.sealed = False
        # chain state (writer thread only)
        self.seq = 0
        self.prev_hash = chain.genesis(session_id)
        self.context = chain.context_start(session_id, intent)
        self._since_checkpoint = 0          # records since the last signature
        self._drain_lock = threading.RLock()
        self._last_checkpoint = time.monotonic()
        self._clock = _Clock()
        self._intent_prefix = b'{"type":"intent","session_id":%s,' % encode_string(session_id)
        self._end: dict | None = None
        self._wake = threading.Event()
        self._stop = False
        self._interval = flush_interval
        self._writer_tid = 0             # the writer thread's, once it runs
        # claimed()/wait() of the decision thread's claim on the GIL (intercept.claim),
        # set by the supervisor: the writer thread yields to decisions between records.
        self.polite = None
        self._thread = threading.Thread(target=self._run, name="aarm-journal", daemon=True)

    def start(self, signer: Signer | None, *, preload: bool = True) -> "Journal":
        """Start the writer thread (after single-threaded setup such as dropping
        capabilities; the key is given only once the sandbox runs). Without a signer the
        chain is still written but nothing is signed (verify reports it). `preload=False`:
        the caller starts loading the key itself (`signer.preload()`) when the key thread
        no longer competes for the GIL with work the sandbox waits for; the first
        signature loads it otherwise."""
        self.signer = signer
        if signer is not None and preload:
            signer.preload()
        self._thread.start()
        return self

    @property
    def intent_prefix(self) -> bytes:
        """The start of an intent line, for writers outside Python (the native fast path)."""
        return self._intent_prefix

    # --- hot path --------------------------------------------------------------------
    def append(self, record: dict) -> None:
        record["ts_ns"] = time.time_ns()
        self.append_stamped(record)

    def append_stamped(self, record) -> None:
        """A record that already carries the time the decision was made (`ts_ns`)."""
        q = self.queue
        q.append(record)
        if len(q) > 256:
            w = self._wake
            if not w.is_set():       # Event.set takes a lock and notifies: ~1.5 us a call
                w.set()
            if len(q) > HIGH_WATER:
                try:
                    self._drain(batches=1)
                except Exception as e:  # noqa: BLE001 - as in _run: fail closed
                    self._fail(f"internal error in the journal writer: {e!r}")

    def append_fast(self, type_: str, path: str, syscall: str, tid: int, flags: int,
                    result: int, ts_ns: int, notif: int, exe: str | None, reason: str,
                    performed: bool | None = None) -> None:
        """A native fast-path decision (allow by the profile's default): queued as a tuple
        and encoded by template in the writer, the highest-volume receipts at the lowest
        cost (`journal verify` re-encodes each one canonically, so a template that drifted
        from JCS could not go unnoticed). performed: it happened (default: result >= 0); an
        open whose fd could not be installed happened with result < 0."""
        self.append_stamped((type_, path, syscall, tid, flags, result, ts_ns, notif, exe, reason,
                             result >= 0 if performed is None else performed))

    def use_native_fast(self, types: dict[int, str], syscalls: dict[int, str],
                        reasons: dict[int, str]) -> bool:
        """Fast-path records arrive as packed runs (`append_fast_run`) of these kinds; chain
        them in C where the template fits (native_chain), in Python otherwise. False when
        only Python can (the receipts are the same)."""
        from aarm_sandbox.journal.native_chain import NativeChain
        self._fast_types, self._fast_syscalls, self._fast_reasons = types, syscalls, reasons
        try:
            native = NativeChain(
                session_id=self.session_id, identity_j=self._identity_j,
                identity_no_exe_j=self._identity_no_exe_j, policy_j=self._policy_j,
                reasons_j={k: encode_string(r) for k, r in reasons.items()}, types=types,
                syscalls=syscalls)
        except (TypeError, ValueError, OSError):
            return False
        if not native.usable:
            return False
        self._native = native
        return True

    def append_fast_run(self, packed: bytes, count: int) -> None:
        """`count` native fast-path decisions, packed (native_chain.Packer), in ring order.
        The queue's thresholds count a run as one entry: at most BATCH records (the fast
        path's drain batch), so the inline drain over HIGH_WATER, one BATCH of records per
        append, still removes at least what each append adds."""
        self.append_stamped(FastRun(packed, count))

    def intent(self, notif: int, action_type: str, syscall: str, tid: int, target: str,
               to: str | None = None) -> bool:
        """Written synchronously before a destructive action is performed: a crash
        between the action and its receipt can then never hide that it happened. False
        when it could not be written (the caller must not perform the action)."""
        if self.failed:
            return False
        line = (self._intent_prefix + b'"notif":%d,"action":"%s","syscall":"%s","tid":%d,'
                b'"target":{"b64":"%s"}' % (notif, action_type.encode(), syscall.encode(), tid,
                                            base64.b64encode(os.fsencode(target))))
        if to is not None:
            line += b',"to":{"b64":"%s"}' % base64.b64encode(os.fsencode(to))
        line += b"}\n"
        try:
            if self.intent_log is not None:
                self.intent_log.append(line)
                return True
            if os.write(self.intent_fd, line) == len(line):
                return True
            self._fail("short write")
        except OSError as e:
            self._fail(e.strerror or str(e))
        return False

    # --- writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        self._writer_tid = threading.get_native_id()
        background_priority()
        try:
            while True:
                self._wake.wait(self._interval)
                self._wake.clear()
                self._drain()
                with self._drain_lock:
                    if (self._since_checkpoint and not self.failed and
                            (time.monotonic() - self._last_checkpoint) * 1000 >= self.checkpoint_ms):
                        self._write([self._checkpoint(time.time_ns())], sync=True)
                if self._stop:
                    self._finish()
                    return
        except Exception as e:  # noqa: BLE001 - no journal, no further actions (fail closed)
            self._fail(f"internal error in the journal writer: {e!r}")

    def _finish(self) -> None:
        """Everything queued, then the seal."""
        self._drain()
        with self._drain_lock:
            if self._end is not None and not self.failed and not self.sealed:
                self._write([self._seal(self._end)], sync=True)
                self.sealed = not self.failed

    def _drain(self, batches: int = -1) -> None:
        # Small batches: encoding holds the GIL, and the decision thread must get it back
        # quickly (group commit without a long pause on the hot path). The lock lets an
        # appending thread drain inline when the writer thread is starved.
        # The lock is taken per batch (records are popped, chained and written under it,
        # so order holds): a closing thread at normal priority can take over from a writer
        # thread that a busy machine starves (SCHED_IDLE) after at most one batch.
        # `batches`: an appending thread over HIGH_WATER encodes one batch per append, so
        # the back-pressure is spread over the appends (one batch each) rather than paid
        # as one long stall while holding up the decisions that wait on that thread.
        q = self.queue
        every = self.checkpoint_every
        mine = threading.get_native_id() == self._writer_tid     # the writer thread's drain
        polite = self.polite if mine else None
        while True:
            if polite is not None:
                polite.wait()           # outside the lock: an inline drain never waits on it
            with self._drain_lock:
                if not q or self.failed:
                    return
                lines: list[bytes] = []
                sync = False
                chain_one, chain_fast = self._chain, self._chain_fast
                count = 0
                while q and count < BATCH:
                    if lines and polite is not None and polite.claimed():
                        break           # a decision wants the GIL: write what we have
                    rec = q.popleft()
                    cls = rec.__class__
                    if cls is dict:
                        lines.append(chain_one(rec))
                        count += 1
                    elif cls is FastRun:
                        count += self._chain_run(rec, min(BATCH - count, every - self._since_checkpoint),
                                                 lines)
                        if rec.offset < len(rec.packed):
                            q.appendleft(rec)   # the rest of the run, next
                    else:
                        lines.append(chain_fast(rec))
                        count += 1
                    if self._since_checkpoint >= every:
                        lines.append(self._checkpoint(time.time_ns()))
                        sync = True
                self._write(lines, sync)
            if mine and self.seq > ORJSON_AFTER and _canonical_mod._orjson is None:
                _canonical_mod.use_orjson()     # the writer's own thread, outside the lock
            batches -= 1
            if not batches:
                return
            if q:
                time.sleep(0)

    def _chain_run(self, run: FastRun, room: int, lines: list[bytes]) -> int:
        """Up to `room` records of a packed run onto the chain (C where it can); returns
        how many."""
        native = self._native
        if native is not None and room > 0:
            done = native.chain(self, run, room, WRITE_CHUNK, lines)
            if done > 0:
                return done
        # the next record is one C does not encode (-1), or made no progress (0: never
        # for a run Packer made; a broken one then fails here, and the journal with it)
        lines.append(self._chain_fast(python_tuple(
            run, self._fast_types, self._fast_syscalls, self._fast_reasons)))
        return 1

    def _chain(self, rec: dict) -> bytes:
        """Number, stamp, hash and encode one record (the writer's per-record cost: keep
        it lean)."""
        self.seq = seq = self.seq + 1
        rec["v"] = 1
        rec["seq"] = seq
        rec["session_id"] = self.session_id
        rec["ts"] = self._clock.format(rec.pop("ts_ns", 0) or time.time_ns())
        rec["prev_hash"] = self.prev_hash
        typ = rec["type"]
        receipt = typ == "receipt"
        if receipt:
            rec["receipt_id"] = f"{self.session_id}:{seq}"
            rec["identity"] = self.identity if rec["action"].get("exe") is not None else self._identity_no_exe
            rec["context_hash"] = self.context.hex()
            rec["decision"]["policy"] = self.policy
        elif typ == "session.start" and self.signer is not None:
            rec["key"] = {"id": self.signer.key_id, "public": self.signer.public_b64}
            rec["checkpoint"] = {"every": self.checkpoint_every, "ms": self.checkpoint_ms}
        return self._link(canonical(rec), receipt and rec["outcome"]["executed"])

    def _link(self, body: bytes, executed: bool) -> bytes:
        """Hash a record's JCS body into the chain (and the context chain when it is an
        executed action); the stored line is the body with its hash appended."""
        digest = sha256(body).digest()
        h = digest.hex()
        self.prev_hash = h
        self._since_checkpoint += 1
        if executed:
            self.context = sha256(self.context + digest).digest()
        return b'%s,"hash":"%s"}\n' % (body[:-1], h.encode())

    def _chain_fast(self, t: tuple) -> bytes:
        """_chain for a fast-path tuple: the same record, its JCS bytes built directly
        (keys in sorted order; strings escaped as canonical.encode_string does)."""
        type_, path, syscall, tid, flags, result, ts_ns, notif, exe, reason, executed = t
        try:
            target_j, exe_j = encode_string(path), encode_string(exe)
        except TypeError:                # not UTF-8: the general path carries it as b64
            return self._chain(self._fast_dict(t))
        reason_j = self._reason_j.get(reason)
        if reason_j is None:
            reason_j = self._reason_j[reason] = encode_string(reason)
        self.seq = seq = self.seq + 1
        if result >= 0:
            outcome = b'{"executed":%s,"return":%d}' % (b"true" if executed else b"false", result)
        else:
            outcome = b'{"errno":"%s","executed":%s,"return":%d}' % (
                _ERRNO.get(-result, str(-result)).encode(), b"true" if executed else b"false",
                result)
        if type_ == "file.chmod":           # as decode_chmod records it: the mode, no flags
            flags_j = b',"mode":"%s"' % oct(flags).encode()
        else:
            flags_j = b',"flags":%d' % flags if flags else b""
        body = (b'{"action":{%s"exe":%s%s,"notif":"%d","pid":%d,"syscall":"%s","target":%s,"tid":%d,'
                b'"type":"%s"},"context_hash":"%s","decision":{"policy":%s,"reason":%s,'
                b'"result":"allow","rule":"default"},"fast_path":true,"identity":%s,"outcome":%s,'
                b'"prev_hash":"%s","receipt_id":"%s:%d","seq":%d,"session_id":"%s","ts":"%s",'
                b'"type":"receipt","v":1}') % (
            _DIRECTORY_J[flags & _AT_REMOVEDIR] if type_ == "file.delete" else b"",
            exe_j, flags_j, notif, tid, syscall.encode(), target_j,
            tid, type_.encode(), self.context.hex().encode(), self._policy_j, reason_j,
            self._identity_j if exe is not None else self._identity_no_exe_j, outcome,
            self.prev_hash.encode(), self._sid_b, seq, seq, self._sid_b,
            self._clock.format(ts_ns).encode())
        return self._link(body, executed)

    @staticmethod
    def _fast_dict(t: tuple) -> dict:
        type_, path, syscall, tid, flags, result, ts_ns, notif, exe, reason, executed = t
        act = {"type": type_, "target": path, "syscall": syscall, "pid": tid, "tid": tid,
               "exe": exe, "notif": str(notif)}
        if type_ == "file.chmod":
            act["mode"] = oct(flags)
        elif flags:
            act["flags"] = flags
        if type_ == "file.delete":          # as decode_unlink records it
            act["directory"] = bool(flags & _AT_REMOVEDIR)
        outcome = ({"executed": executed, "return": result} if result >= 0 else
                   {"errno": _ERRNO.get(-result, str(-result)), "executed": executed, "return": result})
        return {"type": "receipt", "ts_ns": ts_ns, "action": act,
                "decision": {"result": "allow", "rule": "default", "reason": reason},
                "outcome": outcome, "fast_path": True}

    def _signed(self, rec: dict) -> bytes:
        """A checkpoint or the seal: signs the chain head (prev_hash), and through it
        every record before."""
        if self.signer is not None:
            try:
                self.signer.warm()
            except Exception as e:  # noqa: BLE001 - an unusable key: say so, chain unsigned
                print(f"aarm-sandbox: warning: journal not signed: {e}", file=sys.stderr)
                self.signer = None
        self.seq += 1
        rec.update({"v": chain.FORMAT_VERSION, "seq": self.seq, "session_id": self.session_id,
                    "prev_hash": self.prev_hash,
                    "from_seq": self.seq - self._since_checkpoint, "to_seq": self.seq - 1})
        if self.signer is not None:
            rec["key_id"] = self.signer.key_id
        body = canonical(rec)
        digest = sha256(body).digest()
        h = digest.hex()
        tail = b',"hash":"' + h.encode() + b'"'
        if self.signer is not None:
            tail += b',"sig":"' + self.signer.sign(body).encode() + b'"'
        self.prev_hash = h
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        line = body[:-1] + tail + b"}\n"
        self._witness(line)
        return line

    def _checkpoint(self, ts_ns: int) -> bytes:
        return self._signed({"type": "checkpoint", "ts": self._clock.format(ts_ns)})

    def _seal(self, end: dict) -> bytes:
        end["ts"] = self._clock.format(end.pop("ts_ns", None) or time.time_ns())
        return self._signed(end)

    def _witness(self, line: bytes) -> None:
        if self.witness_fd < 0:
            return
        try:
            os.write(self.witness_fd, line)
            os.fsync(self.witness_fd)
        except OSError as e:
            self._fail(f"witness write failed: {e.strerror}")

    def _write(self, lines: list[bytes], sync: bool) -> None:
        """Write whole lines, at most WRITE_CHUNK bytes per write(2) (a longer line alone).
        The native fast path appends its intent lines to the same file while a decision
        waits; one write holds the file's inode lock for all its bytes, and this thread
        runs at SCHED_IDLE, so a 45 KB batch write preempted midway held up an intent for
        tens of µs (create+unlink p99 per iteration 41 µs with 4 KB writes against 107 µs
        with whole batches, in alternating runs). Lines stay whole: an appended intent
        can only land between two of them."""
        if self.failed or not lines:
            return
        try:
            start, size = 0, 0
            for i, line in enumerate(lines):
                if size and size + len(line) > WRITE_CHUNK:
                    self._write_all(b"".join(lines[start:i]))
                    start, size = i, 0
                size += len(line)
            self._write_all(b"".join(lines[start:]))
            if sync and self._regular:
                # (a FIFO or a terminal has nothing to sync: fsync says EINVAL); the intents
                # file is synced with the journal, as its lines were when they were inline
                os.fsync(self.fd)
                if self.intent_fd != self.fd:
                    os.fsync(self.intent_fd)
        except OSError as e:
            self._fail(e.strerror or str(e))

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def fail(self, why: str) -> None:
        """Something the journal depends on failed (fail closed: see _fail)."""
        self._fail(why)

    def _fail(self, why: str) -> None:
        if self.failed:
            return
        self.failed = f"journal write to {self.path} failed: {why}"
        if self.on_failure is not None:
            self.on_failure()
        print(f"aarm-sandbox: {self.failed}; denying all further actions", file=sys.stderr)

    # --- end -------------------------------------------------------------------------
    def seal(self, end_record: dict) -> bool:
        """Write everything queued, then the signed session.end; nothing follows it.
        Returns True when the journal is sealed."""
        end_record["ts_ns"] = time.time_ns()
        self._end = end_record
        self.close()
        return self.sealed

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=0.5)
        if self._thread.is_alive():
            # The writer thread runs at SCHED_IDLE: on a machine kept busy by other work
            # it may get almost no CPU, and the seal must not wait for idle time. Give it
            # normal priority where allowed (root), and finish here meanwhile.
            try:
                if self._writer_tid:
                    os.sched_setscheduler(self._writer_tid, os.SCHED_OTHER, os.sched_param(0))
            except OSError:
                pass
            self._finish()
            self._thread.join(timeout=30)
        elif not self._thread.ident:     # never started (a launch failure)
            self._finish()
        if self.intent_log is not None:
            try:
                self.intent_log.close()      # trimmed to its lines (synced with the journal)
            except OSError as e:
                print(f"aarm-sandbox: warning: intents file {self.intents_path} keeps zero "
                      f"bytes after its lines ({e.strerror})", file=sys.stderr)
        for fd in {self.fd, self.intent_fd, self.witness_fd}:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fd = self.intent_fd = self.witness_fd = -1


class NullJournal(Journal):
    """Journaling off (benchmarks only: `AARM_JOURNAL=off`): the decision path does no
    journal work at all, so the difference measures what journaling costs."""

    def __init__(self, path: str, session_id: str, **_kw):
        self.path = path
        self.session_id = session_id
        self.intents_path = None
        self.intent_fd = -1
        self.intent_log = None
        self.created = False
        self._regular = False
        self.failed = None
        self.on_failure = None
        self.sealed = False
        self.signer = None

    def start(self, signer=None, *, preload: bool = True):
        return self

    @property
    def intent_prefix(self) -> bytes:
        return b""

    def append(self, record: dict) -> None:
        pass

    def append_stamped(self, record: dict) -> None:
        pass

    def append_fast(self, *a) -> None:
        pass

    def use_native_fast(self, *a) -> bool:
        return True

    def append_fast_run(self, *a) -> None:
        pass

    def intent(self, *a) -> bool:
        return True

    def seal(self, end_record: dict) -> bool:
        return False

    def close(self) -> None:
        pass
