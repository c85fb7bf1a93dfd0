"""Canonical encoding (RFC 8785 for the journal's value space) and the chain primitives."""
from __future__ import annotations

import base64
import json
import pytest

from aarm_sandbox.journal import canonical as canonical_mod
from aarm_sandbox.journal import chain
from aarm_sandbox.journal.canonical import canonical, raw_bytes_value
from aarm_sandbox.journal.reader import as_bytes


def _jcs_reference(v) -> str:
    """RFC 8785 written out from the RFC text, for the value space the journal uses."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        assert abs(v) < 2 ** 53
        return str(v)
    if isinstance(v, str):
        out = ['"']
        short = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
        for c in v:
            if c in short:
                out.append(short[c])
            elif ord(c) < 0x20:
                out.append(f"\\u{ord(c):04x}")
            else:
                out.append(c)
        return "".join(out) + '"'
    if isinstance(v, list):
        return "[" + ",".join(_jcs_reference(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(_jcs_reference(k) + ":" + _jcs_reference(v[k]) for k in keys) + "}"
    raise TypeError(v)


ODD = ["plain", "new\nline", "tab\tcr\r", "esc\x1b[31m", "nul\x00x", "del\x7f", "quote\"back\\",
       "bidi\u202eevil", "ls\u2028ps\u2029", "emoji \U0001f600", "é", "".join(chr(i) for i in range(32))]


@pytest.fixture(params=["json", "orjson"])
def encoder(request, monkeypatch):
    """Run a test with each of the two encoders canonical() may use."""
    import orjson
    monkeypatch.setattr(canonical_mod, "_orjson", orjson if request.param == "orjson" else None)
    return request.param


@pytest.mark.parametrize("s", ODD)
def test_canonical_encoding_is_rfc8785_for_every_odd_string(s, encoder):
    rec = {"z": 1, "a": {"y": [s, -5, True, None], "b": s}, "m": 2 ** 53 - 1}
    assert canonical(rec) == _jcs_reference(rec).encode("utf-8")
    assert json.loads(canonical(rec)) == rec


def test_invalid_utf8_is_carried_as_base64_and_round_trips(encoder):
    raw = b"/ws/bad\xff\xfe name\n"
    rec = {"action": {"target": raw.decode("utf-8", "surrogateescape"), "argv": ["ok", b"\xc3(".decode("utf-8", "surrogateescape")]}}
    enc = canonical(rec)
    back = json.loads(enc)
    assert as_bytes(back["action"]["target"]) == raw
    assert as_bytes(back["action"]["argv"][1]) == b"\xc3("
    assert back["action"]["argv"][0] == "ok"
    assert canonical(back) == enc        # what is stored re-encodes to the same bytes


def test_a_path_that_looks_like_base64_never_collides_with_real_bytes():
    s = base64.b64encode(b"\xff").decode()
    assert canonical({"t": s}) != canonical({"t": b"\xff".decode("utf-8", "surrogateescape")})
    assert raw_bytes_value(b"\xff".decode("utf-8", "surrogateescape")) == {"b64": s}


def test_genesis_binds_the_chain_to_its_session():
    assert chain.genesis("a") != chain.genesis("b")
    assert chain.body_of({"x": 1, "hash": "h", "sig": "s"}) == b'{"x":1}'


def test_both_encoders_give_the_same_bytes_for_random_records(monkeypatch):
    """A run writes with the standard library's encoder until its writer switches to orjson,
    and `journal verify` re-encodes with orjson: every record must come out the same."""
    import orjson
    import random
    rng = random.Random(7)

    def text():
        pools = [(0, 0x20), (0x20, 0x80), (0x80, 0xD800), (0xE000, 0x110000)]
        return "".join(chr(rng.randrange(*rng.choice(pools))) for _ in range(rng.randrange(10)))

    def value(depth=0):
        k = rng.randrange(7 if depth < 3 else 4)
        return [text, lambda: rng.randrange(-2 ** 53 + 1, 2 ** 53), lambda: rng.random() < .5,
                lambda: None, lambda: [value(depth + 1) for _ in range(rng.randrange(4))],
                lambda: {text(): value(depth + 1) for _ in range(rng.randrange(4))},
                lambda: b"\xff\xc3(".decode("utf-8", "surrogateescape") + text()][k]()

    for _ in range(3000):
        rec = {f"k{rng.randrange(40)}": value() for _ in range(rng.randrange(1, 8))}
        monkeypatch.setattr(canonical_mod, "_orjson", None)
        a = canonical(rec)
        monkeypatch.setattr(canonical_mod, "_orjson", orjson)
        assert canonical(rec) == a
        for v in rec.values():
            if isinstance(v, str):
                with_orjson = canonical_mod.encode_string(v)
                monkeypatch.setattr(canonical_mod, "_orjson", None)
                assert canonical_mod.encode_string(v) == with_orjson


def test_encode_string_refuses_what_is_not_utf8(encoder):
    with pytest.raises(TypeError):
        canonical_mod.encode_string("bad\udcff")
    assert canonical_mod.encode_string(None) == b"null"
