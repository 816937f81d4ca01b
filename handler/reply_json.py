"""The replies' JSON: ``json.dumps(body, separators=(",", ":"))`` byte for byte, written by orjson.

One encoder for every server and protocol (the TorchServe adapter's replies, the KServe server's
TorchServe routes, the v2 ``answer`` elements), so the same answer is the same bytes everywhere.
"""

from __future__ import annotations

import json
import math
import re

import orjson

# orjson's floats are the shortest round-trip digits, as Python's repr, but spelled otherwise in two
# places (checked on a million floats of every magnitude): 1e-05 <= |x| < 1e-04 positionally
# ("0.00002389" for "2.389e-05"), and one-digit negative exponents unpadded ("e-8" for "e-08").
_BELOW_1E_4 = re.compile(rb"0\.0000(\d)(\d*)")  # a literal start: sre's fast prefix search
_SHORT_EXPONENT = re.compile(rb"e-(\d)(?!\d)")
_NOT_ASCII = re.compile("[\x7f-\U0010ffff]")  # what json.dumps escapes and orjson writes as UTF-8


def compact_json(body) -> str:
    """``json.dumps(body, separators=(",", ":"))``, byte for byte, with orjson doing the work.

    An explanation is mostly floats, and ``float.__repr__`` was nine tenths of json.dumps' time
    (~0.45 µs a float). orjson writes them in ~0.02 µs; its spelling is turned into Python's in
    lists that hold nothing but floats (no string can be touched), characters beyond ASCII (and
    DEL) are escaped as json.dumps escapes them (``\\u00e9``, surrogate pairs beyond the BMP). What
    orjson refuses (a lone surrogate, a non-str key, an int beyond 64 bits) goes to json.dumps.
    """
    try:
        text = orjson.dumps(_with_floats_spelled(body)).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(body, separators=(",", ":"))
    if not text.isascii() or "\x7f" in text:
        text = _NOT_ASCII.sub(_escape, text)
    return text


def _with_floats_spelled(value):
    """``value`` with each float, and each list of floats only, as an ``orjson.Fragment`` of
    json.dumps' own text; lists of strings (tokens) pass untouched."""
    kind = type(value)
    if kind is float:
        return orjson.Fragment(float.__repr__(value) if math.isfinite(value) else json.dumps(value))
    if kind is dict:
        return {k: _with_floats_spelled(v) for k, v in value.items()}
    if kind is list and value:
        kinds = set(map(type, value))
        if kinds == {float}:
            return orjson.Fragment(_python_floats(value))
        if kinds == {str}:
            return value
        return [_with_floats_spelled(x) for x in value]
    return value


def _python_floats(values: list[float]) -> bytes:
    text = orjson.dumps(values)
    if b"null" in text:  # NaN or an infinity, which json.dumps spells NaN, Infinity
        return json.dumps(values, separators=(",", ":")).encode()
    if b"0.0000" in text:
        text = _BELOW_1E_4.sub(_exponent_form, text)
    if b"e-" in text:
        text = _SHORT_EXPONENT.sub(rb"e-0\1", text)
    return text


def _exponent_form(m: re.Match) -> bytes:
    """``0.0000ddd`` -> ``d.dde-05``, unless the match is the tail of another number (``10.00001``)."""
    if m.start() and m.string[m.start() - 1] in b"0123456789.":
        return m[0]
    return m[1] + (b"." + m[2] if m[2] else b"") + b"e-05"


def _escape(match: re.Match) -> str:
    n = ord(match.group())
    if n < 0x10000:
        return f"\\u{n:04x}"
    n -= 0x10000
    return f"\\u{0xD800 | (n >> 10):04x}\\u{0xDC00 | (n & 0x3FF):04x}"
