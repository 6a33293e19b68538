"""The container's filesystem view: mounts, /dev, masked and read-only paths, pivot_root.

Runs inside the container's new mount namespace, in the init process, before
the user's program starts. Every mount destination is resolved inside the
rootfs the way a chroot would resolve it (symlinks are followed relative to the
rootfs, never out of it), then opened O_PATH and mounted through
/proc/self/fd/N, so a symlink swapped in after the check cannot redirect the
mount onto the host.
"""
from __future__ import annotations

import os
import stat

from hanok.runtime import explain
from hanok.runtime import syscalls as sc
from hanok.runtime.errors import HanokError, SpecError
from hanok.runtime.spec import MOUNT_FLAGS, Config, Mount

# name, major, minor of the devices every container gets (runtime-spec "Default Devices")
DEFAULT_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
                   ("urandom", 1, 9), ("tty", 5, 0))
DEV_LINKS = (("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"), ("/proc/self/fd/1", "stdout"),
             ("/proc/self/fd/2", "stderr"), ("pts/ptmx", "ptmx"))
_MAX_SYMLINKS = 40
PROPAGATION_NAMES = (("private", sc.MS_PRIVATE), ("slave", sc.MS_SLAVE), ("shared", sc.MS_SHARED),
                     ("unbindable", sc.MS_UNBINDABLE))


class Kernel:
    """The privileged calls this module makes, in one replaceable place.

    Borrowed from youki: unit tests swap `kernel` for a recording stand-in, so
    the mount logic (order, flags, where each destination resolves) is tested
    without root, while everything else (mkdir, symlink resolution, O_PATH
    checks) runs for real on a temporary directory.
    """

    mount = staticmethod(sc.mount)
    umount2 = staticmethod(sc.umount2)
    pivot_root = staticmethod(sc.pivot_root)
    chroot = staticmethod(os.chroot)
    mknod = staticmethod(os.mknod)
    chown = staticmethod(os.chown)
    fs_type = staticmethod(sc.fs_type)


kernel = Kernel()


def _flag_words(flags: int) -> str:
    words = [name for name, (clear, bit) in MOUNT_FLAGS.items() if not clear and flags & bit and
             bit not in (sc.MS_BIND, sc.MS_BIND | sc.MS_REC, sc.MS_REMOUNT)]
    return ",".join(words)


def _trace_mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    if not explain.enabled():
        return
    if flags & sc.MS_MOVE:
        explain.step(f"mount --move {source} {target}")
    elif flags & (sc.MS_PRIVATE | sc.MS_SLAVE | sc.MS_SHARED | sc.MS_UNBINDABLE):
        kind = next(k for k, v in PROPAGATION_NAMES if flags & v)
        explain.step(f"mount --make-{'r' if flags & sc.MS_REC else ''}{kind} {target}")
    elif flags & sc.MS_REMOUNT:
        opts = ",".join(filter(None, ["remount", "bind" if flags & sc.MS_BIND else "", _flag_words(flags)]))
        explain.step(f"mount -o {opts} {target}")
    elif flags & sc.MS_BIND:
        explain.step(f"mount --{'r' if flags & sc.MS_REC else ''}bind {source} {target}")
    else:
        opts = ",".join(filter(None, [_flag_words(flags), data or ""]))
        explain.step(f"mount -t {fstype} {'-o ' + opts + ' ' if opts else ''}{source or 'none'} {target}")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None,
          shown_target: str | None = None) -> None:
    """mount(2) reported to the teaching trace (as `shown_target` when mounting via an fd)."""
    _trace_mount(source, shown_target or target, fstype, flags, data)
    kernel.mount(source, target, fstype, flags, data)


def resolve_in_root(root: str, path: str) -> str:
    """Resolve `path` as if `root` were "/": symlinks (absolute or relative) and
    ".." never leave root. Missing trailing components are kept as they are."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            # Missing (it will be created as a directory): keep going, a later
            # ".." may climb back to components that exist and are symlinks.
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_SYMLINKS:
                raise SpecError(f"{path}: too many levels of symbolic links inside the rootfs")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return _normalise(root, resolved)


def _normalise(root: str, parts: list[str]) -> str:
    clean: list[str] = []
    for p in parts:
        if p == "..":
            if clean:
                clean.pop()
        elif p and p != ".":
            clean.append(p)
    return os.path.join(root, *clean) if clean else root


def _ensure_target(root: str, dest: str, is_dir: bool) -> str:
    """Create the mount point inside root (directories or an empty file)."""
    path = resolve_in_root(root, dest)
    if is_dir:
        _mkdirs_in_root(root, path)
    elif not os.path.lexists(path):
        _mkdirs_in_root(root, os.path.dirname(path))
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644))
    return path


def _mkdirs_in_root(root: str, path: str) -> None:
    rel = os.path.relpath(path, root)
    if rel == ".":
        return
    current = root
    for part in rel.split("/"):
        current = os.path.join(current, part)
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            if os.path.islink(current):
                # appeared since resolve_in_root: refuse rather than follow it out
                raise SpecError(f"{current}: mount point turned into a symlink") from None


def _open_target(root: str, path: str) -> int:
    """O_PATH fd of the mount point, checked to still be inside root."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    real = os.readlink(f"/proc/self/fd/{fd}")
    if real != root and not real.startswith(root.rstrip("/") + "/"):
        os.close(fd)
        raise SpecError(f"mount point {path} escapes the rootfs (now {real})")
    return fd


