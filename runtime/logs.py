"""Container logs in the CRI format kubelets read, and `hanok logs` on top of it.

One line per chunk of output, as containerd and conmon write them:

    2026-11-22T07:18:31.123456789Z stdout F hello
    <RFC3339Nano time>             <stream> <tag> <text>

The tag is F for a full line (the text was followed by a newline) and P for a
partial one (the writer's chunk ended without a newline, or the line was longer
than the monitor's buffer); readers join P chunks with the next chunk of the same
stream, up to and including its F. The monitor (monitor.py) writes the file and
rotates it at a size limit to `<log>.1`, keeping one old file; `read` reads
`<log>.1` then `<log>` for the whole history and follows both through a rotation.

Pure: no root, nothing of hanok but its errors.
"""
from __future__ import annotations

import os
import time

from hanok.runtime.errors import InvalidArgument

if False:  # typing only
    from collections.abc import Callable, Iterable, Iterator

STREAMS = ("stdout", "stderr")
FULL = b"F"
PARTIAL = b"P"
ROTATED_SUFFIX = ".1"
POLL_SECONDS = 0.1         # the longest wait between two looks at a followed log
FIRST_POLL_SECONDS = 0.002  # the first waits are short: an attached `run` of a quick command ends fast
_BLOCK = 64 << 10  # bytes read per step when tailing backwards


class LogEntry:
    """One parsed log line (a plain class: typing.NamedTuple would cost `hanok logs` ~8 ms of imports)."""

    __slots__ = ("time", "stream", "partial", "text")

    def __init__(self, time: str, stream: str, partial: bool, text: str):
        self.time = time
        self.stream = stream
        self.partial = partial
        self.text = text

    def _fields(self) -> tuple[str, str, bool, str]:
        return self.time, self.stream, self.partial, self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LogEntry) and self._fields() == other._fields()

    def __repr__(self) -> str:
        return "LogEntry(time=%r, stream=%r, partial=%r, text=%r)" % self._fields()


def format_line(stream: str, text: bytes | str, partial: bool, when_ns: int) -> bytes:
    """One CRI log line (with its newline) for `text`, which holds no newline."""
    if stream not in STREAMS:
        raise InvalidArgument(f"log stream must be stdout or stderr, not {stream!r}")
    data = text.encode() if isinstance(text, str) else text
    if b"\n" in data:
        raise InvalidArgument(f"a log line's text cannot hold a newline: {data[:80]!r}")
    return b"%s %s %s %s\n" % (rfc3339_nano(when_ns).encode(), stream.encode(), PARTIAL if partial else FULL, data)


