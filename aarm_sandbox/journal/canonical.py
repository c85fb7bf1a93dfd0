"""Canonical encoding of records: RFC 8785 (JCS) for the values journals contain.

Records hold only objects with ASCII keys, strings, integers below 2^53, booleans and
null, and for those JCS is exactly sorted-key compact UTF-8 JSON, which orjson produces
(C speed: the writer and `journal verify` encode every record). A string that stands for
kernel bytes and is not valid UTF-8 (a surrogate-escaped path) becomes {"b64": ...}, so
two different byte strings never share an encoding and nothing is lost.
"""
from __future__ import annotations

import base64

import orjson

_SORTED = orjson.OPT_SORT_KEYS


def canonical(record: dict) -> bytes:
    """JCS bytes of a record. Rewrites non-UTF-8 strings in place as {"b64": ...} so that
    the caller's dict and the bytes stay the same value (what is stored re-encodes
    identically)."""
    try:
        return orjson.dumps(record, option=_SORTED, default=str)
    except TypeError:
        _carry_bytes(record)
        return orjson.dumps(record, option=_SORTED, default=str)


def raw_bytes_value(s: str):
    """A kernel string as it must be stored: itself if valid UTF-8, else {"b64": ...}."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return {"b64": base64.b64encode(_to_bytes(s)).decode("ascii")}


def _to_bytes(s: str) -> bytes:
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


def _carry_bytes(value):
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, str):
                value[k] = raw_bytes_value(v)
            elif isinstance(v, (dict, list)):
                _carry_bytes(v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, str):
                value[i] = raw_bytes_value(v)
            elif isinstance(v, (dict, list)):
                _carry_bytes(v)
    return value
