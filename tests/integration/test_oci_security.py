"""Security boundaries of an OCI container, observed from inside it and from the host.

seccomp filters, mount destinations through symlinks, the process's cwd, file
descriptors the caller leaks, /proc being the kernel's procfs, the waiting init
being out of reach of processes in the container, the --explain trace, user
namespaces seen by exec, and `kill --all`.

Where runc 1.1.5 (the suite's reference) behaves differently, the test says so
in a comment starting with "FAILS ON runc 1.1.5".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    BundleFactory,
    RunCapture,
    Runtime,
    Untouched,
    chown_tree,
    default_config,
    describe,
    listing,
    mounts_under,
    ns_link,
    parse_status,
    pid_alive,
    poll,
    remove_namespace,
    set_namespace,
    sh,
)

SLEEPER = ["sleep", "100"]


def _refused(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0, describe(proc)
    for needle in needles:
        assert needle.lower() in proc.stderr.lower(), (
            f"expected {needle!r} on stderr\n{describe(proc)}"
        )


def _call(
    oci: Runtime,
    *args: str | os.PathLike[str],
    pass_fds: tuple[int, ...] = (),
    fd3: int | None = None,
    pipes: bool = False,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Call the runtime with extra inherited file descriptors.

    ``pass_fds`` reach the runtime under their own numbers (inheritable, no
    CLOEXEC), as a careless caller would leak them. ``fd3`` is dup'ed to fd 3
    of the runtime (through bash: ``exec "$@" 3<&N``), where --preserve-fds
    expects the first passed fd; the original number stays open as well.
    ``pipes=False`` uses temporary files for stdout/stderr, for `create`,
    whose stdio the container keeps.
    """
    argv = oci.argv(*args)
    keep = set(pass_fds)
    if fd3 is not None:
        bash = shutil.which("bash")
        assert bash, "bash is needed to place an fd at number 3"
        argv = [bash, "-c", 'fd=$1; shift; exec "$@" 3<&"$fd"', "bash", str(fd3), *argv]
        keep.add(fd3)
    try:
        if pipes:
            return subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                pass_fds=tuple(sorted(keep)),
            )
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                text=True,
                timeout=timeout,
                pass_fds=tuple(sorted(keep)),
            )
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(argv, done.returncode, out.read(), err.read())
    except subprocess.TimeoutExpired:
        raise AssertionError(f"runtime call timed out after {timeout}s: {' '.join(argv)}") from None


def _inheritable_dir_fd(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    os.set_inheritable(fd, True)
    return fd


def _running(oci: Runtime, bundle: BundleFactory, cid: str, config: dict[str, Any]) -> int:
    path = bundle(config)
    oci.ok("create", "--bundle", path, cid)
    oci.ok("start", cid)
    pid: int = oci.state(cid)["pid"]
    return pid


def _is_hanok(oci: Runtime) -> bool:
    return "hanok" in Path(oci.binary).name


# ------------------------------------------------------------------ seccomp

NO_MKDIR = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
}
MKDIR_SCRIPT = (
    "touch /tmp/f && echo touched; mkdir /tmp/x; echo mkdir=$?; [ -d /tmp/x ] || echo absent"
)


def _seccomp_config(script: str, *, nnp: bool, profile: dict[str, Any] | None) -> dict[str, Any]:
    config = default_config(*sh(script))
    config["root"]["readonly"] = False
    config["mounts"].append(
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", "size=1m"],
        }
    )
    config["process"]["noNewPrivileges"] = nnp
    if profile is not None:
        config["linux"]["seccomp"] = json.loads(json.dumps(profile))
    return config


@pytest.mark.parametrize("nnp", [True, False], ids=["nnp", "no-nnp"])
def test_seccomp_errno_rule_blocks_mkdir_only(run_capture: RunCapture, nnp: bool) -> None:
    # Without no_new_privs the filter can only be loaded while the init still
    # holds CAP_SYS_ADMIN: the runtime must load it before dropping capabilities.
    code, out, err = run_capture(_seccomp_config(MKDIR_SCRIPT, nnp=nnp, profile=NO_MKDIR))
    assert code == 0, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert out.splitlines() == ["touched", "mkdir=1", "absent"], f"stdout: {out}\nstderr: {err}"
    assert "Operation not permitted" in err, err


