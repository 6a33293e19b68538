"""OCI `linux.seccomp` -> a seccomp BPF filter, built with libseccomp through cffi.

Three entry points, one filter builder:

* `validate()` runs in the parent at `create`, before anything is forked, so a
  bad profile fails with a one-line SpecError naming the field
  (`linux.seccomp.syscalls[3].action: unknown action "SCMP_ACT_FOO"`) instead of
  killing a half-made container from inside its init.
* `load()` runs in the container init just before execve: it builds the filter
  and hands it to the kernel. It must not fork and imports nothing heavy.
* `export_bpf()` builds the same filter and writes the raw BPF program to a file
  descriptor without loading it (tests, and `--explain`-style teaching).

Semantics follow runc, because profiles (Docker's, podman's, Kubernetes') are
written against it:

* syscall names libseccomp does not know are skipped, not errors: profiles list
  syscalls of newer kernels than the host's;
* a rule whose action equals the default action is skipped (libseccomp refuses
  it with EACCES, and it would change nothing anyway);
* when one syscall entry compares the same argument twice, each comparison
  becomes its own rule (libseccomp refuses two comparisons of one argument in
  one rule); otherwise all comparisons go into one rule (they AND together);
* errnoRet / defaultErrnoRet default to EPERM;
* the filter does not set no_new_privs by itself (libseccomp would by default):
  `process.noNewPrivileges` decides that, and the caller sets it.

libseccomp is opened lazily (`libseccomp.so.2`), so a config without seccomp
never pays for it. The cdefs live in `_syscalls_build.py` and come with
`syscalls.ffi`.
"""
from __future__ import annotations

import os

if False:  # typing only: `typing` imports re and enum, ~7 ms on the create path
    from typing import Any

from hanok.runtime import errors, explain, syscalls

ffi = syscalls.ffi

# --- constants from libseccomp's seccomp.h (2.5.x) ---------------------------

# Action values. ERRNO and TRACE carry a 16-bit datum in the low bits.
_ACT_KILL_PROCESS = 0x80000000
_ACT_KILL_THREAD = 0x00000000
_ACT_TRAP = 0x00030000
_ACT_ERRNO = 0x00050000
_ACT_TRACE = 0x7FF00000
_ACT_LOG = 0x7FFC0000
_ACT_ALLOW = 0x7FFF0000
_ACT_NOTIFY = 0x7FC00000

_ACTIONS: dict[str, int] = {
    "SCMP_ACT_KILL": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": _ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": _ACT_TRAP,
    "SCMP_ACT_ERRNO": _ACT_ERRNO,
    "SCMP_ACT_TRACE": _ACT_TRACE,
    "SCMP_ACT_LOG": _ACT_LOG,
    "SCMP_ACT_ALLOW": _ACT_ALLOW,
    "SCMP_ACT_NOTIFY": _ACT_NOTIFY,
}
# Only these two carry a return code; the spec says any other action given an
# errno "MUST print an error and fail".
_ACTIONS_WITH_ERRNO = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")
_EPERM = 1
# The action datum is 16 bits wide; the kernel caps an ERRNO datum at 4095.
_MAX_RET = 0xFFFF

# enum scmp_compare
_OPS: dict[str, int] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# enum scmp_filter_attr
_FLTATR_CTL_NNP = 3
_FLTATR_CTL_TSYNC = 4
_FLTATR_CTL_LOG = 6
_FLTATR_CTL_SSB = 7
_FLTATR_CTL_OPTIMIZE = 8
_FLTATR_API_SYSRAWRC = 9

# seccomp(2) filter flags the spec names -> the libseccomp attribute setting it.
_FLAGS: dict[str, int] = {
    "SECCOMP_FILTER_FLAG_TSYNC": _FLTATR_CTL_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": _FLTATR_CTL_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": _FLTATR_CTL_SSB,
}
# Valid in the spec, but only meaningful with SCMP_ACT_NOTIFY (the kernel
# rejects it without a listener), which hanok does not support yet.
_UNSUPPORTED_FLAGS = ("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",)

