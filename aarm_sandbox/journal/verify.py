"""`aarm-sandbox journal verify`: check a journal offline, trusting nothing in it.

Every record is re-encoded and re-hashed, the chain is followed from the session's
genesis value, each checkpoint's Merkle root and Ed25519 signature are checked against
keys the *verifier* trusts (never against a key the file merely names), context hashes
are recomputed, and the seal must end the file. The first problem stops the walk: after
it nothing can be trusted, and the auditor needs its position.
"""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from hashlib import sha256

from cryptography.exceptions import InvalidSignature

import orjson

from aarm_sandbox.journal import chain
from aarm_sandbox.journal.canonical import canonical, use_orjson
from aarm_sandbox.journal.reader import Line, as_bytes, journal_intents_file, parse_lines

use_orjson()        # every record is re-encoded: the faster encoder (same bytes)

EXIT_OK = 0
EXIT_BAD = 1
EXIT_UNSEALED = 2

SIGNED = ("checkpoint", "session.end")
CHAINED = ("session.start", "receipt", "error", "enforcement", "checkpoint", "session.error",
           "net.close", "approval.request", "context.add", "session.end")


@dataclass
class Report:
    path: str
    session_id: str | None = None
    key_id: str | None = None
    records: int = 0
    sealed: bool = False
    problem: str | None = None
    bad_seq: int | None = None
    bad_line: int | None = None
    unsigned_tail: int = 0                # records after the last signature
    torn_tail: bool = False
    intents: int = 0
    unmatched_intents: list[dict] = field(default_factory=list)
    witnessed: int = 0
    intents_file: str | None = None       # the intents file session.start names
    intents_missing: bool = False         # ... which is not beside the journal

    @property
    def exit_code(self) -> int:
        if self.problem:
            return EXIT_BAD
        return EXIT_OK if self.sealed else EXIT_UNSEALED

    def summary(self) -> str:
        where = f"{self.path}: "
        if self.problem:
            pos = f"seq {self.bad_seq}" if self.bad_seq is not None else "record"
            return f"{where}FAILED at {pos} (line {self.bad_line}): {self.problem}"
        parts = [f"{self.records} records", f"session {self.session_id}", f"key {self.key_id}"]
        if self.witnessed:
            parts.append(f"{self.witnessed} witnessed checkpoints match")
        if self.intents_missing:
            parts.append(f"its intents file {self.intents_file} is missing: actions that may "
                         "have happened unrecorded cannot be listed")
        if self.sealed:
            return where + "OK: intact and sealed (" + ", ".join(parts) + ")"
        msg = (where + "NOT SEALED: intact up to seq " + str(self.records) +
               " but the seal is missing (truncated, or the supervisor died) (" +
               ", ".join(parts) + ")")
        if self.torn_tail:
            msg += "; the last line was torn mid-write"
        if self.unsigned_tail:
            msg += f"; the last {self.unsigned_tail} records are chained but not signed"
        return msg


class _Stop(Exception):
    def __init__(self, what: str, line: Line | None, seq: int | None = None):
        super().__init__(what)
        self.what, self.line, self.seq = what, line, seq


def verify_file(path: str, trusted: dict, witness: str | None = None) -> Report:
    with open(path, "rb") as f:
        data = f.read()
    first = next((x for x in data.split(b"\n", 8)[:8] if x.strip()), None)
    ipath = journal_intents_file(path, first)
    intents = None
    if ipath is not None:
        try:
            with open(ipath, "rb") as f:
                intents = chain.intent_bytes(f.read())
        except (FileNotFoundError, NotADirectoryError):
            intents = None
        except OSError as e:
            rep = Report(path)
            rep.problem = f"cannot read the intents file {ipath}: {e.strerror}"
            return rep
    return verify_bytes(data, trusted, witness, path, intents)


def verify_bytes(data: bytes, trusted: dict, witness: str | None = None,
                 path: str = "<journal>", intents: bytes | None = None) -> Report:
    """intents: the lines of the journal's intents file (PATH.intents), if it has one."""
    rep = Report(path)
    hashes: dict[int, str] = {}
    try:
        _walk(data, trusted, rep, hashes, intents)
        if witness is not None and rep.session_id is not None:
            _check_witness(witness, rep, hashes, trusted)
    except _Stop as s:
        rep.problem = s.what
        rep.bad_seq = s.seq if s.seq is not None else (
            s.line.record.get("seq") if s.line and isinstance(s.line.record, dict) else None)
        rep.bad_line = s.line.lineno if s.line else None
    return rep


