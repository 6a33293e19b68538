"""hanok.runtime.seccomp: OCI linux.seccomp -> libseccomp filter.

validate() and export_bpf() need no privileges. The behavioural tests load real
filters in forked children; setting no_new_privs first lets an unprivileged
process do that, and the child dies with its filter, so pytest is untouched.
Exported BPF is decoded (struct sock_filter) so the tests check what the kernel
would run, not merely that nothing raised.
"""
import copy
import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback
from typing import Any, Callable

import pytest
from hanok.runtime import errors, explain, seccomp, syscalls

# classic BPF opcodes as libseccomp emits them
BPF_LD_W_ABS = 0x20
BPF_RET_K = 0x06
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_X86_64 = 0xC000003E

ACT_ALLOW = 0x7FFF0000
ACT_ERRNO = 0x00050000


def docker_profile() -> dict[str, Any]:
    """A small profile shaped like Docker's/podman's default (after caps filtering)."""
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {   # 0: the big allow list, with 32-bit-only names and one nobody knows
                "names": [
                    "accept", "accept4", "access", "arch_prctl", "bind", "brk", "capget",
                    "capset", "chdir", "close", "connect", "dup", "dup2", "dup3",
                    "epoll_create1", "epoll_wait", "execve", "exit", "exit_group",
                    "fcntl", "fstat", "futex", "getcwd", "getdents64", "getpid",
                    "getuid", "ioctl", "lseek", "mmap", "mprotect", "munmap", "openat",
                    "pipe2", "read", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
                    "set_tid_address", "stat64", "_llseek", "socketcall", "write",
                    "not_a_syscall_xyz",
                ],
                "action": "SCMP_ACT_ALLOW",
            },
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 4294967295, "op": "SCMP_CMP_EQ"}]},
            {   # 4: clone without any CLONE_NEW* flag (Docker's non-CAP_SYS_ADMIN rule)
                "names": ["clone"], "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 2114060288, "valueTwo": 0,
                          "op": "SCMP_CMP_MASKED_EQ"}],
            },
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]},
            {   # 7: repeated index -> one rule per comparison (uid 0 OR uid 1000)
                "names": ["chown"], "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"},
                         {"index": 1, "value": 1000, "op": "SCMP_CMP_EQ"}],
            },
            {   # 8: equal to the default action: must be skipped, not refused
                "names": ["kexec_load"], "action": "SCMP_ACT_ERRNO",
            },
        ],
    }


def export(profile: dict[str, Any]) -> bytes:
    with tempfile.TemporaryFile() as f:
        seccomp.export_bpf(profile, f.fileno())
        f.seek(0)
        return f.read()


def insns(bpf: bytes) -> list[tuple[int, int, int, int]]:
    """Decode struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }[]."""
    assert len(bpf) % 8 == 0
    return [struct.unpack_from("=HBBI", bpf, off) for off in range(0, len(bpf), 8)]


def constants(bpf: bytes, *codes: int) -> set[int]:
    return {k for code, _, _, k in insns(bpf) if code in codes}


def arch_chain(bpf: bytes) -> list[int]:
    """AUDIT_ARCH values the filter accepts: libseccomp loads seccomp_data.arch
    (`ld [4]`) once, then tests it with a chain of JEQs linked by their
    false-jumps; the last false-jump goes to the bad-arch kill."""
    prog = insns(bpf)
    i = next(n for n, (code, _, _, k) in enumerate(prog) if code == BPF_LD_W_ABS and k == 4) + 1
    seen = []
    while prog[i][0] == BPF_JEQ_K:
        seen.append(prog[i][3])
        i += 1 + prog[i][2]
    assert prog[i][0] == BPF_RET_K
    return seen


