"""cgroups: detect the host's mode and describe its hierarchies.

The managers (v2.py, v1.py) and the resources mapping arrive with the cgroup
issue; what is here is what the runtime core needs already: knowing whether the
host is unified (cgroup v2 only), hybrid (v1 controllers plus a v2 mount at
/sys/fs/cgroup/unified, like the development machines) or legacy (v1 only), and
where each v1 hierarchy is mounted, so a container's `cgroup` mount can be
built the way runc builds it on such hosts.
"""
from __future__ import annotations

import os

CGROUP_ROOT = "/sys/fs/cgroup"

UNIFIED = "unified"
HYBRID = "hybrid"
LEGACY = "legacy"


def host_mode(root: str = CGROUP_ROOT) -> str:
    """unified, hybrid or legacy, from what is mounted under /sys/fs/cgroup.

    Only a cgroup2 root has `cgroup.controllers`: two stat calls, cheaper than
    statfs through cffi on the paths (state, kill, delete) that ask this.
    """
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return UNIFIED
    if os.path.exists(os.path.join(root, "unified", "cgroup.controllers")):
        return HYBRID
    return LEGACY


class Hierarchy:
    """One mounted cgroup hierarchy and this process's place in it."""

    __slots__ = ("mountpoint", "root", "fstype", "controllers", "path")

    def __init__(self, mountpoint: str, root: str, fstype: str, controllers: tuple[str, ...], path: str):
        self.mountpoint = mountpoint  # e.g. /sys/fs/cgroup/memory
        self.root = root              # the part of the hierarchy the mount shows (mountinfo field 4)
        self.fstype = fstype          # cgroup or cgroup2
        self.controllers = controllers  # ("memory",), ("name=systemd",), () for cgroup2
        self.path = path              # this process's cgroup, from /proc/self/cgroup

    @property
    def directory(self) -> str:
        """This process's cgroup directory on the host, as seen through the mount."""
        rel = os.path.relpath(self.path, self.root) if self.path.startswith(self.root) else self.path.lstrip("/")
        return os.path.normpath(os.path.join(self.mountpoint, rel))


def hierarchies(pid: str = "self") -> list[Hierarchy]:
    """The cgroup mounts under /sys/fs/cgroup, each with `pid`'s cgroup in it."""
    membership: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, listed, path = line.rstrip("\n").split(":", 2)
            membership[listed] = path
    found: list[Hierarchy] = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, mountpoint, root = fields[sep + 1], fields[4], fields[3]
            if fstype not in ("cgroup", "cgroup2") or not mountpoint.startswith(CGROUP_ROOT + "/"):
                continue
            if fstype == "cgroup2":
                controllers: tuple[str, ...] = ()
                path = membership.get("", "/")
            else:
                options = fields[sep + 3].split(",")
                names = [o for o in options if o.startswith("name=")]
                known = [o for o in options if o in _V1_CONTROLLERS]
                controllers = tuple(known + names)
                path = membership.get(",".join(controllers), "/")
                if path == "/" and controllers:
                    # /proc/self/cgroup lists co-mounted controllers in kernel order
                    for key, value in membership.items():
                        if set(key.split(",")) == set(controllers):
                            path = value
            found.append(Hierarchy(mountpoint, root, fstype, controllers, path))
    return found


_V1_CONTROLLERS = frozenset({"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls",
                             "blkio", "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc"})


# ---------------------------------------------------------------- managers
#
# "Which cgroup" (this module: paths) is kept apart from "what is written"
# (resources.py: pure mapping), as crun does. v1.py and v2.py hold the
# filesystem work; both import only the standard library's os/time and the
# runtime's leaf modules, so they are cheap on the create/delete hot path.

DEFAULT_PARENT = "hanok"


class Manager:
    """One container's cgroup. Same interface on cgroup v2 (V2Manager) and v1 (V1Manager).

    path      the cgroup inside its hierarchy, e.g. "/hanok/<id>"
    created   the directories create() made (deepest last); destroy() removes
              those of them that are empty, the leaf always
    """

    version = 0
    path: str
    created: list[str]

    def create(self) -> None:
        """mkdir along the path (v2: enable the controllers along the way)."""
        raise NotImplementedError

    def apply(self, resources: dict) -> None:
        """Write OCI linux.resources; CgroupError if the host lacks a controller or file."""
        raise NotImplementedError

    def enter(self, pid: int) -> None:
        raise NotImplementedError

    # Whether enter_self() is cheaper than enter(pid) here (see V1Manager.enter_self).
    can_enter_self = False

    def enter_self(self) -> None:
        """Move the calling single-threaded process in (called by a child before it execs)."""
        raise NotImplementedError

    def procs(self) -> list[int]:
        raise NotImplementedError

    def freeze(self) -> None:
        raise NotImplementedError

    def thaw(self) -> None:
        raise NotImplementedError

    def is_frozen(self) -> bool:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def destroy(self) -> None:
        raise NotImplementedError

    def exists(self) -> bool:
        raise NotImplementedError

    def stats(self) -> dict:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path}>"


