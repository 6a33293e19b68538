"""Real engines as callers: containerd (ctr + the runc v2 shim) and podman (conmon)
use hanok-oci as their OCI runtime, next to runc as the baseline.

Nothing here touches the host's engines or networking:

- containerd runs from a fixture with its root, state, socket and config under
  a temp dir, inside ``unshare --mount`` with a private tmpfs on /run (its shim
  sockets, /run/containerd/s/..., and the runtime's --root live there), so the
  snapshot and rootfs mounts stay in that mount namespace.
- podman runs inside ``unshare --net --mount`` (a long-lived holder process,
  each podman command entered with nsenter) with a private /run, its storage,
  containers.conf, storage.conf and registries.conf under a temp dir, and
  ``--network none`` on every container.

The image is built here, offline: a one-layer busybox docker-archive tarball
(tarfile + hand-written manifest.json and config, sha256 digests), imported
with ``ctr images import`` and ``podman load``.

Each engine gets the runtime through a small logging wrapper (named ``runc`` or
``hanok-oci``, as engines look at the name) that records the argv of every call
and keeps a copy of the bundle's config.json before exec'ing the real binary;
the hello tests also pass the real binary directly.

Teardown removes every container, checks that no mount is left in the
engine's mount namespace, stops the daemon by its pid, kills whatever else is
left in that namespace (shims, conmon), and removes the cgroups the engine or
runc made (under test-only names).

Debian packages: containerd, podman (which brings conmon), runc, busybox-static.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helpers import BUSYBOX, poll

_HERE = Path(__file__).resolve().parent
IMAGE = "localhost/hanok-busybox:test"
CGROUP_ROOT = Path("/sys/fs/cgroup")
TIMEOUT = 60.0
RUNTIMES = ["runc", "hanok-oci"]


def _skip(reason: str) -> None:
    """Skip, and have the integration conftest print the reason at the end."""
    conftest = str(_HERE / "conftest.py")
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == conftest and hasattr(module, "_SKIP_REASONS"):
            module._SKIP_REASONS.add(reason)
    pytest.skip(reason)


def _need_tools(*tools: str, package: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        _skip(f"{', '.join(missing)} not installed (Debian: apt-get install {package})")


def _describe(proc: subprocess.CompletedProcess[str]) -> str:
    args = " ".join(shlex.quote(str(a)) for a in proc.args)
    return f"$ {args}\n[exit {proc.returncode}]\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"


def _run(argv: list[str], *, env: dict[str, str] | None = None,
         timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"timed out after {timeout}s: {shlex.join(argv)}\n"
                             f"stdout: {e.stdout!r}\nstderr: {e.stderr!r}") from None


# ------------------------------------------------------------------ the image


def _go_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes | None = None, *, mode: int = 0o644,
             kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, 0, link
    info.size = len(data) if data is not None else 0
    tf.addfile(info, io.BytesIO(data) if data is not None else None)


def build_busybox_archive(path: Path, tag: str = IMAGE) -> None:
    """A docker-archive tarball (docker save's format) of a one-layer busybox image."""
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("bin", "dev", "etc", "proc", "sys", "root", "run", "var", "usr"):
            _tar_add(tf, d, kind=tarfile.DIRTYPE, mode=0o755)
        _tar_add(tf, "tmp", kind=tarfile.DIRTYPE, mode=0o1777)
        _tar_add(tf, "bin/busybox", BUSYBOX.read_bytes(), mode=0o755)
        for applet in applets:
            if applet != "busybox":
                _tar_add(tf, f"bin/{applet}", kind=tarfile.SYMTYPE, mode=0o777, link="busybox")
        _tar_add(tf, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                                   b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        _tar_add(tf, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    layer = layer_buf.getvalue()
    layer_hex = hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": _go_arch(),
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["sh"],
                   "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_hex}"]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "hanok tests: busybox"}],
    }).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{config_hex}.json", "RepoTags": [tag],
                            "Layers": [f"{layer_hex}/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as out:
        _tar_add(out, layer_hex, kind=tarfile.DIRTYPE, mode=0o755)
        _tar_add(out, f"{layer_hex}/layer.tar", layer)
        _tar_add(out, f"{config_hex}.json", config)
        _tar_add(out, "manifest.json", manifest)


# ------------------------------------------------------------------ the runtime, wrapped


@dataclass
class Wrapped:
    """A runtime as an engine sees it: a logging wrapper named like the real binary."""

    name: str  # "runc" or "hanok-oci"
    real: str
    path: Path  # the wrapper
    logdir: Path

    def calls(self) -> list[list[str]]:
        """argv (without the program) of every call so far."""
        log = self.logdir / "argv.log"
        if not log.exists():
            return []
        return [line.split("\x1f")[:-1] for line in log.read_text().splitlines()]

    def calls_for(self, cid: str) -> list[list[str]]:
        return [argv for argv in self.calls() if cid in argv]

    def config(self, cid: str) -> dict[str, Any]:
        """The config.json the engine wrote for container ``cid``."""
        return json.loads((self.logdir / f"config-{cid}.json").read_text())


def make_wrapper(directory: Path, name: str, real: str) -> Wrapped:
    directory.mkdir(parents=True)
    wrapper = directory / name
    log = shlex.quote(str(directory))
    wrapper.write_text(f"""#!/bin/sh
# test_callers.py: log the call, keep the bundle's config.json, run the real runtime
{{ for a in "$@"; do printf '%s\\037' "$a"; done; printf '\\n'; }} >> {log}/argv.log
prev= last= bundle=
for a in "$@"; do
  case $prev in --bundle|-b) bundle=$a ;; esac
  case $a in --bundle=*) bundle=${{a#--bundle=}} ;; esac
  prev=$a last=$a
done
if [ -n "$bundle" ]; then cp "$bundle/config.json" {log}/"config-$last.json" 2>/dev/null; fi
exec {shlex.quote(real)} "$@"
""")
    wrapper.chmod(0o755)
    return Wrapped(name, real, wrapper, directory)


def command_of(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """Split a runtime argv into (global flags, command, command args)."""
    with_value = {"--root", "--log", "--log-format", "--criu", "--rootless"}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 1 if "=" in argv[i] or argv[i] not in with_value else 2
    return argv[:i], argv[i], argv[i + 1:]


# ------------------------------------------------------------------ namespaces, processes, cgroups


def _mnt_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _mounts_of(pid: int) -> set[tuple[str, str]]:
    """(mount point, fs type) of every mount in ``pid``'s mount namespace."""
    found = set()
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        found.add((fields[4], fields[fields.index("-") + 1]))
    return found


def _pids_in_mnt_ns(ns: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and _mnt_ns(int(entry)) == ns:
            pids.append(int(entry))
    return pids


def _kill_mnt_ns(ns: str | None) -> list[str]:
    """SIGKILL every process left in mount namespace ``ns`` (all started by this test)."""
    if ns is None or ns == _mnt_ns(os.getpid()):
        return []
    left = []
    for pid in _pids_in_mnt_ns(ns):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            left.append(f"{pid}: {argv}")
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while _pids_in_mnt_ns(ns) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _remove_cgroups(name: str) -> list[str]:
    """rmdir /sys/fs/cgroup/<hierarchy>/<name> and everything below it (deepest first)."""
    problems = []
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        top = hierarchy / name
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in os.walk(top, topdown=False):
            for attempt in range(50):
                try:
                    os.rmdir(dirpath)
                    break
                except OSError as e:
                    if attempt == 49:
                        problems.append(f"cgroup {dirpath}: {e.strerror}")
                    time.sleep(0.02)
    return problems


def _reap(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# ================================================================== containerd


CONTAINERD_CONFIG = """\
version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{base}/containerd.sock"

[ttrpc]
  address = "{base}/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
"""


@dataclass
class Containerd:
    base: Path
    socket: Path
    namespace: str
    log: Path
    wrapped: dict[str, Wrapped] = field(default_factory=dict)

    def __call__(self, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        return _run(["ctr", "-a", str(self.socket), "-n", self.namespace, *args], timeout=timeout)

    def run(self, runtime: str | Path, cid: str, *command: str, options: tuple[str, ...] = ("--rm",),
            ) -> subprocess.CompletedProcess[str]:
        """``ctr run`` in the foreground (or as ``options`` say) with ``runtime`` as runc."""
        return self("run", *options, "--fifo-dir", str(self.base / "fifo"),
                    "--runc-binary", str(runtime), IMAGE, cid, *command)

    def log_tail(self) -> str:
        return "".join(self.log.read_text().splitlines(keepends=True)[-30:])

    def task_status(self, cid: str) -> str | None:
        for line in self("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == cid:
                return fields[-1]
        return None


@pytest.fixture(scope="module")
def containerd(runtime_binary: str) -> Iterator[Containerd]:
    """Our own containerd (module-wide), with the busybox image imported and runc checked."""
    _need_tools("containerd", "ctr", "containerd-shim-runc-v2", package="containerd")
    _need_tools("runc", package="runc")
    _need_tools("unshare", package="util-linux")
    if not BUSYBOX.is_file():
        _skip(f"{BUSYBOX} missing (Debian: apt-get install busybox-static)")
    base = Path(tempfile.mkdtemp(prefix="hanok-ctrd-", dir="/tmp"))
    base.chmod(0o755)
    (base / "fifo").mkdir()
    ctrd = Containerd(base, base / "containerd.sock", f"hanoktest-{uuid.uuid4().hex[:6]}",
                      base / "containerd.log")
    for name, real in (("runc", shutil.which("runc") or "runc"), ("hanok-oci", runtime_binary)):
        ctrd.wrapped[name] = make_wrapper(base / f"wrap-{name}", name, real)
    config = base / "config.toml"
    config.write_text(CONTAINERD_CONFIG.format(base=base))
    problems: list[str] = []
    ns: str | None = None
    with open(ctrd.log, "w") as log:
        daemon = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t tmpfs -o mode=755,size=64m hanok-ctrd-run /run && exec containerd --config "$1"',
             "sh", str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up() -> bool:
            if daemon.poll() is not None:
                raise AssertionError(f"containerd exited ({daemon.returncode}):\n{ctrd.log_tail()}")
            return ctrd.socket.exists() and ctrd("version", timeout=10).returncode == 0

        poll(up, timeout=30, interval=0.05, what="containerd's socket")
        ns = _mnt_ns(daemon.pid)
        imported = ctrd("images", "import", str(_archive(base)))
        assert imported.returncode == 0, _describe(imported)
        baseline_mounts = _mounts_of(daemon.pid)
        cid = f"baseline-{uuid.uuid4().hex[:6]}"
        check = ctrd.run(shutil.which("runc") or "runc", cid, "sh", "-c", "echo hello")
        if check.returncode != 0 or "hello" not in check.stdout:
            _skip(f"containerd with runc fails in this environment, so it cannot judge hanok-oci:\n"
                  f"{_describe(check)}")
        yield ctrd
        # every container gone (a failed test may have left one running)
        for line in ctrd("tasks", "ls", "-q").stdout.split():
            ctrd("tasks", "kill", "-s", "KILL", line)
            ctrd("tasks", "rm", "-f", line)
        for line in ctrd("containers", "ls", "-q").stdout.split():
            ctrd("containers", "rm", line)
        left = sorted(_mounts_of(daemon.pid) - baseline_mounts)
        if left:
            problems.append(f"mounts left in containerd's mount namespace: {left}")
    finally:
        _reap(daemon)
        strays = _kill_mnt_ns(ns)
        if strays:
            problems.append(f"processes left in containerd's mount namespace: {strays}")
        problems += _remove_cgroups(ctrd.namespace)
        shutil.rmtree(base, ignore_errors=True)
    if problems:
        pytest.fail("containerd teardown:\n  " + "\n  ".join(problems), pytrace=False)


def _archive(base: Path) -> Path:
    path = base / "busybox-image.tar"
    if not path.exists():
        build_busybox_archive(path)
    return path


def _cid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=RUNTIMES)
def ctr_runtime(request: pytest.FixtureRequest, containerd: Containerd) -> Wrapped:
    return containerd.wrapped[request.param]


# ctr's default spec has linux.resources.cpu.shares = 1024 (`ctr run --cpu-shares`
# defaults to 1024). hanok refuses any cgroup limit until cgroups land, so the
# tests below pass --cpu-shares 0 (no cpu block) and test_ctr_default_spec
# records the default case.
NO_LIMITS = ("--rm", "--cpu-shares", "0")


def test_ctr_run_hello_direct(containerd: Containerd, runtime_binary: str) -> None:
    """The literal: ctr run --runc-binary /opt/hanok/bin/hanok-oci ... prints hello."""
    proc = containerd.run(runtime_binary, _cid("direct"), "sh", "-c", "echo hello; hostname",
                          options=NO_LIMITS)
    assert proc.returncode == 0, _describe(proc)
    lines = proc.stdout.splitlines()
    assert lines[0] == "hello", _describe(proc)
    assert len(lines) == 2 and lines[1].strip(), _describe(proc)


def test_ctr_run_hello(containerd: Containerd, ctr_runtime: Wrapped) -> None:
    cid = _cid("hello")
    proc = containerd.run(ctr_runtime.path, cid, "sh", "-c", "echo hello; hostname", options=NO_LIMITS)
    assert proc.returncode == 0, _describe(proc)
    assert proc.stdout.splitlines()[0] == "hello", _describe(proc)
    # the runc v2 shim: --root R --log L --log-format json before every command;
    # create --bundle B --pid-file F ID, start ID, delete ID
    calls = ctr_runtime.calls_for(cid)
    commands = [command_of(argv)[1] for argv in calls]
    assert commands[:3] == ["create", "start", "delete"], calls
    for argv in calls:
        flags, _, _ = command_of(argv)
        assert flags[0::2] == ["--root", "--log", "--log-format"], argv
        assert flags[5] == "json" and flags[3].endswith(f"/{cid}/log.json"), argv
    _, _, create = command_of(calls[0])
    assert create[0] == "--bundle" and create[2] == "--pid-file" and create[-1] == cid, calls[0]
    assert ctr_runtime.config(cid)["linux"]["cgroupsPath"] == f"/{containerd.namespace}/{cid}"


def test_ctr_exit_code(containerd: Containerd, ctr_runtime: Wrapped) -> None:
    proc = containerd.run(ctr_runtime.path, _cid("exit"), "sh", "-c", "exit 7", options=NO_LIMITS)
    assert proc.returncode == 7, _describe(proc)


def test_ctr_detached_exec_kill(containerd: Containerd, ctr_runtime: Wrapped) -> None:
    """ctr run -d; ctr task exec (exit code, output); ctr task kill; task/container rm."""
    cid = _cid("detach")
    started = containerd.run(ctr_runtime.path, cid, "sleep", "1000",
                             options=("-d", "--null-io", "--cpu-shares", "0"))
    assert started.returncode == 0, _describe(started)
    try:
        assert containerd.task_status(cid) == "RUNNING"
        exec_ = containerd("tasks", "exec", "--fifo-dir", str(containerd.base / "fifo"),
                           "--exec-id", "e1", cid, "sh", "-c", "echo from-exec; cat /proc/1/cmdline; exit 3")
        assert exec_.returncode == 3, _describe(exec_)
        assert exec_.stdout.split("\n")[:2] == ["from-exec", "sleep\x001000\x00"], _describe(exec_)
        killed = containerd("tasks", "kill", "-s", "KILL", cid)
        assert killed.returncode == 0, _describe(killed)
        poll(lambda: containerd.task_status(cid) == "STOPPED", timeout=10, what=f"{cid} to stop")
        removed = containerd("tasks", "rm", cid)
        assert removed.returncode == 0, _describe(removed)
    finally:
        containerd("tasks", "rm", "-f", cid)
        containerd("containers", "rm", cid)
    commands = {command_of(argv)[1]: command_of(argv)[2] for argv in ctr_runtime.calls_for(cid)}
    assert {"create", "start", "exec", "kill", "delete"} <= set(commands), commands
    assert "--process" in commands["exec"] and "--detach" in commands["exec"], commands["exec"]
    assert commands["kill"] == [cid, "9"], commands["kill"]


def test_ctr_error_reaches_caller(containerd: Containerd) -> None:
    """A refused create: the shim reads hanok-oci's JSON log and ctr prints the message."""
    wrapped = containerd.wrapped["hanok-oci"]
    cid = _cid("refused")
    proc = containerd.run(wrapped.path, cid, "true", options=(
        *NO_LIMITS, "--mount", "type=bind,src=/nonexistent-hanok-test,dst=/x,options=rbind:ro"))
    assert proc.returncode != 0, _describe(proc)
    assert "OCI runtime create failed" in proc.stderr, _describe(proc)
    assert "/nonexistent-hanok-test does not exist" in proc.stderr, _describe(proc)
    assert cid not in containerd("containers", "ls", "-q").stdout
    assert [command_of(a)[1] for a in wrapped.calls_for(cid)] == ["create", "delete"]


@pytest.mark.parametrize("runtime", ["runc", "hanok-oci"])
def test_ctr_default_spec(containerd: Containerd, runtime: str) -> None:
    """Plain `ctr run --rm` (no --cpu-shares 0): what any ctr user types."""
    wrapped = containerd.wrapped[runtime]
    cid = _cid("default")
    proc = containerd.run(wrapped.path, cid, "sh", "-c", "echo hello")
    resources = wrapped.config(cid)["linux"].get("resources")
    assert proc.returncode == 0 and "hello" in proc.stdout, f"{_describe(proc)}\nresources: {resources}"


# ================================================================== podman


CONTAINERS_CONF = """\
[containers]
default_ulimits = [{ulimits}]
pids_limit = 0
log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{base}/events.log"
tmp_dir = "{base}/tmp"
image_copy_tmp_dir = "{base}/tmp"
static_dir = "{base}/graph/libpod"
volume_path = "{base}/graph/volumes"

[network]
network_config_dir = "{base}/networks"
"""

STORAGE_CONF = """\
[storage]
driver = "overlay"
graphroot = "{base}/graph"
runroot = "{base}/runroot"
"""

POLICY = {"default": [{"type": "insecureAcceptAnything"}]}

# podman 4.3 lowers its own RLIMIT_NPROC to 32768 at start (strace:
# setrlimit(RLIMIT_NPROC, {32768, 32768})), so conmon and the runtime inherit
# that hard limit; without CAP_SYS_RESOURCE nothing above it can be set.
PODMAN_NPROC = 32768


def _ulimits() -> str:
    import resource

    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nproc = PODMAN_NPROC if nproc == resource.RLIM_INFINITY else min(nproc, PODMAN_NPROC)
    if nofile == resource.RLIM_INFINITY:
        nofile = 1048576
    return f'"nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"'


@dataclass
class Podman:
    base: Path
    holder: subprocess.Popen[str]
    env: dict[str, str]
    cgroup_parent: str
    wrapped: dict[str, Wrapped] = field(default_factory=dict)

    def __call__(self, runtime: str | Path, *args: str, timeout: float = TIMEOUT,
                 ) -> subprocess.CompletedProcess[str]:
        return _run(["nsenter", "-t", str(self.holder.pid), "--net", "--mount",
                     "podman", "--root", str(self.base / "graph"), "--runroot", str(self.base / "runroot"),
                     "--runtime", str(runtime), "--cgroup-manager", "cgroupfs", *args],
                    env=self.env, timeout=timeout)

    def run(self, runtime: str | Path, *args: str) -> subprocess.CompletedProcess[str]:
        return self(runtime, "run", "--network", "none", "--cgroup-parent", self.cgroup_parent, *args)


@pytest.fixture(scope="module")
def podman(runtime_binary: str) -> Iterator[Podman]:
    """podman (module-wide) in its own net+mount namespace, image loaded, runc checked."""
    _need_tools("podman", "conmon", package="podman")
    _need_tools("runc", package="runc")
    _need_tools("unshare", "nsenter", package="util-linux")
    if not BUSYBOX.is_file():
        _skip(f"{BUSYBOX} missing (Debian: apt-get install busybox-static)")
    base = Path(tempfile.mkdtemp(prefix="hanok-podman-", dir="/tmp"))
    base.chmod(0o755)
    for d in ("tmp", "home/.config/containers", "networks"):
        (base / d).mkdir(parents=True)
    (base / "containers.conf").write_text(CONTAINERS_CONF.format(base=base, ulimits=_ulimits()))
    (base / "storage.conf").write_text(STORAGE_CONF.format(base=base))
    (base / "registries.conf").write_text("")
    (base / "home/.config/containers/policy.json").write_text(json.dumps(POLICY))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONTAINERS_", "XDG_", "DBUS_", "REGISTRY_AUTH"))}
    env.update(CONTAINERS_CONF=str(base / "containers.conf"),
               CONTAINERS_STORAGE_CONF=str(base / "storage.conf"),
               CONTAINERS_REGISTRIES_CONF=str(base / "registries.conf"),
               HOME=str(base / "home"))
    # podman's image copies (load, import) write a blob-info cache to
    # /var/lib/containers/cache whatever the storage paths say: an overlay on
    # /var/lib, inside the namespace, catches that under the temp dir.
    for d in ("varlib/upper", "varlib/work"):
        (base / d).mkdir(parents=True)
    setup = (f"mount -t tmpfs -o mode=755,size=64m hanok-podman-run /run && "
             f"mount -t overlay hanok-podman-varlib -o lowerdir=/var/lib,"
             f"upperdir={base}/varlib/upper,workdir={base}/varlib/work /var/lib && "
             f"echo ready && exec sleep infinity")
    holder = subprocess.Popen(
        ["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", setup],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, start_new_session=True)
    pm = Podman(base, holder, env, f"/hanok-callers-{uuid.uuid4().hex[:6]}")
    runc = shutil.which("runc") or "runc"
    for name, real in (("runc", runc), ("hanok-oci", runtime_binary)):
        pm.wrapped[name] = make_wrapper(base / f"wrap-{name}", name, real)
    problems: list[str] = []
    ns: str | None = None
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready", \
            "could not make podman's namespaces (unshare --net --mount, tmpfs on /run)"
        ns = _mnt_ns(holder.pid)
        loaded = pm(runc, "load", "-i", str(_archive(base)))
        assert loaded.returncode == 0, _describe(loaded)
        baseline_mounts = _mounts_of(holder.pid)
        check = pm.run(runc, "--rm", IMAGE, "sh", "-c", "echo hello")
        if check.returncode != 0 or "hello" not in check.stdout:
            _skip(f"podman with runc fails in this environment, so it cannot judge hanok-oci:\n"
                  f"{_describe(check)}")
        yield pm
        # each container is removed through the runtime it was made with
        for wrapped in pm.wrapped.values():
            pm(wrapped.path, "rm", "--all", "--force", "--time", "0")
        listed = pm(runc, "ps", "--all", "--quiet")
        if listed.returncode != 0 or listed.stdout.strip():
            problems.append(f"containers left after podman rm --all:\n{_describe(listed)}")
        # containers the engine lost track of, in either runtime's state dir (/run is ours)
        for name, root in (("hanok-oci", "/run/hanok-oci"), ("runc", "/run/runc")):
            listed = _run(["nsenter", "-t", str(holder.pid), "--mount", pm.wrapped[name].real,
                           "--root", root, "list", "-q"])
            for cid in listed.stdout.split():
                problems.append(f"{name} still had container {cid} after podman rm --all")
                _run(["nsenter", "-t", str(holder.pid), "--mount", pm.wrapped[name].real,
                      "--root", root, "delete", "--force", cid])
        left = sorted(_mounts_of(holder.pid) - baseline_mounts)
        if left:
            problems.append(f"mounts left in podman's mount namespace: {left}")
    finally:
        strays = [s for s in _kill_mnt_ns(ns) if not s.split(": ", 1)[1].startswith("sleep infinity")]
        _reap(holder, signal.SIGKILL)
        if holder.stdout is not None:
            holder.stdout.close()
        if strays:
            problems.append(f"processes left in podman's mount namespace: {strays}")
        problems += _remove_cgroups(pm.cgroup_parent.strip("/"))
        shutil.rmtree(base, ignore_errors=True)
    if problems:
        pytest.fail("podman teardown:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture(params=RUNTIMES)
def podman_runtime(request: pytest.FixtureRequest, podman: Podman) -> Wrapped:
    return podman.wrapped[request.param]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_podman_run_hello(podman: Podman, runtime: str) -> None:
    """podman --runtime <the real binary> --cgroup-manager cgroupfs run --rm --network none ..."""
    binary = podman.wrapped[runtime].real
    proc = podman.run(binary, "--rm", IMAGE, "sh", "-c", "echo hello; hostname")
    assert proc.returncode == 0, _describe(proc)
    lines = proc.stdout.splitlines()
    assert lines[0] == "hello", _describe(proc)
    assert len(lines) == 2 and lines[1].strip(), _describe(proc)


def test_podman_exit_code(podman: Podman, podman_runtime: Wrapped) -> None:
    name = _cid("exit")
    proc = podman.run(podman_runtime.path, "--rm", "--name", name, IMAGE, "sh", "-c", "exit 7")
    assert proc.returncode == 7, _describe(proc)
    gone = podman(podman_runtime.path, "ps", "-a", "-q", "--filter", f"name={name}")
    assert gone.stdout.strip() == "", _describe(gone)


def test_podman_exec_stop_rm(podman: Podman, podman_runtime: Wrapped) -> None:
    """A detached container: podman exec (output, exit code), stop (SIGTERM reaches it), rm."""
    name = _cid("sleeper")
    started = podman.run(podman_runtime.path, "-d", "--name", name, IMAGE,
                         "sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait")
    assert started.returncode == 0, _describe(started)
    cid = started.stdout.strip()
    try:
        exec_ = podman(podman_runtime.path, "exec", name, "sh", "-c", "echo exec-ok; cat /proc/1/cmdline; exit 5")
        assert exec_.returncode == 5, _describe(exec_)
        assert exec_.stdout.startswith("exec-ok\nsh\x00-c\x00"), _describe(exec_)
        stopped = podman(podman_runtime.path, "stop", "--time", "30", name)
        assert stopped.returncode == 0, _describe(stopped)
        # exit 0 is the trap's: SIGTERM arrived (SIGKILL after the timeout would be 137)
        code = podman(podman_runtime.path, "inspect", "--format", "{{.State.ExitCode}}", name)
        assert code.stdout.strip() == "0", _describe(code)
        removed = podman(podman_runtime.path, "rm", name)
        assert removed.returncode == 0, _describe(removed)
        gone = podman(podman_runtime.path, "ps", "-a", "-q", "--filter", f"name={name}")
        assert gone.stdout.strip() == "", _describe(gone)
    finally:
        podman(podman_runtime.path, "rm", "--force", "--time", "0", name)
    commands = [command_of(argv)[1] for argv in podman_runtime.calls_for(cid)]
    assert commands[:2] == ["create", "start"], commands
    assert {"exec", "kill", "delete"} <= set(commands), commands
    exec_argv = next(command_of(a)[2] for a in podman_runtime.calls_for(cid) if command_of(a)[1] == "exec")
    assert "--process" in exec_argv and "--detach" in exec_argv, exec_argv
