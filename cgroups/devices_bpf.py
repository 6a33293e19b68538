"""cgroup v2 device access control: OCI device rules compiled into an eBPF program.

cgroup v2 has no devices.allow/devices.deny files. The kernel instead runs a
BPF_PROG_TYPE_CGROUP_DEVICE program attached to the cgroup (or to an ancestor)
whenever a process in it opens a device node or makes one with mknod(2). The
program gets r1 = a pointer to

    struct bpf_cgroup_dev_ctx {    /* include/uapi/linux/bpf.h */
        __u32 access_type;         /* low 16 bits: device type, BPF_DEVCG_DEV_BLOCK 1 or _CHAR 2;
                                      high 16 bits: access asked, BPF_DEVCG_ACC_MKNOD 1 | _READ 2 | _WRITE 4 */
        __u32 major;
        __u32 minor;
    };

and its verdict is r0: 1 allows the access, 0 refuses it (open or mknod then
fail with EPERM, "Operation not permitted").

What the rules mean (the OCI rules in their order, as cgroups/resources.py
validated them):
- a rule of type "a" resets everything: from there on every device is allowed
  (allow true) or denied (allow false), and the rules before it no longer
  matter, as cgroup v1's "a" and runc's emulator treat it. With no such rule
  the default is deny, as in runc on cgroup v2.
- otherwise, for each access bit asked (r, w, m) the last rule that matches
  the device (its type, its major or any, its minor or any) and names that bit
  decides. An access is allowed when each bit it asks for is allowed.
  Unlike cgroup v1 (where runc refuses such rule sets), a later deny may punch
  a hole in an earlier wildcard allow, and vice versa; and an access asking
  for r and w may be allowed by two rules (runc wants one rule naming both).

The program walks the rules from the last to the first. r3 holds the bits not
decided yet: an allow rule that matches clears its bits (allow once none are
left); a deny rule that matches a bit still undecided denies. Past the first
rule, the default decides.

Loading and attaching use bpf(2) directly through the generic syscall(2)
binding (attributes packed by hand): no libbpf, no bpftool, no compiler.
"""
from __future__ import annotations

import errno
import os
import struct

from hanok.runtime import explain
from hanok.runtime.errors import CgroupError

if False:  # for type checkers only: no import cost at run time
    from collections.abc import Sequence
    from typing import Any

    from hanok.cgroups.resources import DeviceRule

# ---------------------------------------------------------------- the assembler
# One instruction is (opcode, dst register, src register, offset, immediate),
# struct bpf_insn { u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm; }.

Insn = tuple[int, int, int, int, int]

R0, R1, R2, R3, R4, R5 = range(6)

# opcode = class | operation | source (include/uapi/linux/bpf.h, bpf_common.h)
LDX_MEM_W = 0x61     # dst = *(u32 *)(src + off)
ALU32_AND_K = 0x54   # dst = (u32)(dst & imm)
ALU32_RSH_K = 0x74   # dst = (u32)(dst >> imm)
ALU32_MOV_K = 0xB4   # dst = (u32)imm
ALU32_MOV_X = 0xBC   # dst = (u32)src
JMP_JEQ_K = 0x15     # if dst == imm: pc += off
JMP_JNE_K = 0x55     # if dst != imm: pc += off
JMP_EXIT = 0x95      # return r0


def ldx_w(dst: int, src: int, off: int) -> Insn:
    return (LDX_MEM_W, dst, src, off, 0)


def and32(dst: int, imm: int) -> Insn:
    return (ALU32_AND_K, dst, 0, 0, imm)


def rsh32(dst: int, imm: int) -> Insn:
    return (ALU32_RSH_K, dst, 0, 0, imm)


def mov32(dst: int, imm: int) -> Insn:
    return (ALU32_MOV_K, dst, 0, 0, imm)


def mov32_reg(dst: int, src: int) -> Insn:
    return (ALU32_MOV_X, dst, src, 0, 0)


def jeq(dst: int, imm: int, off: int) -> Insn:
    return (JMP_JEQ_K, dst, 0, off, imm)


def jne(dst: int, imm: int, off: int) -> Insn:
    return (JMP_JNE_K, dst, 0, off, imm)


