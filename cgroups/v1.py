"""The cgroup v1 manager, for legacy and hybrid hosts: one directory per hierarchy.

Every v1 hierarchy mounted under /sys/fs/cgroup (cpu, cpuacct, cpuset, memory,
devices, freezer, blkio, pids, ... and named ones such as name=systemd) gets
the same path, as runc does. The cgroup2 mount of a hybrid host is left alone.

v1 specifics handled here:
- a new cpuset cgroup starts with empty cpuset.cpus/mems and refuses tasks
  until they are filled: create() copies them down from the parent;
- memory.memsw.limit_in_bytes must stay >= memory.limit_in_bytes, so the two are
  written in the order that keeps that true (runc's rule);
- blkio weights live in blkio.bfq.* on kernels without CFQ;
- freezing writes FROZEN to freezer.state until it reads FROZEN;
- there is no cgroup.kill: kill() freezes, SIGKILLs every pid, thaws, repeats.
"""
from __future__ import annotations

import os

from hanok.cgroups import DEFAULT_PARENT, Hierarchy, Manager, _io, hierarchies, resolve
from hanok.cgroups.resources import setting_of, setting_of_files, to_v1
from hanok.runtime.errors import CgroupError

FREEZE_TIMEOUT = 5.0
KILL_TIMEOUT = 5.0
# where procs() reads from, first found wins
_PRIMARY = ("pids", "memory", "freezer", "cpu", "cpuacct", "cpuset", "devices", "blkio")


