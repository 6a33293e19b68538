"""runtime/logs.py: the CRI log format and `hanok logs` reading (tail, since, timestamps, follow, rotation)."""
from __future__ import annotations

from pathlib import Path

import pytest
from hanok.runtime import logs
from hanok.runtime.errors import InvalidArgument

T0 = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z
STAMP0 = "2023-11-14T22:13:20.123456789Z"


def line(stream: str, text: str, partial: bool = False, second: int = 0) -> bytes:
    return logs.format_line(stream, text, partial, T0 + second * 1_000_000_000)


def write_log(path: Path, *lines: bytes) -> None:
    path.write_bytes(b"".join(lines))


def read_all(path: Path, **kwargs) -> list[tuple[str, bytes]]:
    return list(logs.read(str(path), **kwargs))


# ------------------------------------------------------------------ format and parse


def test_format_line_exact_bytes() -> None:
    assert logs.format_line("stdout", b"hello world", False, T0) == f"{STAMP0} stdout F hello world\n".encode()
    assert logs.format_line("stderr", "part", True, T0) == f"{STAMP0} stderr P part\n".encode()


def test_format_line_keeps_nine_digits_of_nanoseconds() -> None:
    assert logs.format_line("stdout", b"x", False, 1_700_000_000_000_000_000).startswith(
        b"2023-11-14T22:13:20.000000000Z ")


@pytest.mark.parametrize("stream, text", [("stdin", b"x"), ("stdout", b"two\nlines")])
def test_format_line_rejects(stream: str, text: bytes) -> None:
    with pytest.raises(InvalidArgument):
        logs.format_line(stream, text, False, T0)


@pytest.mark.parametrize("stream, text, partial", [
    ("stdout", "hello", False),
    ("stderr", "with  two spaces and a tab\t", True),
    ("stdout", "", False),
    ("stdout", "pty line\r", False),
    ("stderr", "ünïcødé", False),
])
def test_round_trip(stream: str, text: str, partial: bool) -> None:
    entry = logs.parse_line(logs.format_line(stream, text, partial, T0))
    assert entry == logs.LogEntry(STAMP0, stream, partial, text)


def test_parse_line_of_another_writer() -> None:
    """containerd trims trailing zeros of the fraction; conmon writes a numeric offset."""
    assert logs.parse_line(b"2016-10-06T00:17:09.6699Z stdout F log content 1\n") == logs.LogEntry(
        "2016-10-06T00:17:09.6699Z", "stdout", False, "log content 1")
    assert logs.parse_line(b"2023-01-01T01:00:00.000000001+01:00 stderr P x\n").partial is True


@pytest.mark.parametrize("raw", [b"", b"garbage\n", b"2023-11-14T22:13:20Z stdin F x\n",
                                 b"2023-11-14T22:13:20Z stdout X x\n", b"yesterday stdout F x\n"])
def test_parse_line_rejects(raw: bytes) -> None:
    with pytest.raises(InvalidArgument):
        logs.parse_line(raw)


@pytest.mark.parametrize("text, ns", [
    (STAMP0, T0),
    ("2023-11-14T22:13:20Z", 1_700_000_000 * 10**9),
    ("2023-11-14T23:13:20.5+01:00", 1_700_000_000 * 10**9 + 500_000_000),
    ("2023-11-14T21:13:20-01:00", 1_700_000_000 * 10**9),
    ("1970-01-01T00:00:00Z", 0),
    ("2000-02-29T00:00:00Z", 951_782_400 * 10**9),
    ("1700000000", 1_700_000_000 * 10**9),
    ("1700000000.25", 1_700_000_000 * 10**9 + 250_000_000),
])
def test_parse_time(text: str, ns: int) -> None:
    assert logs.parse_time(text) == ns


@pytest.mark.parametrize("text", ["", "2023-11-14", "2023-13-01T00:00:00Z", "2023-11-14T22:13:20",
                                  "2023-11-14T22:13:20.x1Z", "10m"])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid time"):
        logs.parse_time(text)


# ------------------------------------------------------------------ read