def _locked_flags(path: str) -> int:
    """Flags a bind remount must repeat (the kernel refuses to drop them in a user namespace)."""
    f = os.statvfs(path).f_flag
    out = 0
    for st_bit, ms_bit in ((sc.ST_NOSUID, sc.MS_NOSUID), (sc.ST_NODEV, sc.MS_NODEV),
                           (sc.ST_NOEXEC, sc.MS_NOEXEC), (sc.ST_NOATIME, sc.MS_NOATIME),
                           (sc.ST_NODIRATIME, sc.MS_NODIRATIME), (sc.ST_RELATIME, sc.MS_RELATIME),
                           (sc.ST_RDONLY, sc.MS_RDONLY)):
        if f & st_bit:
            out |= ms_bit
    return out


def prepare(cfg: Config, in_userns: bool) -> None:
    """Everything before pivot_root: propagation, the rootfs bind, mounts, /dev."""
    root = cfg.rootfs
    mount(None, "/", None, cfg.rootfs_propagation)
    mount(root, root, None, sc.MS_BIND | sc.MS_REC)
    dev_is_mounted = False
    for m in cfg.mounts:
        mount_one(cfg, m, in_userns)
        if m.destination == "/dev":
            dev_is_mounted = True
    if dev_is_mounted or not os.path.isdir(os.path.join(root, "dev")) or not os.listdir(os.path.join(root, "dev")):
        create_devices(cfg, in_userns)
    elif cfg.devices:
        create_devices(cfg, in_userns, defaults=False)


def mount_one(cfg: Config, m: Mount, in_userns: bool) -> None:
    root = cfg.rootfs
    if m.is_bind:
        source_is_dir = os.path.isdir(m.source or "")
        path = _ensure_target(root, m.destination, source_is_dir)
        shown = os.path.join(root, m.destination.lstrip("/"))
        fd = _open_target(root, path)
        try:
            mount(m.source, f"/proc/self/fd/{fd}", None, sc.MS_BIND | (m.flags & sc.MS_REC), shown_target=shown)
        finally:
            os.close(fd)
        extra = m.flags & ~(sc.MS_BIND | sc.MS_REC)
        if extra or m.propagation:
            # Bind mounts ignore flags on the first call: remount to apply ro,
            # nosuid, ... An fd opened before the mount names the directory
            # *under* it, so open the new mount's root afresh.
            fd = _open_target(root, path)
            try:
                target = f"/proc/self/fd/{fd}"
                if extra:
                    mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | extra | _locked_flags(target),
                          shown_target=shown)
                if m.propagation:
                    mount(None, target, None, m.propagation, shown_target=shown)
            finally:
                os.close(fd)
        return

    path = _ensure_target(root, m.destination, True)
    shown = os.path.join(root, m.destination.lstrip("/"))
    fstype = m.type
    if fstype == "cgroup":
        from hanok import cgroups

        if cgroups.host_mode() != cgroups.UNIFIED:
            _mount_cgroup_v1_layout(root, m, path, shown)
            return
        fstype = "cgroup2"
    try:
        fd = _open_target(root, path)
        try:
            mount(m.source or fstype, f"/proc/self/fd/{fd}", fstype, m.flags, m.data or None, shown_target=shown)
        except PermissionError:
            if fstype != "sysfs" or not (in_userns or "network" not in cfg.namespaces):
                raise
            # sysfs can only be mounted by the owner of the network namespace:
            # fall back to the host's, read-only, as runc does
            mount("/sys", f"/proc/self/fd/{fd}", None, sc.MS_BIND | sc.MS_REC, shown_target=shown)
            _remount_top(root, path, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY, shown)
        finally:
            os.close(fd)
        if m.propagation:
            _remount_top(root, path, m.propagation, shown)
    except OSError as e:
        raise HanokError(f"mount {m.destination} ({m.type}): {e.strerror}") from None
    if m.destination == "/proc" and kernel.fs_type(path) != sc.PROC_SUPER_MAGIC:
        raise SpecError("/proc is not a procfs after mounting it; refusing to continue")


def _remount_top(root: str, path: str, flags: int, shown: str) -> None:
    """Change flags or propagation of the mount now on top of `path`."""
    fd = _open_target(root, path)
    try:
        target = f"/proc/self/fd/{fd}"
        if flags & sc.MS_REMOUNT:
            flags |= _locked_flags(target)
        mount(None, target, None, flags, shown_target=shown)
    finally:
        os.close(fd)


