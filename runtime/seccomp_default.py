"""The default `linux.seccomp` profile for containers made from images (`hanok run`).

Docker and podman put a syscall filter on every container unless told
otherwise; without one, a container's root can reach kernel interfaces that
are not namespaced (the keyring, kernel modules, the clock, swap, new user
namespaces, ...). This module builds the equivalent of Docker's default
profile (moby's profiles/seccomp/default.json, kernel 6.7 syscalls included)
as a plain OCI object, so runtime/seccomp.py validates and loads it like any
profile a caller writes:

* the default action is SCMP_ACT_ERRNO with EPERM, and an allow-list names
  what a container may call;
* some syscalls are allowed only when the container holds the capability
  that guards them anyway (mount with CAP_SYS_ADMIN, reboot with CAP_SYS_BOOT,
  ...): the filter then never refuses what the capability set grants;
* without CAP_SYS_ADMIN, clone is allowed only without CLONE_NEW* flags, and
  clone3 (whose flags sit in a struct seccomp cannot read) fails with ENOSYS so
  libc falls back to clone;
* personality is limited to the Linux personalities (no ADDR_NO_RANDOMIZE);
* socket(AF_VSOCK) is refused: vsock reaches the hypervisor host, outside
  every namespace.

Syscall names this host's libseccomp does not know (newer than the library)
need no care here: runtime/seccomp.py skips them at load, as runc does, and
the kernel then answers the default EPERM for them.

Pure data and one function: no I/O, no json file to parse, imports only what
the hot path already has (`hanok run` builds this profile every time).
"""
from __future__ import annotations

import os

from hanok.runtime.errors import NotSupported

EPERM = 1
ENOSYS = 38
AF_VSOCK = 40
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
# | CLONE_NEWPID | CLONE_NEWNET: the flags that make new namespaces.
CLONE_NAMESPACE_FLAGS = 0x7E020000

# --- allowed for every container ---------------------------------------------

# Opening, reading, writing and moving data between file descriptors.
_FILE_IO = (
    "open", "openat", "openat2", "creat", "close", "close_range",
    "read", "readv", "pread64", "preadv", "preadv2",
    "write", "writev", "pwrite64", "pwritev", "pwritev2",
    "lseek", "_llseek", "dup", "dup2", "dup3", "fcntl", "fcntl64", "ioctl", "flock",
    "fsync", "fdatasync", "sync", "syncfs", "sync_file_range",
    "fadvise64", "fadvise64_64", "fallocate", "readahead",
    "truncate", "truncate64", "ftruncate", "ftruncate64",
    "copy_file_range", "sendfile", "sendfile64", "splice", "tee", "vmsplice",
    "pipe", "pipe2",
)

# Paths, directories, ownership and modes: the filesystem's own permission
# checks (and the dropped capabilities) are what guard these.
_FILESYSTEM = (
    "access", "faccessat", "faccessat2",
    "stat", "stat64", "lstat", "lstat64", "fstat", "fstat64", "fstatat64", "newfstatat",
    "statx", "statfs", "statfs64", "fstatfs", "fstatfs64",
    "getdents", "getdents64", "getcwd", "chdir", "fchdir",
    "mkdir", "mkdirat", "mknod", "mknodat", "rmdir",
    "rename", "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat",
    "unlink", "unlinkat", "readlink", "readlinkat",
    "chmod", "fchmod", "fchmodat", "fchmodat2",
    "chown", "chown32", "fchown", "fchown32", "fchownat", "lchown", "lchown32",
    "umask", "utime", "utimes", "utimensat", "utimensat_time64", "futimesat",
    "name_to_handle_at",  # only encodes a handle; opening one needs CAP_DAC_READ_SEARCH
    "getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr",
    "listxattr", "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    "fanotify_mark",  # marks only work on a group, and fanotify_init needs CAP_SYS_ADMIN
)

# Asynchronous I/O and waiting for many descriptors at once.
_ASYNC_AND_POLLING = (
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64",
    # not io_uring_*: moby dropped them (PR 46762, container escapes through io_uring),
    # and io_uring's own socket opcode would bypass the AF_VSOCK rule below
    "poll", "ppoll", "ppoll_time64", "select", "_newselect", "pselect6", "pselect6_time64",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
    "epoll_wait", "epoll_wait_old", "epoll_pwait", "epoll_pwait2",
    "eventfd", "eventfd2", "signalfd", "signalfd4",
    "timerfd_create", "timerfd_settime", "timerfd_settime64", "timerfd_gettime", "timerfd_gettime64",
)