def test_seccomp_control_without_profile_mkdir_works(run_capture: RunCapture) -> None:
    # The same container without the profile: mkdir succeeds, so the failure
    # above is the filter's doing, not the mount's.
    out = run_capture.ok(_seccomp_config(MKDIR_SCRIPT, nnp=True, profile=None))
    assert out.splitlines() == ["touched", "mkdir=0"], out


@pytest.mark.parametrize("nnp", [True, False], ids=["nnp", "no-nnp"])
def test_seccomp_mode_in_proc_status(run_capture: RunCapture, nnp: bool) -> None:
    config = _seccomp_config("cat /proc/self/status", nnp=nnp, profile=NO_MKDIR)
    out = run_capture.ok(config)
    assert "Seccomp:\t2\n" in out, out
    fields = parse_status(out)
    assert fields["NoNewPrivs"] == ("1" if nnp else "0"), out


def test_seccomp_without_nnp_for_an_unprivileged_user(run_capture: RunCapture) -> None:
    # uid 1000 with no capabilities and no_new_privs off: loading the filter
    # after the user switch would fail (EACCES), so this only works when the
    # runtime loads it before dropping privileges, as runc does.
    config = _seccomp_config(
        MKDIR_SCRIPT + "; grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status",
        nnp=False,
        profile=NO_MKDIR,
    )
    config["process"]["user"] = {"uid": 1000, "gid": 1000}
    config["process"]["capabilities"] = {"bounding": [], "effective": [], "permitted": []}
    code, out, err = run_capture(config)
    assert code == 0, f"exit {code}\nstdout: {out}\nstderr: {err}"
    lines = out.splitlines()
    assert lines[:3] == ["touched", "mkdir=1", "absent"], f"stdout: {out}\nstderr: {err}"
    fields = parse_status("\n".join(lines[3:]))
    assert fields == {"NoNewPrivs": "0", "Seccomp": "2", "CapEff": "0000000000000000"}, out
    assert "Operation not permitted" in err, err


def test_seccomp_applies_to_exec(oci: Runtime, bundle: BundleFactory, cid: str) -> None:
    config = _seccomp_config("exec sleep 100", nnp=True, profile=NO_MKDIR)
    _running(oci, bundle, cid, config)
    proc = oci(
        "exec",
        cid,
        "sh",
        "-c",
        "grep '^Seccomp:' /proc/self/status; mkdir /tmp/y; echo mkdir=$?",
        pipes=True,
    )
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.splitlines() == ["Seccomp:\t2", "mkdir=1"], describe(proc)
    assert "Operation not permitted" in proc.stderr, describe(proc)


def test_seccomp_unknown_action_fails_create(
    oci: Runtime, bundle: BundleFactory, cid: str, untouched: Untouched
) -> None:
    profile = json.loads(json.dumps(NO_MKDIR))
    profile["syscalls"][0]["action"] = "SCMP_ACT_FOO"
    path = bundle(_seccomp_config("true", nnp=True, profile=profile))
    before = untouched()
    proc = oci("create", "--bundle", path, cid)
    # runc: runc create failed: string SCMP_ACT_FOO is not a valid action for seccomp
    _refused(proc, "seccomp", "action", "SCMP_ACT_FOO")
    if _is_hanok(oci):
        # hanok names the field: linux.seccomp.syscalls[0].action
        assert "linux.seccomp.syscalls[0].action" in proc.stderr, describe(proc)
    assert len(proc.stderr.strip().splitlines()) == 1, describe(proc)
    untouched.check(before)
    assert oci.status(cid) is None


# ------------------------------------------------------------------ mount destinations


def _escaping_links(rootfs: Path, target: Path) -> tuple[str, str]:
    """(absolute, relative) symlink texts that would reach ``target`` on the host."""
    absolute = str(target)
    relative = "../" * (len(rootfs.parts) + 2) + str(target).lstrip("/")
    # Sanity: followed on the host, the relative one does reach target.
    assert os.path.normpath(os.path.join(rootfs, relative)) == str(target)
    return absolute, relative


