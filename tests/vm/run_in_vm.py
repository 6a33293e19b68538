"""Boot a small virtme-ng VM with a pure cgroup v2 hierarchy and run pytest in it.

Used by ``tests/vm/conftest.py`` when the host is not cgroup v2 (the
development machines are hybrid, see ../../../shared/TESTING.md), and runnable
by hand for debugging::

    /opt/hanok/bin/python tests/vm/run_in_vm.py [PYTEST ARGS...]   # default: tests/vm
    /opt/hanok/bin/python tests/vm/run_in_vm.py --shell-cmd 'cat /proc/self/cgroup'
    /opt/hanok/bin/python tests/vm/run_in_vm.py --systemd tests/vm/test_systemd_cgroup.py  # systemd as PID 1

One VM per call: ``vng -r <kernel> --disable-kvm ...`` (KVM guests hang at boot
here, so qemu emulates: ~40x slower). The guest sees the host's files (read-only
root over 9p, writable throw-away overlays on /tmp /var /etc /opt ...), runs as
root, and writes back only into the results directory, shared with ``--rwdir``.
Inside, ``HANOK_IN_VM=1`` tells tests/vm/conftest.py to run the tests for real
and ``HANOK_VM_RESULTS`` names the JSON-lines file where it records every
report, which the outer pytest turns back into outcomes.

Environment:
  HANOK_VM_KERNEL   kernel image to boot (default: the newest /boot/vmlinuz-*)
  HANOK_VM_TIMEOUT  seconds before the whole VM run is killed (default 900)
  HANOK_VNG         the vng executable (default: next to this interpreter, else PATH)

Only the standard library: this module is imported on the host only.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IN_VM_ENV = "HANOK_IN_VM"
SYSTEMD_ENV = "HANOK_VM_SYSTEMD"  # set in a VM booted with systemd as PID 1
RESULTS_ENV = "HANOK_VM_RESULTS"
DEFAULT_TIMEOUT = 420.0  # a whole VM run takes ~70 s here; a stuck guest is booted again (conftest)
CPUS = 2
MEMORY = "2G"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _version_key(path: str) -> list:
    version = os.path.basename(path).split("-", 1)[-1]
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-+~]", version)]


def find_kernel() -> str | None:
    chosen = os.environ.get("HANOK_VM_KERNEL")
    if chosen:
        return chosen
    images = [p for p in map(str, Path("/boot").glob("vmlinuz-*")) if os.path.isfile(p)]
    return max(images, key=_version_key) if images else None


def find_vng() -> str | None:
    chosen = os.environ.get("HANOK_VNG")
    if chosen:
        return chosen
    beside = Path(sys.executable).parent / "vng"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("vng")


def missing() -> str | None:
    """Why no VM can be booted here (None: everything is installed)."""
    vng = find_vng()
    if vng is None:
        return "virtme-ng is not installed (vng not found next to the interpreter or on PATH): " \
               "pip install virtme-ng"
    if not (os.path.isfile(vng) and os.access(vng, os.X_OK)):
        return f"{vng} is not an executable (HANOK_VNG)"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not found (Debian: apt-get install qemu-system-x86)"
    kernel = find_kernel()
    if kernel is None:
        return "no kernel image in /boot (Debian: apt-get install linux-image-amd64)"
    if not os.access(kernel, os.R_OK):
        return f"cannot read the kernel image {kernel} (Debian installs it 0600: run as root)"
    return None


@dataclass
class VMRun:
    """What one VM run produced."""

    command: list[str]
    returncode: int | None = None      # of vng (the guest command's exit status); None: killed
    timed_out: bool = False
    wall: float = 0.0                  # host seconds from spawning vng to its exit
    guest_start: float | None = None   # guest uptime when the command started (~ boot time)
    guest_end: float | None = None     # guest uptime when it ended
    log: str = ""                      # vng's console output (boot messages, pytest's output)
    results: dict[str, list[dict]] = field(default_factory=dict)  # nodeid -> reports
    collect_errors: list[dict] = field(default_factory=list)
    error: str | None = None           # the harness itself failed (vng could not start, ...)

    def summary(self) -> str:
        parts = [f"{self.wall:.0f} s wall"]
        if self.guest_start is not None:
            parts.append(f"guest booted in {self.guest_start:.0f} s")
        if self.guest_start is not None and self.guest_end is not None:
            parts.append(f"guest command {self.guest_end - self.guest_start:.0f} s")
            parts.append(f"qemu/vng start+stop {self.wall - self.guest_end:.0f} s")
        if self.timed_out:
            parts.append("TIMED OUT and killed")
        elif self.returncode is not None:
            parts.append(f"exit status {self.returncode}")
        return ", ".join(parts)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.rstrip("\n").splitlines()[-lines:])


def _uptime(path: Path) -> float | None:
    try:
        return float(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _kill_group(proc: subprocess.Popen) -> None:
    """End vng and what it started (virtme-run, qemu): the process group made for them.

    qemu outlives vng by a few seconds after SIGTERM, so wait for the whole
    group, not only for vng.
    """
    pgid = proc.pid
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(pgid):
                return
            time.sleep(0.2)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _end_vm_on_signals(proc: subprocess.Popen):
    """While the VM runs, SIGTERM/SIGHUP to us first end the VM's process group.

    The VM has its own session (so that it can be killed as a whole without
    killing us), hence a signal meant for our process group would miss it. The
    signal is then re-raised with the previous disposition, so we still die of
    it. Returns the function that restores the previous handlers.
    """
    previous: dict[int, Any] = {}

    def handler(signum: int, frame) -> None:
        _kill_group(proc)
        signal.signal(signum, previous.pop(signum))
        os.kill(os.getpid(), signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: no handlers, the timeout still holds
            break

    def restore() -> None:
        for signum, old in list(previous.items()):
            signal.signal(signum, old)

    return restore


def guest_command(shell: str, results: Path) -> str:
    """`shell` wrapped so the guest's uptime is recorded before and after it."""
    r = shlex.quote(str(results))
    return (f"cat /proc/uptime > {r}/uptime.start; ( {shell} ); rc=$?; "
            f"cat /proc/uptime > {r}/uptime.end; exit $rc")


