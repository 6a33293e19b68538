"""OCI `linux.seccomp` -> a seccomp BPF filter, built with libseccomp through cffi.

Four entry points, one filter builder:

* `validate()` runs in the parent at `create`, before anything is forked, so a
  bad profile fails with a one-line SpecError naming the field
  (`linux.seccomp.syscalls[3].action: unknown action "SCMP_ACT_FOO"`) instead of
  killing a half-made container from inside its init.
* `prepare()` runs in the parent (init.preload, while the host's files are
  visible): it validates the profile and gets its compiled BPF program from the
  cache (`/run/hanok/seccomp-cache/<key>`), or builds it with libseccomp once
  and stores it there. The program is kept in memory for the forked init.
* `load()` runs in the container init just before execve: with a program from
  prepare() it is one seccomp(2) call (the kernel's own check and JIT of the
  program: ~0.9 ms for Docker's profile here) instead of 7-11 ms of libseccomp
  plus that; otherwise it builds the filter with libseccomp and loads it.
  It must not fork and imports nothing heavy.
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

The cache. A compiled program depends only on the profile, the architecture,
the kernel and the libseccomp build (and on how this module drives libseccomp:
`_CACHE_FORMAT`), so those are hashed into the key. A cache file is a 48-byte
header (magic, the key's digest, the instruction count, zero padding) followed
by the struct sock_filter array; a file whose header, key, length or owner does
not match is ignored and rebuilt, never loaded. Files are written tmp+rename
in a 0700 directory owned by the caller; /run is a tmpfs, so a reboot (new
kernel, new library) starts empty. The cache is only read in the parent: inside
the container's root the same path would name a file the image controls.
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

# OCI flags -> the seccomp(2) filter flags libseccomp sets for the same attributes.
_SYSCALL_FLAGS: dict[str, int] = {
    "SECCOMP_FILTER_FLAG_TSYNC": syscalls.SECCOMP_FILTER_FLAG_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": syscalls.SECCOMP_FILTER_FLAG_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": syscalls.SECCOMP_FILTER_FLAG_SPEC_ALLOW,
}

DEFAULT_CACHE_DIR = "/run/hanok/seccomp-cache"
CACHE_DIR_ENV = "HANOK_SECCOMP_CACHE"  # tests and benchmarks point it at a temp dir
# Bump when _build() changes the program it makes for the same profile.
_CACHE_FORMAT = "hanok-seccomp-bpf-1"
_MAGIC = b"HNKBPF01"
_HEADER_SIZE = 48  # magic (8) + sha256 digest of the key (32) + u32 instructions + 4 zero bytes

_lib: Any = None
_lib_identity: str | None = None
_prepared: Prepared | None = None


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
    """Install the profile's filter on the calling thread (on all threads with
    SECCOMP_FILTER_FLAG_TSYNC).

    Runs in the container init just before execve. If the parent ran
    prepare() on this profile, its compiled program is installed with one
    seccomp(2) call and the same filter flags libseccomp would use; otherwise
    the filter is built with libseccomp here. Without no_new_privs the kernel
    only accepts a filter from a process with CAP_SYS_ADMIN, so the caller
    loads it either after setting no_new_privs or before dropping
    capabilities. Raises OSError if the kernel refuses the filter. On the
    libseccomp path the profile is re-validated (pure Python, ~25 us for a
    Docker-sized profile) so a caller that skipped validate() still gets a
    one-line SpecError rather than a KeyError from the init.
    """
    prepared = _prepared
    if prepared is not None and (prepared.profile is seccomp or prepared.profile == seccomp):
        _install(prepared)
        return
    validate(seccomp)
    lib = _seccomp_lib()
    ctx, rules = _build(seccomp)
    try:
        rc = lib.seccomp_load(ctx)
    finally:
        lib.seccomp_release(ctx)
    if rc < 0:
        raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}{_load_hint(-rc)}")
    if explain.enabled():
        default = seccomp["defaultAction"]
        if default in _ACTIONS_WITH_ERRNO:
            ret = seccomp.get("defaultErrnoRet")
            default += f"({_EPERM if ret is None else ret})"
        arches = " ".join(seccomp.get("architectures") or []) or "native"
        explain.step(f"seccomp load: {rules} rules, default {default}, arches {arches}",
                     "seccomp(SECCOMP_SET_MODE_FILTER) via libseccomp; no shell equivalent")


def _load_hint(err: int) -> str:
    if err != _EACCES:
        return ""
    return (" (without no_new_privs, loading a seccomp filter needs CAP_SYS_ADMIN:"
            " set process.noNewPrivileges or load before dropping capabilities)")


def _install(prepared: Prepared) -> None:
    """Install a program prepare() made: one seccomp(2) call, same flags as libseccomp's."""
    try:
        syscalls.seccomp_set_mode_filter(prepared.fprog, prepared.flags)
    except OSError as e:
        err = e.errno or 0
        raise OSError(err, f"seccomp(SECCOMP_SET_MODE_FILTER): {e.strerror}{_load_hint(err)}") from None
    if explain.enabled():
        source = "cached" if prepared.hit else "compiled"
        explain.step(f"# seccomp: {source} filter {prepared.key[:16]} ({prepared.instructions} instructions)",
                     f"seccomp(SECCOMP_SET_MODE_FILTER, flags={prepared.flags}); no shell equivalent")


