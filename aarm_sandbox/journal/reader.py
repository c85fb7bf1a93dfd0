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

from aarm_sandbox.journal.chain import intents_path


@dataclass(slots=True)
class Line:
    lineno: int
    raw: bytes                 # the line without its newline
    record: dict | None        # None: not a JSON object (error) or torn
    torn: bool = False         # the last line of the file, without a newline


def sidecar_intents(journal_path: str) -> list[Line]:
    """The intent lines beside a journal (none when there is no such file)."""
    try:
        with open(intents_path(journal_path), "rb") as f:
            data = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return []
    return list(parse_lines(data))


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