def rfc3339_nano(when_ns: int) -> str:
    """UTC time with all nine digits of nanoseconds (fixed width: sorts as text)."""
    seconds, nanos = divmod(when_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def _split(line: bytes) -> tuple[bytes, str, bool, bytes]:
    """(time, stream, partial, text) of one raw line; InvalidArgument if it is not CRI."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) == 3:  # an empty text, tolerated without its separating space: "<time> stdout F"
        parts.append(b"")
    if len(parts) != 4 or parts[1] not in (b"stdout", b"stderr") or parts[2] not in (FULL, PARTIAL):
        raise InvalidArgument(f"not a CRI log line: {line[:80]!r}")
    return parts[0], parts[1].decode(), parts[2] == PARTIAL, parts[3]


def parse_line(line: bytes) -> LogEntry:
    """Parse one line written by format_line (or by containerd/conmon)."""
    stamp, stream, partial, text = _split(line)
    parse_time(stamp.decode(errors="replace"))
    return LogEntry(stamp.decode(), stream, partial, text.decode(errors="replace"))


def parse_time(value: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time (any fraction, Z or +hh:mm), or of Unix seconds."""
    text = value.strip()
    try:
        if text.replace(".", "", 1).isdigit():
            whole, _, fraction = text.partition(".")
            return int(whole) * 1_000_000_000 + int((fraction + "000000000")[:9])
        date, clock = text[:10], text[11:]
        if len(text) < 20 or text[10] not in "Tt ":
            raise ValueError
        year, month, day = (int(x) for x in date.split("-"))
        if clock[-1] in "Zz":
            offset, clock = 0, clock[:-1]
        else:
            sign = 1 if clock[-6] == "+" else -1 if clock[-6] == "-" else 0
            if not sign or clock[-3] != ":":
                raise ValueError
            offset = sign * (int(clock[-5:-3]) * 3600 + int(clock[-2:]) * 60)
            clock = clock[:-6]
        hms, _, fraction = clock.partition(".")
        hour, minute, second = (int(x) for x in hms.split(":"))
        if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
            raise ValueError
        if fraction and not fraction.isdigit():
            raise ValueError
        seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset
        return seconds * 1_000_000_000 + int((fraction + "000000000")[:9])
    except (ValueError, IndexError):
        raise InvalidArgument(f"invalid time {value!r}: expected RFC 3339 (2006-01-02T15:04:05Z) "
                              "or Unix seconds") from None


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


class _Joiner:
    """Turns raw lines into (stream, bytes to print), joining P chunks per stream as docker does."""

    def __init__(self, since_ns: int | None, timestamps: bool):
        self.since_ns = since_ns
        self.timestamps = timestamps
        self.pending: dict[str, tuple[bytes, list[bytes]]] = {}  # stream -> (first chunk's time, chunks)

    def feed(self, line: bytes) -> tuple[str, bytes] | None:
        try:
            stamp, stream, partial, text = _split(line)
        except InvalidArgument:
            return None  # not ours to print; a reader must not stop at one bad line
        first_stamp, chunks = self.pending.pop(stream, (stamp, []))
        chunks.append(text)
        if partial:
            self.pending[stream] = (first_stamp, chunks)
            return None
        return self._entry(stream, first_stamp, chunks, b"\n")

    def flush(self) -> list[tuple[str, bytes]]:
        """What is left of unfinished P groups: printed as is, without a newline."""
        out = [self._entry(stream, stamp, chunks, b"") for stream, (stamp, chunks) in self.pending.items()]
        self.pending.clear()
        return [entry for entry in out if entry is not None]

    def _entry(self, stream: str, stamp: bytes, chunks: list[bytes], end: bytes) -> tuple[str, bytes] | None:
        if self.since_ns is not None:
            try:
                if parse_time(stamp.decode(errors="replace")) < self.since_ns:
                    return None
            except InvalidArgument:
                return None
        text = b"".join(chunks) + end
        return stream, (stamp + b" " + text if self.timestamps else text)


def read(log_path: str, *, tail: int | None = None, since: str | None = None, timestamps: bool = False,
         follow: bool = False, stop: Callable[[], bool] | None = None,
         wake_fd: int | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield (stream, bytes to print) for a container's log, oldest first.

    `tail` keeps the last N entries (read backwards from the end, so a large
    log costs only what is shown); `since` drops entries older than an RFC 3339
    time; `timestamps` prefixes each entry with its time. `follow` keeps reading
    what the monitor appends (polling every 0.1 s, across rotations) until
    `stop()` returns True, then drains what is left and returns. `wake_fd`,
    if given, turns readable when stop() may have become true (the attached
    `run` passes a pidfd of the container's monitor): a wait ends at once
    then, instead of at the next poll.
    """
    if tail is not None and tail < 0:
        raise InvalidArgument(f"--tail must be 0 or more, not {tail}")
    joiner = _Joiner(parse_time(since) if since is not None else None, timestamps)
    current = _open(log_path)
    if tail is not None:
        history = _last_lines(log_path, current, tail)
    else:
        history = _whole_lines(log_path, current)
    entries = [entry for entry in map(joiner.feed, history) if entry is not None]
    if not follow:  # else an unfinished P group may still be completed
        entries += joiner.flush()
        if current is not None:
            current.close()
    if tail is not None:
        entries = entries[-tail:] if tail else []
    yield from entries
    if follow:
        yield from _follow(log_path, current, joiner, stop or (lambda: False), wake_fd)


def _open(path: str):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _whole_lines(log_path: str, current) -> list[bytes]:
    """Every line of `<log>.1` and of the open `<log>` (which is left at its end)."""
    lines: list[bytes] = []
    old = _open(log_path + ROTATED_SUFFIX)
    if old is not None:
        with old:
            lines.extend(_complete(old.read()))
    if current is not None:
        data = current.read()
        complete = _complete(data)
        current.seek(sum(map(len, complete)))  # leave an unfinished last line for the follower
        lines.extend(complete)
    return lines


def _complete(data: bytes) -> list[bytes]:
    """The newline-terminated lines of `data` (an unfinished last line is dropped)."""
    return _lines(data[:data.rfind(b"\n") + 1])


def _lines(data: bytes) -> list[bytes]:
    """Split after each newline only: a pty's \\r, or a \\f in the text, belongs to the text."""
    pieces = data.split(b"\n")
    last = pieces.pop()
    return [piece + b"\n" for piece in pieces] + ([last] if last else [])


def _last_lines(log_path: str, current, count: int) -> list[bytes]:
    """Enough raw lines from the end for the last `count` entries, leaving `current` at its end.

    Reads blocks backwards and stops once it holds count+1 F lines: every
    entry after the first of them is then complete, P chunks included.
    """
    groups: list[list[bytes]] = []  # complete lines, newest group first
    full_lines = 0
    for source in (current, _open(log_path + ROTATED_SUFFIX)):
        if source is None:
            continue
        end = source.seek(0, os.SEEK_END)
        if source is current:
            end = _end_of_last_line(source, end)  # an unfinished line is left for the follower
        position, head = end, b""  # head: the bytes before the lines already taken
        while position > 0 and full_lines <= count:
            step = min(_BLOCK, position)
            position -= step
            source.seek(position)
            head = source.read(step) + head
            if position > 0:
                cut = head.find(b"\n") + 1  # what precedes the first newline may start in the earlier block
                if not cut:
                    continue
                found, head = head[cut:], head[:cut]
            else:
                found, head = head, b""
            lines = _lines(found)
            groups.append(lines)
            full_lines += sum(1 for line in lines if _tag(line) == FULL)
        if source is current:
            source.seek(end)
        else:
            source.close()
        if full_lines > count:
            break
    return [line for group in reversed(groups) for line in group]


def _end_of_last_line(source, size: int) -> int:
    """The offset just after the last newline of an open file of `size` bytes (0 if none)."""
    position = size
    while position > 0:
        step = min(_BLOCK, position)
        source.seek(position - step)
        newline = source.read(step).rfind(b"\n")
        if newline >= 0:
            return position - step + newline + 1
        position -= step
    return 0


def _tag(line: bytes) -> bytes:
    parts = line.split(b" ", 3)
    return parts[2] if len(parts) > 2 else b""


def _follow(log_path: str, current, joiner: _Joiner, stop: Callable[[], bool],
            wake_fd: int | None = None) -> Iterator[tuple[str, bytes]]:
    """Read what is appended to `log_path`, through rotations, until stop() and a last drain."""
    buffer = b""
    pause = FIRST_POLL_SECONDS
    while True:
        stopping = stop()
        while True:  # read the open file to its end; move to the new file if it was rotated
            data = current.read() if current is not None else b""
            if data:
                pause = FIRST_POLL_SECONDS
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    entry = joiner.feed(line + b"\n")
                    if entry is not None:
                        yield entry
                continue
            if not _rotated(log_path, current):
                break
            if current is not None:
                current.close()
            current, buffer = _open(log_path), b""
        if stopping:
            if current is not None:
                current.close()
            yield from joiner.flush()
            return
        if wake_fd is None:
            time.sleep(pause)
        else:
            import select

            select.select([wake_fd], [], [], pause)
        pause = min(pause * 2, POLL_SECONDS)


def _rotated(log_path: str, current) -> bool:
    """True when `log_path` now names another file than the one open (or one appeared)."""
    try:
        on_disk = os.stat(log_path)
    except FileNotFoundError:
        return False
    if current is None:
        return True
    mine = os.fstat(current.fileno())
    return (on_disk.st_dev, on_disk.st_ino) != (mine.st_dev, mine.st_ino)


def show(entries: Iterable[tuple[str, bytes]]) -> None:
    """Write what read() yields to our stdout and stderr, as it comes.

    A closed reader (`hanok logs web | head`) ends the showing, not the
    reading: the rest goes to /dev/null, so callers that wait for the
    container (an attached `run`) still see it to its end and clean up after
    it. Any other failed write (a full disk, /dev/full) is said once on
    stderr and handled the same way.
    """
    import sys

    out = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    for stream, data in entries:
        target = out.get(stream, sys.stdout.buffer)
        try:
            target.write(data)
            target.flush()
        except OSError as e:
            if not isinstance(e, BrokenPipeError):
                try:
                    sys.stderr.write(f"hanok: cannot write the container's {stream}: {e.strerror or e}; "
                                     "the rest of it is discarded\n")
                    sys.stderr.flush()
                except OSError:
                    pass
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, target.fileno())
            os.close(devnull)