# The process's own memory; mlock* are bounded by RLIMIT_MEMLOCK.
_MEMORY = (
    "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync",
    "mlock", "mlock2", "mlockall", "munlock", "munlockall", "remap_file_pages",
    "memfd_create", "memfd_secret", "membarrier",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "process_mrelease",
    "cachestat", "map_shadow_stack",
)

# Making, running, waiting for and signalling processes and threads. clone and
# clone3 are not here: see the CAP_SYS_ADMIN rules. ptrace and process_vm_*
# are safe to allow since kernel 4.8, where seccomp can no longer be bypassed
# through ptrace (Docker allows them from 4.8 on); the kernel's ptrace access
# checks still confine them to the container's own processes.
_PROCESSES = (
    "fork", "vfork", "execve", "execveat", "exit", "exit_group",
    "wait4", "waitid", "waitpid", "kill", "tkill", "tgkill", "pidfd_open", "pidfd_send_signal",
    "getpid", "getppid", "gettid", "set_tid_address", "getpgid", "setpgid", "getpgrp",
    "getsid", "setsid",
    "set_robust_list", "get_robust_list", "rseq", "restart_syscall",
    "set_thread_area", "get_thread_area",
    "prctl", "seccomp", "capget", "capset",
    "ptrace", "process_vm_readv", "process_vm_writev",
    "futex", "futex_time64", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue",
    "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo",
    "sigaltstack", "sigprocmask", "sigreturn", "pause", "alarm",
)

# User and group ids: changing them is what CAP_SETUID/CAP_SETGID guard.
_IDENTITY = (
    "getuid", "getuid32", "geteuid", "geteuid32", "getgid", "getgid32", "getegid", "getegid32",
    "getresuid", "getresuid32", "getresgid", "getresgid32", "getgroups", "getgroups32",
    "setuid", "setuid32", "setgid", "setgid32", "setreuid", "setreuid32",
    "setregid", "setregid32", "setresuid", "setresuid32", "setresgid", "setresgid32",
    "setfsuid", "setfsuid32", "setfsgid", "setfsgid32", "setgroups", "setgroups32",
)

# Limits, priorities and CPU placement; raising beyond the limits needs
# CAP_SYS_RESOURCE / CAP_SYS_NICE, which the kernel checks.
_SCHEDULING = (
    "getrlimit", "ugetrlimit", "setrlimit", "prlimit64", "getrusage",
    "getpriority", "setpriority", "ioprio_get", "ioprio_set",
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getattr", "sched_setattr",
    "sched_getparam", "sched_setparam", "sched_getscheduler", "sched_setscheduler",
    "sched_get_priority_max", "sched_get_priority_min",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "getcpu",
)

# Reading clocks, sleeping and timers. adjtimex/clock_adjtime are here for
# reading; setting the clock with them needs CAP_SYS_TIME.
_TIME = (
    "time", "gettimeofday", "clock_gettime", "clock_gettime64", "clock_getres", "clock_getres_time64",
    "clock_nanosleep", "clock_nanosleep_time64", "nanosleep", "times",
    "adjtimex", "clock_adjtime", "clock_adjtime64",
    "getitimer", "setitimer", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
)

# Sockets, in the container's own network namespace. socket itself has its
# own rule below (everything but AF_VSOCK). socketcall is the 32-bit x86
# multiplexer, which seccomp cannot look into; Docker allows it too.
_NETWORK = (
    "socketpair", "bind", "connect", "listen", "accept", "accept4",
    "getsockname", "getpeername", "getsockopt", "setsockopt", "shutdown",
    "send", "sendto", "sendmsg", "sendmmsg", "recv", "recvfrom", "recvmsg",
    "recvmmsg", "recvmmsg_time64", "socketcall",
)

# System V and POSIX IPC, confined by the container's IPC namespace.
_IPC = (
    "ipc", "msgget", "msgctl", "msgsnd", "msgrcv", "semget", "semctl", "semop",
    "semtimedop", "semtimedop_time64", "shmget", "shmctl", "shmat", "shmdt",
    "mq_open", "mq_unlink", "mq_getsetattr", "mq_notify",
    "mq_timedsend", "mq_timedsend_time64", "mq_timedreceive", "mq_timedreceive_time64",
)

