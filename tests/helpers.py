"""Shared helpers for hanok's tests (plain functions and types, no fixtures).

The OCI integration tests drive a runc-compatible runtime binary as a black
box: ``hanok-oci`` by default, or whatever ``HANOK_TEST_RUNTIME`` names (the
suite is validated against runc with ``HANOK_TEST_RUNTIME=$(which runc)``).
Fixtures that use these helpers live in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import copy
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")

BUSYBOX = Path("/bin/busybox")
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TEST_HOSTNAME = "hanok-test"

# The capability numbers of linux/capability.h, by OCI name.
CAP_NUMBERS: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

# The classic 14-capability default of `runc spec` (runc < 1.0; also Docker's
# default set). runc 1.1.5's own `runc spec` trimmed it to AUDIT_WRITE, KILL and
# NET_BIND_SERVICE; the 14-cap set exercises more of the capset path.
DEFAULT_CAPS: list[str] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]

# Mounts and paths of `runc spec` (1.1.5), minus the cgroup mount: the test
# hosts are cgroup v1/hybrid, and cgroups belong to a later issue.
DEFAULT_MOUNTS: list[dict[str, Any]] = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {
        "destination": "/dev",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
    },
    {
        "destination": "/dev/pts",
        "type": "devpts",
        "source": "devpts",
        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
    },
    {
        "destination": "/dev/shm",
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    },
    {
        "destination": "/dev/mqueue",
        "type": "mqueue",
        "source": "mqueue",
        "options": ["nosuid", "noexec", "nodev"],
    },
    {
        "destination": "/sys",
        "type": "sysfs",
        "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev", "ro"],
    },
]

DEFAULT_MASKED_PATHS: list[str] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
]

DEFAULT_READONLY_PATHS: list[str] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]

DEFAULT_NAMESPACES: list[str] = ["pid", "network", "ipc", "uts", "mount"]

_BASE_CONFIG: dict[str, Any] = {
    "ociVersion": "1.0.2",
    "process": {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh"],
        "env": [DEFAULT_PATH, "TERM=xterm"],
        "cwd": "/",
        "capabilities": {
            "bounding": DEFAULT_CAPS,
            "effective": DEFAULT_CAPS,
            "permitted": DEFAULT_CAPS,
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": TEST_HOSTNAME,
    "mounts": DEFAULT_MOUNTS,
    "linux": {
        "namespaces": [{"type": t} for t in DEFAULT_NAMESPACES],
        "maskedPaths": DEFAULT_MASKED_PATHS,
        "readonlyPaths": DEFAULT_READONLY_PATHS,
    },
}


def default_config(*args: str) -> dict[str, Any]:
    """A fresh (deep-copied) runc-spec-like config running ``args`` (default ``sh``).

    No ``linux.resources``: cgroup limits belong to a later issue.
    """
    config = copy.deepcopy(_BASE_CONFIG)
    if args:
        config["process"]["args"] = list(args)
    return config


def sh(script: str) -> list[str]:
    """Container args running ``script`` with busybox sh."""
    return ["sh", "-c", script]


def cap_mask(names: Iterable[str]) -> int:
    """The kernel bit mask for capability names, as in /proc/<pid>/status."""
    mask = 0
    for name in names:
        mask |= 1 << CAP_NUMBERS[name]
    return mask


def parse_status(text: str) -> dict[str, str]:
    """``Key:\\tvalue`` lines of /proc/<pid>/status -> {key: value}."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def set_namespace(config: dict[str, Any], ns_type: str, path: str | None = None) -> None:
    """Add (or replace) a namespace entry in ``config``."""
    namespaces: list[dict[str, str]] = config["linux"]["namespaces"]
    namespaces[:] = [ns for ns in namespaces if ns["type"] != ns_type]
    entry = {"type": ns_type}
    if path is not None:
        entry["path"] = path
    namespaces.append(entry)


def remove_namespace(config: dict[str, Any], ns_type: str) -> None:
    namespaces: list[dict[str, str]] = config["linux"]["namespaces"]
    namespaces[:] = [ns for ns in namespaces if ns["type"] != ns_type]


