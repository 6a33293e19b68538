"""Thin, typed wrappers over the kernel calls Python's os module lacks.

Bindings come from cffi in out-of-line ABI mode (built by setup.py into
_syscalls_cffi.py); a source tree that was never built parses the cdefs in-line
instead, which is slower but still correct. Every wrapper raises OSError with
errno and the path, like the os module does, so callers handle one error type.
Leaf module: imports nothing of hanok except its own generated bindings.
"""
import errno
import os
import sys

try:
    from hanok.runtime._syscalls_cffi import ffi
except ImportError:  # running from an unbuilt checkout
    from hanok.runtime._syscalls_build import ffibuilder as ffi

libc = ffi.dlopen("libc.so.6")

# clone/unshare flags (linux/sched.h)
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount flags (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MNT_DETACH = 2

# statvfs f_flag bits that a bind remount must keep (locked in user namespaces)
ST_RDONLY = 1
ST_NOSUID = 2
ST_NODEV = 4
ST_NOEXEC = 8
ST_NOATIME = 1024
ST_NODIRATIME = 2048
ST_RELATIME = 4096

# prctl options (linux/prctl.h)
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

PROC_SUPER_MAGIC = 0x9FA0
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# syscall numbers that glibc 2.36 has no wrapper for
_NR = {
    "x86_64": {"pivot_root": 155, "keyctl": 250, "seccomp": 317},
    "aarch64": {"pivot_root": 41, "keyctl": 219, "seccomp": 277},
}[os.uname().machine]
KEYCTL_JOIN_SESSION_KEYRING = 1

# seccomp(2) (linux/seccomp.h)
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_FILTER_FLAG_LOG = 2
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 4
SECCOMP_FILTER_FLAG_TSYNC_ESRCH = 16  # Linux 5.7: a failed TSYNC returns ESRCH, not a thread id
BPF_INSTRUCTION_SIZE = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k
BPF_MAXINSNS = 4096  # the kernel refuses longer classic BPF programs


def _check(ret: int, *paths: str) -> int:
    if ret == -1:
        err = ffi.errno
        raise OSError(err, os.strerror(err), *paths[:2])
    return ret


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(libc.mount(
        source.encode() if source is not None else ffi.NULL,
        target.encode(),
        fstype.encode() if fstype is not None else ffi.NULL,
        flags,
        data.encode() if data else ffi.NULL,
    ), target)


def umount2(target: str, flags: int = 0) -> None:
    _check(libc.umount2(target.encode(), flags), target)


def unshare(flags: int) -> None:
    _check(libc.unshare(flags))


def setns(fd: int, nstype: int = 0) -> None:
    _check(libc.setns(fd, nstype))


def pivot_root(new_root: str, put_old: str) -> None:
    _check(libc.syscall(_NR["pivot_root"], ffi.new("char[]", new_root.encode()),
                        ffi.new("char[]", put_old.encode())), new_root)


def join_session_keyring(name: str | None = None) -> None:
    """Give the process its own session keyring (runc does so unless --no-new-keyring)."""
    arg = ffi.new("char[]", name.encode()) if name else ffi.cast("char *", 0)
    _check(libc.syscall(_NR["keyctl"], ffi.cast("long", KEYCTL_JOIN_SESSION_KEYRING), arg))


class SockFprog:
    """A `struct sock_fprog` for a classic BPF program, in memory owned by this object.

    Built ahead of time (in the parent, while the host's files are visible) so
    installing the filter late in the container's init is a single syscall
    with nothing left to allocate or parse. 64-bit layout only: unsigned short
    len, 6 bytes of padding, then the pointer to the struct sock_filter array.
    """

    def __init__(self, program: bytes):
        if not program or len(program) % BPF_INSTRUCTION_SIZE:
            raise ValueError(f"a BPF program is a non-empty multiple of {BPF_INSTRUCTION_SIZE} bytes,"
                             f" got {len(program)}")
        self.instructions = len(program) // BPF_INSTRUCTION_SIZE
        self._filter = ffi.new("char[]", program)  # referenced by _struct: must live as long
        address = int(ffi.cast("uintptr_t", self._filter))
        self._struct = ffi.new("char[]", self.instructions.to_bytes(2, sys.byteorder) + bytes(6)
                               + address.to_bytes(8, sys.byteorder))


def seccomp_set_mode_filter(prog: SockFprog, flags: int = 0) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER, flags, prog): install a filter on this thread.

    The kernel needs no_new_privs or CAP_SYS_ADMIN (EACCES otherwise). With
    SECCOMP_FILTER_FLAG_TSYNC a positive return is the id of a thread that
    could not be synchronised: reported as ESRCH, since nothing was installed.
    """
    ret = libc.syscall(ffi.cast("long", _NR["seccomp"]), ffi.cast("long", SECCOMP_SET_MODE_FILTER),
                       ffi.cast("long", flags), prog._struct)
    if ret > 0:
        raise OSError(errno.ESRCH, f"seccomp: thread {ret} could not be synchronised (SECCOMP_FILTER_FLAG_TSYNC)")
    _check(ret)


def seccomp_flag_supported(flag: int) -> bool:
    """Whether the kernel knows a SECCOMP_FILTER_FLAG_*: libseccomp's probe, a
    filter call with no program, which fails with EFAULT once the flags pass."""
    ret = libc.syscall(ffi.cast("long", _NR["seccomp"]), ffi.cast("long", SECCOMP_SET_MODE_FILTER),
                       ffi.cast("long", flag), ffi.cast("void *", 0))
    return ret == -1 and ffi.errno == errno.EFAULT


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(libc.sethostname(raw, len(raw)))


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(libc.setdomainname(raw, len(raw)))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(libc.prctl(option, arg2, arg3, arg4, arg5))


def capget() -> tuple[int, int, int]:
    """Return this thread's (effective, permitted, inheritable) as 64-bit masks."""
    hdr = ffi.new("struct hanok_cap_header *", {"version": _LINUX_CAPABILITY_VERSION_3, "pid": 0})
    data = ffi.new("struct hanok_cap_data[2]")
    _check(libc.capget(hdr, data))
    return tuple(getattr(data[0], f) | (getattr(data[1], f) << 32)
                 for f in ("effective", "permitted", "inheritable"))


def capset(effective: int, permitted: int, inheritable: int) -> None:
    hdr = ffi.new("struct hanok_cap_header *", {"version": _LINUX_CAPABILITY_VERSION_3, "pid": 0})
    data = ffi.new("struct hanok_cap_data[2]")
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(libc.capset(hdr, data))


def set_cmdline(title: str) -> None:
    """Overwrite this process's argv in place (what /proc/<pid>/cmdline shows).

    The container's init runs hanok's Python until `start`; its command line
    names host paths (the bundle, the venv) that processes in the container
    could read. The argv area's bounds come from /proc/self/stat (fields 48
    and 49); the title is cut to fit, the rest zero-filled.
    """
    with open("/proc/self/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()
    arg_start, arg_end = int(fields[45]), int(fields[46])
    size = arg_end - arg_start
    if size <= 1:
        return
    raw = title.encode()[:size - 1]
    ffi.memmove(ffi.cast("char *", arg_start), raw + b"\0" * (size - len(raw)), size)


def fs_type(path_or_fd: str | int) -> int:
    """The filesystem magic number (statfs f_type) of a path or fd."""
    buf = ffi.new("struct hanok_statfs *")
    if isinstance(path_or_fd, int):
        _check(libc.fstatfs(path_or_fd, buf))
    else:
        _check(libc.statfs(path_or_fd.encode(), buf), path_or_fd)
    return buf.f_type & 0xFFFFFFFF
