"""The cgroup v2 device program: its exact encoding, and its verdicts run through a small eBPF interpreter.

The interpreter below executes the encoded bytes (not the assembler's tuples),
so a wrong opcode, register nibble or jump offset shows up as a wrong verdict
or an interpreter error. Its verdicts are compared with hand-written tables and
with a plain reading of the rules' meaning (`expected`) over many random rule
sets. The last tests load programs into the kernel; they need root, and
nothing is attached anywhere.
"""
from __future__ import annotations

import os
import random
import struct

import pytest

from hanok.cgroups import devices_bpf as d
from hanok.cgroups.resources import device_rules
from hanok.runtime.errors import CgroupError, SpecError
from hanok.runtime.spec import device_rules_for

M32 = (1 << 32) - 1
M64 = (1 << 64) - 1
CTX = 1 << 40  # the value r1 holds: where the context "is"
TYPES = {"c": 2, "b": 1}
ACCESS = {"m": 1, "r": 2, "w": 4}


def rules_of(*oci: dict) -> list:
    return device_rules({"devices": list(oci)})


def run(code: bytes, kind: str, major: int, minor: int, access: str) -> int:
    """Execute an encoded device program against one access; its r0."""
    bits = sum(ACCESS[c] for c in access)
    ctx = struct.pack("<III", TYPES[kind] | bits << 16, major, minor)
    insns = [struct.unpack_from("<BBhi", code, i) for i in range(0, len(code), 8)]
    regs = [0] * 11
    regs[1] = CTX
    written = {1}
    pc = 0
    for _step in range(len(insns) + 1):  # every jump goes forward: no more steps than instructions
        op, nibbles, off, imm = insns[pc]
        dst, src = nibbles & 0xF, nibbles >> 4
        pc += 1
        if op == 0x95:  # exit
            assert 0 in written, "r0 read before written"
            return regs[0]
        if op in (0x61, 0x54, 0x74, 0xBC, 0x15, 0x55):
            reads = [src] if op in (0x61, 0xBC) else [dst]
            assert set(reads) <= written, f"register read before written at {pc - 1}"
        if op == 0x61:  # dst = *(u32 *)(src + off)
            assert regs[src] == CTX and off in (0, 4, 8)
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif op == 0x54:
            regs[dst] = regs[dst] & imm & M32
        elif op == 0x74:
            regs[dst] = (regs[dst] & M32) >> imm
        elif op == 0xB4:
            regs[dst] = imm & M32
        elif op == 0xBC:
            regs[dst] = regs[src] & M32
        elif op == 0x15:
            assert off > 0
            pc += off if regs[dst] == imm & M64 else 0
        elif op == 0x55:
            assert off > 0
            pc += off if regs[dst] != imm & M64 else 0
        else:
            raise AssertionError(f"unexpected opcode {op:#x} at {pc - 1}")
        if op not in (0x15, 0x55):
            written.add(dst)
    raise AssertionError("the program does not end")


def expected(rules: list, kind: str, major: int, minor: int, access: str) -> int:
    """The rules' meaning read plainly: per access bit, the last rule naming it decides; "a" resets."""
    default = False
    kept: list = []
    for rule in rules:
        if rule[1] == "a":
            default, kept = rule[0], []
        else:
            kept.append(rule)
    for bit in access:
        verdict = default
        for allow, k, ma, mi, acc in reversed(kept):
            if k == kind and ma in (None, major) and mi in (None, minor) and bit in acc:
                verdict = allow
                break
        if not verdict:
            return 0
    return 1


def verdict(rules: list, kind: str, major: int, minor: int, access: str) -> int:
    return run(d.encode(d.program(rules)), kind, major, minor, access)


# ---------------------------------------------------------------- encoding

PROLOGUE = (
    "6112000000000000"  # r2 = *(u32 *)(r1 + 0)
    "54020000ffff0000"  # w2 &= 0xffff
    "6113000000000000"  # r3 = *(u32 *)(r1 + 0)
    "7403000010000000"  # w3 >>= 16
    "6114040000000000"  # r4 = *(u32 *)(r1 + 4)
    "6115080000000000"  # r5 = *(u32 *)(r1 + 8)
)