def exit_() -> Insn:
    return (JMP_EXIT, 0, 0, 0, 0)


def encode(insns: Sequence[Insn]) -> bytes:
    """The program as the kernel takes it: 8 bytes per instruction (little-endian hosts)."""
    return b"".join(struct.pack("<BBhi", code, dst | (src << 4), off, _s32(imm))
                    for code, dst, src, off, imm in insns)


def _s32(value: int) -> int:
    """An immediate as the signed 32 bits the encoding holds.

    A jump compares the 64-bit register with the immediate sign-extended, so a
    major or minor of 2**31 or more matches nothing: no device has one (majors
    have 12 bits, minors 20).
    """
    return value - (1 << 32) if value >= 1 << 31 else value


# ---------------------------------------------------------------- the program

DEV_BLOCK, DEV_CHAR = 1, 2                       # BPF_DEVCG_DEV_*
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4         # BPF_DEVCG_ACC_*
DEVICE_TYPES = {"b": DEV_BLOCK, "c": DEV_CHAR}
ACCESS_BITS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}
ALL_ACCESS = ACC_MKNOD | ACC_READ | ACC_WRITE

ALLOW, DENY = 1, 0


def effective(rules: Sequence[DeviceRule]) -> tuple[bool, list[DeviceRule]]:
    """(default allow?, the rules after the last "a" rule, which alone still matter)."""
    default_allow = False
    kept: list[DeviceRule] = []
    for rule in rules:
        if rule[1] == "a":
            default_allow, kept = rule[0], []
        else:
            kept.append(rule)
    return default_allow, kept


def program(rules: Sequence[DeviceRule]) -> list[Insn]:
    """The eBPF instructions enforcing `rules` (see the module docstring for their meaning)."""
    default_allow, kept = effective(rules)
    insns = [
        ldx_w(R2, R1, 0), and32(R2, 0xFFFF),  # r2 = device type
        ldx_w(R3, R1, 0), rsh32(R3, 16),      # r3 = access bits asked, not decided yet
        ldx_w(R4, R1, 4),                     # r4 = major
        ldx_w(R5, R1, 8),                     # r5 = minor
    ]
    for rule in reversed(kept):
        insns += _block(rule)
    insns += [mov32(R0, ALLOW if default_allow else DENY), exit_()]
    return insns


def _block(rule: DeviceRule) -> list[Insn]:
    """One rule: its device tests (each skipping to the next block), then its effect on the access bits."""
    allow, kind, major, minor, access = rule
    bits = 0
    for letter in access:
        bits |= ACCESS_BITS[letter]
    if bits == ALL_ACCESS:
        body = [mov32(R0, ALLOW if allow else DENY), exit_()]
    elif allow:
        body = [
            and32(R3, 0xFFFF & ~bits),  # these bits are allowed
            jne(R3, 0, 2),              # some asked bit still undecided: go on
            mov32(R0, ALLOW), exit_(),
        ]
    else:
        body = [
            mov32_reg(R1, R3), and32(R1, bits),  # r1 = undecided bits this rule denies (ctx no longer needed)
            jeq(R1, 0, 2),
            mov32(R0, DENY), exit_(),
        ]
    tests = [(R2, DEVICE_TYPES[kind]), (R4, major), (R5, minor)]
    for register, value in reversed(tests):
        if value is not None:
            body.insert(0, jne(register, value, len(body)))
    return body


def describe(rules: Sequence[DeviceRule]) -> str:
    """The rules that matter, as cgroup v1 would list them, for --explain and error messages."""
    default_allow, kept = effective(rules)
    words = [f"default {'allow' if default_allow else 'deny'}"]
    for allow, kind, major, minor, access in kept:
        words.append(f"{'allow' if allow else 'deny'} {kind} {'*' if major is None else major}:"
                     f"{'*' if minor is None else minor} {access}")
    return ", ".join(words)


# ---------------------------------------------------------------- bpf(2)

