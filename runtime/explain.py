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


# What shlex.quote leaves bare (its `[^\w@%+=:,./-]` with re.ASCII), written out: shlex imports re, and with
# it enum and functools (~5 ms), which `hanok ps` would pay for its COMMAND column.
_SHELL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")


def shell_quote(word: str) -> str:
    """`word` as a shell needs it written, exactly as shlex.quote does it."""
    if not word:
        return "''"
    if _SHELL_SAFE.issuperset(word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def quote(words: Iterable[str]) -> str:
    """Join words as a shell would need them quoted (shlex.join)."""
    return " ".join(shell_quote(str(w)) for w in words)