def _walk(data: bytes, trusted: dict, rep: Report, hashes: dict[int, str],
          intents_data: bytes | None = None) -> None:
    """One pass, lean: this runs per record (>= 50k records/s is the target)."""
    prev = None
    seq = 0
    ctx = b""
    key = None
    since_signed = 0
    intents: dict[str, dict] = {}
    receipts_notif: set[str] = set()
    sid = None
    raw_lines = data.split(b"\n")
    last = len(raw_lines) - 1
    loads = orjson.loads
    i, raw = 0, b""
    try:
        for i, raw in enumerate(raw_lines):
            if not raw:
                continue
            torn = i == last
            try:
                rec = loads(raw)
            except orjson.JSONDecodeError:
                rec = None
            if rep.sealed:
                # nothing follows the seal: no record, no intent line, no torn tail
                raise _Stop("line after the seal (appended)", _line(i, raw),
                            rec.get("seq") if rec.__class__ is dict else None)
            if rec.__class__ is not dict:
                if torn:
                    rep.torn_tail = True
                    break
                raise _Stop("not a JSON object (edited or corrupted)", _line(i, raw), seq + 1)
            typ = rec.get("type")
            if typ == "intent":
                if torn:
                    rep.torn_tail = True
                    break
                if sid is not None and rec.get("session_id") != sid:
                    raise _Stop(f"intent line from another session ({rec.get('session_id')!r})", _line(i, raw))
                rep.intents += 1
                intents.setdefault(str(rec.get("notif")), rec)
                continue
            if typ not in CHAINED:
                raise _Stop(f"unknown record type {typ!r} (inserted)", _line(i, raw), rec.get("seq"))
            seq += 1
            got_seq = rec.get("seq")
            if seq == 1:
                if typ != "session.start" or got_seq != 1:
                    raise _Stop("the journal does not begin with session.start seq 1 "
                                "(first records deleted)", _line(i, raw), got_seq)
                sid = rec.get("session_id")
                if sid.__class__ is not str:
                    raise _Stop("session.start has no session_id", _line(i, raw), 1)
                rep.session_id = sid
                rep.intents_file = rec.get("intents") if isinstance(rec.get("intents"), str) else None
                prev = chain.genesis(sid)
                ctx = chain.context_start(sid, rec.get("intent"))
                key = _session_key(rec, trusted, _line(i, raw))
                rep.key_id = rec["key"]["id"]
            if rec.get("session_id") != sid:
                raise _Stop(f"record of another session {rec.get('session_id')!r} (replayed)",
                            _line(i, raw), got_seq)
            if got_seq != seq:
                later = any(isinstance(r, dict) and r.get("seq") == seq and r.get("type") != "intent"
                            for r in (_try_loads(x) for x in raw_lines[i + 1:]))
                what = ("records out of order (reordered)" if later or
                        (isinstance(got_seq, int) and got_seq < seq) else
                        f"seq {seq} is missing (deleted)" if isinstance(got_seq, int) else "no seq")
                raise _Stop(f"expected seq {seq}, found {got_seq}: {what}", _line(i, raw), seq)
            if rec.get("v") != 1:
                raise _Stop(f"unknown format version {rec.get('v')!r}", _line(i, raw), seq)
            if rec.get("prev_hash") != prev:
                raise _Stop("prev_hash does not match the previous record (inserted, deleted or "
                            "reordered)", _line(i, raw), seq)
            stored = rec.pop("hash", None)
            sig = rec.pop("sig", None)
            body = canonical(rec)
            digest = sha256(body).digest()
            h = digest.hex()
            if stored != h:
                raise _Stop("hash mismatch: the record was edited", _line(i, raw), seq)
            if typ == "receipt":
                if rec.get("context_hash") != ctx.hex():
                    raise _Stop("context_hash does not match the session's prior actions", _line(i, raw), seq)
                if rec.get("receipt_id") != f"{sid}:{seq}":
                    raise _Stop("receipt_id does not match its position", _line(i, raw), seq)
                if sig is not None:
                    raise _Stop("unexpected signature on a receipt", _line(i, raw), seq)
                if (rec.get("outcome") or {}).get("executed"):
                    ctx = sha256(ctx + digest).digest()
                notif = (rec.get("action") or {}).get("notif")
                if notif is not None:
                    receipts_notif.add(str(notif))
                since_signed += 1
            elif typ in SIGNED:
                rec["sig"] = sig
                _check_signed(rec, body, since_signed, seq, key, _line(i, raw))
                since_signed = 0
                rep.sealed = typ == "session.end"
            else:
                if sig is not None:
                    raise _Stop("unexpected signature on a non-checkpoint record", _line(i, raw), seq)
                if typ == "error" and rec.get("notif") is not None and rec.get("performed") is False:
                    receipts_notif.add(str(rec["notif"]))   # answered; nothing happened
                since_signed += 1
            if torn and typ != "session.end":
                rep.torn_tail = True           # complete JSON but no newline: still checked
            hashes[seq] = h
            prev = h
    except _Stop:
        raise
    except Exception as e:  # noqa: BLE001 - a record of the wrong shape is tampering, not a bug
        raise _Stop(f"malformed record ({type(e).__name__}: {e})", _line(i, raw), seq or None) from None
    if seq == 0:
        if intents_data:
            # (a supervisor killed before its first write: what it was about to do is all
            # there is to list)
            rep.unmatched_intents = [line.record for line in parse_lines(intents_data)
                                     if line.record is not None and
                                     line.record.get("type") == "intent"]
            rep.intents = len(rep.unmatched_intents)
        raise _Stop("empty journal: no session.start", None, None)
    rep.records = seq
    rep.unsigned_tail = 0 if rep.sealed else since_signed
    if intents_data is not None:
        _sidecar_intents(intents_data, sid, rep, intents)
    elif rep.intents_file:
        rep.intents_missing = True
    rep.unmatched_intents = [v for k, v in intents.items() if k not in receipts_notif]


