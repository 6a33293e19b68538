"""hanok.runtime.seccomp_default: Docker's default seccomp profile, as OCI data.

The shape tests check the dict; the behaviour tests load the real filter with
libseccomp in a forked child (no_new_privs first, so no privilege is needed;
the child dies with its filter) and make the syscalls a container would, so
they check what the kernel does, not only what the dict says.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Any

import hanok
import pytest
from hanok.runtime import errors, seccomp, syscalls
from hanok.runtime.seccomp_default import (
    ALWAYS_ALLOWED,
    ARCH_SPECIFIC,
    BY_CAPABILITY,
    CLONE_NAMESPACE_FLAGS,
    PERSONALITIES,
    default_profile,
)
from test_seccomp import (  # body() in a forked child; the errno a call fails with
    errno_of,
    run_in_child,
)

# Docker's default capability set (`docker run` without --cap-add/--cap-drop).
DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
               "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
               "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
ALL_CAPS = sorted(BY_CAPABILITY)
HOST = os.uname().machine

# Calls no container gets, whatever its capabilities: not namespaced, or a way
# around the filter itself (Docker's profile leaves them all out).
NEVER_ALLOWED = ["keyctl", "add_key", "request_key", "swapon", "swapoff", "kexec_load",
                 "kexec_file_load", "userfaultfd", "pivot_root", "uselib", "nfsservctl",
                 "open_tree_attr", "move_pages", "migrate_pages", "vm86", "ustat", "sysfs"]


def allowed_names(profile: dict[str, Any]) -> set[str]:
    """Names allowed unconditionally (rules without args)."""
    return {name for rule in profile["syscalls"]
            if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args") for name in rule["names"]}


def rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [rule for rule in profile["syscalls"] if name in rule["names"]]


# --- shape ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
@pytest.mark.parametrize("caps", [[], DOCKER_CAPS, ALL_CAPS], ids=["no-caps", "docker-caps", "all-caps"])
def test_profile_validates(caps: list[str], arch: str) -> None:
    profile = default_profile(caps, arch)
    seccomp.validate(profile)
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == errno.EPERM
    json.dumps(profile)  # plain JSON data: it goes into config.json as is


def test_always_allowed_has_no_duplicates_and_no_guarded_calls() -> None:
    assert len(set(ALWAYS_ALLOWED)) == len(ALWAYS_ALLOWED)
    guarded = {name for names in BY_CAPABILITY.values() for name in names}
    # ptrace and process_vm_* are in both, as in Docker (allowed from kernel 4.8 on)
    assert guarded & set(ALWAYS_ALLOWED) == {"ptrace", "process_vm_readv", "process_vm_writev"}
    for name in ("clone", "clone3", "socket", "personality"):
        assert name not in ALWAYS_ALLOWED  # each has its own rule


@pytest.mark.parametrize("caps", [[], DOCKER_CAPS, ALL_CAPS], ids=["no-caps", "docker-caps", "all-caps"])
def test_never_allowed_calls_fall_to_the_default(caps: list[str]) -> None:
    profile = default_profile(caps, "x86_64")
    for name in NEVER_ALLOWED:
        assert rules_for(profile, name) == [], name


@pytest.mark.parametrize("capability", ALL_CAPS)
def test_capability_conditional_calls_appear_only_with_the_capability(capability: str) -> None:
    without = allowed_names(default_profile([], "x86_64"))
    with_cap = allowed_names(default_profile([capability], "x86_64"))
    assert set(BY_CAPABILITY[capability]) <= with_cap
    only_this_cap = set(BY_CAPABILITY[capability]) - set(ALWAYS_ALLOWED)
    assert only_this_cap, capability
    assert not only_this_cap & without
    assert with_cap - without == only_this_cap


def test_docker_caps_allow_chroot_but_no_mount_or_reboot() -> None:
    allowed = allowed_names(default_profile(DOCKER_CAPS, "x86_64"))
    assert "chroot" in allowed  # CAP_SYS_CHROOT is in Docker's default set
    for name in ("mount", "umount2", "unshare", "setns", "reboot", "init_module", "settimeofday",
                 "acct", "bpf", "perf_event_open", "open_by_handle_at", "kcmp", "vhangup"):
        assert name not in allowed, name


def test_clone_refuses_namespace_flags_without_cap_sys_admin() -> None:
    profile = default_profile(DOCKER_CAPS, "x86_64")
    assert rules_for(profile, "clone") == [{
        "names": ["clone"], "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
    }]
    # clone3's flags sit in a struct seccomp cannot read: ENOSYS makes libc use clone
    assert rules_for(profile, "clone3") == [
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}]
    assert CLONE_NAMESPACE_FLAGS == (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
                                     | 0x20000000 | 0x40000000)  # NEWNS CGROUP UTS IPC USER PID NET


def test_clone_is_unrestricted_with_cap_sys_admin() -> None:
    profile = default_profile([*DOCKER_CAPS, "CAP_SYS_ADMIN"], "x86_64")
    for name in ("clone", "clone3"):
        rules = rules_for(profile, name)
        assert len(rules) == 1 and rules[0]["action"] == "SCMP_ACT_ALLOW" and "args" not in rules[0], rules


def test_socket_refuses_only_af_vsock() -> None:
    assert rules_for(default_profile(ALL_CAPS, "x86_64"), "socket") == [
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": socket.AF_VSOCK, "op": "SCMP_CMP_NE"}]}]


def test_personality_only_docker_values() -> None:
    rules = rules_for(default_profile(ALL_CAPS, "x86_64"), "personality")
    assert [rule["args"] for rule in rules] == [
        [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}] for value in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF)]
    assert PERSONALITIES == (0, 8, 131072, 131080, 4294967295)


@pytest.mark.parametrize("arch, expected", [
    ("x86_64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
    ("amd64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
    ("aarch64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
    ("arm64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
])
def test_architectures_per_arch(arch: str, expected: list[str]) -> None:
    assert default_profile(DOCKER_CAPS, arch)["architectures"] == expected


def test_arch_specific_calls_only_on_their_arch() -> None:
    x86 = allowed_names(default_profile([], "x86_64"))
    arm = allowed_names(default_profile([], "aarch64"))
    assert {"arch_prctl", "modify_ldt"} <= x86 and not {"arch_prctl", "modify_ldt"} & arm
    assert set(ARCH_SPECIFIC["aarch64"]) <= arm and not set(ARCH_SPECIFIC["aarch64"]) & x86


def test_default_arch_is_the_host() -> None:
    if HOST not in ("x86_64", "aarch64"):
        pytest.skip(f"no default profile for this host's architecture {HOST}")
    assert default_profile(DOCKER_CAPS) == default_profile(DOCKER_CAPS, HOST)


def test_unknown_arch_is_refused_with_its_name() -> None:
    with pytest.raises(errors.NotSupported, match=r"^seccomp: no default profile for architecture 's390x'"):
        default_profile(DOCKER_CAPS, "s390x")


def test_each_call_returns_a_new_profile() -> None:
    first = default_profile(DOCKER_CAPS, "x86_64")
    first["syscalls"][0]["names"].append("keyctl")
    first["architectures"].clear()
    second = default_profile(DOCKER_CAPS, "x86_64")
    assert "keyctl" not in second["syscalls"][0]["names"]
    assert second["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]


def test_importing_is_cheap() -> None:
    """Imported on every `hanok run`: no json, no libseccomp, no seccomp.py."""
    code = ("import sys\nbefore = set(sys.modules)\n"
            "import hanok.runtime.seccomp_default\n"
            "print(' '.join(sorted(set(sys.modules) - before)))\n")
    # the hanok this session imported (the working tree or the installed one)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(hanok.__file__))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert set(out.stdout.split()) <= {"__future__", "hanok", "hanok.runtime", "hanok.runtime.errors",
                                       "hanok.runtime.seccomp_default"}, out.stdout


def _export(profile: dict[str, Any]) -> bytes:
    with tempfile.TemporaryFile() as f:
        seccomp.export_bpf(profile, f.fileno())
        f.seek(0)
        return f.read()


def test_names_unknown_to_the_installed_libseccomp_are_skipped() -> None:
    # An older libseccomp than the profile's newest syscalls (futex_wake is
    # kernel 6.7 / libseccomp 2.5.5) must still load it: seccomp.py skips
    # names it cannot resolve, so the same program comes out.
    profile = default_profile(DOCKER_CAPS)
    plain = _export(profile)
    profile["syscalls"][0]["names"].append("a_syscall_from_the_future")
    assert _export(profile) == plain
    assert len(plain) > 0


# --- behaviour: the filter loaded for real in a forked child ----------------------


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _raw(nr: int, *args: int) -> int:
    """syscall(nr, args...) -> 0 or errno (no libc wrapper in between to fall back)."""
    rc = _libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a) for a in args))
    return ctypes.get_errno() if rc == -1 else 0


def _nr(name: str) -> int:
    nr: int = seccomp._seccomp_lib().seccomp_syscall_resolve_name(name.encode())
    assert nr >= 0, f"{name} has no number on {HOST}"
    return nr


def _fork_and_wait() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _thread_ran() -> bool:
    seen: list[bool] = []
    thread = threading.Thread(target=lambda: seen.append(True))
    thread.start()
    thread.join()
    return seen == [True]


@pytest.mark.skipif(HOST != "x86_64", reason=f"syscall numbers below are resolved for x86_64, host is {HOST}")
def test_loaded_profile_with_docker_caps() -> None:
    numbers = {name: _nr(name) for name in ("clone3", "keyctl", "unshare", "personality", "getpid")}
    profile = default_profile(DOCKER_CAPS)
    CLONE_NEWUSER = 0x10000000
    ADDR_NO_RANDOMIZE = 0x0040000

    def body() -> dict[str, Any]:
        syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
        seccomp.load(profile)

        def vsock() -> None:
            socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()

        def inet() -> None:
            socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()

        return {
            "getpid": _raw(numbers["getpid"]),
            "fork": _fork_and_wait(),
            "thread": _thread_ran(),  # glibc tries clone3 (ENOSYS), then clone without CLONE_NEW*
            "clone3": _raw(numbers["clone3"], 0, 0),
            "unshare_user": _raw(numbers["unshare"], CLONE_NEWUSER),
            "keyctl": _raw(numbers["keyctl"], 0, 0),
            "personality_query": _raw(numbers["personality"], 0xFFFFFFFF),
            "personality_no_aslr": _raw(numbers["personality"], ADDR_NO_RANDOMIZE),
            "socket_vsock": errno_of(vsock),
            "socket_inet": errno_of(inet),
            "chdir": errno_of(lambda: os.chdir("/")),
        }

    assert run_in_child(body) == {
        "getpid": 0, "fork": 7, "thread": True, "clone3": errno.ENOSYS,
        "unshare_user": errno.EPERM, "keyctl": errno.EPERM,
        "personality_query": 0, "personality_no_aslr": errno.EPERM,
        "socket_vsock": errno.EPERM, "socket_inet": 0, "chdir": 0,
    }