def export_bpf(seccomp: dict[str, Any], fd: int, *, validated: bool = False) -> None:
    """Write the profile's raw BPF program (struct sock_filter[]) to fd, unloaded.

    The profile is validated first, since this is also a debugging aid that is
    called on profiles that never went through `create`; `validated=True`
    skips that for a caller that has just done it.
    """
    if not validated:
        validate(seccomp)
    lib = _seccomp_lib()
    ctx, _ = _build(seccomp)
    try:
        rc = lib.seccomp_export_bpf(ctx, fd)
    finally:
        lib.seccomp_release(ctx)
    if rc < 0:
        raise OSError(-rc, f"seccomp_export_bpf: {os.strerror(-rc)}")


# --- the compiled-program cache -------------------------------------------------


class Prepared:
    """A profile's compiled filter, ready for load() in a forked child.

    `key` is the cache key (hex sha256), `hit` says whether the program came
    from the cache file at `path` (None when the cache directory was unusable),
    `flags` are the seccomp(2) filter flags to install it with.
    """

    __slots__ = ("profile", "key", "fprog", "flags", "hit", "path")

    def __init__(self, profile: dict[str, Any], key: str, fprog: syscalls.SockFprog, flags: int,
                 hit: bool, path: str | None):
        self.profile = profile
        self.key = key
        self.fprog = fprog
        self.flags = flags
        self.hit = hit
        self.path = path

    @property
    def instructions(self) -> int:
        return self.fprog.instructions


def _libseccomp_identity() -> str:
    """Which libseccomp build is mapped in this process: device, inode and path
    from /proc/self/maps (the path carries the version, the inode changes when a
    package upgrade replaces the file)."""
    global _lib_identity
    if _lib_identity is None:
        _seccomp_lib()
        identity = "unknown"
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) == 6 and "/libseccomp.so" in fields[5]:
                    identity = " ".join((fields[3], fields[4], fields[5].strip()))
                    break
        _lib_identity = identity
    return _lib_identity


def _canonical(seccomp: dict[str, Any]) -> str:
    """The profile as compact JSON with sorted keys, so key order does not matter."""
    import _json  # the C encoder json.dumps uses; `json` itself would import re

    encode = _json.make_encoder(None, _not_json, _json.encode_basestring_ascii, None,
                                ":", ",", True, False, True)
    return "".join(encode(seccomp, 0))


def _not_json(value: Any) -> Any:
    raise errors.SpecError(f"{_P}: {value!r} is not a JSON value")


def cache_key(seccomp: dict[str, Any]) -> str:
    """The cache key of a validated profile on this host: hex sha256 over the
    cache format, machine, kernel release, libseccomp build and the canonical
    profile (flags included: they are part of the profile)."""
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]  # hashlib loads OpenSSL: ~2 ms
    except ImportError:
        from hashlib import sha256
    uname = os.uname()
    text = "\n".join((_CACHE_FORMAT, uname.machine, uname.release, _libseccomp_identity(), _canonical(seccomp)))
    return str(sha256(text.encode()).hexdigest())