def test_mount_destination_through_symlinks_stays_in_rootfs(
    run_capture: RunCapture, bundle: BundleFactory, host_dir: Path
) -> None:
    (host_dir / "keep").write_text("host file\n")
    config = default_config(
        *sh(
            "cat /proc/self/mountinfo; echo --; "
            "echo inside > /evil/x/f && echo inside > /evil2/y/f && echo wrote; "
            "ls -A /evil/x /evil2/y"
        )
    )
    config["mounts"] += [
        {"destination": "/evil/x", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]},
        {"destination": "/evil2/y", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]},
    ]
    path = bundle(config)
    rootfs = path / "rootfs"
    absolute, relative = _escaping_links(rootfs, host_dir)
    (rootfs / "evil").symlink_to(absolute)
    (rootfs / "evil2").symlink_to(relative)
    host_before = listing(host_dir)

    out = run_capture.ok(path)
    mountinfo, rest = out.split("--\n")
    # Host side: nothing created in the host dir, no mount on or under it.
    assert listing(host_dir) == host_before == ["keep"]
    assert mounts_under(host_dir) == []
    # Where the mounts landed: the symlinks were resolved inside the rootfs,
    # so the mount points are <rootfs>/<host_dir path>/{x,y}.
    inside_target = rootfs / str(host_dir).lstrip("/")
    assert (inside_target / "x").is_dir(), listing(rootfs / "tmp")
    assert (inside_target / "y").is_dir(), listing(rootfs / "tmp")
    # Container side: both are tmpfs mount points (at the resolved paths) and
    # writable; the files written went to the tmpfs, not to the host.
    fstype = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        fstype[fields[4]] = fields[fields.index("-") + 1]
    for name in ("x", "y"):
        assert fstype.get(f"{host_dir}/{name}") == "tmpfs", mountinfo
    assert rest.splitlines()[0] == "wrote", out
    assert not (host_dir / "x").exists()
    assert not (inside_target / "x" / "f").exists()  # it was written to the tmpfs


def test_bind_mount_destination_through_symlink_stays_in_rootfs(
    run_capture: RunCapture, bundle: BundleFactory, host_dir: Path
) -> None:
    source = host_dir / "src"
    target = host_dir / "target"
    source.mkdir()
    target.mkdir()
    (source / "f").write_text("from source\n")
    config = default_config(*sh("cat /evil/b/f; cat /evil2/c/f"))
    config["mounts"] += [
        {"destination": d, "type": "bind", "source": str(source), "options": ["rbind", "ro"]}
        for d in ("/evil/b", "/evil2/c")
    ]
    path = bundle(config)
    rootfs = path / "rootfs"
    absolute, relative = _escaping_links(rootfs, target)
    (rootfs / "evil").symlink_to(absolute)
    (rootfs / "evil2").symlink_to(relative)

    out = run_capture.ok(path)
    assert out == "from source\nfrom source\n"
    assert listing(target) == []
    assert mounts_under(host_dir) == []
    assert (rootfs / str(target).lstrip("/") / "b").is_dir()


# ------------------------------------------------------------------ cwd


@pytest.fixture
def dir_fd(host_dir: Path) -> Iterator[int]:
    """An inheritable O_RDONLY fd of a host directory holding a marker file."""
    (host_dir / "host-marker").write_text("on the host\n")
    fd = _inheritable_dir_fd(host_dir)
    yield fd
    os.close(fd)


CWD_SCRIPT = "touch escaped; pwd; ls"


def _cwd_config(cwd: str) -> dict[str, Any]:
    config = default_config(*sh(CWD_SCRIPT))
    config["process"]["cwd"] = cwd
    return config


def _names_cwd(stderr: str, cwd: str) -> bool:
    """A clear refusal names the cwd (its value, or the words)."""
    return bool(re.search(r"cwd|working directory", stderr, re.I)) or cwd in stderr


def _host_fd_cwd(where: str, dir_fd: int) -> tuple[str, dict[str, Any]]:
    """(process.cwd, _call kwargs) naming the leaked host directory fd."""
    if where == "fd3":
        return "/proc/self/fd/3", {"fd3": dir_fd}
    return f"/proc/self/fd/{dir_fd}", {"pass_fds": (dir_fd,)}