def resolve(path: str, container_id: str) -> tuple[bool, str]:
    """OCI cgroupsPath -> (absolute, normalized path).

    absolute ("/a/b")  relative to the hierarchy's root
    relative ("a/b")   relative to the caller's cgroup (v2: its parent, see V2Manager)
    empty              "/hanok/<id>", at the root, so every container is found in one place
    """
    from hanok.runtime.errors import CgroupError

    if not path:
        if not container_id or "/" in container_id or container_id in (".", ".."):
            raise CgroupError(f"container id {container_id!r} cannot name a cgroup")
        return True, f"/{DEFAULT_PARENT}/{container_id}"
    if "\0" in path or "\n" in path:
        raise CgroupError(f"linux.cgroupsPath: invalid path {path!r}")
    absolute = path.startswith("/")
    norm = os.path.normpath(path)
    parts = [p for p in norm.split("/") if p]
    if not parts or (not absolute and parts[0] == ".."):
        raise CgroupError(f"linux.cgroupsPath: {path!r} does not name a cgroup below its base")
    if ".." in parts:
        raise CgroupError(f"linux.cgroupsPath: {path!r} must not contain '..'")
    return absolute, "/" + "/".join(parts)


def manager(path: str, container_id: str, systemd: bool = False) -> Manager:
    """The Manager for a container: cgroup v2 on unified hosts, v1 on hybrid and legacy ones.

    `systemd` (hanok-oci --systemd-cgroup): a transient systemd scope from a
    `slice:prefix:name` path instead; NotSupported where systemd is not PID 1
    or the host is not cgroup v2.
    """
    if systemd:
        from hanok.cgroups import systemd as systemd_driver

        systemd_driver.available()
        return systemd_driver.SystemdManager(path, container_id)
    if host_mode() == UNIFIED:
        from hanok.cgroups.v2 import V2Manager

        return V2Manager(path, container_id)
    from hanok.cgroups.v1 import V1Manager

    return V1Manager(path, container_id)


class BackgroundSetup:
    """Create and limit a container's cgroup in a thread, then warm up migration.

    Moving a process into a cgroup takes a per-cpu rwsem for writing, and the
    first writer after a quiet spell waits for an RCU grace period (~10 ms
    here) while holding cgroup_mutex; writers within the following grace
    period are quick. So, in a thread while `create` goes on: make the cgroup
    and write its limits (`wait()` returns once that is done, re-raising its
    error), then move ourselves into our own cgroup (a no-op that pays the
    grace period). By the time the init is moved in, that costs well under a
    millisecond. runc hides the same wait behind its child's start-up.
    With --explain the work is done inline, so the trace stays in order; so it
    is with `inline` (the kernel refuses a new time namespace to a process
    with a second thread: EUSERS).
    """

    def __init__(self, manager: "Manager", resources: dict, inline: bool = False, warm_up: bool = True):
        """`warm_up=False` where the init moves itself (see V1Manager.enter_self): a warm-up would
        even hold that move up, as it holds cgroup_mutex through the grace period."""
        import _thread

        from hanok.runtime import explain

        self._error: BaseException | None = None
        if inline or explain.enabled():
            manager.create()
            manager.apply(resources)
            self._done = None
            return
        self._done = _thread.allocate_lock()
        self._done.acquire()
        _thread.start_new_thread(self._run, (manager, resources, warm_up))

    def _run(self, manager: "Manager", resources: dict, warm_up: bool) -> None:
        try:
            manager.create()
            manager.apply(resources)
        except BaseException as e:  # noqa: BLE001 - handed to wait()
            self._error = e
        finally:
            self._done.release()  # type: ignore[union-attr]
        if self._error is None and warm_up:
            _move_self_in_place()

    def wait(self) -> None:
        """Block until the cgroup exists with its limits; raise what went wrong."""
        if self._done is not None:
            with self._done:
                pass
        if self._error is not None:
            raise self._error


def _move_self_in_place() -> None:
    try:
        with open("/proc/self/cgroup") as f:
            line = f.readline().rstrip("\n")
        _, controllers, path = line.split(":", 2)
        if host_mode() == UNIFIED or not controllers:
            base = CGROUP_ROOT if host_mode() == UNIFIED else os.path.join(CGROUP_ROOT, "unified")
        else:
            base = os.path.join(CGROUP_ROOT, controllers.split(",")[0].replace("name=", ""))
        fd = os.open(os.path.join(base + path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    except (OSError, ValueError):
        pass  # only an optimisation
