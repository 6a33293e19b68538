"""The systemd cgroup driver: the container's cgroup is a transient scope unit (cgroup v2 only).

On a host where systemd is PID 1 it owns the cgroup tree, and a runtime that
mkdirs its own cgroups under it fights it. With `--systemd-cgroup` (runc's
flag) the container instead gets `prefix-name.scope` in `slice`, from
linux.cgroupsPath `slice:prefix:name` (e.g. `system.slice:hanok:abc`,
`machine.slice:libpod:ID`), and the steps are runc's:

- StartTransientUnit(name, "replace", properties, []) with the init's pid in
  `PIDs`, `Delegate=true` (the subtree is ours to write), and the limits as
  unit properties (MemoryMax, TasksMax, CPUWeight, CPUQuotaPerSecUSec,
  AllowedCPUs, ...) so systemd does not put its defaults back on a
  daemon-reload; then wait for the job's JobRemoved signal;
- a scope cannot be started empty, so nothing happens before the first
  process is there: create() only validates, and enter() of the first pid
  starts the unit;
- everything systemd does not own (freeze, kill, procs, stats, and the limit
  files themselves, written after the properties with the exact values) goes
  through the scope's cgroupfs directory, as V2Manager does it;
- destroy() is StopUnit (wait for its job) and ResetFailedUnit, so a scope
  whose processes were killed does not linger as "failed".

cgroup v1 and hybrid hosts are refused (see available()).
"""
from __future__ import annotations

import os

from hanok.cgroups import CGROUP_ROOT, UNIFIED, _io, host_mode
from hanok.cgroups.resources import to_v2
from hanok.cgroups.v2 import V2Manager
from hanok.runtime import explain
from hanok.runtime.errors import CgroupError, NotSupported

if False:  # typing only
    from hanok.cgroups._dbus import Connection, Message

DEFAULT_SLICE = "system.slice"
DEFAULT_PREFIX = "hanok"
SYSTEMD_RUNTIME_DIR = "/run/systemd/system"  # exists when systemd booted the host (sd_booted)

DESTINATION = "org.freedesktop.systemd1"
OBJECT = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"

UINT64_MAX = 2**64 - 1  # systemd's "infinity" for MemoryMax, TasksMax, CPUQuotaPerSecUSec...
_UNIT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:-_.\\@")
_UNIT_NAME_MAX = 255


def available() -> None:
    """NotSupported unless systemd is PID 1 and the host is cgroup v2 (unified)."""
    if not os.path.isdir(SYSTEMD_RUNTIME_DIR):
        raise NotSupported(f"--systemd-cgroup: systemd is not running as PID 1 here ({SYSTEMD_RUNTIME_DIR} "
                           f"does not exist); use the cgroupfs driver")
    mode = host_mode()
    if mode != UNIFIED:
        raise NotSupported(f"--systemd-cgroup: the systemd driver needs a cgroup v2 (unified) host; "
                           f"{CGROUP_ROOT} is {mode}; use the cgroupfs driver")


# ------------------------------------------------------------------ names


def parse_path(path: str, container_id: str) -> tuple[str, str]:
    """linux.cgroupsPath `slice:prefix:name` -> (slice unit, scope unit).

    ""                     -> ("system.slice", "hanok-<id>.scope")
    "machine.slice:pod:c1" -> ("machine.slice", "pod-c1.scope")
    ":libpod:c1"           -> ("system.slice", "libpod-c1.scope")   an empty slice is the default
    "user.slice::c1"       -> ("user.slice", "c1.scope")             no prefix: the name alone
    """
    if not path:
        path = f"{DEFAULT_SLICE}:{DEFAULT_PREFIX}:{container_id}"
    parts = path.split(":")
    if len(parts) != 3:
        raise CgroupError(f"linux.cgroupsPath: expected \"slice:prefix:name\" for the systemd cgroup driver, "
                          f"got {path!r}")
    slice_, prefix, name = parts
    slice_ = slice_ or DEFAULT_SLICE
    expand_slice(slice_)  # validates
    if not name:
        raise CgroupError(f"linux.cgroupsPath {path!r}: the name (after the second ':') is empty")
    if name.endswith(".slice"):
        raise CgroupError(f"linux.cgroupsPath {path!r}: {name!r} names a slice; the systemd driver makes "
                          f"scopes only")
    unit = f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    bad = sorted(set(unit) - _UNIT_CHARS)
    if bad or len(unit) > _UNIT_NAME_MAX:
        why = f"characters {''.join(bad)!r} are not allowed" if bad else f"longer than {_UNIT_NAME_MAX}"
        raise CgroupError(f"linux.cgroupsPath {path!r}: unit name {unit!r} is invalid ({why})")
    return slice_, unit