@pytest.mark.parametrize("where", ["fd3", "leaked-fd"])
def test_cwd_through_a_host_fd_never_leaves_the_root(
    oci: Runtime, bundle: BundleFactory, cid: str, host_dir: Path, dir_fd: int, where: str
) -> None:
    # The CVE-2024-21626 shape: a directory fd of the host is open in the
    # runtime (here: leaked by the caller, at fd 3 or at its own number) and
    # process.cwd names it through /proc/self/fd. The user program must never
    # run with that cwd: nothing appears in the host dir, nothing of it is listed.
    # (runc 1.1.5 happens to fail the fd3 case for another reason: its own fd 3
    # is not a directory, "mkdir /proc/self/fd/3: not a directory".)
    cwd, kwargs = _host_fd_cwd(where, dir_fd)
    path = bundle(_cwd_config(cwd))
    proc = _call(oci, "run", "--bundle", path, cid, pipes=True, **kwargs)
    assert proc.returncode != 0, describe(proc)
    assert "host-marker" not in proc.stdout, describe(proc)
    assert str(host_dir) not in proc.stdout, describe(proc)
    assert sorted(os.listdir(host_dir)) == ["host-marker"]


@pytest.mark.parametrize("where", ["fd3", "leaked-fd"])
def test_cwd_through_a_host_fd_is_refused_with_a_clear_message(
    oci: Runtime, bundle: BundleFactory, cid: str, dir_fd: int, where: str
) -> None:
    # What the refusal says must point at process.cwd, not be a bare errno.
    cwd, kwargs = _host_fd_cwd(where, dir_fd)
    proc = _call(oci, "run", "--bundle", bundle(_cwd_config(cwd)), cid, pipes=True, **kwargs)
    assert proc.returncode != 0, describe(proc)
    assert _names_cwd(proc.stderr, cwd), describe(proc)


@pytest.mark.parametrize("where", ["fd3", "leaked-fd"])
def test_cwd_through_a_host_fd_fails_create_or_start(
    oci: Runtime,
    bundle: BundleFactory,
    cid: str,
    host_dir: Path,
    dir_fd: int,
    untouched: Untouched,
    where: str,
) -> None:
    # A caller (containerd, podman) learns about a bad cwd from `create` or
    # `start` failing, with a message naming the cwd, not from a container
    # that "started" and died at once. runc applies the cwd in its init before
    # `create` returns, so it fails `create` (runc >= 1.1.12: "current working
    # directory is outside of container mount namespace root -- possible
    # container breakout detected"; 1.1.5 never sees the caller's fds and fails
    # `create` with "mkdir /proc/self/fd/N: not a directory").
    cwd, kwargs = _host_fd_cwd(where, dir_fd)
    path = bundle(_cwd_config(cwd))
    before = untouched()
    create = _call(oci, "create", "--bundle", path, cid, **kwargs)
    if create.returncode != 0:
        assert _names_cwd(create.stderr, cwd), describe(create)
        untouched.check(before)
        return
    start = oci("start", cid)
    if start.returncode == 0:
        oci.wait_status(cid, "stopped")
    assert sorted(os.listdir(host_dir)) == ["host-marker"], "the process ran in the host dir"
    assert start.returncode != 0, (
        "create and start both succeeded for a cwd outside the root; the container "
        f"stopped on its own instead\n{describe(create)}\n{describe(start)}"
    )
    assert _names_cwd(start.stderr, cwd), describe(start)


def test_exec_cwd_through_a_host_fd_never_leaves_the_root(
    oci: Runtime, bundle: BundleFactory, cid: str, host_dir: Path, dir_fd: int
) -> None:
    _running(oci, bundle, cid, default_config(*SLEEPER))
    cwd = f"/proc/self/fd/{dir_fd}"
    proc = _call(oci, "exec", "--cwd", cwd, cid, *sh(CWD_SCRIPT), pipes=True, pass_fds=(dir_fd,))
    assert proc.returncode != 0, describe(proc)
    assert "host-marker" not in proc.stdout, describe(proc)
    assert sorted(os.listdir(host_dir)) == ["host-marker"]
    assert oci.state(cid)["status"] == "running"
    # ... and `exec` says why.
    assert _names_cwd(proc.stderr, cwd), describe(proc)


