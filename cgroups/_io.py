"""File work shared by the v1 and v2 managers: explained writes, mkdir/rmdir with retries.

Only os, errno and time: this runs on every create and delete.
"""
from __future__ import annotations

import errno
import os
import time

from hanok.runtime import explain
from hanok.runtime.errors import CgroupError


def write(path: str, value: str, setting: str = "", missing_ok: bool = False) -> bool:
    """Write `value` to a cgroup file, one line per write(2), each explained.

    With missing_ok, a missing file is skipped (False returned): used for values
    that only lift a limit ("max", "-1"), which a host without the file has anyway.
    """
    for line in value.split("\n") if "\n" in value else (value,):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            if missing_ok and e.errno == errno.ENOENT:
                return False
            raise CgroupError(_describe(e, path, line, setting)) from None
        if explain._fd is not None:
            explain.step(f"echo {explain.quote([line])} > {explain.quote([path])}")
        try:
            os.write(fd, line.encode())
        except OSError as e:
            raise CgroupError(_describe(e, path, line, setting)) from None
        finally:
            os.close(fd)
    return True


def _describe(e: OSError, path: str, value: str, setting: str) -> str:
    what = f"{setting}: " if setting else ""
    if e.errno == errno.ENOENT:
        return f"{what}{path} does not exist (controller or file missing on this host)"
    return f"{what}cannot write {value!r} to {path}: {os.strerror(e.errno or 0)}"


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def read_or(path: str, default: str | None = None) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def mkdir(path: str) -> bool:
    """mkdir one cgroup; True if made now, False if it was there. ENOENT propagates."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise
        raise CgroupError(f"cannot create cgroup {path}: {os.strerror(e.errno or 0)}") from None
    if explain._fd is not None:
        explain.step(f"mkdir {explain.quote([path])}")
    return True


def rmdir(path: str, timeout: float = 2.0) -> bool:
    """Remove one cgroup directory and its child cgroups, leaf first.

    Retries on EBUSY while processes exit (for up to `timeout` seconds).
    True if removed now, False if it was already gone; CgroupError if it stays busy.
    """
    delay = 0.001
    deadline = None
    while True:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            return False
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                raise CgroupError(f"cannot remove cgroup {path}: {os.strerror(e.errno or 0)}") from None
            # child cgroups (made inside the container, e.g. with a cgroup namespace) go first
            children = _subdirs(path)
            for child in children:
                rmdir(os.path.join(path, child), timeout)
            if children:
                continue
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout
            if now >= deadline:
                pids = (read_or(os.path.join(path, "cgroup.procs"), "") or "").split()
                left = f" (processes still in it: {' '.join(pids[:10])})" if pids else ""
                raise CgroupError(f"cannot remove cgroup {path}: {os.strerror(e.errno or 0)}{left}") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            continue
        if explain._fd is not None:
            explain.step(f"rmdir {explain.quote([path])}")
        return True


def rmdir_if_empty(path: str) -> bool:
    """Remove a parent cgroup only if nothing is in it (another container may be); no retries."""
    try:
        os.rmdir(path)
    except OSError:
        return False
    if explain._fd is not None:
        explain.step(f"rmdir {explain.quote([path])}")
    return True


def _subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return [e.name for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def pids_in(path: str) -> list[int]:
    """The pids listed in a cgroup.procs file ([] if the cgroup is gone)."""
    text = read_or(path, "") or ""
    return [int(p) for p in text.split()]


def kill_all(procs_file: str) -> list[int]:
    """SIGKILL every pid in a cgroup.procs file; returns the pids signalled."""
    pids = pids_in(procs_file)
    for pid in pids:
        if explain._fd is not None:
            explain.step(f"kill -KILL {pid}")
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return pids


def wait_for(check, timeout: float) -> bool:
    """Poll `check()` with a growing sleep (1 ms .. 20 ms) until true or `timeout` passes."""
    if check():
        return True
    deadline = time.monotonic() + timeout
    delay = 0.001
    while time.monotonic() < deadline:
        time.sleep(delay)
        if check():
            return True
        delay = min(delay * 2, 0.02)
    return False