def _sidecar_intents(data: bytes, sid: str | None, rep: Report, intents: dict) -> None:
    """The intents file: intent lines of this session only (a torn last line is a
    supervisor killed mid-write, as in the journal)."""
    for line in parse_lines(data):
        rec = line.record
        if line.torn and rec is None:
            continue
        if rec is None or rec.get("type") != "intent":
            raise _Stop(f"the intents file holds something else than intent lines (its line "
                        f"{line.lineno})", None, None)
        if rec.get("session_id") != sid:
            raise _Stop(f"the intents file holds an intent line of another session "
                        f"({rec.get('session_id')!r}, its line {line.lineno})", None, None)
        rep.intents += 1
        intents.setdefault(str(rec.get("notif")), rec)


def _line(i: int, raw: bytes) -> Line:
    return Line(i + 1, raw, None)


def _try_loads(raw: bytes):
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


def _session_key(start: dict, trusted: dict, line: Line):
    info = start.get("key")
    if not isinstance(info, dict) or "id" not in info:
        raise _Stop("the journal is not signed (no key in session.start)", line, 1)
    kid = info["id"]
    key = trusted.get(kid)
    if key is None:
        raise _Stop(f"signed with key {kid}, which is not trusted here: pass its public key "
                    "with --key (a journal re-signed with another key is a forgery)", line, 1)
    from aarm_sandbox.journal.keys import raw_public
    if base64.b64encode(raw_public(key)).decode() != info.get("public"):
        raise _Stop("the public key in session.start does not match its key id", line, 1)
    return key


def _check_signed(rec: dict, body: bytes, since: int, seq: int, key, line: Line) -> None:
    if rec.get("to_seq") != seq - 1 or rec.get("from_seq") != seq - since:
        raise _Stop(f"{rec['type']} covers seq {rec.get('from_seq')}..{rec.get('to_seq')}, "
                    f"expected {seq - since}..{seq - 1}", line, seq)
    if rec.get("key_id") != line_key_id(key):
        raise _Stop(f"{rec['type']} names key {rec.get('key_id')!r}, not the session's key",
                    line, seq)
    sig = rec.get("sig")
    if not isinstance(sig, str):
        raise _Stop(f"{rec['type']} is not signed", line, seq)
    try:
        key.verify(base64.b64decode(sig, validate=True), body)
    except (InvalidSignature, ValueError):
        raise _Stop(f"bad signature on the {rec['type']}", line, seq) from None


def _check_witness(witness: str, rep: Report, hashes: dict[int, str], trusted: dict) -> None:
    """The witness holds copies of signed checkpoints outside the workspace: a journal
    replaced by an older valid copy lacks checkpoints the witness has."""
    path = witness
    if os.path.isdir(path):
        path = os.path.join(path, f"{rep.session_id}.jsonl")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _Stop(f"cannot read the witness {path}: {e.strerror}", None, None) from None
    for wl in parse_lines(data):
        w = wl.record
        if w is None or w.get("session_id") != rep.session_id:
            continue
        seq = w.get("seq")
        if not isinstance(seq, int):
            continue
        if seq not in hashes:
            raise _Stop(f"the witness holds {w.get('type')} seq {seq}, beyond the journal's end "
                        f"(seq {rep.records}): the journal was truncated or rolled back", None, seq)
        if hashes[seq] != w.get("hash"):
            raise _Stop(f"the witness's {w.get('type')} seq {seq} has another hash: the "
                        "journal was rewritten", None, seq)
        rep.witnessed += 1
    if rep.sealed and rep.witnessed == 0:
        raise _Stop(f"the witness {path} has no checkpoint of this session", None, None)


def line_key_id(key) -> str:
    from aarm_sandbox.journal.keys import key_id
    return key_id(key)


def describe_intent(rec: dict) -> str:
    try:
        target = os.fsdecode(as_bytes(rec.get("target")))
    except (ValueError, TypeError):
        target = repr(rec.get("target"))
    return f"{rec.get('action')} {target!r} by tid {rec.get('tid')} (notif {rec.get('notif')})"
