"""Reading journal files: lines as they are, raw-byte values decoded.

Shared by `journal verify`, `show`, `tail` and `export`, so every reader treats a torn last
line (a supervisor killed mid-write) and base64-carried bytes the same way.
"""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Iterator

import orjson

from aarm_sandbox.journal.chain import intent_bytes, intents_path


@dataclass(slots=True)
class Line:
    lineno: int
    raw: bytes                 # the line without its newline
    record: dict | None        # None: not a JSON object (error) or torn
    torn: bool = False         # the last line of the file, without a newline


def journal_intents_file(journal_path: str, first_line: bytes | None) -> str | None:
    """The intents file of a journal: the one its session.start names (beside it), or,
    for a journal without a readable session.start (a supervisor killed before its first
    write), the conventional PATH.intents; None for a journal that keeps them inline."""
    rec = None
    if first_line:
        try:
            rec = orjson.loads(first_line)
        except orjson.JSONDecodeError:
            rec = None
    if isinstance(rec, dict) and rec.get("type") == "session.start":
        name = rec.get("intents")
        if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
            return None
        return os.path.join(os.path.dirname(journal_path), name)
    return intents_path(journal_path)


def sidecar_intents(journal_path: str, first_line: bytes | None = None,
                    session_id: str | None = None) -> list[Line]:
    """The intent lines of a journal's intents file (of its session, when known); none
    when there is no such file or it cannot be read."""
    path = journal_intents_file(journal_path, first_line)
    if path is None:
        return []
    try:
        with open(path, "rb") as f:
            data = intent_bytes(f.read())
    except OSError:
        return []
    return [line for line in parse_lines(data)
            if line.record is not None and not line.torn and line.record.get("type") == "intent"
            and (session_id is None or line.record.get("session_id") == session_id)]


def read_lines(path: str) -> Iterator[Line]:
    """Every non-empty line of a journal file, in order."""
    with open(path, "rb") as f:
        data = f.read()
    yield from parse_lines(data)


def parse_lines(data: bytes, first_lineno: int = 1) -> Iterator[Line]:
    lines = data.split(b"\n")
    last = len(lines) - 1
    for i, raw in enumerate(lines):
        if not raw:
            continue
        torn = i == last               # no newline after it: the write did not complete
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            rec = None
        if rec is not None and not isinstance(rec, dict):
            rec = None
        yield Line(first_lineno + i, raw, rec, torn)


def as_bytes(value) -> bytes | None:
    """A kernel-supplied string as the raw bytes it stands for (str or {"b64": ...})."""
    if value is None:
        return None
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"], validate=True)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ValueError(f"not a string value: {value!r}")


def as_text(value) -> str:
    """For display: the bytes as a str (undecodable bytes kept as surrogate escapes)."""
    b = as_bytes(value)
    return "" if b is None else os.fsdecode(b)
