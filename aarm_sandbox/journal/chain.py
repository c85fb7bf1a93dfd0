"""The cryptographic structure shared by the writer and the verifier.

Kept in one place so that what `journal verify` checks is, by construction, what the
writer produced: the genesis value, the record hash and the context-hash chain (the
writer inlines `context_next` on its hot path).
"""
from __future__ import annotations

import re
from hashlib import sha256

from aarm_sandbox.journal.canonical import canonical

FORMAT_VERSION = 1
GENESIS_TAG = b"aarm-sandbox/journal/v1\0"
UNHASHED = ("hash", "sig")


def intents_path(journal_path: str) -> str:
    """Where a journal's intent lines are: the writer puts them beside a regular-file
    journal (older journals, and journals written to a FIFO, hold them inline)."""
    return journal_path + ".intents"


def genesis(session_id: str) -> str:
    """prev_hash of record 1: binds the chain to its session (a record replayed from
    another session cannot start or continue this chain)."""
    return sha256(GENESIS_TAG + session_id.encode("utf-8")).hexdigest()


def body_of(record: dict) -> bytes:
    """The bytes that `hash` and `sig` cover: JCS of the record without them."""
    return canonical({k: v for k, v in record.items() if k not in UNHASHED})


def intent_bytes(data: bytes) -> bytes:
    """The lines of an intents file. One mapped by a session that did not end keeps the
    rest of its last allocated chunk as zero bytes after them (journal.intent_log); after a
    power loss a page of zeros may also sit between lines that reached the disk. Runs of
    zero bytes are dropped with the pieces of lines they cut (torn, as a crash tears the
    last line): nothing after them is hidden. (Intent lines are not chained: whoever can
    write the file can remove lines anyway; the receipts are what is verified.)"""
    data = data.rstrip(b"\0")
    if b"\0" not in data:
        return data
    parts = re.split(rb"\0+", data)
    out = []
    for i, part in enumerate(parts):
        if i and not part.startswith(b'{"type":"intent"'):    # begins inside a cut line
            nl = part.find(b"\n")
            part = part[nl + 1:] if nl >= 0 else b""
        if i < len(parts) - 1 and not part.endswith(b"\n"):   # ends inside one
            part = part[:part.rfind(b"\n") + 1]
        out.append(part)
    return b"".join(out)


def context_start(session_id: str, intent: str | None) -> bytes:
    return sha256(canonical({"intent": intent, "session_id": session_id})).digest()


def context_next(ctx: bytes, record_hash: bytes) -> bytes:
    """The context a later decision sees includes every executed action before it."""
    return sha256(ctx + record_hash).digest()