def _mount_cgroup_v1_layout(root: str, m: Mount, path: str, shown: str) -> None:
    """A `cgroup` mount on a legacy or hybrid host, built the way runc builds it.

    A tmpfs holds one bind mount per hierarchy (cpu, memory, ..., unified) of
    the process's own cgroup, never the host's whole tree, read-only as
    configured. (Mounting cgroup2 instead would also cost ~10 ms at container
    exit, when the kernel tears that superblock down.)
    """
    from hanok import cgroups

    extra = m.flags & (sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    fd = _open_target(root, path)
    try:
        mount("tmpfs", f"/proc/self/fd/{fd}", "tmpfs", extra, "mode=755", shown_target=shown)
    finally:
        os.close(fd)
    for hierarchy in cgroups.hierarchies():
        name = os.path.basename(hierarchy.mountpoint)
        sub = _ensure_target(root, os.path.join(m.destination, name), True)
        sub_shown = os.path.join(shown, name)
        fd = _open_target(root, sub)
        try:
            mount(hierarchy.directory, f"/proc/self/fd/{fd}", None, sc.MS_BIND | sc.MS_REC, shown_target=sub_shown)
        finally:
            os.close(fd)
        _remount_top(root, sub, sc.MS_BIND | sc.MS_REMOUNT | extra | (m.flags & sc.MS_RDONLY), sub_shown)
    if m.flags & sc.MS_RDONLY:
        _remount_top(root, path, sc.MS_REMOUNT | sc.MS_RDONLY | extra, shown)


def create_devices(cfg: Config, in_userns: bool, defaults: bool = True) -> None:
    """Default device nodes, config devices, and the /dev symlinks.

    mknod is not allowed in a user namespace: there the host's node is bind
    mounted onto an empty file instead, as runc does.
    """
    dev = resolve_in_root(cfg.rootfs, "/dev")
    _mkdirs_in_root(cfg.rootfs, dev)
    wanted: dict[str, tuple[str, int, int, int, int, int]] = {}
    if defaults:
        for name, major, minor in DEFAULT_DEVICES:
            wanted[f"/dev/{name}"] = ("c", major, minor, 0o666, 0, 0)
    for d in cfg.devices:
        wanted[os.path.normpath(d["path"])] = (d["type"], d.get("major", 0), d.get("minor", 0),
                                               d.get("fileMode", 0o666), d.get("uid", 0), d.get("gid", 0))
    old_umask = os.umask(0)
    try:
        for path, (kind, major, minor, mode, uid, gid) in wanted.items():
            target = resolve_in_root(cfg.rootfs, path)
            _mkdirs_in_root(cfg.rootfs, os.path.dirname(target))
            if os.path.lexists(target):
                os.unlink(target)
            if in_userns:
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644))
                mount(path, target, None, sc.MS_BIND)
                continue
            type_bits = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[kind]
            explain.step(f"mknod -m {mode & 0o7777:o} {target} {'p' if kind == 'p' else kind + f' {major} {minor}'}")
            kernel.mknod(target, type_bits | (mode & 0o7777), os.makedev(major, minor))
            kernel.chown(target, uid, gid)
    finally:
        os.umask(old_umask)
    if defaults:
        for src, name in DEV_LINKS:
            link = os.path.join(dev, name)
            if not os.path.lexists(link):
                os.symlink(src, link)
        if os.path.exists("/proc/kcore") and not os.path.lexists(os.path.join(dev, "core")):
            os.symlink("/proc/kcore", os.path.join(dev, "core"))


def pivot(cfg: Config, no_pivot: bool) -> None:
    """Make the rootfs "/" and detach the host's tree from this mount namespace."""
    root = cfg.rootfs
    os.chdir(root)
    if no_pivot:
        mount(root, "/", None, sc.MS_MOVE)
        explain.step(f"chroot {root}")
        kernel.chroot(".")
        os.chdir("/")
        return
    explain.step(f"cd {root} && pivot_root . .", "the rootfs becomes /, the old root stacks on top")
    kernel.pivot_root(".", ".")
    # The old root now sits on top of "/": make sure its unmount cannot propagate
    # to the host, then lazily detach it. Nothing of the host remains reachable.
    mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC, shown_target="/")
    explain.step("umount -l /", "detach the old root (the host's tree)")
    kernel.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def finish(cfg: Config) -> None:
    """After pivot_root: masked and read-only paths, read-only root."""
    if (cfg.masked_paths or cfg.readonly_paths) and os.path.isdir("/proc"):
        check_proc("/proc")
    for path in cfg.masked_paths:
        mask_path(path)
    for path in cfg.readonly_paths:
        readonly_path(path)
    if cfg.readonly_root:
        mount(None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | _locked_flags("/"))


def check_proc(path: str) -> None:
    """Refuse to write through a /proc that is not the kernel's procfs."""
    try:
        kind = kernel.fs_type(path)
    except OSError:
        return
    if kind != sc.PROC_SUPER_MAGIC:
        raise SpecError(f"{path} is not a procfs (filesystem type {kind:#x}); refusing to use it")


def mask_path(path: str) -> None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISDIR(st.st_mode):
        mount("tmpfs", path, "tmpfs", sc.MS_RDONLY, None)
    else:
        mount("/dev/null", path, None, sc.MS_BIND)


def readonly_path(path: str) -> None:
    if not os.path.exists(path):
        return
    mount(path, path, None, sc.MS_BIND | sc.MS_REC)
    mount(None, path, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_REC | _locked_flags(path))