def test_read_joins_partial_lines_per_stream(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    write_log(log, line("stdout", "hel", True), line("stderr", "err", True), line("stdout", "lo", True),
              line("stdout", " world"), line("stderr", "or"), line("stdout", "next"))
    assert read_all(log) == [("stdout", b"hello world\n"), ("stderr", b"error\n"), ("stdout", b"next\n")]


def test_read_prints_an_unfinished_partial_line_without_newline(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    write_log(log, line("stdout", "done"), line("stdout", "prompt> ", True))
    assert read_all(log) == [("stdout", b"done\n"), ("stdout", b"prompt> ")]


def test_read_skips_lines_that_are_not_cri(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    write_log(log, line("stdout", "a"), b"not a log line\n", line("stdout", "b"))
    assert read_all(log) == [("stdout", b"a\n"), ("stdout", b"b\n")]


def test_read_missing_log_is_empty(tmp_path: Path) -> None:
    assert read_all(tmp_path / "absent.log") == []
    assert read_all(tmp_path / "absent.log", tail=3) == []


def test_read_timestamps_use_the_first_chunk_time(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    write_log(log, line("stdout", "a", True, second=0), line("stdout", "b", second=1))
    assert read_all(log, timestamps=True) == [("stdout", f"{STAMP0} ab\n".encode())]


def test_read_since(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    write_log(log, *(line("stdout", f"line {i}", second=i) for i in range(5)))
    assert read_all(log, since="2023-11-14T22:13:23Z") == [("stdout", b"line 3\n"), ("stdout", b"line 4\n")]
    assert read_all(log, since="1700000003.123456789") == [("stdout", b"line 3\n"), ("stdout", b"line 4\n")]
    with pytest.raises(InvalidArgument):
        read_all(log, since="yesterday")


def test_read_whole_history_across_rotation(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    write_log(Path(f"{log}.1"), line("stdout", "old 1"), line("stdout", "old 2 part", True))
    write_log(log, line("stdout", " continued"), line("stderr", "new"))
    assert read_all(log) == [("stdout", b"old 1\n"), ("stdout", b"old 2 part continued\n"), ("stderr", b"new\n")]


@pytest.mark.parametrize("block", [7, 64, 1 << 16])
def test_tail_reads_backwards_across_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """Small blocks make lines straddle block boundaries, and P groups straddle the files."""
    monkeypatch.setattr(logs, "_BLOCK", block)
    log = tmp_path / "ctr.log"
    write_log(Path(f"{log}.1"), *(line("stdout", f"old {i}") for i in range(3)), line("stderr", "sp", True),
              line("stderr", "li", True))
    write_log(log, line("stderr", "t"), *(line("stdout", f"new {i}") for i in range(3)))
    everything = read_all(log)
    assert len(everything) == 7
    for n in range(9):
        assert read_all(log, tail=n) == (everything[-n:] if n else [])
    assert read_all(log, tail=4) == [("stderr", b"split\n"), ("stdout", b"new 0\n"), ("stdout", b"new 1\n"),
                                     ("stdout", b"new 2\n")]


def test_tail_with_timestamps_and_since(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    write_log(log, *(line("stdout", f"l{i}", second=i) for i in range(6)))
    stamp5 = logs.rfc3339_nano(T0 + 5 * 10**9)
    assert read_all(log, tail=1, timestamps=True) == [("stdout", f"{stamp5} l5\n".encode())]
    assert read_all(log, tail=3, since="2023-11-14T22:13:24Z") == [("stdout", b"l4\n"), ("stdout", b"l5\n")]


def test_tail_leaves_an_unfinished_last_line_alone(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    write_log(log, line("stdout", "a"), line("stdout", "b"), b"2023-11-14T22:13:2")  # a write in progress
    assert read_all(log, tail=1) == [("stdout", b"b\n")]


def test_tail_counts_an_unfinished_partial_line(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    write_log(log, line("stdout", "a"), line("stdout", "b"), line("stdout", "prompt> ", True))
    assert read_all(log, tail=1) == [("stdout", b"prompt> ")]
    assert read_all(log, tail=2) == [("stdout", b"b\n"), ("stdout", b"prompt> ")]


def test_tail_rejects_negative(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="-1"):
        read_all(tmp_path / "ctr.log", tail=-1)


class Script:
    """A stop() for follow that acts once per poll: each step runs, then the next poll reads what it did."""

    def __init__(self, *steps) -> None:
        self.steps = list(steps)

    def __call__(self) -> bool:
        if not self.steps:
            return True
        self.steps.pop(0)()
        return False


def append(path: Path, *lines: bytes) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(lines))


def test_follow_reads_appends_and_rotations_then_drains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "POLL_SECONDS", 0)
    log = tmp_path / "ctr.log"
    write_log(log, line("stdout", "before"))

    def rotate() -> None:
        append(log, line("stdout", "last of the old file"))
        log.rename(f"{log}.1")
        write_log(log, line("stderr", "first of the new file"))

    stop = Script(
        lambda: append(log, line("stdout", "appended")),
        lambda: append(log, line("stdout", "half", True), b"2023-11-14T22:13:20.123456789Z std"),  # torn write
        lambda: append(log, b"out F  done\n"),
        rotate,
        lambda: append(log, line("stdout", "tail without newline", True)),
    )
    got = list(logs.read(str(log), follow=True, stop=stop))
    assert got == [("stdout", b"before\n"), ("stdout", b"appended\n"), ("stdout", b"half done\n"),
                   ("stdout", b"last of the old file\n"), ("stderr", b"first of the new file\n"),
                   ("stdout", b"tail without newline")]


def test_follow_waits_for_the_log_to_appear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "POLL_SECONDS", 0)
    log = tmp_path / "ctr.log"
    stop = Script(lambda: None, lambda: write_log(log, line("stdout", "hi")))
    assert list(logs.read(str(log), follow=True, stop=stop)) == [("stdout", b"hi\n")]


def test_follow_with_tail_zero_shows_only_new_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "POLL_SECONDS", 0)
    log = tmp_path / "ctr.log"
    write_log(log, line("stdout", "old"))
    stop = Script(lambda: append(log, line("stdout", "new")))
    assert list(logs.read(str(log), tail=0, follow=True, stop=stop)) == [("stdout", b"new\n")]
