"""The cgroup v2 manager: one directory under the unified hierarchy.

Follows Documentation/admin-guide/cgroup-v2.rst:
- a controller is usable in a cgroup only if its parent lists it in
  cgroup.subtree_control, so create() enables the available controllers
  ("+cpu +memory ...") in every ancestor down to the leaf's parent;
- no internal processes: a non-root cgroup with processes cannot enable
  controllers for its children, hence relative cgroupsPaths are placed next to
  the caller's cgroup (under its parent), as runc does;
- cgroup.freeze (5.2+) freezes the subtree; cgroup.events says "frozen 1" once done;
- cgroup.kill (5.14+) SIGKILLs every process in the subtree;
- there are no devices.* files: device rules become an eBPF program attached
  to the cgroup (devices_bpf.py);
- a cgroup can be removed (rmdir) once it has no live processes and no children.
"""
from __future__ import annotations

import os

from hanok.cgroups import CGROUP_ROOT, DEFAULT_PARENT, Manager, _io, resolve
from hanok.cgroups.resources import controller_of, device_rules, setting_of, to_v2
from hanok.runtime.errors import CgroupError

FREEZE_TIMEOUT = 5.0
KILL_TIMEOUT = 5.0


def own_cgroup(pid: str = "self") -> str:
    """The caller's cgroup v2 path (the "0::" line of /proc/<pid>/cgroup)."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip() or "/"
    return "/"


class V2Manager(Manager):
    """A container's cgroup on a cgroup v2 host.

    `mountpoint` is the cgroup2 mount (default /sys/fs/cgroup); tests point it
    at a directory imitating one. `own` is the caller's cgroup, read from
    /proc/self/cgroup when a relative path needs it.
    """

    version = 2

    def __init__(self, path: str, container_id: str, mountpoint: str | None = None, own: str | None = None):
        self.mountpoint = (mountpoint or CGROUP_ROOT).rstrip("/") or "/"
        absolute, inner = resolve(path, container_id)
        if not absolute:
            base = own if own is not None else own_cgroup()
            if base != "/":
                # the caller's own cgroup most likely holds processes (its own,
                # at least): its parent is where siblings with controllers can go
                base = os.path.dirname(base.rstrip("/")) or "/"
            inner = (base.rstrip("/") + inner) if base != "/" else inner
        self.path = inner
        self.dir = self.mountpoint + inner
        self.default = not path
        self.created: list[str] = []

    # -------------------------------------------------------------- create

    def create(self) -> None:
        parts = self.path.strip("/").split("/")
        for _attempt in range(5):
            try:
                current = self.mountpoint
                for part in parts:
                    self._enable_controllers(current)
                    current = os.path.join(current, part)
                    if _io.mkdir(current):
                        self.created.append(current)
                return
            except FileNotFoundError:
                # a concurrent destroy() removed an empty parent (e.g. hanok/) between
                # our mkdirs: walk the path again
                continue
        raise CgroupError(f"cannot create cgroup {self.dir}: its parent keeps disappearing")

    def _enable_controllers(self, directory: str) -> None:
        """Enable in `directory`'s subtree_control every controller it has but does not pass down."""
        available = _io.read_or(os.path.join(directory, "cgroup.controllers"))
        if available is None:
            if not os.path.isdir(directory):
                raise FileNotFoundError(directory)
            raise CgroupError(f"{directory} is not a cgroup v2 directory (no cgroup.controllers)")
        control = os.path.join(directory, "cgroup.subtree_control")
        enabled = set((_io.read_or(control, "") or "").split())
        missing = [c for c in available.split() if c not in enabled]
        if not missing:
            return
        try:
            _io.write(control, " ".join("+" + c for c in missing))
        except CgroupError:
            # one refused controller fails the whole write: enable what can be,
            # apply() names whatever is still missing when a limit needs it
            for c in missing:
                try:
                    _io.write(control, "+" + c)
                except CgroupError:
                    pass

    # -------------------------------------------------------------- limits

    def controllers(self) -> set[str]:
        """The controllers usable in this cgroup (its cgroup.controllers)."""
        return set((_io.read_or(os.path.join(self.dir, "cgroup.controllers"), "") or "").split())

    def apply(self, resources: dict) -> None:
        """Write the limits, then enforce the device rules with an eBPF program (replacing the previous one).

        No device rules leave device access as it is, as cgroup v1 leaves devices.list.
        """
        files = to_v2(resources)
        if files:
            self._write(files)
        rules = device_rules(resources)
        if rules:
            from hanok.cgroups import devices_bpf

            devices_bpf.install(self.dir, rules)

    def _write(self, files: dict[str, str]) -> None:
        needed = {controller_of(name) for name in files}
        available = self.controllers()
        if not needed <= available:
            # a concurrent create may have re-made a parent without its subtree_control yet
            self._enable_path()
            available = self.controllers()
        for name in files:
            controller = controller_of(name)
            if controller not in available:
                have = " ".join(sorted(available)) or "none"
                raise CgroupError(f"{setting_of(name)}: needs the {controller} controller, which is not "
                                  f"available in {self.dir} (available: {have})")
        for name, value in files.items():
            _io.write(os.path.join(self.dir, name), value, setting_of(name), missing_ok=value == "max")

    def _enable_path(self) -> None:
        current = self.mountpoint
        for part in self.path.strip("/").split("/"):
            try:
                self._enable_controllers(current)
            except (FileNotFoundError, CgroupError):
                return
            current = os.path.join(current, part)

    # -------------------------------------------------------------- processes

    def enter(self, pid: int) -> None:
        _io.write(os.path.join(self.dir, "cgroup.procs"), str(pid), f"cgroup {self.path}")

    def procs(self) -> list[int]:
        return _io.pids_in(os.path.join(self.dir, "cgroup.procs"))

    def _events(self) -> dict[str, str]:
        text = _io.read_or(os.path.join(self.dir, "cgroup.events"), "") or ""
        out = {}
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            out[key] = value.strip()
        return out

    def is_frozen(self) -> bool:
        return self._events().get("frozen") == "1"

    def populated(self) -> bool:
        return self._events().get("populated") == "1"

    def freeze(self) -> None:
        control = os.path.join(self.dir, "cgroup.freeze")
        if not os.path.exists(control):
            raise CgroupError(f"cannot freeze {self.dir}: no cgroup.freeze (needs Linux 5.2 or later)")
        _io.write(control, "1", f"cgroup {self.path}")
        if not _io.wait_for(self.is_frozen, FREEZE_TIMEOUT):
            _io.write(control, "0")
            raise CgroupError(f"cgroup {self.path} did not freeze within {FREEZE_TIMEOUT:g}s")

    def thaw(self) -> None:
        control = os.path.join(self.dir, "cgroup.freeze")
        _io.write(control, "0", f"cgroup {self.path}")
        if not _io.wait_for(lambda: not self.is_frozen(), FREEZE_TIMEOUT):
            raise CgroupError(f"cgroup {self.path} did not thaw within {FREEZE_TIMEOUT:g}s")

    def kill(self) -> None:
        """SIGKILL every process in the subtree and wait until it is empty."""
        if not os.path.isdir(self.dir):
            return
        if not _io.write(os.path.join(self.dir, "cgroup.kill"), "1", f"cgroup {self.path}", missing_ok=True):
            self._kill_by_pid()
        if not _io.wait_for(lambda: not self.populated(), KILL_TIMEOUT):
            raise CgroupError(f"processes of cgroup {self.path} are still alive after SIGKILL: "
                              f"{' '.join(map(str, self.procs()[:10]))}")

    def _kill_by_pid(self) -> None:
        """Before Linux 5.14: freeze (no forks slip through), SIGKILL each pid, thaw; repeat."""
        freezable = os.path.exists(os.path.join(self.dir, "cgroup.freeze"))
        for _round in range(20):
            if freezable:
                try:
                    self.freeze()
                except CgroupError:
                    freezable = False
            killed = []
            for directory, _dirs, _files in os.walk(self.dir):
                killed += _io.kill_all(os.path.join(directory, "cgroup.procs"))
            if freezable:
                self.thaw()
            if not killed or _io.wait_for(lambda: not self.populated(), 0.5):
                return

    # -------------------------------------------------------------- removal

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    def destroy(self) -> None:
        """Remove the cgroup (leaf first), then the parents this manager made and hanok/ if empty.

        The kernel detaches and frees the device program with the cgroup: no bpf(2) call here.
        """
        _io.rmdir(self.dir)
        for directory in reversed(self.created):
            if directory != self.dir:
                _io.rmdir_if_empty(directory)
        if self.default:
            _io.rmdir_if_empty(os.path.join(self.mountpoint, DEFAULT_PARENT))
        self.created = []

    # -------------------------------------------------------------- numbers

    def stats(self) -> dict:
        from hanok.cgroups import stats

        return stats.v2(self.dir)