def write_config(bundle: Path, config: Mapping[str, Any]) -> Path:
    path = bundle / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def find_runtime() -> str | None:
    """The runtime under test: $HANOK_TEST_RUNTIME, else hanok-oci next to the
    interpreter (the venv's console script), else hanok-oci on PATH."""
    named = os.environ.get("HANOK_TEST_RUNTIME")
    if named:
        return named if os.sep in named else shutil.which(named) or named
    beside = Path(sys.executable).parent / "hanok-oci"
    if beside.exists():
        return str(beside)
    return shutil.which("hanok-oci")


def poll(
    probe: Callable[[], T | None],
    *,
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str = "condition",
) -> T:
    """Call ``probe`` until it returns something other than None/False; return it.

    Backs off from ``interval`` up to 0.1 s; raises AssertionError on timeout.
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# RFC 3339 date-time, e.g. 2024-01-02T03:04:05.123456789Z or ...+01:00.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def is_rfc3339(value: str) -> bool:
    if not _RFC3339.match(value):
        return False
    # datetime can't take nanoseconds: cut the fraction to microseconds.
    normalized = re.sub(r"(\.\d{6})\d+", r"\1", value).replace("z", "Z").replace("Z", "+00:00")
    try:
        datetime.fromisoformat(normalized.replace("t", "T"))
    except ValueError:
        return False
    return True


def proc_cmdline(pid: int) -> list[str]:
    """argv of ``pid`` ([] once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesized comm, which may hold spaces.
    return stat[stat.rindex(")") + 2] not in "ZX"


def ns_link(pid: int | str, ns: str) -> str:
    """readlink /proc/<pid>/ns/<ns>, e.g. 'ipc:[4026531839]'."""
    return os.readlink(f"/proc/{pid}/ns/{ns}")


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    """A one-look summary of a runtime call, for assertion messages."""
    args = proc.args if isinstance(proc.args, str) else " ".join(map(str, proc.args))
    return f"$ {args}\n[exit {proc.returncode}]\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"


def listing(path: Path) -> list[str]:
    """Sorted names under ``path`` (recursive, relative); [] when it is absent."""
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """chown -hR: every entry under (and including) ``root``, symlinks themselves."""
    os.lchown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def mountinfo_mountpoints(text: str) -> list[str]:
    """The mount point field (5th) of every /proc/<pid>/mountinfo line."""
    return [line.split()[4] for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------- host snapshots
# What a container runtime may leave behind on the host, read the way a person
# would check by hand (mount, ip -br link, ls /run/netns).


def host_mounts() -> set[str]:
    """Lines of the host's /proc/self/mountinfo."""
    return set(Path("/proc/self/mountinfo").read_text().splitlines())


def host_links() -> set[str]:
    """Interface names from `ip -br link` (without the @peer suffix)."""
    try:
        out = subprocess.run(
            ["ip", "-br", "link"], capture_output=True, text=True, check=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        # No iproute2: fall back to sysfs, which lists the same names.
        return set(os.listdir("/sys/class/net"))
    return {line.split()[0].split("@")[0] for line in out.splitlines() if line.strip()}


def host_netns() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def path_in_its_filesystem(path: Path) -> str:
    """``path`` as the root field (4th) of mountinfo would show it: relative to
    the root of the filesystem holding it (e.g. a bind mount of ``path``)."""
    target = str(path.resolve())
    best_mp, best_root = "", "/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mp = fields[4]
        inside = target == mp or target.startswith(mp.rstrip("/") + "/")
        if inside and len(mp) >= len(best_mp):
            best_mp, best_root = mp, fields[3]
    rel = os.path.relpath(target, best_mp)
    return os.path.normpath(os.path.join(best_root, rel))


def mounts_under(path: Path) -> list[str]:
    """Host mount points at or below ``path``."""
    prefix = str(path).rstrip("/")
    return [
        mp
        for mp in mountinfo_mountpoints(Path("/proc/self/mountinfo").read_text())
        if mp == prefix or mp.startswith(prefix + "/")
    ]


PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper(on: bool) -> None:
    """prctl(PR_SET_CHILD_SUBREAPER) on this (the pytest) process.

    While set, every process orphaned below us (a runtime's intermediate or
    container init outliving the runtime call) is re-parented to us instead of
    to PID 1, so what a refused command left running shows up as our child:
    precise, and blind to containers anyone else runs on the machine.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def children() -> set[int]:
    """Pids whose parent is this process (zombies included)."""
    me = os.getpid()
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesized comm: state, ppid, ...
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == me:
            found.add(int(entry))
    return found


def reap(pids: Iterable[int]) -> None:
    """waitpid() the given children that have exited; leave the rest."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


@dataclass
class Snapshot:
    """What a refused command must not change."""

    state: list[str]
    state_parent: list[str]
    mounts: set[str]
    children: set[int]


class Untouched:
    """``untouched()`` takes a snapshot; ``untouched.check(snap)`` asserts that
    nothing changed since: the state dir (and its parent, for ids like ../x),
    the host's mounts, and no process of the runtime's left alive.

    Between the two, this process is a child subreaper (see
    set_child_subreaper); ``close()`` (fixture teardown) ends that and kills
    and reaps whatever was left.
    """

    def __init__(self, state_root: Path) -> None:
        self.root = state_root
        self.known: set[int] = set()
        self.strays: set[int] = set()

    def __call__(self) -> Snapshot:
        self.known = children()
        set_child_subreaper(True)
        return Snapshot(
            listing(self.root),
            sorted(p.name for p in self.root.parent.iterdir()),
            host_mounts(),
            self.known,
        )

    def _alive_strays(self) -> set[int]:
        new = children() - self.known
        reap(new)
        self.strays |= new
        return {pid for pid in new if pid_alive(pid)}

    def check(self, before: Snapshot) -> None:
        assert listing(self.root) == before.state, "the state dir changed"
        assert sorted(p.name for p in self.root.parent.iterdir()) == before.state_parent
        assert host_mounts() - before.mounts == set(), "new host mounts"
        # A half-made container process may take a moment to die.
        left: set[int] = set()

        def gone() -> bool:
            left.clear()
            left.update(self._alive_strays())
            return not left

        try:
            poll(gone, timeout=3, what="the runtime's processes to exit")
        except AssertionError:
            raise AssertionError(
                "processes left behind: "
                + "; ".join(f"{pid}: {' '.join(proc_cmdline(pid))}" for pid in sorted(left))
            ) from None

    def close(self) -> None:
        set_child_subreaper(False)
        for pid in self._alive_strays():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while self.strays and time.monotonic() < deadline:
            for pid in list(self.strays):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    self.strays.discard(pid)
            time.sleep(0.01)


# ---------------------------------------------------------------- runtime driver


class RunResult(NamedTuple):
    """Outcome of a foreground `run`: the container's exit code and stdio."""

    code: int
    out: str
    err: str


class Runtime:
    """Calls the runtime binary as ``<binary> --root <state dir> <args...>``.

    stdout and stderr go to temporary files, not pipes: `create` and
    `run --detach` hand their own stdio to the container, so a pipe would stay
    open (and a reader would block) for as long as the container lives.
    ``pipes=True`` uses real pipes instead; foreground `run`/`exec` use that,
    like a caller capturing the container's output would.
    """

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self._children: list[subprocess.Popen[str]] = []

    def argv(self, *args: str | os.PathLike[str]) -> list[str]:
        return [self.binary, "--root", str(self.root), *(os.fspath(a) for a in args)]

    def __call__(
        self,
        *args: str | os.PathLike[str],
        input: str | None = None,
        timeout: float = 30.0,
        pipes: bool = False,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = self.argv(*args)
        stdin = subprocess.DEVNULL if input is None else None
        if pipes:
            try:
                return subprocess.run(
                    argv,
                    input=input,
                    stdin=stdin,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    cwd=cwd,
                )
            except subprocess.TimeoutExpired as exc:
                raise AssertionError(
                    f"runtime call timed out after {timeout}s: {' '.join(argv)}\n"
                    f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}"
                ) from None
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            try:
                done = subprocess.run(
                    argv,
                    input=input,
                    stdin=stdin,
                    stdout=out,
                    stderr=err,
                    text=True,
                    timeout=timeout,
                    cwd=cwd,
                )
            except subprocess.TimeoutExpired:
                out.seek(0)
                err.seek(0)
                raise AssertionError(
                    f"runtime call timed out after {timeout}s: {' '.join(argv)}\n"
                    f"stdout: {out.read()!r}\nstderr: {err.read()!r}"
                ) from None
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(argv, done.returncode, out.read(), err.read())

    def ok(self, *args: str | os.PathLike[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Like calling, but asserts exit status 0."""
        proc = self(*args, **kwargs)
        assert proc.returncode == 0, describe(proc)
        return proc

    def popen(self, *args: str | os.PathLike[str]) -> subprocess.Popen[str]:
        """Start a runtime call in the background (stdio pipes); reaped at teardown."""
        child = subprocess.Popen(
            self.argv(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._children.append(child)
        return child

    def state(self, cid: str) -> dict[str, Any]:
        proc = self.ok("state", cid)
        state: dict[str, Any] = json.loads(proc.stdout)
        return state

    def status(self, cid: str) -> str | None:
        """The container's status, or None when the runtime says it does not exist."""
        proc = self("state", cid)
        if proc.returncode != 0:
            assert "does not exist" in proc.stderr, describe(proc)
            return None
        status: str = json.loads(proc.stdout)["status"]
        return status

    def wait_status(self, cid: str, want: str | None, timeout: float = 5.0) -> None:
        """Poll `state` until the status is ``want`` (None: gone)."""
        seen: list[str | None] = []

        def probe() -> bool:
            seen.append(self.status(cid))
            return seen[-1] == want

        try:
            poll(probe, timeout=timeout, what=f"{cid} to become {want}")
        except AssertionError:
            raise AssertionError(
                f"{cid}: wanted status {want!r}, last seen {seen[-1:]!r}"
            ) from None

    def reap(self) -> None:
        for child in self._children:
            if child.poll() is None:
                child.kill()
            try:
                child.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._children.clear()


class ContainerIds:
    """Hands out unique container ids and remembers every id a test used."""

    def __init__(self, prefix: str = "t-") -> None:
        self.prefix = prefix
        self.used: list[str] = []

    def new(self) -> str:
        return self.track(self.prefix + uuid.uuid4().hex[:10])

    def track(self, cid: str) -> str:
        """Record an id the test made up itself, so teardown deletes it too."""
        if cid not in self.used:
            self.used.append(cid)
        return cid


class BundleFactory:
    """Makes bundles: a private copy of the busybox rootfs plus config.json."""

    def __init__(self, template: Path, base: Path) -> None:
        self.template = template
        self.base = base
        self.count = 0

    def __call__(self, config: Mapping[str, Any] | None = None) -> Path:
        self.count += 1
        path = self.base / f"bundle{self.count}"
        path.mkdir(parents=True)
        # A real copy (not hard links): a test may chown or write the rootfs.
        shutil.copytree(self.template, path / "rootfs", symlinks=True)
        write_config(path, default_config() if config is None else config)
        return path


class RunCapture:
    """Runs a container in the foreground: `run --bundle B ID` with stdio pipes."""

    def __init__(self, oci: Runtime, bundles: BundleFactory, ids: ContainerIds) -> None:
        self.oci = oci
        self.bundles = bundles
        self.ids = ids

    def __call__(
        self,
        config_or_bundle: Mapping[str, Any] | Path,
        *,
        cid: str | None = None,
        input: str | None = None,
        timeout: float = 30.0,
    ) -> RunResult:
        bundle = (
            config_or_bundle
            if isinstance(config_or_bundle, Path)
            else self.bundles(config_or_bundle)
        )
        cid = cid or self.ids.new()
        proc = self.oci("run", "--bundle", bundle, cid, input=input, timeout=timeout, pipes=True)
        return RunResult(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, config_or_bundle: Mapping[str, Any] | Path, **kwargs: Any) -> str:
        """Run, assert exit code 0, return the container's stdout."""
        result = self(config_or_bundle, **kwargs)
        assert result.code == 0, f"exit {result.code}\nstdout: {result.out}\nstderr: {result.err}"
        return result.out