def test_missing_cwd_is_created_or_refused_at_create(
    oci: Runtime, bundle: BundleFactory, cid: str, host_dir: Path, untouched: Untouched
) -> None:
    # runc creates a missing cwd (mkdir -p, 0755, inside the new root, before
    # the root is made read-only) and the process runs there. Refusing it at
    # `create` with a message naming the cwd would be fine too. Not fine:
    # `create` and `start` succeed and the process dies at once.
    config = default_config(*sh("pwd > /h/pwd"))
    config["process"]["cwd"] = "/no/such/dir"
    config["mounts"].append(
        {"destination": "/h", "type": "bind", "source": str(host_dir), "options": ["rbind", "rw"]}
    )
    path = bundle(config)
    before = untouched()
    create = oci("create", "--bundle", path, cid)
    if create.returncode != 0:
        assert re.search(r"cwd|working directory", create.stderr, re.I), describe(create)
        assert "/no/such/dir" in create.stderr, describe(create)
        untouched.check(before)
        return
    proc = oci("start", cid)
    assert proc.returncode == 0, describe(proc)
    oci.wait_status(cid, "stopped")
    assert (host_dir / "pwd").exists(), (
        "create and start succeeded, but the process never ran (the missing cwd was "
        f"neither created nor refused at create)\n{describe(create)}"
    )
    assert (host_dir / "pwd").read_text() == "/no/such/dir\n"
    assert (path / "rootfs" / "no" / "such" / "dir").is_dir()
    oci.ok("delete", cid)


def test_missing_cwd_through_a_symlink_is_not_created_on_the_host(
    run_capture: RunCapture, bundle: BundleFactory, host_dir: Path
) -> None:
    # If a runtime creates a missing cwd (runc does), it must create it inside
    # the root: a symlink in the rootfs pointing at a host path must not make
    # it mkdir on the host.
    config = default_config(*sh("pwd"))
    config["process"]["cwd"] = "/evil/sub"
    path = bundle(config)
    (path / "rootfs" / "evil").symlink_to(str(host_dir))
    run_capture(path)
    assert listing(host_dir) == []


# ------------------------------------------------------------------ file descriptors


def _fd_listing(out: str) -> list[str]:
    return sorted(out.split(), key=int)


def test_leaked_fds_do_not_reach_the_container(
    oci: Runtime, bundle: BundleFactory, cid: str, dir_fd: int
) -> None:
    r, w = os.pipe()
    os.set_inheritable(r, True)
    os.set_inheritable(w, True)
    try:
        # PID 1 is sh: `; true` keeps it from exec'ing ls in its place.
        path = bundle(default_config(*sh("ls /proc/1/fd; true")))
        proc = _call(oci, "run", "--bundle", path, cid, pipes=True, pass_fds=(dir_fd, r, w))
    finally:
        os.close(r)
        os.close(w)
    assert proc.returncode == 0, describe(proc)
    assert _fd_listing(proc.stdout) == ["0", "1", "2"], describe(proc)


def test_leaked_fds_do_not_reach_an_exec(
    oci: Runtime, bundle: BundleFactory, cid: str, dir_fd: int
) -> None:
    _running(oci, bundle, cid, default_config(*SLEEPER))
    proc = _call(oci, "exec", cid, *sh("ls /proc/$$/fd; true"), pipes=True, pass_fds=(dir_fd,))
    assert proc.returncode == 0, describe(proc)
    assert _fd_listing(proc.stdout) == ["0", "1", "2"], describe(proc)


def _pipe_with(content: bytes) -> int:
    """The read end of a pipe holding ``content`` whose write end is closed."""
    r, w = os.pipe()
    os.write(w, content)
    os.close(w)
    return r


def test_preserve_fds_passes_fd_3(
    oci: Runtime, bundle: BundleFactory, cid: str, dir_fd: int
) -> None:
    r = _pipe_with(b"through fd 3\n")
    try:
        path = bundle(default_config(*sh("cat <&3; echo --; ls /proc/1/fd; true")))
        # fd 3 is the pipe; dir_fd (another number) is leaked as well and must
        # not be passed: only 3 .. 3+N-1 are.
        proc = _call(
            oci, "run", "--preserve-fds", "1", "--bundle", path, cid,
            pipes=True, fd3=r, pass_fds=(dir_fd,),
        )
    finally:
        os.close(r)
    assert proc.returncode == 0, describe(proc)
    content, fds = proc.stdout.split("--\n")
    assert content == "through fd 3\n"
    assert _fd_listing(fds) == ["0", "1", "2", "3"], describe(proc)