# Spec SCMP_ARCH_* names -> libseccomp's own names for seccomp_arch_resolve_name.
_ARCHES: dict[str, str] = {
    "SCMP_ARCH_X86": "x86",
    "SCMP_ARCH_X86_64": "x86_64",
    "SCMP_ARCH_X32": "x32",
    "SCMP_ARCH_ARM": "arm",
    "SCMP_ARCH_AARCH64": "aarch64",
    "SCMP_ARCH_MIPS": "mips",
    "SCMP_ARCH_MIPS64": "mips64",
    "SCMP_ARCH_MIPS64N32": "mips64n32",
    "SCMP_ARCH_MIPSEL": "mipsel",
    "SCMP_ARCH_MIPSEL64": "mipsel64",
    "SCMP_ARCH_MIPSEL64N32": "mipsel64n32",
    "SCMP_ARCH_PPC": "ppc",
    "SCMP_ARCH_PPC64": "ppc64",
    "SCMP_ARCH_PPC64LE": "ppc64le",
    "SCMP_ARCH_S390": "s390",
    "SCMP_ARCH_S390X": "s390x",
    "SCMP_ARCH_PARISC": "parisc",
    "SCMP_ARCH_PARISC64": "parisc64",
    "SCMP_ARCH_RISCV64": "riscv64",
    # newer than libseccomp 2.5: known names, resolved (or refused) at run time
    "SCMP_ARCH_LOONGARCH64": "loongarch64",
    "SCMP_ARCH_M68K": "m68k",
    "SCMP_ARCH_SH": "sh",
    "SCMP_ARCH_SHEB": "sheb",
}

_MAX_ARG_INDEX = 5  # syscalls take at most six arguments
_U64_MAX = (1 << 64) - 1
_NR_SCMP_ERROR = -1  # seccomp_syscall_resolve_name: "no such syscall"
_EEXIST = 17
_EACCES = 13
# runc turns libseccomp's binary-tree layout on above this many syscall
# entries (libseccomp <= 2.5.4 misbehaves with it and zero rules).
_OPTIMIZE_ABOVE = 32

_P = "linux.seccomp"

_lib: Any = None


def _seccomp_lib() -> Any:
    """Open libseccomp on first use: configs without seccomp never pay for it."""
    global _lib
    if _lib is None:
        try:
            _lib = ffi.dlopen("libseccomp.so.2")
        except OSError as e:
            raise errors.NotSupported(
                f"{_P}: the profile needs libseccomp, which is not installed ({e})") from None
    return _lib


# --- validation ---------------------------------------------------------------


def _is_uint(value: Any, maximum: int) -> bool:
    # bool is an int in Python, but `true` is not a number in JSON
    return type(value) is int and 0 <= value <= maximum


def _check_ret(value: Any, field: str, action_field: str, action: str) -> None:
    if not _is_uint(value, _MAX_RET):
        raise errors.SpecError(f"{field}: must be an integer between 0 and {_MAX_RET}, got {value!r}")
    if action not in _ACTIONS_WITH_ERRNO:
        raise errors.SpecError(
            f"{field}: only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take an errno, "
            f"but {action_field} is {action}")


