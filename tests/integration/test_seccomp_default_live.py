"""The default seccomp profile (runtime/seccomp_default.py) in real containers.

Busybox bundles run by the OCI runtime under test, with
`linux.seccomp = default_profile(caps)` as `hanok run` writes it. Each refusal
is checked against the same bundle without the profile, so what is observed
is the filter's doing and not the capabilities' (busybox has no keyctl, so
the probes are calls busybox makes: unshare, swapoff, mount, chroot).
"""

from __future__ import annotations

from typing import Any

import pytest
from hanok.runtime.seccomp_default import default_profile
from helpers import DEFAULT_CAPS, RunCapture, default_config, sh

EPERM_TEXT = "Operation not permitted"


def _config(script: str, *, caps: list[str], seccomp: bool, nnp: bool = False) -> dict[str, Any]:
    """A container like `hanok run` makes: these caps, no_new_privs off unless asked."""
    config = default_config(*sh(script))
    config["process"]["capabilities"] = {k: list(caps) for k in ("bounding", "effective", "permitted")}
    config["process"]["noNewPrivileges"] = nnp
    config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                             "options": ["nosuid", "nodev", "mode=1777", "size=1m"]})
    if seccomp:
        config["linux"]["seccomp"] = default_profile(caps)
    return config


def _lines(result: Any) -> list[str]:
    assert result.code == 0, f"exit {result.code}\nstdout: {result.out}\nstderr: {result.err}"
    lines: list[str] = result.out.splitlines()
    return lines


# ------------------------------------------------------------------ refusals

UNSHARE_USER = "unshare -U true; echo rc=$?"


def test_unshare_user_namespace_refused(run_capture: RunCapture) -> None:
    # Creating a user namespace needs no capability at all: only the filter
    # stands between the container's root and a namespace where it holds all.
    result = run_capture(_config(UNSHARE_USER, caps=DEFAULT_CAPS, seccomp=True))
    assert _lines(result) == ["rc=1"], result
    assert f"unshare(0x10000000): {EPERM_TEXT}" in result.err, result.err


def test_unshare_user_namespace_works_without_the_profile(run_capture: RunCapture) -> None:
    result = run_capture(_config(UNSHARE_USER, caps=DEFAULT_CAPS, seccomp=False))
    if _lines(result) != ["rc=0"]:
        pytest.skip(f"this host refuses user namespaces to a container even without seccomp: {result.err.strip()}")


SWAP = ": > /tmp/swapfile; swapoff /tmp/swapfile; echo rc=$?"


def test_swapoff_refused_even_with_cap_sys_admin(run_capture: RunCapture) -> None:
    # swap is host-wide: Docker's profile never allows it, whatever the caps.
    # An empty file is no swap area, so without the filter the kernel only
    # says EINVAL (next test); nothing is ever swapped.
    caps = [*DEFAULT_CAPS, "CAP_SYS_ADMIN"]
    result = run_capture(_config(SWAP, caps=caps, seccomp=True))
    assert _lines(result) == ["rc=1"], result
    assert f"swapoff: /tmp/swapfile: {EPERM_TEXT}" in result.err, result.err


def test_swapoff_reaches_the_kernel_without_the_profile(run_capture: RunCapture) -> None:
    caps = [*DEFAULT_CAPS, "CAP_SYS_ADMIN"]
    result = run_capture(_config(SWAP, caps=caps, seccomp=False))
    assert _lines(result) == ["rc=1"], result
    assert "swapoff: /tmp/swapfile: Invalid argument" in result.err, result.err


def test_mount_and_unshare_mount_refused_with_docker_caps(run_capture: RunCapture) -> None:
    script = "mount -t tmpfs none /mnt; echo mount=$?; unshare -m true; echo unshare=$?"
    result = run_capture(_config(script, caps=DEFAULT_CAPS, seccomp=True))
    assert _lines(result) == ["mount=1", "unshare=1"], result
    assert "mount: permission denied" in result.err, result.err  # busybox's words for EPERM
    assert f"unshare(0x20000): {EPERM_TEXT}" in result.err, result.err


# ------------------------------------------------------------------ what stays allowed


def test_cap_sys_admin_brings_its_calls_back(run_capture: RunCapture) -> None:
    # --cap-add SYS_ADMIN: the profile allows mount, unshare and clone's
    # namespace flags again, as Docker's does.
    script = ("mount -t tmpfs none /mnt && echo mounted; unshare -m true && echo unshared-mount;"
              " unshare -U true && echo unshared-user")
    caps = [*DEFAULT_CAPS, "CAP_SYS_ADMIN"]
    result = run_capture(_config(script, caps=caps, seccomp=True))
    lines = _lines(result)
    assert lines[:2] == ["mounted", "unshared-mount"], result
    if lines[2:] != ["unshared-user"]:
        control = run_capture(_config("unshare -U true", caps=caps, seccomp=False))
        if control.code == 0:
            pytest.fail(f"unshare -U refused under the profile with CAP_SYS_ADMIN: {result.err}")
        pytest.skip(f"this host refuses user namespaces to a container: {control.err.strip()}")


ORDINARY = """
echo sh-ok
ls / | grep -qx bin && echo ls-ok
cat /etc/passwd | head -n 1
sleep 0.1 && echo sleep-ok
date +%Y | grep -qE '^[0-9]{4}$' && echo date-ok
mkdir /tmp/d && echo data > /tmp/d/f && mv /tmp/d/f /tmp/d/g && cat /tmp/d/g && rm -r /tmp/d
chroot / true && echo chroot-ok
(echo sub) | tr a-z A-Z
nc -l -p 7777 > /tmp/got &
i=0
until echo ping | nc 127.0.0.1 7777 2>/dev/null; do  # refused until the listener is up
  i=$((i + 1)); [ $i -gt 100 ] && break; sleep 0.05
done
wait
cat /tmp/got
"""


@pytest.mark.parametrize("nnp", [False, True], ids=["no-nnp", "nnp"])
def test_ordinary_commands_work(run_capture: RunCapture, nnp: bool) -> None:
    # Forks, pipes, threads of libc (clone3 gets ENOSYS, then clone), sockets
    # on the container's loopback, sleeping and the clock all pass the filter;
    # chroot too, as CAP_SYS_CHROOT is in Docker's default set.
    result = run_capture(_config(ORDINARY, caps=DEFAULT_CAPS, seccomp=True, nnp=nnp))
    assert _lines(result) == ["sh-ok", "ls-ok", "root:x:0:0:root:/root:/bin/sh", "sleep-ok", "date-ok",
                              "data", "chroot-ok", "SUB", "ping"], result
    assert result.err == "", result.err


def test_filter_is_in_force(run_capture: RunCapture) -> None:
    out = _lines(run_capture(_config("grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status",
                                     caps=DEFAULT_CAPS, seccomp=True)))
    assert out == ["NoNewPrivs:\t0", "Seccomp:\t2"], out