def expand_slice(slice_: str) -> str:
    """A slice's cgroup path: "a-b-c.slice" -> "/a.slice/a-b.slice/a-b-c.slice" ("-.slice" is the root).

    Dashes are the hierarchy (systemd.slice(5)), so each dash-separated part must be non-empty.
    """
    if slice_ == "-.slice":
        return ""
    if not slice_.endswith(".slice") or len(slice_) == len(".slice"):
        raise CgroupError(f"linux.cgroupsPath: invalid slice name {slice_!r} (expected NAME.slice)")
    if "/" in slice_ or not set(slice_) <= _UNIT_CHARS:
        raise CgroupError(f"linux.cgroupsPath: invalid slice name {slice_!r} (bad characters)")
    path = ""
    prefix = ""
    for component in slice_[:-len(".slice")].split("-"):
        if not component:
            raise CgroupError(f"linux.cgroupsPath: invalid slice name {slice_!r} (empty part between dashes)")
        path += f"/{prefix}{component}.slice"
        prefix += component + "-"
    return path


# ------------------------------------------------------------------ properties


def cpu_mask(cpus: str) -> bytes:
    """cpuset list "0-2,5" -> the little-endian bit mask systemd takes for AllowedCPUs: b"\\x27"."""
    bits = 0
    for part in cpus.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        for cpu in range(int(low), int(high or low) + 1):
            bits |= 1 << cpu
    return bits.to_bytes(max(1, (bits.bit_length() + 7) // 8), "little")


def _uint(value: str) -> int:
    return UINT64_MAX if value == "max" else int(value)


def properties(files: dict[str, str]) -> list[tuple[str, "object"]]:
    """cgroup v2 files (resources.to_v2) -> systemd unit properties, as (name, Variant) pairs.

    CPUQuotaPerSecUSec is rounded up to whole 10 ms (systemd keeps a percentage
    and would otherwise round down below the quota asked for); the exact
    cpu.max is written to the file afterwards, as runc does.
    """
    from hanok.cgroups._dbus import Variant

    props: list[tuple[str, object]] = []
    simple = {"memory.max": "MemoryMax", "memory.low": "MemoryLow", "memory.high": "MemoryHigh",
              "memory.swap.max": "MemorySwapMax", "pids.max": "TasksMax", "cpu.weight": "CPUWeight"}
    for name, value in files.items():
        if name in simple:
            props.append((simple[name], Variant("t", _uint(value))))
        elif name == "cpu.max":
            quota, period = value.split()
            if quota == "max":
                per_sec = UINT64_MAX
            else:
                per_sec = int(quota) * 1_000_000 // int(period)
                per_sec = -(-per_sec // 10_000) * 10_000
            props.append(("CPUQuotaPerSecUSec", Variant("t", per_sec)))
            props.append(("CPUQuotaPeriodUSec", Variant("t", int(period))))
        elif name == "cpuset.cpus":
            props.append(("AllowedCPUs", Variant("ay", cpu_mask(value))))
        elif name == "cpuset.mems":
            props.append(("AllowedMemoryNodes", Variant("ay", cpu_mask(value))))
        elif name == "io.weight":
            for line in value.splitlines():
                device, _, weight = line.rpartition(" ")
                if device == "default":
                    props.append(("IOWeight", Variant("t", int(weight))))
    return props


def busctl_args(props: list[tuple[str, "object"]]) -> str:
    """The properties the way `busctl call ... 'a(sv)'` takes them: "2 MemoryMax t 1048576 PIDs au 1 42"."""
    words = [str(len(props))]
    for name, variant in props:
        sig, value = variant.signature, variant.value  # type: ignore[attr-defined]
        words += [name, sig]
        if sig == "b":
            words.append("true" if value else "false")
        elif sig.startswith("a"):
            words += [str(len(value)), *map(str, value)]
        else:
            words.append(explain.quote([str(value)]))
    return " ".join(words)


def _systemctl_value(variant: "object") -> str:
    sig, value = variant.signature, variant.value  # type: ignore[attr-defined]
    if sig == "t" and value == UINT64_MAX:
        return "infinity"
    if sig == "ay":
        return ",".join(str(i * 8 + b) for i, byte in enumerate(value) for b in range(8) if byte >> b & 1)
    return str(value)


# ------------------------------------------------------------------ the manager


class SystemdManager(V2Manager):
    """A container's cgroup as the transient scope `unit` in `slice`, on a cgroup v2 host.

    `path` is the scope's cgroup (e.g. /system.slice/hanok-abc.scope) and `dir`
    its directory; the V2Manager methods work on that directory unchanged.
    """

    def __init__(self, path: str, container_id: str, mountpoint: str | None = None):
        self.mountpoint = (mountpoint or CGROUP_ROOT).rstrip("/") or "/"
        self.slice, self.unit = parse_path(path, container_id)
        self.path = expand_slice(self.slice) + "/" + self.unit
        self.dir = self.mountpoint + self.path
        self.default = False
        self.created: list[str] = []  # systemd makes and removes the directories, not us
        self._resources: dict = {}     # limits to start the scope with (apply() before the first enter())
        # None: rebuilt for a later command (delete): the unit is the container's. False: create() was
        # called and no unit was queued yet, so a failure must not stop a same-named unit of someone else
        # (StartTransientUnit refuses with UnitExists). True: this manager queued the unit.
        self._ours: bool | None = None

    def __repr__(self) -> str:
        return f"<SystemdManager {self.unit} in {self.slice}>"

    def create(self) -> None:
        """Nothing to make yet: systemd refuses an empty scope, so the first enter() starts it."""
        self._ours = False

    def exists(self) -> bool:
        """Whether the scope's cgroup is there; never before this manager's create() has started its unit.

        So a create() that fails because a unit of that name already exists
        (UnitExists) neither writes into, kills nor stops someone else's scope.
        """
        return self._ours is not False and super().exists()

    def apply(self, resources: dict) -> None:
        """Before the scope exists: validate and keep for enter(). After: set the unit's properties, write the files."""
        files = to_v2(resources)
        if not self.exists():
            self._resources = resources
            return
        props = properties(files)
        if props:
            explain.step(f"systemctl set-property --runtime {self.unit} "
                         + " ".join(f"{name}={_systemctl_value(v)}" for name, v in props),
                         "limits as unit properties, so systemd keeps them")
            with self._bus() as bus:
                self._call(bus, "SetUnitProperties", "sba(sv)", self.unit, True, props)
        super().apply(resources)

    def enter(self, pid: int) -> None:
        """The first process starts the scope with it inside; later ones are written to cgroup.procs."""
        if self.exists():
            super().enter(pid)
            return
        self._start(pid)
        if self._resources:
            super().apply(self._resources)

    def _start(self, pid: int) -> None:
        from hanok.cgroups._dbus import Variant

        props: list[tuple[str, object]] = [
            ("Description", Variant("s", f"hanok container {self.unit[:-len('.scope')]}")),
            ("Slice", Variant("s", self.slice)),
            ("Delegate", Variant("b", True)),
            ("PIDs", Variant("au", [pid])),
            # no implicit ordering against shutdown.target and friends: the container is not a service
            ("DefaultDependencies", Variant("b", False)),
            ("MemoryAccounting", Variant("b", True)),
            ("CPUAccounting", Variant("b", True)),
            ("IOAccounting", Variant("b", True)),
            ("TasksAccounting", Variant("b", True)),
        ]
        props += properties(to_v2(self._resources)) if self._resources else []
        if explain.enabled():
            explain.step(f"busctl call {DESTINATION} {OBJECT} {MANAGER} StartTransientUnit 'ssa(sv)a(sa(sv))' "
                         f"{self.unit} replace {busctl_args(props)} 0",
                         f"transient scope for pid {pid} (like `systemd-run --scope --unit={self.unit} "
                         f"--slice={self.slice} -p Delegate=yes CMD`, for a process that already runs)")
        with self._bus() as bus:
            (job,) = self._call(bus, "StartTransientUnit", "ssa(sv)a(sa(sv))", self.unit, "replace", props, [])
            self._ours = True
            self._wait_job(bus, "StartTransientUnit", str(job))

    def destroy(self) -> None:
        """Stop the scope (systemd removes its cgroup) and forget it if it failed; a unit already gone is fine."""
        from hanok.cgroups._dbus import DBusError

        if self._ours is False:
            return  # create() failed before the unit was queued: nothing of ours to remove
        explain.step(f"systemctl stop {self.unit}; systemctl reset-failed {self.unit}", "remove the scope")
        with self._bus() as bus:
            try:
                (job,) = self._call(bus, "StopUnit", "ss", self.unit, "replace")
                self._wait_job(bus, "StopUnit", str(job))
            except DBusError as e:
                if e.name != "org.freedesktop.systemd1.NoSuchUnit":
                    raise
            try:
                self._call(bus, "ResetFailedUnit", "s", self.unit)
            except DBusError:
                pass  # not failed, or already unloaded: nothing to forget
        if os.path.isdir(self.dir):
            _io.rmdir(self.dir)  # systemd removes it when the scope stops; this is for a unit it lost

    # -------------------------------------------------------------- D-Bus

    def _bus(self) -> "Connection":
        from hanok.cgroups import _dbus

        return _dbus.connect_systemd()

    def _call(self, bus: "Connection", method: str, signature: str, *args: object) -> tuple:
        return bus.call(DESTINATION, OBJECT, MANAGER, method, signature, *args)

    def _wait_job(self, bus: "Connection", method: str, job: str) -> None:
        """Wait for JobRemoved(id, job, unit, result) of `job`; CgroupError unless the result is "done"."""

        def ours(msg: "Message") -> bool:
            return msg.member == "JobRemoved" and msg.interface == MANAGER and len(msg.body) == 4 \
                and msg.body[1] == job

        signal = bus.wait_signal(ours, f"JobRemoved for {method} {self.unit} (job {job})")
        result = signal.body[3]
        if result != "done":
            raise CgroupError(f"systemd {method} {self.unit}: job {job} finished with result {result!r} "
                              f"(see `journalctl -u {self.unit}`)")