def _filter_flags(seccomp: dict[str, Any]) -> int:
    """The seccomp(2) flags libseccomp would pass for this profile: the OCI
    flags, plus TSYNC_ESRCH with TSYNC where the kernel has it (libseccomp >= 2.5
    probes for it and adds it, so a failed sync is ESRCH, not a thread id)."""
    flags = 0
    for flag in seccomp.get("flags") or []:
        flags |= _SYSCALL_FLAGS[flag]
    if flags & syscalls.SECCOMP_FILTER_FLAG_TSYNC and syscalls.seccomp_flag_supported(
            syscalls.SECCOMP_FILTER_FLAG_TSYNC_ESRCH):
        flags |= syscalls.SECCOMP_FILTER_FLAG_TSYNC_ESRCH
    return flags


def _usable_cache_dir(cache_dir: str) -> bool:
    """Create the cache directory (0700) if needed; trust it only if it is a real
    directory owned by us that nobody else can write into or read."""
    import stat

    try:
        st = os.lstat(cache_dir)
    except FileNotFoundError:
        try:
            os.makedirs(cache_dir, 0o700)
            os.chmod(cache_dir, 0o700)  # mkdir's mode is umasked
        except FileExistsError:
            pass  # another create made it just now: checked below like any other
        except OSError:
            return False
        try:
            st = os.lstat(cache_dir)
        except OSError:
            return False
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077 == 0


def read_cached(path: str, key: str) -> bytes | None:
    """The program stored at `path` for `key`, or None if the file is missing or
    not exactly what write_cached() makes for that key (wrong magic, key, length,
    owner or mode): a corrupt or foreign file is never trusted."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return None
        limit = _HEADER_SIZE + syscalls.BPF_MAXINSNS * syscalls.BPF_INSTRUCTION_SIZE
        data = os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    header, program = data[:_HEADER_SIZE], data[_HEADER_SIZE:]
    if (len(header) != _HEADER_SIZE or header[:8] != _MAGIC or header[8:40] != bytes.fromhex(key)
            or header[44:] != bytes(4)):
        return None
    count = int.from_bytes(header[40:44], "little")
    if not 0 < count <= syscalls.BPF_MAXINSNS or len(program) != count * syscalls.BPF_INSTRUCTION_SIZE:
        return None
    return program


def write_cached(path: str, key: str, program: bytes) -> bool:
    """Store `program` for `key` at `path` atomically (tmp + rename, mode 0600).

    Returns False instead of raising: a cache that cannot be written only
    costs the next container a rebuild, it must never fail this one.
    """
    count = len(program) // syscalls.BPF_INSTRUCTION_SIZE
    header = _MAGIC + bytes.fromhex(key) + count.to_bytes(4, "little") + bytes(4)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return False
    try:
        try:
            os.write(fd, header + program)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
    return True


def _compile(seccomp: dict[str, Any]) -> bytes:
    """Build the filter with libseccomp and return its BPF program (via a memfd)."""
    fd = os.memfd_create("hanok-seccomp", os.MFD_CLOEXEC)
    try:
        export_bpf(seccomp, fd, validated=True)
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def prepare(seccomp: dict[str, Any], cache_dir: str | None = None) -> Prepared:
    """Validate the profile and get its compiled program, from the cache if it
    holds a good copy, else from libseccomp (then stored for the next container).

    Runs in the parent before forking the init; the result is remembered so
    load() in the child installs it with one syscall. `cache_dir` defaults to
    $HANOK_SECCOMP_CACHE, else /run/hanok/seccomp-cache. An unusable cache
    directory or a failed write only means no caching, never an error.
    """
    global _prepared
    validate(seccomp)
    key = cache_key(seccomp)
    directory = cache_dir or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR
    path = os.path.join(directory, key) if _usable_cache_dir(directory) else None
    program = read_cached(path, key) if path is not None else None
    hit = program is not None
    if program is None:
        program = _compile(seccomp)
        if path is not None and write_cached(path, key, program):
            explain.step(f"# seccomp: compiled filter {key[:16]} with libseccomp, cached in {path}")
    _prepared = Prepared(seccomp, key, syscalls.SockFprog(program), _filter_flags(seccomp), hit, path)
    return _prepared