def _check_action(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise errors.SpecError(f"{field}: must be a string, got {value!r}")
    if value not in _ACTIONS:
        raise errors.SpecError(f'{field}: unknown action "{value}"')
    if value == "SCMP_ACT_NOTIFY":
        raise errors.NotSupported(
            f"{field}: SCMP_ACT_NOTIFY (seccomp user notification via listenerPath) "
            "is not supported by hanok yet")
    return value


def _check_list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise errors.SpecError(f"{field}: must be an array, got {type(value).__name__}")
    return value


def validate(seccomp: dict[str, Any]) -> None:
    """Check a `linux.seccomp` object completely, before any process exists.

    Raises SpecError (or NotSupported for valid requests hanok or the host's
    libseccomp cannot honour) with one line naming the offending field. Syscall
    names are not checked against libseccomp: unknown ones are skipped at load,
    as runc and crun do. Architectures are resolved through libseccomp here,
    so an arch the installed library lacks fails at `create`, not in the init.
    """
    if not isinstance(seccomp, dict):
        raise errors.SpecError(f"{_P}: must be an object, got {type(seccomp).__name__}")
    if "defaultAction" not in seccomp:
        raise errors.SpecError(f"{_P}.defaultAction: required")
    default = _check_action(seccomp["defaultAction"], f"{_P}.defaultAction")
    if seccomp.get("defaultErrnoRet") is not None:
        _check_ret(seccomp["defaultErrnoRet"], f"{_P}.defaultErrnoRet",
                   f"{_P}.defaultAction", default)

    arches = _check_list(seccomp.get("architectures") or [], f"{_P}.architectures")
    for i, arch in enumerate(arches):
        field = f"{_P}.architectures[{i}]"
        if not isinstance(arch, str):
            raise errors.SpecError(f"{field}: must be a string, got {arch!r}")
        if arch not in _ARCHES:
            raise errors.SpecError(f'{field}: unknown architecture "{arch}"')

    flags = _check_list(seccomp.get("flags") or [], f"{_P}.flags")
    for i, flag in enumerate(flags):
        field = f"{_P}.flags[{i}]"
        if not isinstance(flag, str):
            raise errors.SpecError(f"{field}: must be a string, got {flag!r}")
        if flag in _UNSUPPORTED_FLAGS:
            raise errors.NotSupported(
                f"{field}: {flag} is not supported by hanok yet (it only applies to SCMP_ACT_NOTIFY)")
        if flag not in _FLAGS:
            raise errors.SpecError(f'{field}: unknown flag "{flag}"')

    for key in ("listenerPath", "listenerMetadata"):
        if seccomp.get(key) is not None and not isinstance(seccomp[key], str):
            raise errors.SpecError(f"{_P}.{key}: must be a string, got {seccomp[key]!r}")
    if seccomp.get("listenerMetadata") and not seccomp.get("listenerPath"):
        raise errors.SpecError(f"{_P}.listenerMetadata: must not be set without listenerPath")
    # listenerPath alone is fine: the spec says it is ignored without SCMP_ACT_NOTIFY.

    syscalls_ = _check_list(seccomp.get("syscalls") or [], f"{_P}.syscalls")
    for i, rule in enumerate(syscalls_):
        _validate_rule(rule, f"{_P}.syscalls[{i}]")

    # The profile will need libseccomp in the init anyway (dlopen: ~0.1 ms), so
    # a host without it, or an arch it lacks, fails here at `create`.
    lib = _seccomp_lib()
    for i, arch in enumerate(arches):
        _arch_token(lib, arch, f"{_P}.architectures[{i}]")


def _validate_rule(rule: Any, field: str) -> None:
    if not isinstance(rule, dict):
        raise errors.SpecError(f"{field}: must be an object, got {rule!r}")
    if "names" not in rule:
        raise errors.SpecError(f"{field}.names: required")
    names = _check_list(rule["names"], f"{field}.names")
    if not names:
        raise errors.SpecError(f"{field}.names: must contain at least one syscall name")
    for j, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise errors.SpecError(f"{field}.names[{j}]: must be a non-empty string, got {name!r}")
    if "action" not in rule:
        raise errors.SpecError(f"{field}.action: required")
    action = _check_action(rule["action"], f"{field}.action")
    if rule.get("errnoRet") is not None:
        _check_ret(rule["errnoRet"], f"{field}.errnoRet", f"{field}.action", action)
    for k, arg in enumerate(_check_list(rule.get("args") or [], f"{field}.args")):
        afield = f"{field}.args[{k}]"
        if not isinstance(arg, dict):
            raise errors.SpecError(f"{afield}: must be an object, got {arg!r}")
        for key in ("index", "value", "op"):
            if key not in arg:
                raise errors.SpecError(f"{afield}.{key}: required")
        if type(arg["index"]) is not int or arg["index"] < 0:
            raise errors.SpecError(f"{afield}.index: must be a non-negative integer, got {arg['index']!r}")
        if arg["index"] > _MAX_ARG_INDEX:
            raise errors.SpecError(
                f"{afield}.index: {arg['index']} is out of range, syscalls have arguments 0 to {_MAX_ARG_INDEX}")
        for key in ("value", "valueTwo"):
            if key in arg and arg[key] is not None and not _is_uint(arg[key], _U64_MAX):
                raise errors.SpecError(f"{afield}.{key}: must be an unsigned 64-bit integer, got {arg[key]!r}")
        op = arg["op"]
        if not isinstance(op, str):
            raise errors.SpecError(f"{afield}.op: must be a string, got {op!r}")
        if op not in _OPS:
            raise errors.SpecError(f'{afield}.op: unknown operator "{op}"')


# --- building -----------------------------------------------------------------


def _action_value(name: str, ret: int | None) -> int:
    """The 32-bit libseccomp action for a spec action name and optional errnoRet."""
    value = _ACTIONS[name]
    if name in _ACTIONS_WITH_ERRNO:
        value |= (_EPERM if ret is None else ret) & _MAX_RET
    return value


def _arch_token(lib: Any, arch: str, field: str) -> int:
    token = lib.seccomp_arch_resolve_name(_ARCHES[arch].encode())
    if token == 0:
        raise errors.NotSupported(f"{field}: {arch} is not supported by the installed libseccomp")
    return token


def _fail(rc: int, what: str) -> str:
    """libseccomp returns -errno; render it as `what: strerror`."""
    return f"{what}: {os.strerror(-rc)}"


def _build(seccomp: dict[str, Any]) -> tuple[Any, int]:
    """Build the filter for a validated profile; return (ctx, number of rules).

    The caller owns ctx and must seccomp_release() it. Shared by load() and
    export_bpf() so what is tested and taught is exactly what gets loaded.
    """
    lib = _seccomp_lib()
    default = _action_value(seccomp["defaultAction"], seccomp.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(default)
    if ctx == ffi.NULL:
        raise errors.SpecError(f"{_P}.defaultAction: libseccomp refused {seccomp['defaultAction']}")
    try:
        rules = _fill(lib, ctx, seccomp, default)
    except BaseException:
        lib.seccomp_release(ctx)
        raise
    return ctx, rules


def _set_attr(lib: Any, ctx: Any, attr: int, value: int, what: str) -> None:
    rc = lib.seccomp_attr_set(ctx, attr, value)
    if rc < 0:
        raise errors.NotSupported(_fail(rc, what))


def _fill(lib: Any, ctx: Any, seccomp: dict[str, Any], default: int) -> int:
    # Kernel errors from seccomp_load come back as the real errno (EACCES,
    # EINVAL) rather than libseccomp 2.5's catch-all ECANCELED. Best effort:
    # libseccomp < 2.5 lacks the attribute and still works.
    lib.seccomp_attr_set(ctx, _FLTATR_API_SYSRAWRC, 1)
    # libseccomp sets no_new_privs on load unless told not to; whether the
    # container gets it is process.noNewPrivileges' call, not the filter's.
    _set_attr(lib, ctx, _FLTATR_CTL_NNP, 0, "libseccomp: no_new_privs attribute")

    for i, arch in enumerate(seccomp.get("architectures") or []):
        field = f"{_P}.architectures[{i}]"
        rc = lib.seccomp_arch_add(ctx, _arch_token(lib, arch, field))
        if rc < 0 and rc != -_EEXIST:  # the native arch is always there already
            raise errors.NotSupported(_fail(rc, f"{field}: cannot add {arch}"))

    for i, flag in enumerate(seccomp.get("flags") or []):
        _set_attr(lib, ctx, _FLAGS[flag], 1, f"{_P}.flags[{i}]: {flag} not supported by libseccomp or kernel")

    rules = 0
    entries = seccomp.get("syscalls") or []
    for i, entry in enumerate(entries):
        action = _action_value(entry["action"], entry.get("errnoRet"))
        if action == default:
            continue  # redundant; libseccomp would refuse it with EACCES
        args = entry.get("args") or []
        cmps = ffi.new("struct scmp_arg_cmp[]", max(len(args), 1))
        for k, arg in enumerate(args):
            cmps[k].arg = arg["index"]
            cmps[k].op = _OPS[arg["op"]]
            cmps[k].datum_a = arg["value"]
            cmps[k].datum_b = arg.get("valueTwo") or 0
        indexes = [a["index"] for a in args]
        if len(set(indexes)) == len(indexes):
            groups = [(cmps, len(args))]  # one rule: all comparisons AND together
        else:
            # runc's fallback: one rule per comparison (they OR together)
            groups = [(cmps + k, 1) for k in range(len(args))]
        for name in entry["names"]:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr == _NR_SCMP_ERROR:
                continue  # a syscall this libseccomp does not know: skip it, like runc
            for arr, count in groups:
                rc = lib.seccomp_rule_add_array(ctx, action, nr, count, arr if count else ffi.NULL)
                if rc < 0:
                    raise errors.SpecError(_fail(
                        rc, f"{_P}.syscalls[{i}]: libseccomp refused the rule for {name}"))
                rules += 1

    if len(entries) > _OPTIMIZE_ABOVE:
        # Binary-tree dispatch; only a speed-up, so an old libseccomp may refuse it.
        lib.seccomp_attr_set(ctx, _FLTATR_CTL_OPTIMIZE, 2)
    return rules


def load(seccomp: dict[str, Any]) -> None:
    """Build the profile's filter and install it on the calling thread (on all
    threads with SECCOMP_FILTER_FLAG_TSYNC).

    Runs in the container init just before execve (after validate() passed in
    the parent). Without no_new_privs the kernel only accepts a filter from a
    process with CAP_SYS_ADMIN, so the caller loads it either after setting
    no_new_privs or before dropping capabilities. Raises OSError if the kernel
    refuses the filter. The profile is re-validated (pure Python, ~50 us for a
    Docker-sized profile) so a caller that skipped validate() still gets a
    one-line SpecError rather than a KeyError from the init.
    """
    validate(seccomp)
    lib = _seccomp_lib()
    ctx, rules = _build(seccomp)
    try:
        rc = lib.seccomp_load(ctx)
    finally:
        lib.seccomp_release(ctx)
    if rc < 0:
        err = -rc
        hint = ""
        if err == _EACCES:
            hint = (" (without no_new_privs, loading a seccomp filter needs CAP_SYS_ADMIN:"
                    " set process.noNewPrivileges or load before dropping capabilities)")
        raise OSError(err, f"seccomp_load: {os.strerror(err)}{hint}")
    if explain.enabled():
        default = seccomp["defaultAction"]
        if default in _ACTIONS_WITH_ERRNO:
            ret = seccomp.get("defaultErrnoRet")
            default += f"({_EPERM if ret is None else ret})"
        arches = " ".join(seccomp.get("architectures") or []) or "native"
        explain.step(f"seccomp load: {rules} rules, default {default}, arches {arches}",
                     "seccomp(SECCOMP_SET_MODE_FILTER) via libseccomp; no shell equivalent")


def export_bpf(seccomp: dict[str, Any], fd: int) -> None:
    """Write the profile's raw BPF program (struct sock_filter[]) to fd, unloaded.

    The profile is validated first, since this is also a debugging aid that is
    called on profiles that never went through `create`.
    """
    validate(seccomp)
    lib = _seccomp_lib()
    ctx, _ = _build(seccomp)
    try:
        rc = lib.seccomp_export_bpf(ctx, fd)
    finally:
        lib.seccomp_release(ctx)
    if rc < 0:
        raise OSError(-rc, f"seccomp_export_bpf: {os.strerror(-rc)}")