_NR_BPF = {"x86_64": 321, "aarch64": 280}
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6          # attach type
BPF_F_ALLOW_MULTI = 2          # several programs per cgroup: needed to attach the new before detaching the old
# Device programs call no GPL-only helper: any license string loads. hanok's own.
LICENSE = b"Apache-2.0\0"
PROGRAM_NAME = b"hanok_devices"
# The kernel writes results back into the attributes (a query also sets fields
# past the ones passed in), so every call gets a zeroed buffer this big; the
# kernel accepts a longer buffer when the bytes it does not know are zero.
ATTR_SIZE = 128
LOG_SIZE = 1 << 16
MAX_PROGRAMS = 64              # the kernel's limit per cgroup and attach type

_CMD_NAMES = {BPF_PROG_LOAD: "BPF_PROG_LOAD", BPF_PROG_ATTACH: "BPF_PROG_ATTACH",
              BPF_PROG_DETACH: "BPF_PROG_DETACH", BPF_PROG_GET_FD_BY_ID: "BPF_PROG_GET_FD_BY_ID",
              BPF_PROG_QUERY: "BPF_PROG_QUERY"}


def _bpf(cmd: int, *fields: tuple[str, int | bytes]) -> tuple[int, Any]:
    """bpf(cmd, attr, ATTR_SIZE) with `fields` packed at the start of attr: (result, attr buffer).

    `fields` are (struct format, value) pairs laid out in order. Raises OSError.
    """
    from hanok.runtime.syscalls import ffi, libc

    packed = b"".join(struct.pack("=" + fmt, value) for fmt, value in fields)
    attr = ffi.new("char[]", ATTR_SIZE)
    ffi.memmove(attr, packed, len(packed))
    number = _NR_BPF.get(os.uname().machine)
    if number is None:
        raise OSError(errno.ENOSYS, f"bpf(2) number unknown on {os.uname().machine}")
    ret = libc.syscall(ffi.cast("long", number), ffi.cast("long", cmd), attr, ffi.cast("long", ATTR_SIZE))
    if ret < 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err))
    return ret, attr


def _address(buffer: Any) -> int:
    from hanok.runtime.syscalls import ffi

    return int(ffi.cast("uintptr_t", buffer))


def _failed(step: str, cgroup_dir: str, cmd: int, e: OSError, detail: str = "") -> CgroupError:
    message = f"device rules for cgroup {cgroup_dir}: {step} failed: bpf({_CMD_NAMES[cmd]}): {e.strerror}"
    if e.errno == errno.EPERM:
        message += " (needs CAP_SYS_ADMIN; before Linux 5.11 also a high enough RLIMIT_MEMLOCK)"
    return CgroupError(message + detail)


def attached(cgroup_dir: str) -> list[int]:
    """The ids of the device programs attached to this cgroup itself (not inherited ones)."""
    fd = _open_dir(cgroup_dir)
    try:
        return _query(fd, cgroup_dir)
    finally:
        os.close(fd)


def _open_dir(cgroup_dir: str) -> int:
    try:
        return os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise CgroupError(f"device rules for cgroup {cgroup_dir}: cannot open it: {e.strerror}") from None


def _query(dir_fd: int, cgroup_dir: str) -> list[int]:
    from hanok.runtime.syscalls import ffi

    ids = ffi.new("uint32_t[]", MAX_PROGRAMS)
    try:
        _, attr = _bpf(BPF_PROG_QUERY, ("I", dir_fd), ("I", BPF_CGROUP_DEVICE), ("I", 0), ("I", 0),
                       ("Q", _address(ids)), ("I", MAX_PROGRAMS))
    except OSError as e:
        raise _failed("listing the attached programs", cgroup_dir, BPF_PROG_QUERY, e) from None
    (count,) = struct.unpack_from("=I", ffi.buffer(attr), 24)  # prog_cnt, written back
    return [ids[i] for i in range(count)]


def open_program(prog_id: int) -> int | None:
    """A new fd for a loaded program, or None when no program has that id (any more)."""
    try:
        fd, _ = _bpf(BPF_PROG_GET_FD_BY_ID, ("I", prog_id))
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return fd


