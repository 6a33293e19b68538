"""Cheap reads of a cgroup's numbers: memory, cpu, pids, OOM kills, io bytes.

One dict shape for both cgroup versions (None where the host has no such file):

    {"memory": {"current", "peak", "limit", "swap_current", "oom_kill", "oom"},
     "cpu":    {"usage_usec", "user_usec", "system_usec",
                "nr_periods", "nr_throttled", "throttled_usec"},
     "pids":   {"current", "limit"},
     "io":     {"read_bytes", "write_bytes"}}

`limit` is None when unlimited. Each file is read once with a plain open().
"""
from __future__ import annotations

import os

# v1 reports "unlimited" as the largest page-aligned long
_V1_UNLIMITED = 1 << 62


def read_int(path: str) -> int | None:
    """A file holding one number; None if missing; None for "max"."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if text == "max" or not text:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def flat_keyed(path: str) -> dict[str, int]:
    """`key value` lines (cpu.stat, memory.events, memory.oom_control, ...)."""
    out: dict[str, int] = {}
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            pass
    return out


def _read_or_none(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _io_v2(path: str) -> dict[str, int | None]:
    """io.stat: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N ...` per device, summed."""
    text = _read_or_none(path)
    if text is None:
        return {"read_bytes": None, "write_bytes": None}
    rbytes = wbytes = 0
    for line in text.splitlines():
        for word in line.split()[1:]:
            key, _, value = word.partition("=")
            if key == "rbytes":
                rbytes += int(value)
            elif key == "wbytes":
                wbytes += int(value)
    return {"read_bytes": rbytes, "write_bytes": wbytes}


def _io_v1(path: str) -> dict[str, int | None]:
    """blkio.throttle.io_service_bytes_recursive: `MAJ:MIN Read N` lines, summed."""
    text = _read_or_none(path)
    if text is None:
        return {"read_bytes": None, "write_bytes": None}
    rbytes = wbytes = 0
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3:
            if words[1] == "Read":
                rbytes += int(words[2])
            elif words[1] == "Write":
                wbytes += int(words[2])
    return {"read_bytes": rbytes, "write_bytes": wbytes}


def v2(directory: str) -> dict:
    """Stats of a cgroup v2 directory."""
    j = os.path.join
    events = flat_keyed(j(directory, "memory.events"))
    cpu = flat_keyed(j(directory, "cpu.stat"))
    return {
        "memory": {
            "current": read_int(j(directory, "memory.current")),
            "peak": read_int(j(directory, "memory.peak")),
            "limit": read_int(j(directory, "memory.max")),
            "swap_current": read_int(j(directory, "memory.swap.current")),
            "oom_kill": events.get("oom_kill"),
            "oom": events.get("oom"),
        },
        "cpu": {
            "usage_usec": cpu.get("usage_usec"),
            "user_usec": cpu.get("user_usec"),
            "system_usec": cpu.get("system_usec"),
            "nr_periods": cpu.get("nr_periods"),
            "nr_throttled": cpu.get("nr_throttled"),
            "throttled_usec": cpu.get("throttled_usec"),
        },
        "pids": {
            "current": read_int(j(directory, "pids.current")),
            "limit": read_int(j(directory, "pids.max")),
        },
        "io": _io_v2(j(directory, "io.stat")),
    }


def v1(dirs: dict[str, str]) -> dict:
    """Stats of a cgroup v1 container: `dirs` maps controller name -> its directory."""
    j = os.path.join
    mem = dirs.get("memory")
    cpu = dirs.get("cpu")
    acct = dirs.get("cpuacct")
    pids = dirs.get("pids")
    blkio = dirs.get("blkio")
    memory: dict = dict.fromkeys(("current", "peak", "limit", "swap_current", "oom_kill", "oom"))
    if mem:
        limit = read_int(j(mem, "memory.limit_in_bytes"))
        oom = flat_keyed(j(mem, "memory.oom_control"))
        usage = read_int(j(mem, "memory.usage_in_bytes"))
        memsw = read_int(j(mem, "memory.memsw.usage_in_bytes"))
        memory.update(
            current=usage,
            peak=read_int(j(mem, "memory.max_usage_in_bytes")),
            limit=None if limit is None or limit >= _V1_UNLIMITED else limit,
            swap_current=None if memsw is None or usage is None else max(memsw - usage, 0),
            oom_kill=oom.get("oom_kill"),
            # v1 has no count of OOM events; failcnt counts hits of the limit
            oom=read_int(j(mem, "memory.failcnt")),
        )
    cpu_out: dict = dict.fromkeys(("usage_usec", "user_usec", "system_usec",
                                   "nr_periods", "nr_throttled", "throttled_usec"))
    if acct:
        usage_ns = read_int(j(acct, "cpuacct.usage"))
        cpu_out["usage_usec"] = None if usage_ns is None else usage_ns // 1000
        ticks = flat_keyed(j(acct, "cpuacct.stat"))  # USER_HZ ticks
        hz = os.sysconf("SC_CLK_TCK") or 100
        if "user" in ticks:
            cpu_out["user_usec"] = ticks["user"] * 1000000 // hz
        if "system" in ticks:
            cpu_out["system_usec"] = ticks["system"] * 1000000 // hz
    if cpu:
        stat = flat_keyed(j(cpu, "cpu.stat"))
        cpu_out["nr_periods"] = stat.get("nr_periods")
        cpu_out["nr_throttled"] = stat.get("nr_throttled")
        if "throttled_time" in stat:
            cpu_out["throttled_usec"] = stat["throttled_time"] // 1000
    pids_out: dict = {"current": None, "limit": None}
    if pids:
        pids_out = {"current": read_int(j(pids, "pids.current")), "limit": read_int(j(pids, "pids.max"))}
    io = {"read_bytes": None, "write_bytes": None}
    if blkio:
        io = _io_v1(j(blkio, "blkio.throttle.io_service_bytes_recursive"))
    return {"memory": memory, "cpu": cpu_out, "pids": pids_out, "io": io}