class V1Manager(Manager):
    """A container's cgroups on a cgroup v1 (legacy or hybrid) host.

    `hierarchy_list` defaults to the v1 hierarchies mounted under /sys/fs/cgroup
    (from /proc/self/mountinfo), each with the caller's cgroup in it.
    """

    version = 1

    def __init__(self, path: str, container_id: str, hierarchy_list: list[Hierarchy] | None = None):
        if hierarchy_list is None:
            hierarchy_list = [h for h in hierarchies() if h.fstype == "cgroup"]
        absolute, inner = resolve(path, container_id)
        self.path = inner
        self.default = not path
        self.bases: dict[str, str] = {}        # leaf directory -> the base it was joined to
        self.controllers: dict[str, str] = {}  # controller (or name=...) -> leaf directory
        for h in hierarchy_list:
            # absolute: from the hierarchy's root; relative: from the caller's cgroup in it
            base = h.mountpoint if absolute else h.directory
            leaf = base.rstrip("/") + inner
            self.bases[leaf] = base
            for c in h.controllers:
                self.controllers[c] = leaf
        if not self.bases:
            raise CgroupError("no cgroup v1 hierarchy is mounted under /sys/fs/cgroup")
        self.dirs = list(self.bases)
        primary = next((self.controllers[c] for c in _PRIMARY if c in self.controllers), self.dirs[0])
        self.primary = primary
        self.created: list[str] = []

    # -------------------------------------------------------------- create

    def create(self) -> None:
        cpuset = self.controllers.get("cpuset")
        parts = self.path.strip("/").split("/")
        for leaf, base in self.bases.items():
            for _attempt in range(5):
                try:
                    current = base
                    for part in parts:
                        parent, current = current, os.path.join(current, part)
                        made = _io.mkdir(current)
                        if made:
                            self.created.append(current)
                        if leaf == cpuset and (made or current == leaf):
                            _fill_cpuset(parent, current)
                    break
                except FileNotFoundError:
                    continue  # a concurrent destroy() removed an empty parent: walk again
            else:
                raise CgroupError(f"cannot create cgroup {leaf}: its parent keeps disappearing")

    # -------------------------------------------------------------- limits

    def apply(self, resources: dict) -> None:
        mapping = to_v1(resources)
        for controller, files in mapping.items():
            if controller not in self.controllers:
                mounted = " ".join(sorted(c for c in self.controllers if not c.startswith("name="))) or "none"
                raise CgroupError(f"{setting_of_files(files)}: needs the {controller} controller, which "
                                  f"this host does not have as cgroup v1 (mounted: {mounted})")
        for controller, files in mapping.items():
            directory = self.controllers[controller]
            if controller == "memory":
                _apply_memory(directory, files)
                continue
            for name, value in files.items():
                if controller == "blkio" and not os.path.exists(os.path.join(directory, name)):
                    bfq = "blkio.bfq." + name[len("blkio."):]
                    if os.path.exists(os.path.join(directory, bfq)):
                        name = bfq
                _io.write(os.path.join(directory, name), value, setting_of(name),
                          missing_ok=value in ("-1", "max"))

    # -------------------------------------------------------------- processes

    def enter(self, pid: int) -> None:
        for directory in self.dirs:
            _io.write(os.path.join(directory, "cgroup.procs"), str(pid), f"cgroup {directory}")

    # A thread that writes "0" to `tasks` moves only itself, and recent kernels then skip the
    # global cgroup_threadgroup_rwsem, whose write side waits for an RCU grace period: measured
    # here (kernel 6.18, 9 hierarchies) ~0.05 ms per hierarchy, against ~15 ms for the first
    # enter(pid) after a quiet spell. For a single-threaded process (a child just forked) the
    # thread is the whole process. A kernel that takes the lock anyway is no slower than enter().
    can_enter_self = True

    def enter_self(self) -> None:
        for directory in self.dirs:
            _io.write(os.path.join(directory, "tasks"), "0", f"cgroup {directory}")

    def procs(self) -> list[int]:
        return _io.pids_in(os.path.join(self.primary, "cgroup.procs"))

    def _freezer(self) -> str:
        directory = self.controllers.get("freezer")
        if directory is None:
            raise CgroupError("pausing needs the freezer controller, which this host does not mount")
        return os.path.join(directory, "freezer.state")

    def is_frozen(self) -> bool:
        directory = self.controllers.get("freezer")
        if directory is None:
            return False
        return (_io.read_or(os.path.join(directory, "freezer.state"), "") or "").strip() == "FROZEN"

    def freeze(self) -> None:
        state = self._freezer()

        def frozen() -> bool:
            text = (_io.read_or(state, "") or "").strip()
            if text == "FROZEN":
                return True
            # a freeze can stall in FREEZING (a task in an uninterruptible sleep): ask again
            _io.write(state, "FROZEN")
            return False

        _io.write(state, "FROZEN", f"cgroup {self.path}")
        if not _io.wait_for(frozen, FREEZE_TIMEOUT):
            _io.write(state, "THAWED")
            raise CgroupError(f"cgroup {self.path} did not freeze within {FREEZE_TIMEOUT:g}s")

    def thaw(self) -> None:
        state = self._freezer()
        _io.write(state, "THAWED", f"cgroup {self.path}")
        if not _io.wait_for(lambda: (_io.read_or(state, "") or "").strip() == "THAWED", FREEZE_TIMEOUT):
            raise CgroupError(f"cgroup {self.path} did not thaw within {FREEZE_TIMEOUT:g}s")

    def kill(self) -> None:
        """Freeze (so no fork slips through), SIGKILL every pid, thaw; until cgroup.procs is empty."""
        if not os.path.isdir(self.primary):
            return
        freezable = "freezer" in self.controllers
        deadline_rounds = int(KILL_TIMEOUT / 0.25)
        for _round in range(deadline_rounds):
            if not self._subtree_pids():
                return
            if freezable:
                try:
                    self.freeze()
                except CgroupError:
                    freezable = False
            for directory, _dirs, _files in os.walk(self.primary):
                _io.kill_all(os.path.join(directory, "cgroup.procs"))
            if freezable:
                self.thaw()
            _io.wait_for(lambda: not self._subtree_pids(), 0.25)
        raise CgroupError(f"processes of cgroup {self.path} are still alive after SIGKILL: "
                          f"{' '.join(map(str, self._subtree_pids()[:10]))}")

    def _subtree_pids(self) -> list[int]:
        pids: list[int] = []
        for directory, _dirs, _files in os.walk(self.primary):
            pids += _io.pids_in(os.path.join(directory, "cgroup.procs"))
        return pids

    # -------------------------------------------------------------- removal

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.dirs)

    def destroy(self) -> None:
        """Remove the cgroup in every hierarchy (leaf first), then parents made here and hanok/ if empty."""
        error: CgroupError | None = None
        for directory in self.dirs:
            try:
                _io.rmdir(directory)
            except CgroupError as e:
                error = error or e
        for directory in reversed(self.created):
            if directory not in self.bases:
                _io.rmdir_if_empty(directory)
        if self.default:
            for base in self.bases.values():
                _io.rmdir_if_empty(os.path.join(base, DEFAULT_PARENT))
        self.created = []
        if error is not None:
            raise error

    # -------------------------------------------------------------- numbers

    def stats(self) -> dict:
        from hanok.cgroups import stats

        return stats.v1(self.controllers)


def _fill_cpuset(parent: str, directory: str) -> None:
    """Copy cpuset.cpus/mems from the parent into a cgroup whose sets are empty."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        mine = os.path.join(directory, name)
        if (_io.read_or(mine, "") or "").strip():
            continue
        theirs = (_io.read_or(os.path.join(parent, name), "") or "").strip()
        if theirs:
            _io.write(mine, theirs, f"cpuset of {directory}")


def _apply_memory(directory: str, files: dict[str, str]) -> None:
    """memory.memsw.limit_in_bytes >= memory.limit_in_bytes at every moment (runc's order)."""
    limit_file, swap_file = "memory.limit_in_bytes", "memory.memsw.limit_in_bytes"
    order = list(files)
    if limit_file in files and swap_file in files:
        swap = int(files[swap_file])
        current = _io.read_or(os.path.join(directory, limit_file), "") or ""
        current_limit = int(current) if current.strip().isdigit() else -1
        if swap == -1 or (current_limit != -1 and current_limit < swap):
            order.remove(swap_file)
            order.insert(order.index(limit_file), swap_file)
    for name in order:
        value = files[name]
        _io.write(os.path.join(directory, name), value, setting_of(name), missing_ok=value in ("-1", "max"))