def pytest_shell(pytest_args: list[str], results: Path, python: str = sys.executable,
                 rootdir: Path = REPO_ROOT, systemd: bool = False) -> str:
    env = {
        IN_VM_ENV: "1",
        RESULTS_ENV: str(results / "reports.jsonl"),
        "PYTHONDONTWRITEBYTECODE": "1",   # the tree is read-only in the guest anyway
        "PYTHONUNBUFFERED": "1",
    }
    if systemd:
        env[SYSTEMD_ENV] = "1"
    if os.environ.get("PYTHONPATH"):  # testing a source tree that is not installed yet
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    argv = ["env", *(f"{k}={v}" for k, v in env.items()), python, "-m", "pytest",
            "-p", "no:cacheprovider", "--rootdir", str(rootdir), "-rA", *pytest_args]
    return " ".join(shlex.quote(a) for a in argv)


# With systemd as PID 1 (vng --systemd) the guest command is started by serial-getty@ttyS0, which
# systemd's getty generator adds only outside containers. The guest's root is the host's /, and the
# host here is itself a container with a /.dockerenv: systemd would take the VM for a docker
# container, ignore the kernel command line and start console-getty instead, so the command would
# never run. Hence vng runs chrooted into a view of / without that file (bind mounts in a private
# mount namespace: nothing changes for the host). In the guest, basic.target plus the serial getty
# keeps the host's enabled services (databases, container engines...) from starting in the slow
# emulated VM, and systemd-tmpfiles-setup is masked: it walks the 9p root for minutes.
SYSTEMD_KERNEL_ARGS = ("systemd.unit=basic.target systemd.wants=serial-getty@ttyS0.service "
                       "systemd.mask=systemd-tmpfiles-setup.service")