def run_in_child(body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Fork, run body() in the child, return the dict it produced (as JSON)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            os.close(r)
            out = json.dumps(body()).encode()
            os.write(w, out)
        except BaseException:
            traceback.print_exc()
            code = 70
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "child failed, see captured stderr"
    return json.loads(b"".join(chunks))


def errno_of(fn: Callable[[], Any]) -> int:
    """0 if fn() succeeds, else the errno of the OSError it raised."""
    try:
        fn()
    except OSError as e:
        return e.errno or -1  # a failure without an errno is no success
    return 0


# --- validate -----------------------------------------------------------------


def test_validate_accepts_docker_shaped_profile() -> None:
    profile = docker_profile()
    before = copy.deepcopy(profile)
    assert seccomp.validate(profile) is None
    assert profile == before  # validate never rewrites the config


def test_validate_accepts_every_spec_action_op_and_flag() -> None:
    actions = ["SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD",
               "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW",
               "SCMP_ACT_LOG"]
    ops = ["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
           "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"]
    profile = {
        "defaultAction": "SCMP_ACT_TRACE", "defaultErrnoRet": 5,
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                  "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
        "listenerPath": "/run/agent.sock",  # ignored without SCMP_ACT_NOTIFY, per spec
        "syscalls": [{"names": ["getpid"], "action": a} for a in actions]
        + [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": i, "value": 1, "valueTwo": 1, "op": op}]}
           for i, op in enumerate(ops[:6])]
        + [{"names": ["write"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 5, "value": 2**64 - 1, "op": ops[6]}]}],
    }
    seccomp.validate(profile)


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(p: dict[str, Any]) -> None:
        obj = p
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
    return mutate


