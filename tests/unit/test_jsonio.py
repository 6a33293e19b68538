"""hanok.runtime.jsonio: the hot path's JSON must agree with the stdlib's, byte for byte."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hanok.runtime import jsonio

VALUES: list[Any] = [
    None, True, False, 0, 1, -1, -42, 2**31, -(2**63), 2**64 + 1, 10**30,
    0.0, -0.0, 1.5, -2.25, 0.1, 1e-7, 1e100, -1e-300, 123456789.123456789, 5e-324, 1.7976931348623157e308,
    "", "a", "hello world", 'quote " and backslash \\', "tab\tnewline\ncr\r", "\x00\x01\x1f\x7f",
    "/slash/", "ünïcödé", "한옥", "emoji 🐳", "\u2028\u2029", "\ud800 lone surrogate", "\b\f",
    [], {}, [[]], [{}], {"": ""}, {"a": {}}, {"a": []},
    [1, "two", 3.0, None, True, False, [], {}],
    {"ociVersion": "1.1.0", "id": "c1", "pid": 1234, "status": "running", "bundle": "/b",
     "rootfs": "/b/rootfs", "created": "2024-01-01T00:00:00.000000000Z", "owner": "",
     "annotations": {"io.kubernetes.pod": "p", "ünï": "ço\nde"}},
    {"nested": {"deeper": {"deepest": [1, [2, [3, [4, {"k": "v"}]]]]}}},
    {"z": 1, "a": 2, "m": 3},  # insertion order kept, not sorted
    [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}] * 3,
    {"k\"ey": "v", "k\\ey": "v", "ke\ny": "v", "ключ": "значение"},
    list(range(100)),
    {str(i): i for i in range(50)},
]


def _ids(values: list[Any]) -> list[str]:
    return [f"{i}-{type(v).__name__}" for i, v in enumerate(values)]


@pytest.mark.parametrize("value", VALUES, ids=_ids(VALUES))
def test_dumps_matches_json(value: Any) -> None:
    assert jsonio.dumps(value) == json.dumps(value)


@pytest.mark.parametrize("value", VALUES, ids=_ids(VALUES))
@pytest.mark.parametrize("indent", [0, 1, 2, 4])
def test_dumps_indent_matches_json(value: Any, indent: int) -> None:
    assert jsonio.dumps(value, indent=indent) == json.dumps(value, indent=indent)


@pytest.mark.parametrize("value", VALUES, ids=_ids(VALUES))
def test_round_trip(value: Any) -> None:
    text = jsonio.dumps(value)
    assert jsonio.loads(text) == json.loads(text)
    if isinstance(value, float) and value == 0:
        assert math.copysign(1, jsonio.loads(text)) == math.copysign(1, value)  # type: ignore[arg-type]
    assert jsonio.loads(text) == value
    assert jsonio.loads(text.encode()) == value
    assert jsonio.loads(jsonio.dumps(value, indent=2)) == value


@pytest.mark.parametrize("value", VALUES, ids=_ids(VALUES))
def test_loads_matches_json(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, indent=2), json.dumps(value, ensure_ascii=False),
                 json.dumps(value, separators=(",", ":"))):
        assert jsonio.loads(text) == json.loads(text)
        assert type(jsonio.loads(text)) is type(json.loads(text))


def test_loads_types() -> None:
    doc = jsonio.loads('{"i": 1, "f": 1.0, "e": 1e3, "n": -0, "big": 123456789012345678901234567890}')
    assert doc == {"i": 1, "f": 1.0, "e": 1000.0, "n": 0, "big": 123456789012345678901234567890}
    assert [type(v) for v in doc.values()] == [int, float, float, int, int]  # type: ignore[union-attr]


@pytest.mark.parametrize("text", [
    "  [1]  ", "\n\t{\"a\": 1}\r\n", '"\\u00e9\\ud83d\\udc33"', "[1.5e-3, -0.0]", '{"a": {"b": {"c": []}}}',
    "NaN", "Infinity", "-Infinity", "[NaN]",
])
def test_loads_accepts_what_json_accepts(text: str) -> None:
    got, want = jsonio.loads(text), json.loads(text)
    if isinstance(want, float) and math.isnan(want):
        assert isinstance(got, float) and math.isnan(got)
    elif isinstance(want, list) and want and isinstance(want[0], float) and math.isnan(want[0]):
        assert isinstance(got, list) and math.isnan(got[0])
    else:
        assert got == want


def test_loads_bytes_with_bom() -> None:
    assert jsonio.loads(b"\xef\xbb\xbf{\"a\": 1}") == {"a": 1}
    assert jsonio.loads("{\"é\": \"한\"}".encode()) == {"é": "한"}


def test_tuples_dump_as_arrays() -> None:
    assert jsonio.dumps((1, (2, 3))) == json.dumps((1, (2, 3))) == "[1, [2, 3]]"


def test_int_dict_keys_dump_as_strings() -> None:
    assert jsonio.dumps({1: 2}) == json.dumps({1: 2})


def test_non_finite_floats_match_json() -> None:
    """json writes Infinity/NaN (and reads them back); "inf"/"nan" would be unreadable."""
    for value in (float("inf"), float("-inf"), float("nan")):
        assert jsonio.dumps(value) == json.dumps(value)
        assert jsonio.dumps([value], indent=2) == json.dumps([value], indent=2)
        back = jsonio.loads(jsonio.dumps(value))
        assert back == value or (math.isnan(value) and math.isnan(back))  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", Path("/x"), 1j])
def test_dumps_unserialisable_raises_type_error(value: Any) -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsonio.dumps(value)
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsonio.dumps({"nested": [value]})


INVALID = [
    "", " ", "\n", "[", "]", "{", "}", '{"a"}', '{"a":}', '{"a":1,}', "[1,]", "[1 2]", "tru", "nul",
    "True", "None", '"abc', "'single'", '"\\x"', '"\\u12"', '"a\nb"', '"tab\there"', "01", "-", "+1",
    ".5", "1.", "1e", "NaNx", "1 2", "[1] x", "[1]]", "{}{}", "{1: 2}", "\x00", "// comment\n1",
    '{"a": 1 "b": 2}', "[" * 10 + "]" * 9,
]


@pytest.mark.parametrize("text", INVALID)
def test_loads_invalid_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError) as info:
        jsonio.loads(text)
    assert not isinstance(info.value, SystemError)
    with pytest.raises(ValueError):
        json.loads(text)  # the stdlib agrees it is invalid
    with pytest.raises(ValueError):
        jsonio.loads(text.encode())


def test_loads_invalid_utf8_raises_value_error() -> None:
    with pytest.raises(ValueError):
        jsonio.loads(b'{"a": "\xff"}')


def test_load_file(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps(VALUES, indent=2))
    assert jsonio.load_file(str(path)) == VALUES
    path.write_text("{")
    with pytest.raises(ValueError):
        jsonio.load_file(str(path))
    with pytest.raises(FileNotFoundError):
        jsonio.load_file(str(tmp_path / "missing.json"))


def _fresh(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=_env())


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    # the same hanok this test session imported (working tree or installed)
    import hanok

    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(hanok.__file__)) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def test_import_does_not_load_json_or_re() -> None:
    code = (
        "import sys\n"
        "import hanok.runtime.jsonio as j\n"
        "assert j.loads(j.dumps({'a': [1, 2.5, None]}, indent=2)) == {'a': [1, 2.5, None]}\n"
        "print(sorted(m for m in ('json', 're', 'enum', 'json.decoder') if m in sys.modules))\n"
        "print(j.__file__)\n"
    )
    done = _fresh(code)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[]", f"imported: {lines[0]}"
    import hanok

    assert lines[1].startswith(str(Path(hanok.__file__).parent))


def test_invalid_input_in_fresh_interpreter_is_value_error() -> None:
    """Before `json` was ever imported, _json's error path must still give ValueError."""
    code = (
        "import hanok.runtime.jsonio as j\n"
        "for text in ['', '{', '[1,]', '\"a', '1 2', 'tru']:\n"
        "    try:\n"
        "        j.loads(text)\n"
        "    except ValueError as e:\n"
        "        assert not isinstance(e, SystemError), type(e)\n"
        "    else:\n"
        "        raise AssertionError(text)\n"
        "print('ok')\n"
    )
    done = _fresh(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"
