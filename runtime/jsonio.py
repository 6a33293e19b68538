"""JSON without the cost of the `json` package on the hot path.

`import json` pulls in `re` and `enum` (~5 ms here), more than `state` may
take in total. The actual work is done by the C module `_json` either way; this
wraps its scanner and string encoder directly. Output matches json.dumps for
the types runtime state uses (dict, list, str, int, float, bool, None).
"""
from __future__ import annotations

import _json


class _ScannerContext:
    """The attributes _json.make_scanner reads (json.JSONDecoder's defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


_scan = _json.make_scanner(_ScannerContext)
_WHITESPACE = " \t\n\r"


def loads(data: bytes | str) -> object:
    """Parse one JSON document; ValueError (like json's) when it is not valid."""
    text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
        if not text[end:].strip(_WHITESPACE):
            return value
    except (StopIteration, ValueError, SystemError):
        pass  # _json's own error reporting needs json.decoder loaded
    import json  # error path only: let the full decoder phrase the message

    return json.loads(text)


def load_file(path: str) -> object:
    with open(path, "rb") as f:
        return loads(f.read())


def dumps(value: object, indent: int | None = None) -> str:
    """Serialise; `indent` as json.dumps's (pretty output for people)."""
    parts: list[str] = []
    _encode(value, parts, indent, 0)
    return "".join(parts)


def _encode(value: object, out: list[str], indent: int | None, level: int) -> None:
    if isinstance(value, str):
        out.append(_json.encode_basestring_ascii(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, float):
        if value != value:
            out.append("NaN")
        elif value in (float("inf"), float("-inf")):
            out.append("Infinity" if value > 0 else "-Infinity")
        else:
            out.append(repr(value))
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, (list, tuple, dict)):
        items = list(value.items()) if isinstance(value, dict) else list(value)
        opener, closer = ("{", "}") if isinstance(value, dict) else ("[", "]")
        if not items:
            out.append(opener + closer)
            return
        out.append(opener)
        inner = "\n" + " " * (indent * (level + 1)) if indent is not None else ""
        separator = "," if indent is not None else ", "
        for i, item in enumerate(items):
            out.append((separator if i else "") + inner)
            if isinstance(value, dict):
                key, item = item
                out.append(_json.encode_basestring_ascii(_key(key)) + ": ")
            _encode(item, out, indent, level + 1)
        out.append(("\n" + " " * (indent * level) if indent is not None else "") + closer)
    else:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _key(key: object) -> str:
    """Object keys as json.dumps writes them: true/false/null and numbers become strings."""
    if isinstance(key, str):
        return key
    if key is True or key is False or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    if isinstance(key, (int, float)):
        return dumps(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")