def _delete(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(p: dict[str, Any]) -> None:
        obj = p
        for key in path[:-1]:
            obj = obj[key]
        del obj[path[-1]]
    return mutate


BAD = [
    (_delete(["defaultAction"]), "linux.seccomp.defaultAction: required"),
    (_set(["defaultAction"], "SCMP_ACT_FOO"),
     'linux.seccomp.defaultAction: unknown action "SCMP_ACT_FOO"'),
    (_set(["defaultAction"], 7), "linux.seccomp.defaultAction: must be a string"),
    (_set(["syscalls", 3, "action"], "SCMP_ACT_FOO"),
     'linux.seccomp.syscalls[3].action: unknown action "SCMP_ACT_FOO"'),
    (_delete(["syscalls", 5, "action"]), "linux.seccomp.syscalls[5].action: required"),
    (_set(["architectures", 1], "SCMP_ARCH_Z80"),
     'linux.seccomp.architectures[1]: unknown architecture "SCMP_ARCH_Z80"'),
    (_set(["architectures", 2], "x86_64"),  # libseccomp's spelling, not the spec's
     'linux.seccomp.architectures[2]: unknown architecture "x86_64"'),
    (_set(["architectures"], "SCMP_ARCH_X86_64"), "linux.seccomp.architectures: must be an array"),
    (_set(["flags"], ["SECCOMP_FILTER_FLAG_BOGUS"]),
     'linux.seccomp.flags[0]: unknown flag "SECCOMP_FILTER_FLAG_BOGUS"'),
    (_set(["flags"], [1]), "linux.seccomp.flags[0]: must be a string"),
    (_set(["syscalls", 4, "args", 0, "op"], "SCMP_CMP_FOO"),
     'linux.seccomp.syscalls[4].args[0].op: unknown operator "SCMP_CMP_FOO"'),
    (_delete(["syscalls", 4, "args", 0, "op"]), "linux.seccomp.syscalls[4].args[0].op: required"),
    (_set(["syscalls", 7, "args", 1, "index"], 6),
     "linux.seccomp.syscalls[7].args[1].index: 6 is out of range"),
    (_set(["syscalls", 7, "args", 1, "index"], -1),
     "linux.seccomp.syscalls[7].args[1].index: must be a non-negative integer"),
    (_set(["syscalls", 7, "args", 1, "index"], "1"),
     "linux.seccomp.syscalls[7].args[1].index: must be a non-negative integer"),
    (_set(["syscalls", 7, "args", 1, "index"], True),
     "linux.seccomp.syscalls[7].args[1].index: must be a non-negative integer"),
    (_set(["syscalls", 1, "args", 0, "value"], -1),
     "linux.seccomp.syscalls[1].args[0].value: must be an unsigned 64-bit integer"),
    (_set(["syscalls", 1, "args", 0, "value"], 2**64),
     "linux.seccomp.syscalls[1].args[0].value: must be an unsigned 64-bit integer"),
    (_set(["syscalls", 4, "args", 0, "valueTwo"], "0"),
     "linux.seccomp.syscalls[4].args[0].valueTwo: must be an unsigned 64-bit integer"),
    (_set(["syscalls", 6, "args"], {"index": 0}), "linux.seccomp.syscalls[6].args: must be an array"),
    (_set(["syscalls", 6, "args", 0], 3), "linux.seccomp.syscalls[6].args[0]: must be an object"),
    (_set(["syscalls", 6, "errnoRet"], 1),
     "linux.seccomp.syscalls[6].errnoRet: only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take an errno"),
    (_set(["syscalls", 5, "errnoRet"], -1),
     "linux.seccomp.syscalls[5].errnoRet: must be an integer between 0 and 65535"),
    (_set(["syscalls", 5, "errnoRet"], 70000),
     "linux.seccomp.syscalls[5].errnoRet: must be an integer between 0 and 65535"),
    (_set(["syscalls", 5, "errnoRet"], "38"),
     "linux.seccomp.syscalls[5].errnoRet: must be an integer between 0 and 65535"),
    (_set(["defaultAction"], "SCMP_ACT_KILL_PROCESS"),  # defaultErrnoRet 1 still set
     "linux.seccomp.defaultErrnoRet: only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take an errno"),
    (_set(["defaultErrnoRet"], False), "linux.seccomp.defaultErrnoRet: must be an integer"),
    (_set(["syscalls", 2, "names"], []),
     "linux.seccomp.syscalls[2].names: must contain at least one syscall name"),
    (_delete(["syscalls", 2, "names"]), "linux.seccomp.syscalls[2].names: required"),
    (_set(["syscalls", 2, "names"], "personality"), "linux.seccomp.syscalls[2].names: must be an array"),
    (_set(["syscalls", 0, "names", 3], ""), "linux.seccomp.syscalls[0].names[3]: must be a non-empty string"),
    (_set(["syscalls", 0, "names", 3], None), "linux.seccomp.syscalls[0].names[3]: must be a non-empty string"),
    (_set(["syscalls", 8], "kexec_load"), "linux.seccomp.syscalls[8]: must be an object"),
    (_set(["syscalls"], {"names": ["read"]}), "linux.seccomp.syscalls: must be an array"),
    (_set(["listenerMetadata"], "x"), "linux.seccomp.listenerMetadata: must not be set without listenerPath"),
]


@pytest.mark.parametrize("mutate,message", BAD, ids=[m for _, m in BAD])
def test_validate_rejects_with_field_named(mutate: Callable[[dict[str, Any]], None],
                                           message: str) -> None:
    profile = docker_profile()
    mutate(profile)
    with pytest.raises(errors.SpecError) as exc:
        seccomp.validate(profile)
    text = str(exc.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_validate_rejects_non_object() -> None:
    with pytest.raises(errors.SpecError, match=r"^linux\.seccomp: must be an object"):
        seccomp.validate(["SCMP_ACT_ALLOW"])  # type: ignore[arg-type]


@pytest.mark.parametrize("mutate,field", [
    (_set(["syscalls", 1, "action"], "SCMP_ACT_NOTIFY"), "linux.seccomp.syscalls[1].action: SCMP_ACT_NOTIFY"),
    (_set(["defaultAction"], "SCMP_ACT_NOTIFY"), "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY"),
    (_set(["flags"], ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]),
     "linux.seccomp.flags[1]: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"),
])
def test_validate_unsupported_is_not_a_spec_error(mutate: Callable[[dict[str, Any]], None],
                                                  field: str) -> None:
    profile = docker_profile()
    mutate(profile)
    with pytest.raises(errors.NotSupported) as exc:
        seccomp.validate(profile)
    assert not isinstance(exc.value, errors.SpecError)
    assert str(exc.value).startswith(field)
    assert "not supported" in str(exc.value)


def test_validate_arch_the_library_lacks() -> None:
    lib = seccomp._seccomp_lib()
    if lib.seccomp_arch_resolve_name(b"loongarch64") != 0:
        pytest.skip("this libseccomp knows loongarch64")
    profile = docker_profile()
    profile["architectures"].append("SCMP_ARCH_LOONGARCH64")
    with pytest.raises(errors.NotSupported,
                       match=r"^linux\.seccomp\.architectures\[3\]: SCMP_ARCH_LOONGARCH64 is not supported"):
        seccomp.validate(profile)


def test_importing_does_not_open_libseccomp() -> None:
    """The hot path (configs without seccomp) must not pay for libseccomp."""
    code = ("import hanok.runtime.seccomp as s\n"
            "maps = open('/proc/self/maps').read()\n"
            "print(s._lib is None, 'libseccomp' in maps)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


# --- export_bpf ---------------------------------------------------------------


def test_export_docker_profile_bpf_content() -> None:
    bpf = export(docker_profile())
    assert len(bpf) > 0
    rets = constants(bpf, BPF_RET_K)
    assert ACT_ERRNO | 1 in rets        # default, defaultErrnoRet 1
    assert ACT_ERRNO | 38 in rets       # clone3's errnoRet
    assert ACT_ALLOW in rets
    # SCMP_ARCH_X32 shares AUDIT_ARCH_X86_64 (told apart by syscall number)
    chain = arch_chain(bpf)
    assert AUDIT_ARCH_X86_64 in chain and AUDIT_ARCH_I386 in chain
    if os.uname().machine == "x86_64":
        assert len(chain) == 2  # native x86_64 was listed too, not added twice
    compared = constants(bpf, BPF_JEQ_K, BPF_JGE_K, BPF_JSET_K)
    assert 1000 in compared             # both comparisons of the repeated index survive
    assert 40 in compared               # socket(AF_VSOCK) comparison


def test_export_without_architectures_has_only_the_native_one() -> None:
    if os.uname().machine != "x86_64":
        pytest.skip("checks the x86_64 audit arch value")
    profile = docker_profile()
    del profile["architectures"]
    assert arch_chain(export(profile)) == [AUDIT_ARCH_X86_64]


def test_export_size_changes_when_a_rule_is_added() -> None:
    base: dict[str, Any] = {"defaultAction": "SCMP_ACT_ALLOW",
                            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}
    more = copy.deepcopy(base)
    more["syscalls"].append({"names": ["rmdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13})
    a, b = export(base), export(more)
    assert len(a) > 0 and len(b) > len(a)
    assert ACT_ERRNO | 13 in constants(b, BPF_RET_K)
    assert ACT_ERRNO | 13 not in constants(a, BPF_RET_K)
    # errnoRet absent -> EPERM
    assert ACT_ERRNO | errno.EPERM in constants(a, BPF_RET_K)


def test_export_skips_redundant_and_unknown_rules() -> None:
    base = docker_profile()
    same = copy.deepcopy(base)
    # same action as the default (ERRNO, EPERM): libseccomp would refuse it
    same["syscalls"].append({"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1})
    # only names libseccomp does not know: skipped like runc does
    same["syscalls"].append({"names": ["not_a_syscall_xyz", "future_syscall_2099"],
                             "action": "SCMP_ACT_ALLOW"})
    assert export(same) == export(base)


def test_export_flags_are_accepted_and_do_not_change_the_program() -> None:
    base = {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_LOG"}]}
    flagged = dict(base, flags=["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                                "SECCOMP_FILTER_FLAG_SPEC_ALLOW"])
    assert export(flagged) == export(base)
    assert 0x7FFC0000 in constants(export(base), BPF_RET_K)  # SCMP_ACT_LOG


def test_export_validates_first() -> None:
    with tempfile.TemporaryFile() as f:
        with pytest.raises(errors.SpecError, match=r"^linux\.seccomp\.syscalls\[0\]\.action"):
            seccomp.export_bpf({"defaultAction": "SCMP_ACT_ALLOW",
                                "syscalls": [{"names": ["read"], "action": "nope"}]}, f.fileno())
        assert os.fstat(f.fileno()).st_size == 0


def test_export_to_bad_fd_raises_oserror() -> None:
    r, w = os.pipe()
    os.close(w)
    os.close(r)
    with pytest.raises(OSError):
        seccomp.export_bpf({"defaultAction": "SCMP_ACT_ALLOW"}, r)


# --- load, for real, in forked children ---------------------------------------


def _load_with_nnp(profile: dict[str, Any]) -> None:
    syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
    seccomp.load(profile)


def test_load_blocks_mkdir_with_the_given_errno(tmp_path: Any) -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["not_a_syscall_xyz", "mkdir", "mkdirat"],
                      "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}],
    }
    target = str(tmp_path / "made-by-child")
    trace_r, trace_w = os.pipe()

    def body() -> dict[str, Any]:
        explain.enable(trace_w)
        _load_with_nnp(profile)
        explain.disable()
        status = open("/proc/self/status").read()
        return {
            "mkdir": errno_of(lambda: os.mkdir(target)),
            "stat": errno_of(lambda: os.stat(str(tmp_path))),  # default ALLOW still applies
            "seccomp_mode": [ln for ln in status.splitlines() if ln.startswith("Seccomp:")][0],
        }

    out = run_in_child(body)
    os.close(trace_w)
    trace = os.read(trace_r, 4096).decode()
    os.close(trace_r)
    assert out["mkdir"] == errno.ENOSYS
    assert out["stat"] == 0
    assert out["seccomp_mode"].split() == ["Seccomp:", "2"]  # SECCOMP_MODE_FILTER
    assert not os.path.exists(target)
    assert trace.startswith("+ seccomp load: 2 rules, default SCMP_ACT_ALLOW"), trace
    # the parent (pytest) is not filtered
    os.mkdir(target)


def test_load_masked_eq_uses_value_as_mask_and_valuetwo_as_datum(tmp_path: Any) -> None:
    """open(O_CREAT|O_WRONLY) is refused; O_CREAT|O_RDWR and plain O_WRONLY are not."""
    mask = os.O_CREAT | os.O_ACCMODE
    want = os.O_CREAT | os.O_WRONLY
    cond = {"value": mask, "valueTwo": want, "op": "SCMP_CMP_MASKED_EQ"}
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["open"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EOPNOTSUPP,
             "args": [dict(cond, index=1)]},
            {"names": ["openat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EOPNOTSUPP,
             "args": [dict(cond, index=2)]},
        ],
    }
    existing = tmp_path / "existing"
    existing.write_text("x")

    def body() -> dict[str, Any]:
        _load_with_nnp(profile)

        def try_open(path: str, flags: int) -> None:
            os.close(os.open(path, flags, 0o600))

        return {
            "creat_wronly": errno_of(lambda: try_open(str(tmp_path / "a"), os.O_CREAT | os.O_WRONLY)),
            "creat_rdwr": errno_of(lambda: try_open(str(tmp_path / "b"), os.O_CREAT | os.O_RDWR)),
            "wronly": errno_of(lambda: try_open(str(existing), os.O_WRONLY)),
        }

    out = run_in_child(body)
    assert out == {"creat_wronly": errno.EOPNOTSUPP, "creat_rdwr": 0, "wronly": 0}
    assert not (tmp_path / "a").exists()
    assert (tmp_path / "b").exists()


def test_load_repeated_arg_index_matches_either_value(tmp_path: Any) -> None:
    """Two comparisons of one argument become two rules, so they OR (runc's behaviour)."""
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{
            "names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EDOM,
            "args": [{"index": 2, "value": os.SEEK_END, "op": "SCMP_CMP_EQ"},
                     {"index": 2, "value": os.SEEK_CUR, "op": "SCMP_CMP_EQ"}],
        }],
    }
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")

    def body() -> dict[str, Any]:
        fd = os.open(str(path), os.O_RDONLY)
        _load_with_nnp(profile)
        return {
            "end": errno_of(lambda: os.lseek(fd, 0, os.SEEK_END)),
            "cur": errno_of(lambda: os.lseek(fd, 0, os.SEEK_CUR)),
            "set": errno_of(lambda: os.lseek(fd, 3, os.SEEK_SET)),
        }

    assert run_in_child(body) == {"end": errno.EDOM, "cur": errno.EDOM, "set": 0}


def test_load_with_flags_is_accepted_by_the_kernel(tmp_path: Any) -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                  "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
        "syscalls": [{"names": ["rmdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS}],
    }
    (tmp_path / "d").mkdir()

    def body() -> dict[str, Any]:
        _load_with_nnp(profile)
        return {"rmdir": errno_of(lambda: os.rmdir(str(tmp_path / "d")))}

    assert run_in_child(body) == {"rmdir": errno.EROFS}


def test_load_does_not_set_no_new_privs_itself() -> None:
    """process.noNewPrivileges decides NNP, not the filter (libseccomp would set it)."""
    cap_sys_admin = 1 << 21
    if not syscalls.capget()[0] & cap_sys_admin:
        pytest.skip("loading without no_new_privs needs CAP_SYS_ADMIN")
    if syscalls.prctl(syscalls.PR_GET_NO_NEW_PRIVS) == 1:
        pytest.skip("this test process already runs with no_new_privs")
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EXDEV}]}

    def body() -> dict[str, Any]:
        seccomp.load(profile)
        return {"nnp": syscalls.prctl(syscalls.PR_GET_NO_NEW_PRIVS),
                "getcwd": errno_of(os.getcwd)}

    assert run_in_child(body) == {"nnp": 0, "getcwd": errno.EXDEV}


def test_load_rejects_invalid_profile_before_touching_the_kernel() -> None:
    def body() -> dict[str, Any]:
        try:
            seccomp.load({"defaultAction": "SCMP_ACT_ALLOW",
                          "syscalls": [{"names": ["read"], "action": "SCMP_ACT_FOO"}]})
        except errors.SpecError as e:
            status = open("/proc/self/status").read()
            mode = [ln for ln in status.splitlines() if ln.startswith("Seccomp:")][0]
            return {"error": str(e), "mode": mode.split()[1]}
        return {"error": None}

    out = run_in_child(body)
    assert out["error"] == 'linux.seccomp.syscalls[0].action: unknown action "SCMP_ACT_FOO"'
    assert out["mode"] == "0"


# A filter that makes getcwd fail, loaded without no_new_privs by a child that dropped CAP_SYS_ADMIN.
GETCWD_FAILS = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO"}]}


def _load_without_cap_sys_admin(profile: dict) -> dict[str, Any]:
    """{"errno", "msg", "getcwd"} of a failed seccomp.load in such a child ({"errno": 0} if it loaded)."""
    if syscalls.prctl(syscalls.PR_GET_NO_NEW_PRIVS) == 1:
        pytest.skip("this test process already runs with no_new_privs")
    cap_sys_admin = 1 << 21

    def body() -> dict[str, Any]:
        eff, perm, inh = syscalls.capget()
        syscalls.capset(eff & ~cap_sys_admin, perm & ~cap_sys_admin, inh & ~cap_sys_admin)
        try:
            seccomp.load(profile)
        except OSError as e:
            return {"errno": e.errno, "msg": str(e), "getcwd": errno_of(os.getcwd)}
        return {"errno": 0}

    out = run_in_child(body)
    return out


def test_load_without_nnp_or_cap_sys_admin_explains_eacces() -> None:
    out = _load_without_cap_sys_admin(GETCWD_FAILS)
    assert out["errno"] == errno.EACCES
    assert "seccomp_load" in out["msg"] and "CAP_SYS_ADMIN" in out["msg"]
    assert out["getcwd"] == 0  # nothing was installed


# --- the compiled-program cache (prepare -> load) ------------------------------


@pytest.fixture
def forget_prepared() -> Any:
    """prepare() remembers its program for load(): never let it reach another test."""
    yield
    seccomp._prepared = None


def _reordered(value: Any) -> Any:
    """The same JSON value with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


def test_cache_key_ignores_key_order() -> None:
    profile = docker_profile()
    again = _reordered(profile)
    assert list(again) != list(profile) and again == profile
    assert seccomp.cache_key(again) == seccomp.cache_key(profile)
    assert len(seccomp.cache_key(profile)) == 64
    assert seccomp.cache_key(profile) == seccomp.cache_key(copy.deepcopy(profile))


@pytest.mark.parametrize("mutate", [
    _set(["syscalls", 5, "errnoRet"], 39),
    _set(["architectures"], ["SCMP_ARCH_X86_64"]),
    _set(["flags"], ["SECCOMP_FILTER_FLAG_LOG"]),
    _set(["defaultErrnoRet"], 38),
    _delete(["syscalls", 8]),
], ids=["errnoRet", "architectures", "flags", "defaultErrnoRet", "one-rule-less"])
def test_cache_key_changes_with_the_profile(mutate: Callable[[dict[str, Any]], None]) -> None:
    profile = docker_profile()
    changed = copy.deepcopy(profile)
    mutate(changed)
    assert seccomp.cache_key(changed) != seccomp.cache_key(profile)


def test_cache_key_changes_with_the_host_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    # No second architecture to run on: a uname that reports one is the only way.
    profile = docker_profile()
    here = seccomp.cache_key(profile)
    real = os.uname()
    other = "aarch64" if real.machine != "aarch64" else "x86_64"
    fake = os.uname_result((real.sysname, real.nodename, real.release, real.version, other))
    monkeypatch.setattr(os, "uname", lambda: fake)
    assert seccomp.cache_key(profile) != here


def _cache_file(prepared: seccomp.Prepared) -> bytes:
    assert prepared.path is not None
    with open(prepared.path, "rb") as f:
        return f.read()


def test_prepare_misses_then_hits_with_the_program_libseccomp_exports(tmp_path: Any,
                                                                      forget_prepared: Any) -> None:
    cache = str(tmp_path / "cache")
    profile = docker_profile()
    first = seccomp.prepare(profile, cache)
    assert (first.hit, first.path) == (False, os.path.join(cache, first.key))
    assert os.stat(cache).st_mode & 0o7777 == 0o700
    assert os.stat(first.path).st_mode & 0o7777 == 0o600
    assert os.listdir(cache) == [first.key]  # no temporary file left behind
    data = _cache_file(first)
    program = export(profile)
    assert data[:8] == b"HNKBPF01"
    assert data[8:40] == bytes.fromhex(first.key)
    assert int.from_bytes(data[40:44], "little") == len(program) // 8 == first.instructions
    assert data[44:48] == bytes(4)
    assert data[48:] == program

    second = seccomp.prepare(_reordered(profile), cache)
    assert (second.hit, second.key, second.instructions) == (True, first.key, first.instructions)
    assert _cache_file(second) == data


def _truncate(data: bytes) -> bytes:
    return data[:-8]


def _append_insn(data: bytes) -> bytes:
    return data + bytes(8)


def _odd_length(data: bytes) -> bytes:
    return data + b"abc"


def _bad_magic(data: bytes) -> bytes:
    return b"XXXXXXXX" + data[8:]


def _count_zero(data: bytes) -> bytes:
    return data[:40] + bytes(4) + data[44:48]


def _header_only(data: bytes) -> bytes:
    return data[:30]


def _other_key(data: bytes) -> bytes:
    return data[:8] + bytes(32) + data[40:]


@pytest.mark.parametrize("corrupt", [_truncate, _append_insn, _odd_length, _bad_magic, _count_zero,
                                     _header_only, _other_key])
def test_prepare_rebuilds_a_corrupt_cache_file(tmp_path: Any, forget_prepared: Any,
                                               corrupt: Callable[[bytes], bytes]) -> None:
    cache = str(tmp_path / "cache")
    profile = docker_profile()
    first = seccomp.prepare(profile, cache)
    good = _cache_file(first)
    assert first.path is not None
    with open(first.path, "wb") as f:
        f.write(corrupt(good))
    assert seccomp.read_cached(first.path, first.key) is None
    again = seccomp.prepare(profile, cache)
    assert (again.hit, again.instructions) == (False, first.instructions)
    assert _cache_file(again) == good  # replaced by a good copy
    assert seccomp.prepare(profile, cache).hit


def test_a_cache_file_for_another_profile_is_not_loaded(tmp_path: Any, forget_prepared: Any) -> None:
    # A (valid) file copied under another key's name: its header names its own key.
    cache = str(tmp_path / "cache")
    allow_all = seccomp.prepare({"defaultAction": "SCMP_ACT_ALLOW"}, cache)
    profile = docker_profile()
    key = seccomp.cache_key(profile)
    assert allow_all.path is not None
    os.rename(allow_all.path, os.path.join(cache, key))
    prepared = seccomp.prepare(profile, cache)
    assert not prepared.hit
    assert _cache_file(prepared)[48:] == export(profile)


def test_a_cache_file_others_can_write_is_not_trusted(tmp_path: Any, forget_prepared: Any) -> None:
    cache = str(tmp_path / "cache")
    profile = docker_profile()
    first = seccomp.prepare(profile, cache)
    assert first.path is not None
    os.chmod(first.path, 0o622)
    assert seccomp.read_cached(first.path, first.key) is None
    assert not seccomp.prepare(profile, cache).hit
    assert os.stat(first.path).st_mode & 0o7777 == 0o600


def test_an_open_cache_directory_is_not_used(tmp_path: Any, forget_prepared: Any) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    cache.chmod(0o755)
    prepared = seccomp.prepare(docker_profile(), str(cache))
    assert (prepared.hit, prepared.path) == (False, None)
    assert list(cache.iterdir()) == []
    assert prepared.instructions == len(export(docker_profile())) // 8


def test_an_unwritable_cache_does_not_fail_prepare(tmp_path: Any, forget_prepared: Any) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    prepared = seccomp.prepare(docker_profile(), str(not_a_dir / "cache"))
    assert (prepared.hit, prepared.path) == (False, None)
    assert prepared.instructions == len(export(docker_profile())) // 8


def test_write_cached_failure_returns_false(tmp_path: Any) -> None:
    assert not seccomp.write_cached(str(tmp_path / "missing" / "x"), "00" * 32, bytes(8))
    assert not (tmp_path / "missing").exists()


def test_prepare_uses_the_environment_variable(tmp_path: Any, forget_prepared: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(seccomp.CACHE_DIR_ENV, str(tmp_path / "from-env"))
    prepared = seccomp.prepare(docker_profile())
    assert prepared.path == str(tmp_path / "from-env" / prepared.key)
    assert os.path.isfile(prepared.path)


def test_prepare_validates_first(tmp_path: Any, forget_prepared: Any) -> None:
    with pytest.raises(errors.SpecError, match=r"linux.seccomp.defaultAction: required"):
        seccomp.prepare({"syscalls": []}, str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("warm", [False, True], ids=["miss", "hit"])
def test_load_installs_the_prepared_program(tmp_path: Any, forget_prepared: Any, warm: bool) -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}],
    }
    cache = str(tmp_path / "cache")
    if warm:
        seccomp.prepare(copy.deepcopy(profile), cache)
    prepared = seccomp.prepare(profile, cache)
    assert prepared.hit == warm
    esrch = syscalls.SECCOMP_FILTER_FLAG_TSYNC_ESRCH
    flags = 7 | (esrch if syscalls.seccomp_flag_supported(esrch) else 0)
    assert prepared.flags == flags
    target = str(tmp_path / "made-by-child")
    trace_r, trace_w = os.pipe()

    def body() -> dict[str, Any]:
        seccomp._lib = None  # the fast path must not need libseccomp at all
        explain.enable(trace_w)
        _load_with_nnp(profile)
        explain.disable()
        status = open("/proc/self/status").read()
        return {
            "mkdir": errno_of(lambda: os.mkdir(target)),
            "stat": errno_of(lambda: os.stat(str(tmp_path))),
            "mode": [ln for ln in status.splitlines() if ln.startswith("Seccomp:")][0].split()[1],
            "libseccomp_used": seccomp._lib is not None,
        }

    out = run_in_child(body)
    os.close(trace_w)
    trace = os.read(trace_r, 4096).decode()
    os.close(trace_r)
    assert out == {"mkdir": errno.ENOSYS, "stat": 0, "mode": "2", "libseccomp_used": False}
    word = "cached" if warm else "compiled"
    assert trace == (f"+ # seccomp: {word} filter {prepared.key[:16]} ({prepared.instructions} instructions)"
                     f"    # seccomp(SECCOMP_SET_MODE_FILTER, flags={flags}); no shell equivalent\n")


def test_load_of_another_profile_falls_back_to_libseccomp(tmp_path: Any, forget_prepared: Any) -> None:
    seccomp.prepare({"defaultAction": "SCMP_ACT_ALLOW"}, str(tmp_path / "cache"))
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["rmdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS}]}
    (tmp_path / "d").mkdir()

    def body() -> dict[str, Any]:
        _load_with_nnp(profile)
        return {"rmdir": errno_of(lambda: os.rmdir(str(tmp_path / "d")))}

    assert run_in_child(body) == {"rmdir": errno.EROFS}


def test_prepared_load_without_nnp_or_cap_sys_admin_explains_eacces(tmp_path: Any,
                                                                    forget_prepared: Any) -> None:
    seccomp.prepare(GETCWD_FAILS, str(tmp_path / "cache"))
    out = _load_without_cap_sys_admin(GETCWD_FAILS)
    assert out["errno"] == errno.EACCES
    assert "SECCOMP_SET_MODE_FILTER" in out["msg"] and "CAP_SYS_ADMIN" in out["msg"]
    assert out["getcwd"] == 0


STRACE_SCRIPT = """
import sys
from hanok.runtime import seccomp, syscalls
profile = {"defaultAction": "SCMP_ACT_ALLOW", "flags": sys.argv[2:],
           "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}
if sys.argv[1] == "prepared":
    seccomp.prepare(profile, sys.argv[0] + ".cache")
syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
seccomp.load(profile)
"""


def _installed_filter_call(tmp_path: Any, how: str, flags: list[str]) -> str:
    """The seccomp(SECCOMP_SET_MODE_FILTER, ...) call that installed the filter, as strace shows it."""
    script = tmp_path / f"load-{how}.py"
    script.write_text(STRACE_SCRIPT)
    log = tmp_path / f"strace-{how}.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run(["strace", "-qq", "-e", "trace=seccomp", "-o", str(log), sys.executable, str(script),
                    how, *flags], env=env, check=True)
    calls = [line for line in log.read_text().splitlines()
             if line.startswith("seccomp(SECCOMP_SET_MODE_FILTER") and "{len=" in line]
    assert len(calls) == 1, log.read_text()
    return calls[0].split("{len=")[0] + calls[0].split("{len=")[1].split(",")[0]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to see the seccomp(2) call")
@pytest.mark.parametrize("flags", [
    [],
    ["SECCOMP_FILTER_FLAG_TSYNC"],
    ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
    ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
], ids=["none", "tsync", "log-spec", "all"])
def test_prepared_load_makes_the_same_syscall_as_libseccomp(tmp_path: Any, flags: list[str]) -> None:
    via_libseccomp = _installed_filter_call(tmp_path, "libseccomp", flags)
    prepared = _installed_filter_call(tmp_path, "prepared", flags)
    assert prepared == via_libseccomp