@pytest.mark.parametrize("oci, tail", [
    ([{"allow": False}],
     "b400000000000000"    # w0 = 0
     "9500000000000000"),  # exit
    ([{"allow": False}, {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}],
     "5502040002000000"    # if r2 != 2 goto +4
     "5504030001000000"    # if r4 != 1 goto +3
     "5505020003000000"    # if r5 != 3 goto +2
     "b400000001000000"    # w0 = 1
     "9500000000000000"
     "b400000000000000"
     "9500000000000000"),
    ([{"allow": False}, {"allow": True, "type": "c", "major": 136, "access": "rw"}],
     "5502050002000000"    # if r2 != 2 goto +5
     "5504040088000000"    # if r4 != 136 goto +4
     "54030000f9ff0000"    # w3 &= ~(r|w)
     "5503020000000000"    # if r3 != 0 goto +2
     "b400000001000000"
     "9500000000000000"
     "b400000000000000"
     "9500000000000000"),
    ([{"allow": True}, {"allow": False, "type": "b", "access": "w"}],
     "5502050001000000"    # if r2 != 1 goto +5
     "bc31000000000000"    # w1 = w3
     "5401000004000000"    # w1 &= w
     "1501020000000000"    # if r1 == 0 goto +2
     "b400000000000000"    # w0 = 0
     "9500000000000000"
     "b400000001000000"    # w0 = 1 (the default)
     "9500000000000000"),
])
def test_encoding(oci: list, tail: str) -> None:
    assert d.encode(d.program(rules_of(*oci))).hex() == PROLOGUE + tail


def test_rules_are_walked_last_first_and_rules_before_a_reset_vanish() -> None:
    rules = rules_of({"allow": True, "type": "c", "major": 9}, {"allow": False},
                     {"allow": True, "type": "c", "major": 1, "minor": 3},
                     {"allow": True, "type": "b", "major": 8, "minor": 0})
    insns = d.program(rules)
    checks = [(dst, imm) for op, dst, _src, _off, imm in insns if op == d.JMP_JNE_K and dst in (d.R4, d.R5)]
    assert checks == [(d.R4, 8), (d.R5, 0), (d.R4, 1), (d.R5, 3)]
    assert d.effective(rules) == (False, rules[2:])
    assert d.describe(rules) == "default deny, allow c 1:3 rwm, allow b 8:0 rwm"


def test_no_rules_deny_everything_and_an_allow_reset_allows_everything() -> None:
    assert verdict([], "c", 1, 3, "rw") == 0
    assert verdict(rules_of({"allow": True}), "b", 8, 0, "rwm") == 1
    assert len(d.program(rules_of({"allow": True, "type": "a", "major": 1, "minor": 2, "access": "r"}))) == 8


def test_big_numbers_encode_as_signed_immediates() -> None:
    (insn,) = [i for i in d.program(rules_of({"allow": True, "type": "c", "major": 0xFFFFFFFF, "minor": 1}))
               if i[0] == d.JMP_JNE_K and i[1] == d.R4]
    assert struct.unpack_from("<i", d.encode([insn]), 4)[0] == -1
    with pytest.raises(SpecError, match=r"devices\[0\]\.major: must be a non-negative 32-bit integer"):
        rules_of({"allow": True, "type": "c", "major": 1 << 32})


# ---------------------------------------------------------------- verdicts

DEFAULT_SET = rules_of({"allow": False, "access": "rwm"}, *device_rules_for([]))


@pytest.mark.parametrize("kind, major, minor, access, allowed", [
    ("c", 1, 3, "rw", 1),      # /dev/null
    ("c", 1, 3, "m", 1),
    ("c", 1, 5, "r", 1),       # /dev/zero
    ("c", 1, 7, "w", 1),       # /dev/full
    ("c", 1, 9, "r", 1),       # /dev/urandom
    ("c", 5, 0, "rw", 1),      # /dev/tty
    ("c", 5, 2, "rw", 1),      # /dev/ptmx
    ("c", 10, 200, "rw", 1),   # /dev/net/tun
    ("c", 136, 4, "rw", 1),    # /dev/pts/4
    ("c", 1, 1, "r", 0),       # /dev/mem
    ("c", 1, 1, "m", 1),       # mknod is allowed for every char device...
    ("c", 1, 11, "w", 0),      # /dev/kmsg
    ("b", 8, 0, "r", 0),       # /dev/sda
    ("b", 8, 0, "m", 1),       # ... and every block device
    ("b", 8, 0, "rwm", 0),
    ("c", 10, 229, "rw", 0),   # /dev/fuse
    ("c", 4, 0, "w", 0),       # /dev/tty0
])
def test_default_rules(kind: str, major: int, minor: int, access: str, allowed: int) -> None:
    assert verdict(DEFAULT_SET, kind, major, minor, access) == allowed
    assert expected(DEFAULT_SET, kind, major, minor, access) == allowed


ORDERINGS = {
    "deny-then-allow": rules_of({"allow": False}, {"allow": False, "type": "c", "major": 1, "minor": 3},
                                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "r"}),
    "allow-then-deny": rules_of({"allow": False}, {"allow": True, "type": "c", "major": 1, "minor": 3},
                                {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "w"}),
    "hole-in-wildcard": rules_of({"allow": False}, {"allow": True, "type": "c", "major": 1},
                                 {"allow": False, "type": "c", "major": 1, "minor": 1}),
    "blocklist": rules_of({"allow": True}, {"allow": False, "type": "b", "access": "rw"},
                          {"allow": True, "type": "b", "major": 7, "access": "r"}),
    "split-access": rules_of({"allow": False}, {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "r"},
                             {"allow": True, "type": "c", "minor": 3, "access": "w"}),
}