def test_preserve_fds_with_create_and_start(
    oci: Runtime, bundle: BundleFactory, cid: str, host_dir: Path
) -> None:
    # The fd is passed to `create`; the process reads it after `start`.
    r = _pipe_with(b"kept until start\n")
    # `exec >` replaces stdout for good (no saved copy of fd 1); `; true`
    # keeps sh from exec'ing ls, whose own directory fd would show.
    config = default_config(*sh("exec > /h/out; cat <&3; echo --; ls /proc/$$/fd; true"))
    config["mounts"].append(
        {"destination": "/h", "type": "bind", "source": str(host_dir), "options": ["rbind", "rw"]}
    )
    try:
        proc = _call(oci, "create", "--preserve-fds", "1", "--bundle", bundle(config), cid, fd3=r)
    finally:
        os.close(r)
    assert proc.returncode == 0, describe(proc)
    oci.ok("start", cid)
    oci.wait_status(cid, "stopped")
    content, fds = (host_dir / "out").read_text().split("--\n")
    assert content == "kept until start\n"
    assert _fd_listing(fds) == ["0", "1", "2", "3"]


# ------------------------------------------------------------------ /proc


@pytest.mark.parametrize(
    "mount",
    [
        {"destination": "/proc", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/proc", "type": "bind", "source": "/tmp", "options": ["rbind"]},
    ],
    ids=["tmpfs", "bind"],
)
def test_proc_must_be_procfs(
    oci: Runtime,
    bundle: BundleFactory,
    cid: str,
    untouched: Untouched,
    mount: dict[str, Any],
) -> None:
    # FAILS ON runc 1.1.5 for tmpfs: it only vets bind mounts at /proc
    # ("/tmp cannot be mounted to /proc because it is not of type proc").
    config = default_config("true")
    config["mounts"] = [mount if m["destination"] == "/proc" else m for m in config["mounts"]]
    path = bundle(config)
    before = untouched()
    proc = oci("create", "--bundle", path, cid)
    _refused(proc, "/proc")
    untouched.check(before)


# ------------------------------------------------------------------ the waiting init


def _host_paths(oci: Runtime, bundle_path: Path, state_root: Path) -> list[str]:
    return [str(bundle_path), str(state_root), "/opt/hanok", str(Path(oci.binary).resolve().parent)]


def test_created_init_is_out_of_reach_of_exec(
    oci: Runtime, bundle: BundleFactory, cid: str, state_root: Path
) -> None:
    # While `created`, PID 1 is still the runtime (Python from the host, host
    # files open: the state dir, namespace fds). A process exec'd into the
    # container must not get at it: it is not dumpable, so /proc/1/{exe,fd/N,
    # maps,environ,cwd,root} need CAP_SYS_PTRACE, which the container lacks.
    # (Listing the fd *numbers* of /proc/1/fd is allowed to the same uid.)
    # FAILS ON runc 1.1.5: its waiting `runc init` is readable from an exec,
    # /proc/1/fd shows the exec fifo's host path.
    path = bundle(default_config(*SLEEPER))
    oci.ok("create", "--bundle", path, cid)
    pid = oci.state(cid)["pid"]
    script = (
        "readlink /proc/1/exe; echo exe-link=$?; "
        "cat /proc/1/exe > /dev/null; echo exe-read=$?; "
        "for f in /proc/1/fd/*; do readlink $f; echo fd-link=$?; done; "
        "cat /proc/1/maps > /dev/null; echo maps=$?; "
        "cat /proc/1/environ > /dev/null; echo environ=$?; "
        "readlink /proc/1/cwd; echo cwd=$?; "
        "readlink /proc/1/root; echo root=$?; "
        "ls /proc/1/cwd/; echo cwd-list=$?; "
        "ls /proc/1/root/; echo root-list=$?"
    )
    proc = oci("exec", cid, *sh(script), pipes=True)
    statuses = [
        tuple(line.split("=", 1))
        for line in proc.stdout.splitlines()
        if re.fullmatch(r"[a-z-]+=\d+", line)
    ]
    names = [name for name, _ in statuses]
    for name in ("exe-link", "exe-read", "fd-link", "maps", "environ", "cwd", "root",
                 "cwd-list", "root-list"):
        assert name in names, describe(proc)
    allowed = [f"{name}={code}" for name, code in statuses if code == "0"]
    assert not allowed, f"readable from inside: {allowed}\n{describe(proc)}"
    assert "Permission denied" in proc.stderr, describe(proc)
    text = proc.stdout + proc.stderr
    for host_path in _host_paths(oci, path, state_root):
        assert host_path not in text, f"{host_path} visible from inside\n{describe(proc)}"
    # Still waiting for `start`, still the same init.
    assert oci.state(cid)["status"] == "created"
    assert oci.state(cid)["pid"] == pid


def test_created_init_cmdline_shows_no_host_paths(
    oci: Runtime, bundle: BundleFactory, cid: str, state_root: Path
) -> None:
    # /proc/1/cmdline is world-readable (no ptrace check): while `created`, it
    # is the runtime's own argv. It should not tell the container where its
    # bundle or the state dir are on the host. runc's init shows `runc init`
    # (the binary path as the caller spelled it, nothing else).
    path = bundle(default_config(*SLEEPER))
    oci.ok("create", "--bundle", path, cid)
    proc = oci("exec", cid, *sh("tr '\\0' ' ' < /proc/1/cmdline"), pipes=True)
    assert proc.returncode == 0, describe(proc)
    for host_path in (str(path), str(state_root)):
        assert host_path not in proc.stdout, f"{host_path} visible from inside\n{describe(proc)}"


# ------------------------------------------------------------------ --explain


def test_explain_traces_to_stderr_only(oci: Runtime, bundle: BundleFactory, cid: str) -> None:
    if not _is_hanok(oci):
        pytest.skip("--explain is hanok's own flag")
    path = bundle(default_config(*sh("echo hello")))
    proc = oci("--explain", "run", "--bundle", path, cid, pipes=True)
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout == "hello\n", describe(proc)
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("+ ") for line in lines), describe(proc)
    wanted = [
        r"\+ unshare .*--mount",
        r"\+ mount -t proc proc ",
        r"\+ .*\bpivot_root\b",
        r"\+ hostname hanok-test\b",
        r"\+ capsh ",
        r"\+ exec sh -c ",
    ]
    positions = []
    for pattern in wanted:
        found = [i for i, line in enumerate(lines) if re.match(pattern, line)]
        assert found, f"no line matching {pattern!r}\n{proc.stderr}"
        positions.append(found[0])
    assert positions == sorted(positions), f"steps out of order\n{proc.stderr}"