_WITHOUT_DOCKERENV = r"""
set -e
view=$(mktemp -d /tmp/hanok-vmroot-XXXXXX)
mount -t tmpfs -o mode=0755 hanok-vmroot "$view"
for entry in /* /.[!.]*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue
    [ "$entry" = /.dockerenv ] && continue
    if [ -L "$entry" ]; then cp -P "$entry" "$view$entry"
    elif [ -d "$entry" ]; then mkdir "$view$entry"; mount --rbind "$entry" "$view$entry"
    else touch "$view$entry"; mount --bind "$entry" "$view$entry"; fi
done
set +e
chroot "$view" sh -c 'cd "$0" && exec "$@"' "$PWD" "$@"
rc=$?
umount -R -l "$view"
rmdir "$view"
exit $rc
"""


def boot(shell: str, results: Path, timeout: float | None = None, cwd: Path = REPO_ROOT,
         echo: bool = False, systemd: bool = False) -> VMRun:
    """Run `shell` as root in a fresh VM; `results` is shared read-write with the guest.

    `systemd`: boot systemd as PID 1 (`vng --systemd`); the command then runs
    once systemd has started the serial console's getty.
    """
    if timeout is None:
        timeout = float(os.environ.get("HANOK_VM_TIMEOUT", DEFAULT_TIMEOUT))
    vng, kernel = find_vng(), find_kernel()
    command = [str(vng), "-r", str(kernel), "--disable-kvm", "--cpus", str(CPUS), "--memory", MEMORY,
               "--rwdir", str(results), "--cwd", str(cwd),
               *(["--systemd", "--append", SYSTEMD_KERNEL_ARGS] if systemd else []),
               "--exec", guest_command(shell, results)]
    if systemd:
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _WITHOUT_DOCKERENV, "sh",
                   *command]
    run = VMRun(command=command)
    env = dict(os.environ)
    # vng runs virtme-run (and friends) from PATH: they sit next to vng.
    env["PATH"] = os.path.dirname(os.path.abspath(str(vng))) + os.pathsep + env.get("PATH", "")
    log_path = results / "console.log"
    start = time.monotonic()
    with open(log_path, "w+b") as log:
        try:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=str(cwd), env=env,
                                    start_new_session=True)
        except OSError as e:
            run.error = f"cannot start {vng}: {e}"
            return run
        restore = _end_vm_on_signals(proc)
        try:
            run.returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            run.timed_out = True
            _kill_group(proc)
        except BaseException:  # KeyboardInterrupt and the like
            _kill_group(proc)
            raise
        finally:
            restore()
            run.wall = time.monotonic() - start
        log.seek(0)
        run.log = log.read().decode(errors="replace")
    if echo:
        sys.stdout.write(run.log)
    run.guest_start = _uptime(results / "uptime.start")
    run.guest_end = _uptime(results / "uptime.end")
    _read_reports(results / "reports.jsonl", run)
    return run


def _read_reports(path: Path, run: VMRun) -> None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        try:
            report = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if report.get("when") == "collect":
            run.collect_errors.append(report)
        else:
            run.results.setdefault(report["nodeid"], []).append(report)


def run_pytest(pytest_args: list[str], results: Path | None = None, timeout: float | None = None,
               echo: bool = False, rootdir: Path = REPO_ROOT, systemd: bool = False) -> VMRun:
    """pytest `pytest_args` in a VM, from `rootdir` (node ids are relative to it); `systemd`: see boot()."""
    if results is None:
        results = Path(tempfile.mkdtemp(prefix="hanok-vm-"))
    return boot(pytest_shell(pytest_args, results, rootdir=rootdir, systemd=systemd), results, timeout=timeout,
                cwd=rootdir, echo=echo, systemd=systemd)


def main(argv: list[str]) -> int:
    reason = missing()
    if reason:
        print(f"run_in_vm: {reason}", file=sys.stderr)
        return 2
    results = Path(tempfile.mkdtemp(prefix="hanok-vm-"))
    systemd = argv[:1] == ["--systemd"]
    if systemd:
        argv = argv[1:]
    if argv[:1] == ["--shell-cmd"]:
        run = boot(" ".join(argv[1:]), results, echo=True, systemd=systemd)
    else:
        run = run_pytest(argv or ["tests/vm"], results, echo=True, systemd=systemd)
    print(f"run_in_vm: {run.summary()}; console log and reports in {results}", file=sys.stderr)
    if run.error:
        print(f"run_in_vm: {run.error}", file=sys.stderr)
        return 2
    return 124 if run.timed_out else (run.returncode or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
