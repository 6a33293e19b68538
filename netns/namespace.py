"""Named network namespaces: `<run_dir>/netns/<name>` bind mounts, like `ip netns add`.

A namespace lives as long as something holds it; binding /proc/thread-self/ns/net
onto a file keeps it alive without any process, so a pod sandbox's namespace
outlives its containers and containers can join it by path.

How a namespace is made without moving the caller: unshare(CLONE_NEWNET) and
setns(CLONE_NEWNET) act on the calling thread only, so the calling thread
unshares, binds its new namespace onto the file, opens a netlink socket there
(to bring lo up later), and setns()es back to the namespace it came from. That
costs microseconds, where forking a child costs milliseconds and is risky in a
process that already runs threads (hanok creates cgroups in one). Other threads
never see the switch; the only state changed is the calling thread's, and it is
restored in a `finally`.

The netns directory is made a shared mount of itself first (as iproute2 does)
so namespace mounts made later propagate to mount namespaces cloned from this
one, and their unmounts too: otherwise a container holding a copy of /run
would keep every namespace alive after `remove`.
"""
from __future__ import annotations

import errno
import os

from hanok.runtime import explain, syscalls
from hanok.runtime.errors import Exists, InvalidArgument, NetError

NSFS_MAGIC = 0x6E736673


def _dir(run_dir: str) -> str:
    return os.path.join(run_dir, "netns")


def path(run_dir: str, name: str) -> str:
    """Where the namespace called `name` is (or would be) bound."""
    if not name or "/" in name or name in (".", ".."):
        raise InvalidArgument(f"bad network namespace name {name!r}")
    return os.path.join(_dir(run_dir), name)


def exists(run_dir: str, name: str) -> bool:
    """True when `name` is a bound network namespace (not a leftover empty file)."""
    try:
        return syscalls.fs_type(path(run_dir, name)) == NSFS_MAGIC
    except OSError:
        return False


def list_names(run_dir: str) -> list[str]:
    """Names of the namespace files under run_dir, sorted: bound ones and crash leftovers alike."""
    try:
        return sorted(os.listdir(_dir(run_dir)))
    except FileNotFoundError:
        return []


def make_dir_shared(netns_dir: str) -> None:
    """mount --make-shared DIR, bind-mounting DIR on itself first if it is no mount point."""
    os.makedirs(netns_dir, mode=0o755, exist_ok=True)
    try:
        syscalls.mount("none", netns_dir, None, syscalls.MS_SHARED | syscalls.MS_REC)
        return
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    # Not a mount point yet. Two processes may get here at once: a lock keeps
    # them from stacking two self bind mounts.
    import fcntl

    lock_fd = os.open(netns_dir + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            syscalls.mount("none", netns_dir, None, syscalls.MS_SHARED | syscalls.MS_REC)
            return
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
        explain.step(f"mount --bind {netns_dir} {netns_dir} && mount --make-shared {netns_dir}",
                     "namespace mounts made here propagate, as with `ip netns`")
        syscalls.mount(netns_dir, netns_dir, None, syscalls.MS_BIND | syscalls.MS_REC)
        syscalls.mount("none", netns_dir, None, syscalls.MS_SHARED | syscalls.MS_REC)
    finally:
        os.close(lock_fd)


def create(run_dir: str, name: str) -> str:
    """Make a new network namespace bound at <run_dir>/netns/<name> with lo up; return its path.

    Raises Exists when a namespace is already bound there. An empty file left by
    a crash between creating the file and binding it is reused.
    """
    target = path(run_dir, name)
    make_dir_shared(_dir(run_dir))
    try:
        os.close(os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
    except FileExistsError:
        if exists(run_dir, name):
            raise Exists(f"network namespace {target} already exists") from None
    explain.step(f"unshare --net={target} true && nsenter --net={target} ip link set lo up",
                 "a network namespace that lives without a process (like `ip netns add`)")
    import _socket

    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.unshare(syscalls.CLONE_NEWNET)
        try:
            syscalls.mount("/proc/thread-self/ns/net", target, None, syscalls.MS_BIND)
            sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)  # lives in the new namespace
        finally:
            syscalls.setns(home, syscalls.CLONE_NEWNET)
    except OSError as e:
        _unbind(target)
        raise NetError(f"cannot create network namespace {target}: {e.strerror}") from e
    finally:
        os.close(home)
    try:
        try:
            _loopback_up(sock.fileno())
        finally:
            sock.close()
    except OSError as e:
        _unbind(target)
        raise NetError(f"cannot bring lo up in {target}: {e.strerror}") from e
    return target


_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = "16sH22x"  # struct ifreq: the name, then ifr_flags in a 24-byte union


def _loopback_up(sock_fd: int) -> None:
    """`ip link set lo up` in the socket's namespace, through the SIOCSIFFLAGS ioctl.

    Not netlink on purpose: this is the only link change a namespace without a
    bridge needs (`--network none`, pods with no network), and loading
    pyroute2's message classes for it would cost ~20 ms per container.
    """
    import fcntl
    import struct

    request = struct.pack(_IFREQ, b"lo", 0)
    flags = struct.unpack(_IFREQ, fcntl.ioctl(sock_fd, _SIOCGIFFLAGS, request))[1]
    fcntl.ioctl(sock_fd, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def _unbind(target: str) -> None:
    """Unmount (if bound) and unlink the namespace file; missing is fine."""
    try:
        syscalls.umount2(target, syscalls.MNT_DETACH)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    try:
        os.unlink(target)
    except FileNotFoundError:
        pass


def remove(run_dir: str, name: str) -> None:
    """ip netns delete NAME: unmount and unlink; a namespace that is gone already is fine."""
    target = path(run_dir, name)
    if not os.path.lexists(target):
        return
    explain.step(f"umount {target} && rm {target}", "drop the bind mount that kept the namespace alive")
    try:
        _unbind(target)
    except OSError as e:
        raise NetError(f"cannot remove network namespace {target}: {e.strerror}") from e
