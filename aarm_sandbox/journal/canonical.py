"""Canonical encoding of records: RFC 8785 (JCS) for the values journals contain.

Records hold only objects with ASCII keys, strings, integers below 2^53, booleans and
null, and for those JCS is exactly sorted-key compact UTF-8 JSON. Two encoders produce it,
byte for byte the same on that value space (tests/unit/test_journal_encoding.py): orjson,
~10x faster, once `use_orjson()` has loaded it (`journal verify`, and a session's writer
once it has written a few hundred records); the standard library's C encoder until then,
so that a run's startup does not import orjson, which pulls in `dataclasses`, `inspect`
and `datetime` (~15 ms of every `aarm-sandbox run`). A string that stands for kernel bytes
and is not valid UTF-8 (a surrogate-escaped path) becomes {"b64": ...}, so two different
byte strings never share an encoding and nothing is lost.
"""
from __future__ import annotations

import base64
import json
import threading

_json_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                default=str).encode
_orjson = None
_orjson_lock = threading.Lock()


def use_orjson() -> None:
    """Encode with orjson from now on (imported here, once, by whichever thread asks)."""
    global _orjson
    with _orjson_lock:
        if _orjson is None:
            import orjson
            _orjson = orjson


def _encode(record) -> bytes:
    # raises TypeError (orjson) or UnicodeEncodeError (json) on a string that is not UTF-8
    o = _orjson
    if o is not None:
        return o.dumps(record, option=o.OPT_SORT_KEYS, default=str)
    return _json_encode(record).encode("utf-8")


def canonical(record: dict) -> bytes:
    """JCS bytes of a record. Rewrites non-UTF-8 strings in place as {"b64": ...} so that
    the caller's dict and the bytes stay the same value (what is stored re-encodes
    identically). Outside the value space above (non-string keys, integers beyond 64
    bits, NaN) the two encoders differ, and orjson raises: the writer then fails closed."""
    try:
        return _encode(record)
    except (TypeError, UnicodeEncodeError):
        _carry_bytes(record)
        return _encode(record)


def encode_string(value: str | None) -> bytes:
    """JCS bytes of one string (or null); TypeError when it is not valid UTF-8."""
    if value is None:
        return b"null"
    o = _orjson
    if o is not None:
        return o.dumps(value)
    try:
        return _json_string(value).encode("utf-8")
    except UnicodeEncodeError:
        raise TypeError("not a UTF-8 string") from None


_json_string = json.encoder.encode_basestring


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