def load(insns: Sequence[Insn], cgroup_dir: str) -> int:
    """Load a device program: its fd. A verifier refusal reports the verifier's last word."""
    from hanok.runtime.syscalls import ffi

    code = encode(insns)
    code_buf = ffi.new("char[]", code)
    license_buf = ffi.new("char[]", LICENSE)

    def attempt(log_level: int, log_buf: Any) -> int:
        fd, _ = _bpf(BPF_PROG_LOAD, ("I", BPF_PROG_TYPE_CGROUP_DEVICE), ("I", len(insns)),
                     ("Q", _address(code_buf)), ("Q", _address(license_buf)),
                     ("I", log_level), ("I", LOG_SIZE if log_level else 0),
                     ("Q", _address(log_buf) if log_level else 0),
                     ("I", 0), ("I", 0), ("16s", PROGRAM_NAME))
        return fd

    try:
        return attempt(0, None)
    except OSError as e:
        if e.errno == errno.EPERM:
            raise _failed("loading the program", cgroup_dir, BPF_PROG_LOAD, e) from None
        first = e
    # ask again with the verifier's log, which only a failed load needs
    log_buf = ffi.new("char[]", LOG_SIZE)
    try:
        fd = attempt(1, log_buf)
    except OSError:
        # the verifier's word is the last line before its statistics ("processed N insns ...")
        lines = [line.strip() for line in ffi.string(log_buf).decode(errors="replace").splitlines()
                 if line.strip() and not line.startswith(("processed ", "verification time"))]
        said = f"; the verifier said: {lines[-1]}" if lines else ""
        raise _failed("loading the program", cgroup_dir, BPF_PROG_LOAD, first, said) from None
    return fd  # refused once, loaded when asked again: take it


def install(cgroup_dir: str, rules: Sequence[DeviceRule]) -> None:
    """Enforce `rules` in the cgroup: load and attach their program, then detach the ones it replaces.

    The new program is attached before the old ones are detached, so there is
    never a moment without a filter (for that moment both apply: the stricter
    of the two). If an old one cannot be detached, the new one is detached
    again before the error is raised. The program fd is closed at the end: the
    attachment holds the program, and removing the cgroup frees it.
    """
    insns = program(rules)
    dir_fd = _open_dir(cgroup_dir)
    try:
        old = _query(dir_fd, cgroup_dir)
        prog_fd = load(insns, cgroup_dir)
        try:
            if explain._fd is not None:
                explain.step(f"bpftool prog load devices.o /sys/fs/bpf/{PROGRAM_NAME.decode()} type cgroup/dev",
                             f"{len(insns)} eBPF instructions for: {describe(rules)}")
                explain.step(f"bpftool cgroup attach {explain.quote([cgroup_dir])} device "
                             f"pinned /sys/fs/bpf/{PROGRAM_NAME.decode()} multi",
                             "cgroup v2 device access control (no devices.allow file)")
            try:
                _bpf(BPF_PROG_ATTACH, ("I", dir_fd), ("I", prog_fd), ("I", BPF_CGROUP_DEVICE),
                     ("I", BPF_F_ALLOW_MULTI))
            except OSError as e:
                raise _failed("attaching the program", cgroup_dir, BPF_PROG_ATTACH, e) from None
            try:
                for prog_id in old:
                    _detach(dir_fd, cgroup_dir, prog_id)
            except CgroupError:
                try:
                    _detach_fd(dir_fd, prog_fd)
                except OSError:
                    pass  # the error that matters is the one raised
                raise
        finally:
            os.close(prog_fd)
    finally:
        os.close(dir_fd)


def _detach(dir_fd: int, cgroup_dir: str, prog_id: int) -> None:
    try:
        fd = open_program(prog_id)
    except OSError as e:
        raise _failed(f"finding the replaced program {prog_id}", cgroup_dir, BPF_PROG_GET_FD_BY_ID, e) from None
    if fd is None:
        return  # gone meanwhile
    try:
        if explain._fd is not None:
            explain.step(f"bpftool cgroup detach {explain.quote([cgroup_dir])} device id {prog_id}",
                         "the program the new one replaces")
        _detach_fd(dir_fd, fd)
    except OSError as e:
        if e.errno != errno.ENOENT:  # ENOENT: detached meanwhile
            raise _failed(f"detaching the replaced program {prog_id}", cgroup_dir, BPF_PROG_DETACH, e) from None
    finally:
        os.close(fd)


def _detach_fd(dir_fd: int, prog_fd: int) -> None:
    _bpf(BPF_PROG_DETACH, ("I", dir_fd), ("I", prog_fd), ("I", BPF_CGROUP_DEVICE))
