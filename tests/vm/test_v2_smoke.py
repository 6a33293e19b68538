"""Smoke tests of a real cgroup v2 host, independent of hanok's cgroup code.

They prove the ground the cgroup manager stands on: the unified hierarchy with
the memory, pids and cpu controllers, limits that the kernel enforces
(pids.max stops a fork, memory.max OOM-kills), and hanok-oci running a
container on a host that has no cgroup v1 at all. Where they run (natively, in
the VM, or not at all) is decided by conftest.py; the fixtures they use only
exist where cgroup v2 is real.

The processes placed in cgroups are forks of this pytest process (which moves
itself in, then does the work), not fresh interpreters: in the emulated VM a
python start costs seconds.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

TIMEOUT = 300  # seconds per command; the VM is ~40x slower than the host


def in_cgroup(cgroup: Path, body: Callable[[], int]) -> int:
    """Fork; the child joins `cgroup`, runs `body` and exits with its result. -> wait status."""
    pid = os.fork()
    if pid == 0:
        code = 101
        try:
            with open(cgroup / "cgroup.procs", "w") as f:
                f.write(str(os.getpid()))
            code = body()
        except BaseException:  # noqa: BLE001 -- a forked child must reach os._exit
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def keyed(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file (memory.events, pids.events) as a dict."""
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


def test_unified_hierarchy_has_memory_pids_cpu(cgroup2: Path) -> None:
    controllers = (cgroup2 / "cgroup.controllers").read_text().split()
    assert {"memory", "pids", "cpu"} <= set(controllers), controllers
    with open("/proc/self/cgroup") as f:
        lines = f.read().splitlines()
    assert len(lines) == 1 and lines[0].startswith("0::"), f"not a pure v2 membership: {lines}"


def test_pids_max_stops_the_fourth_process(scratch_cgroup: Path) -> None:
    (scratch_cgroup / "pids.max").write_text("3")

    def fork_three() -> int:
        """Start up to 3 more processes (each waits on a pipe); exit with how many started."""
        r, w = os.pipe()
        started = 0
        try:
            for _ in range(3):
                if os.fork() == 0:
                    os.close(w)
                    os.read(r, 1)  # returns at EOF: when the parent closes w
                    os._exit(0)
                started += 1
        except BlockingIOError:  # EAGAIN: pids.max reached
            pass
        os.close(w)
        for _ in range(started):
            os.wait()
        return started

    status = in_cgroup(scratch_cgroup, fork_three)
    assert os.WIFEXITED(status), f"child ended by signal {os.WTERMSIG(status)}"
    # the child itself + 2 forks = pids.max; the 3rd fork (4th process) fails
    assert os.WEXITSTATUS(status) == 2, f"{os.WEXITSTATUS(status)} forks succeeded under pids.max=3"
    assert keyed(scratch_cgroup / "pids.events")["max"] >= 1
    assert (scratch_cgroup / "pids.current").read_text().strip() == "0"


def test_memory_max_oom_kills(scratch_cgroup: Path) -> None:
    (scratch_cgroup / "memory.max").write_text(str(16 << 20))
    assert (scratch_cgroup / "memory.max").read_text().strip() == str(16 << 20)
    swap = scratch_cgroup / "memory.swap.max"
    if swap.exists():
        swap.write_text("0")  # a host with swap would page out instead of OOM-killing

    def allocate_64m() -> int:
        data = b"x" * (64 << 20)  # written, so every page is charged
        return 0 if len(data) else 1

    status = in_cgroup(scratch_cgroup, allocate_64m)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"expected an OOM kill (SIGKILL), got wait status {status:#x}")
    events = keyed(scratch_cgroup / "memory.events")
    assert events["oom_kill"] == 1, events
    assert events["oom"] >= 1, events


def test_hanok_oci_runs_busybox(tmpfs_dir: Path, hanok_bin: str, hanok_oci_bin: str) -> None:
    """hanok-oci works on a host with cgroup v2 only (no v1 hierarchy to fall back to)."""
    bundle = tmpfs_dir / "bundle"
    state = tmpfs_dir / "state"
    state.mkdir(mode=0o700)
    made = subprocess.run(
        [hanok_bin, "bundle", "busybox", str(bundle), "--", "sh", "-c", "cat /proc/self/cgroup; exit 7"],
        check=False, capture_output=True, text=True, timeout=TIMEOUT)
    assert made.returncode == 0, made.stderr
    cid = f"vmtest-{uuid.uuid4().hex[:8]}"
    try:
        ran = subprocess.run([hanok_oci_bin, "--root", str(state), "run", "--bundle", str(bundle), cid],
                             check=False, capture_output=True, text=True, timeout=TIMEOUT)
    finally:
        left = sorted(os.listdir(state))
        if left:
            subprocess.run([hanok_oci_bin, "--root", str(state), "delete", "--force", cid],
                           check=False, capture_output=True, timeout=TIMEOUT)
    assert ran.returncode == 7, f"exit {ran.returncode}; stderr: {ran.stderr}"
    lines = ran.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("0::"), f"container's /proc/self/cgroup: {lines}"
    assert left == [], f"state left after `run`: {left}"
