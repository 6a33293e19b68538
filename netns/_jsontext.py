"""JSON for netns through the C module `_json` that the `json` package wraps.

`import json` costs ~5 ms (re, enum), paid by every sandbox setup and teardown:
network.py reads and writes its records with these, and nat.py reads nft's JSON
listings. The values are dicts, lists, str, int, bool and None. (runtime/jsonio.py
does the same for runtime state, but DESIGN.md's dependency rule keeps netns from
using it.)
"""
from __future__ import annotations

import _json


class _DecoderSettings:
    """The attributes _json.make_scanner reads: json.JSONDecoder's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float     # NaN, Infinity, -Infinity


def _unserialisable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


SPACE = " \t\n\r"
# scan(text, index) -> (value, end); StopIteration(index) when no value starts at index, ValueError when bad
scan = _json.make_scanner(_DecoderSettings)  # type: ignore[arg-type]  # typeshed wants an instance
# (markers, default, encoder, indent, key_separator, item_separator, sort_keys, skipkeys, allow_nan):
# what json.dumps(sort_keys=True) passes, without the circular-reference markers records never need
_encode = _json.make_encoder(None, _unserialisable, _json.encode_basestring_ascii, None, ": ", ", ",
                             True, False, True)


def dumps(data: object) -> str:
    """json.dumps(data, sort_keys=True)."""
    return "".join(_encode(data, 0))


def loads(text: str) -> object:
    """One JSON document (surrounding whitespace allowed); ValueError when it is not one."""
    start = len(text) - len(text.lstrip(SPACE))
    try:
        value, end = scan(text, start)
    except StopIteration as e:       # _json's way of saying "no value starts here"
        raise ValueError(f"no JSON value at character {e.value}") from None
    if text[end:].strip(SPACE):
        raise ValueError(f"extra data at character {end}")
    return value