# ------------------------------------------------------------------ user namespace + exec


def test_exec_joins_the_user_namespace(oci: Runtime, bundle: BundleFactory, cid: str) -> None:
    config = default_config(*SLEEPER)
    set_namespace(config, "user")
    config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    path = bundle(config)
    chown_tree(path / "rootfs", 100000, 200000)
    oci.ok("create", "--bundle", path, cid)
    oci.ok("start", cid)
    pid = oci.state(cid)["pid"]
    proc = oci(
        "exec",
        cid,
        *sh("cat /proc/self/uid_map; echo --; cat /proc/self/gid_map; echo --; "
            "readlink /proc/self/ns/user; id -u; id -g"),
        pipes=True,
    )
    assert proc.returncode == 0, describe(proc)
    uid_map, gid_map, rest = proc.stdout.split("--\n")
    assert uid_map.split() == ["0", "100000", "65536"]
    assert gid_map.split() == ["0", "200000", "65536"]
    assert uid_map == Path(f"/proc/{pid}/uid_map").read_text()
    assert gid_map == Path(f"/proc/{pid}/gid_map").read_text()
    user_ns, uid, gid = rest.split()
    assert user_ns == ns_link(pid, "user") != ns_link("self", "user")
    assert (uid, gid) == ("0", "0")


# ------------------------------------------------------------------ kill --all


def _ps(oci: Runtime, cid: str) -> list[int]:
    pids: list[int] | None = json.loads(oci.ok("ps", "--format", "json", cid).stdout)
    return pids or []


@pytest.mark.parametrize("pidns", [True, False], ids=["own-pidns", "host-pidns"])
def test_kill_all_kills_the_background_child(
    oci: Runtime, bundle: BundleFactory, cid: str, pidns: bool
) -> None:
    # In the host's pid namespace killing the init does not take its child
    # with it: only `--all` reaches the background sleep.
    config = default_config(*sh("sleep 100 & wait"))
    if not pidns:
        remove_namespace(config, "pid")
    pid = _running(oci, bundle, cid, config)
    pids = poll(lambda: (lambda p: p if len(p) == 2 else None)(_ps(oci, cid)),
                what="sh and its background sleep in `ps`")
    assert pid in pids
    (child,) = [p for p in pids if p != pid]
    assert pid_alive(child)
    oci.ok("kill", "--all", cid, "KILL")
    poll(lambda: not pid_alive(pid) and not pid_alive(child), what="both processes to die")
    oci.wait_status(cid, "stopped")
    assert _ps(oci, cid) == []
