"""Capabilities, no_new_privs and the user switch for the container process.

Order matters and follows runc's finalizeNamespace: keep capabilities across
the uid change (PR_SET_KEEPCAPS), shrink the bounding set while we still hold
CAP_SETPCAP, switch groups and ids, then set exactly the configured
effective/permitted/inheritable sets and raise the ambient ones. Seccomp is
loaded by the caller: before this when no_new_privs is off (loading needs
CAP_SYS_ADMIN then), last of all when it is on.
"""
from __future__ import annotations

import os

from hanok.runtime import explain
from hanok.runtime import syscalls as sc
from hanok.runtime.spec import CAP_NUMBER, CAPABILITIES


def cap_mask(names: list[str] | None) -> int:
    mask = 0
    for name in names or ():
        mask |= 1 << CAP_NUMBER[name]
    return mask


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except OSError:
        return len(CAPABILITIES) - 1


def _names(mask: int) -> str:
    return ",".join(n.lower() for i, n in enumerate(CAPABILITIES) if mask >> i & 1) or "none"


def switch_user_and_capabilities(process: dict) -> None:
    """Become the configured user with exactly the configured capabilities."""
    caps = process.get("capabilities") or {}
    user = process.get("user") or {}
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    groups = list(user.get("additionalGids") or [])

    sc.prctl(sc.PR_SET_KEEPCAPS, 1)
    bounding = cap_mask(caps.get("bounding"))
    dropped = 0
    for cap in range(_last_cap() + 1):
        if not bounding >> cap & 1:
            try:
                sc.prctl(sc.PR_CAPBSET_DROP, cap)
                dropped |= 1 << cap
            except OSError as e:
                if e.errno != 22:  # EINVAL: the kernel does not know this capability
                    raise
    if explain.enabled():
        explain.step(f"capsh --drop={_names(dropped)}", "shrink the bounding set")

    if explain.enabled():
        explain.step(f"setpriv --reuid={uid} --regid={gid} --groups={','.join(map(str, groups)) or 'none'}",
                     "switch to the container user")
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)

    effective = cap_mask(caps.get("effective"))
    permitted = cap_mask(caps.get("permitted"))
    inheritable = cap_mask(caps.get("inheritable"))
    ambient = cap_mask(caps.get("ambient"))
    if explain.enabled():
        explain.step(f"capsh --caps={_names(effective)}+ep --addamb={_names(ambient)}",
                     "set effective, permitted, inheritable and ambient capabilities")
    # Ambient capabilities must also be permitted and inheritable (capabilities(7)).
    sc.capset(effective, permitted | ambient, inheritable | ambient)
    for cap in range(len(CAPABILITIES)):
        if ambient >> cap & 1:
            sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_RAISE, cap)
    sc.prctl(sc.PR_SET_KEEPCAPS, 0)


def set_no_new_privs() -> None:
    explain.step("setpriv --no-new-privs", "execve can never grant more privileges")
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