@pytest.mark.parametrize("name, kind, major, minor, access, allowed", [
    ("deny-then-allow", "c", 1, 3, "r", 1),
    ("deny-then-allow", "c", 1, 3, "w", 0),
    ("deny-then-allow", "c", 1, 3, "rw", 0),
    ("deny-then-allow", "c", 1, 5, "r", 0),
    ("allow-then-deny", "c", 1, 3, "r", 1),
    ("allow-then-deny", "c", 1, 3, "m", 1),
    ("allow-then-deny", "c", 1, 3, "rw", 0),
    ("allow-then-deny", "c", 1, 3, "w", 0),
    ("hole-in-wildcard", "c", 1, 5, "rw", 1),
    ("hole-in-wildcard", "c", 1, 1, "r", 0),
    ("hole-in-wildcard", "b", 1, 5, "r", 0),
    ("blocklist", "c", 4, 0, "rw", 1),
    ("blocklist", "b", 8, 0, "r", 0),
    ("blocklist", "b", 8, 0, "m", 1),
    ("blocklist", "b", 7, 0, "r", 1),
    ("blocklist", "b", 7, 0, "rw", 0),
    ("split-access", "c", 1, 3, "rw", 1),   # r from one rule, w from another
    ("split-access", "c", 2, 3, "rw", 0),   # only w here
    ("split-access", "c", 2, 3, "w", 1),
])
def test_orderings_and_wildcards(name: str, kind: str, major: int, minor: int, access: str, allowed: int) -> None:
    assert verdict(ORDERINGS[name], kind, major, minor, access) == allowed
    assert expected(ORDERINGS[name], kind, major, minor, access) == allowed


def test_random_rule_sets_match_the_plain_reading() -> None:
    rng = random.Random(4)
    accesses = ["r", "w", "m", "rw", "rm", "wm", "rwm"]
    requests = [(k, ma, mi, acc) for k in "cb" for ma in (1, 8, 136) for mi in (0, 3, 7)
                for acc in ("r", "w", "m", "rw", "rwm")]
    for _case in range(300):
        oci = []
        for _ in range(rng.randint(0, 7)):
            rule: dict = {"allow": rng.random() < 0.5, "access": rng.choice(accesses)}
            if rng.random() < 0.1:
                rule["type"] = "a"
            else:
                rule["type"] = rng.choice("cb")
                rule["major"] = rng.choice([None, -1, 1, 8, 136])
                rule["minor"] = rng.choice([None, 0, 3, 7])
            oci.append(rule)
        rules = rules_of(*oci)
        code = d.encode(d.program(rules))
        for request in requests:
            assert run(code, *request) == expected(rules, *request), (oci, request)


# ---------------------------------------------------------------- the kernel (root)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loading eBPF programs needs root")


@needs_root
def test_the_kernel_takes_the_default_program() -> None:
    fd = d.load(d.program(DEFAULT_SET), "/nowhere")
    os.close(fd)


@needs_root
def test_a_verifier_refusal_reports_the_verifiers_last_line() -> None:
    with pytest.raises(CgroupError) as info:
        d.load([d.mov32(d.R0, 2), d.exit_()], "/sys/fs/cgroup/x")  # a device verdict is 0 or 1
    message = str(info.value)
    assert message.startswith("device rules for cgroup /sys/fs/cgroup/x: loading the program failed: "
                              "bpf(BPF_PROG_LOAD): ")
    assert "; the verifier said: " in message and "R0" in message, message
    assert "\n" not in message


@needs_root
def test_without_cap_sys_admin_loading_fails_with_a_clear_error() -> None:
    from hanok.runtime import syscalls

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read_end)
            effective, permitted, inheritable = syscalls.capget()
            drop = (1 << 21) | (1 << 39)  # CAP_SYS_ADMIN, CAP_BPF
            syscalls.capset(effective & ~drop, permitted & ~drop, inheritable & ~drop)
            try:
                os.close(d.load(d.program(DEFAULT_SET), "/sys/fs/cgroup/x"))
                os.write(write_end, b"loaded")
            except CgroupError as e:
                os.write(write_end, str(e).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        message = f.read().decode()
    os.waitpid(pid, 0)
    assert message == ("device rules for cgroup /sys/fs/cgroup/x: loading the program failed: "
                       "bpf(BPF_PROG_LOAD): Operation not permitted (needs CAP_SYS_ADMIN; before Linux 5.11 "
                       "also a high enough RLIMIT_MEMLOCK)")
