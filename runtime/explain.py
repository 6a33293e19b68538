"""The teaching trace: one place every kernel-level step reports to.

Each primitive hanok performs (unshare, setns, mount, pivot_root, sethostname,
capability changes, and later cgroup writes and netlink changes) calls
`step()` with the shell command a person would type to do the same thing, so a
run printed with `--explain` can be replayed by hand. Disabled, a step costs one
attribute check. Leaf module: imports nothing of hanok.
"""
from __future__ import annotations

import os

if False:  # for type checkers only: no import cost at run time
    from collections.abc import Iterable

# File descriptor the trace is written to, or None when tracing is off. A raw fd
# (not sys.stderr) so forked children inside the namespaces can write to it
# without Python's buffered streams.
_fd: int | None = None


def enable(fd: int = 2) -> None:
    """Start printing steps to `fd` (default stderr)."""
    global _fd
    _fd = fd
    import shlex  # noqa: F401 - loaded now: quote() may run inside a container's root


def disable() -> None:
    global _fd
    _fd = None


def enabled() -> bool:
    return _fd is not None


def step(command: str, why: str = "") -> None:
    """Report one kernel-level action as a shell command (`why` is a short comment)."""
    if _fd is None:
        return
    line = f"+ {command}" + (f"    # {why}" if why else "") + "\n"
    try:
        os.write(_fd, line.encode())
    except OSError:
        pass


def quote(words: Iterable[str]) -> str:
    """Join words as a shell would need them quoted."""
    import shlex  # only when tracing: keeps `re` off the hot path

    return " ".join(shlex.quote(str(w)) for w in words)