# Harmless information and self-restriction: uname is per UTS namespace,
# landlock can only take rights away.
_MISC = (
    "uname", "sysinfo", "getrandom",
    "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
)

ALWAYS_ALLOWED: tuple[str, ...] = (
    _FILE_IO + _FILESYSTEM + _ASYNC_AND_POLLING + _MEMORY + _PROCESSES + _IDENTITY
    + _SCHEDULING + _TIME + _NETWORK + _IPC + _MISC
)

# --- allowed only with the capability that guards them anyway -----------------

# Docker's "includes.caps" rules: with the capability in the container's
# (bounding) set, the filter stops being an extra wall in front of it.
BY_CAPABILITY: dict[str, tuple[str, ...]] = {
    # open_by_handle_at opens any inode by handle, bypassing path permissions
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    # mounts, namespaces, hostnames, quotas, tracing: the "new root" calls
    "CAP_SYS_ADMIN": (
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open",
        "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog",
        "umount", "umount2", "unshare",
    ),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev",
                       "ptrace"),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}

# --- per architecture -----------------------------------------------------------

# Host machine names (uname -m, and Go's GOARCH spelling) -> the family below.
_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}

# The native arch and the compat ones its kernel also runs (32-bit x86 and x32
# binaries on x86_64, 32-bit ARM on aarch64). Without them, a 32-bit binary in
# the image is killed on its first syscall (libseccomp's bad-arch action);
# with them, its calls go through the same rules, mapped to its own numbers.
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
}

# Calls only these architectures have, needed by their ordinary programs
# (thread-local storage setup, ARM's cache flush and argument-order variants).
ARCH_SPECIFIC: dict[str, tuple[str, ...]] = {
    "x86_64": ("arch_prctl", "modify_ldt"),
    "aarch64": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2",
                "breakpoint", "cacheflush", "set_tls"),
}

# personality(2) values programs legitimately use: PER_LINUX, PER_LINUX32,
# UNAME26, PER_LINUX32|UNAME26, and 0xffffffff (query only). Anything else,
# notably ADDR_NO_RANDOMIZE or READ_IMPLIES_EXEC, weakens the process's memory
# protections and is refused.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


def _allow(names: list[str]) -> dict:
    return {"names": names, "action": "SCMP_ACT_ALLOW"}


def default_profile(capabilities: list[str], arch: str | None = None) -> dict:
    """Docker's default seccomp profile for a container with these capabilities.

    `capabilities`: the container's bounding set, OCI names ("CAP_SYS_ADMIN").
    `arch`: a machine name (x86_64/amd64, aarch64/arm64); None means this
    host's (`uname -m`). Returns a new dict the caller may modify; raises
    NotSupported for machines hanok has no default profile for, since a
    silently weaker filter would be worse than a clear refusal.
    """
    machine = arch if arch is not None else os.uname().machine
    family = _MACHINES.get(machine)
    if family is None:
        raise NotSupported(
            f"seccomp: no default profile for architecture {machine!r} (known: x86_64, aarch64); "
            "run with --security-opt seccomp=unconfined or give a profile with --security-opt seccomp=PATH")
    held = set(capabilities)
    allowed = dict.fromkeys(ALWAYS_ALLOWED)  # ordered and without duplicates
    allowed.update(dict.fromkeys(ARCH_SPECIFIC[family]))
    for capability, names in BY_CAPABILITY.items():
        if capability in held:
            allowed.update(dict.fromkeys(names))
    syscalls = [_allow(list(allowed))]
    syscalls.append({**_allow(["socket"]),
                     "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}]})
    for persona in PERSONALITIES:
        syscalls.append({**_allow(["personality"]),
                         "args": [{"index": 0, "value": persona, "op": "SCMP_CMP_EQ"}]})
    if "CAP_SYS_ADMIN" not in held:
        # clone's flags are argument 0 on x86_64 and aarch64 (s390 swaps them).
        syscalls.append({**_allow(["clone"]),
                         "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                                   "op": "SCMP_CMP_MASKED_EQ"}]})
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": list(ARCHITECTURES[family]),
        "syscalls": syscalls,
    }
