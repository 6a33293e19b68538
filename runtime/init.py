"""Child side: what runs inside the container's namespaces before the user's program.

Two entry points, both called in a freshly forked process and never returning:
`container_init` (the container's PID 1 for `create`) and `exec_process` (a
process joining a running container for `exec`). Both end in `finish_and_exec`,
which applies user, capabilities, no_new_privs and seccomp and calls execve.

Errors before the parent has been told "ready" go back over the sync pipe (see
process.py for the protocol) so `create` fails with one clear line; errors after
that (at `start` time) are written to the container's stderr.
"""
from __future__ import annotations

import os
import _signal as signal  # the C module: `signal` would import enum

from hanok.runtime import explain, rootfs
from hanok.runtime import syscalls as sc
from hanok.runtime.errors import ContainerStartError, HanokError
from hanok.runtime.spec import NAMESPACE_FLAGS, NS_PROC_NAME, RLIMIT_NUMBER, Config

if False:  # typing only
    from hanok.cgroups import Manager

# Order to join existing namespaces: the user namespace first (it grants the
# capabilities the other setns calls need), the mount namespace last (it
# changes what paths mean).
JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "cgroup", "time", "mount")
UNSHARE_NAMES = {"mount": "--mount", "uts": "--uts", "ipc": "--ipc", "network": "--net",
                 "pid": "--pid --fork", "cgroup": "--cgroup", "time": "--time", "user": "--user"}
TIOCGPTN = 0x80045430  # asm-generic ioctls, same on x86_64 and aarch64; not in termios
TIOCSPTLCK = 0x40045431
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
# signals whose default action would kill a normal process but which PID 1 of a
# namespace ignores unless it has a handler: while waiting for `start`, the init
# must still die on them so `kill` works on a created container
TERMINATING_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


class Sync:
    """The child's end of the parent/child sync protocol (see process.py)."""

    def __init__(self, to_parent: int, from_parent: int):
        self.to_parent = to_parent
        self.from_parent = from_parent

    def send(self, message: str) -> None:
        os.write(self.to_parent, message.encode() + b"\n")

    def wait_ok(self) -> None:
        data = os.read(self.from_parent, 64)
        if not data.startswith(b"ok"):
            os._exit(1)  # parent gave up on us

    def error(self, exc: BaseException) -> None:
        code = getattr(exc, "exit_code", 1)
        text = str(exc) if isinstance(exc, HanokError) else _describe(exc)
        try:
            self.send(f"error {code} {text}".replace("\n", " "))
        except OSError:
            pass

    def close(self) -> None:
        for fd in (self.to_parent, self.from_parent):
            try:
                os.close(fd)
            except OSError:
                pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{':' + where if where else ''}".rstrip(":")
    return f"{type(exc).__name__}: {exc}"


def join_namespaces(paths: dict[str, str], skip: tuple[str, ...] = ()) -> None:
    """setns() into existing namespaces given by path, in a safe order."""
    for kind in JOIN_ORDER:
        path = paths.get(kind)
        if path is None or kind in skip:
            continue
        explain.step(f"nsenter --{NS_PROC_NAME[kind]}={path}", f"join the existing {kind} namespace")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sc.setns(fd, NAMESPACE_FLAGS[kind])
        except OSError as e:
            raise HanokError(f"joining {kind} namespace {path}: {e.strerror}") from None
        finally:
            os.close(fd)


def unshare(cfg: Config, kinds: list[str]) -> None:
    flags = 0
    for kind in kinds:
        flags |= NAMESPACE_FLAGS[kind]
    if not flags:
        return
    explain.step("unshare " + " ".join(UNSHARE_NAMES[k] for k in kinds), "new namespaces")
    sc.unshare(flags)


def loopback_up() -> None:
    """A new network namespace starts with lo down; containers expect it up."""
    import _socket  # the C modules: `socket` would pull in enum and selectors,
    import _struct  # and struct.py costs ~0.4 ms more than its C module on every create
    import fcntl

    explain.step("ip link set lo up")
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        ifreq = _struct.pack("16sH14x", b"lo", 0)
        flags = _struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, _struct.pack("16sH14x", b"lo", flags | IFF_UP))
    finally:
        s.close()


def close_other_fds(keep_upto: int, ours: set[int]) -> None:
    """Close every fd above `keep_upto` that is not one of `ours` (which are close-on-exec).

    Closing, not just marking close-on-exec: until execve a path like
    /proc/self/fd/N would still reach whatever the caller leaked to us (a host
    directory, say), and a cwd or mount source could be pointed through it.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > keep_upto and fd not in ours:
            try:
                os.close(fd)
            except OSError:
                pass  # the directory fd listdir itself used


def enter_cwd(cwd: str, create: bool) -> None:
    """chdir to the process's cwd, refusing anything outside the container's root.

    With `create`, a missing cwd is made first (inside the root, as runc does),
    so a bundle may name a working directory its image lacks.
    """
    if create and not os.path.lexists(cwd):
        try:
            os.makedirs(cwd, 0o755)
        except OSError as e:
            raise HanokError(f"process.cwd {cwd}: cannot create it: {e.strerror}") from None
    try:
        os.chdir(cwd)
    except OSError as e:
        raise HanokError(f"process.cwd {cwd}: {e.strerror}") from None
    try:
        here = os.getcwd()
    except OSError:  # glibc's getcwd fails with ENOENT when cwd is outside our root
        here = "(unreachable)"
    if here.startswith("(unreachable)"):
        raise HanokError(f"process.cwd {cwd} resolves outside the container's root; refusing")


def set_rlimits(process: dict) -> None:
    rlimits = process.get("rlimits")
    if not rlimits:
        return
    import resource

    for rl in rlimits:
        explain.step(f"prlimit --pid $$ --{rl['type'][7:].lower()}={rl['soft']}:{rl['hard']}")
        try:
            resource.setrlimit(RLIMIT_NUMBER[rl["type"]], (rl["soft"], rl["hard"]))
        except (ValueError, OSError) as e:
            raise HanokError(f"setting {rl['type']} to {rl['soft']}:{rl['hard']}: {e}") from None


def write_proc(path: str, value: str) -> None:
    explain.step(f"echo {value} > {path}")
    with open(path, "w") as f:
        f.write(value)


def find_executable(args: list[str], env: list[str], cwd: str) -> str:
    """Resolve argv[0] the way execvp would, inside the container's root.

    Done before the container is reported ready, so a missing binary makes
    `create` fail (exit 127) instead of leaving a container that cannot start.
    """
    name = args[0]
    if "/" in name:
        path = name if name.startswith("/") else os.path.join(cwd, name)
        candidates = [path]
    else:
        search = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        for entry in env:
            if entry.startswith("PATH="):
                search = entry[5:]
        candidates = [os.path.join(d or ".", name) for d in search.split(":")]
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if not (st.st_mode & 0o170000 == 0o100000):
            continue
        if st.st_mode & 0o111 == 0:
            raise ContainerStartError(f'exec: "{name}": permission denied', 126)
        return path
    where = "" if "/" in name else " in $PATH"
    if "/" in name and any(os.path.exists(c) for c in candidates):
        raise ContainerStartError(f'exec: "{name}": is a directory', 126)
    raise ContainerStartError(f'exec: "{name}": executable file not found{where}', 127)


def setup_terminal(console_sock: int) -> None:
    """Create a pty inside the container, hand its master to the caller, make it our tty.

    The pty comes from the container's own devpts (via /dev/ptmx), so the
    master the console socket receives matches the container's /dev/console.
    """
    import fcntl
    import socket
    import termios

    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, b"\0\0\0\0")
    ptn = int.from_bytes(fcntl.ioctl(master, TIOCGPTN, b"\0\0\0\0"), "little")
    slave_path = f"/dev/pts/{ptn}"
    slave = os.open(slave_path, os.O_RDWR | os.O_NOCTTY)
    explain.step(f"# pty {slave_path}: master sent over the console socket (SCM_RIGHTS)")
    sock = socket.socket(fileno=console_sock)
    try:
        socket.send_fds(sock, [slave_path.encode()], [master])
    finally:
        sock.close()
        os.close(master)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    try:
        if not os.path.lexists("/dev/console"):
            os.close(os.open("/dev/console", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        rootfs.mount(slave_path, "/dev/console", None, sc.MS_BIND)
    except OSError:
        pass  # a read-only /dev without a console node: the pty still works


def preload(process: dict, seccomp: dict | None, hooks: bool) -> None:
    """Import now what the steps after pivot_root/setns(mnt) need.

    Once the process is inside the container's root, the host's Python standard
    library is out of reach, so a lazy import there would fail; in a user
    namespace even the host's files may not be readable. So the parent calls
    this before forking, and the children inherit the loaded modules.
    """
    import _socket  # noqa: F401
    import _struct  # noqa: F401
    import fcntl  # noqa: F401
    import resource  # noqa: F401

    from hanok.runtime import security  # noqa: F401

    if process.get("terminal"):
        import socket  # noqa: F401
        import termios  # noqa: F401
    if seccomp:
        from hanok.runtime import seccomp as seccomp_mod

        seccomp_mod.prepare(seccomp)  # validates; reads (or builds and caches) the BPF while the host is visible
    if hooks:
        from hanok.runtime import hooks as hooks_mod  # noqa: F401
        import subprocess  # noqa: F401


def container_init(cfg: Config, sync: Sync, state_dir_fd: int, *, console_sock: int | None,
                   preserve_fds: int, no_pivot: bool, no_new_keyring: bool, in_userns: bool,
                   hooks_in_parent: bool, state_json: dict, wait_for_cgroup: bool,
                   enter_cgroup: Manager | None = None) -> None:
    """PID 1 of a new container: build its world, wait for `start`, exec the program.

    `enter_cgroup`: the init moves itself into that cgroup, first thing, while it
    still sees the host's cgroupfs (else the parent moves it: wait_for_cgroup).
    """
    try:
        os.setsid()
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        sc.set_cmdline("hanok-oci init")
        if enter_cgroup is not None:
            enter_cgroup.enter_self()
        ours = {sync.to_parent, sync.from_parent, state_dir_fd}
        close_other_fds(2 + preserve_fds, ours | ({console_sock} if console_sock is not None else set()))
        join_namespaces({k: p for k, p in cfg.namespaces.items() if p is not None},
                        skip=("user", "pid", "time"))
        unshare(cfg, [k for k, p in cfg.namespaces.items()
                      if p is None and k not in ("user", "pid", "time", "cgroup")])
        if cfg.namespaces.get("network", "") is None:
            loopback_up()
        if cfg.namespaces.get("cgroup", "") is None:
            if wait_for_cgroup:
                # The parent moves us into the container's cgroup while we set
                # up (the first migration can take ~10 ms: an RCU grace period);
                # only a new cgroup namespace must wait, as it is rooted where we are.
                sync.wait_ok()
            unshare(cfg, ["cgroup"])
        rootfs.prepare(cfg, in_userns)
        if hooks_in_parent:
            sync.send("hooks")
            sync.wait_ok()
        if "createContainer" in cfg.hooks:
            from hanok.runtime import hooks

            hooks.run("createContainer", cfg.hooks["createContainer"], state_json)
        rootfs.pivot(cfg, no_pivot)
        if cfg.hostname is not None:
            explain.step(f"hostname {cfg.hostname}")
            sc.sethostname(cfg.hostname)
        if cfg.domainname is not None:
            explain.step(f"domainname {cfg.domainname}")
            sc.setdomainname(cfg.domainname)
        for key, value in cfg.sysctl.items():
            rootfs.check_proc("/proc")
            write_proc("/proc/sys/" + key.replace(".", "/"), value)
        process = cfg.process
        enter_cwd(process.get("cwd", "/"), create=True)  # before the root turns read-only
        rootfs.finish(cfg)
        if process.get("oomScoreAdj") is not None:
            write_proc("/proc/self/oom_score_adj", str(process["oomScoreAdj"]))
        set_rlimits(process)
        if not no_new_keyring:
            try:
                sc.join_session_keyring(None)
            except OSError:
                pass  # keyrings can be disabled or restricted (ENOSYS/EACCES): not fatal
        if process.get("terminal"):
            if console_sock is None:
                raise HanokError("process.terminal is true but no --console-socket was given")
            setup_terminal(console_sock)
        env = process.get("env") or []
        cwd = process.get("cwd", "/")
        executable = find_executable(process["args"], env, cwd)
        for name in TERMINATING_SIGNALS:
            signum = getattr(signal, name)
            signal.signal(signum, lambda s, _f: os._exit(128 + s))
        fifo = os.open("exec.fifo", os.O_PATH | os.O_CLOEXEC, dir_fd=state_dir_fd)
        sync.send("ready")
        sync.close()
    except BaseException as e:  # noqa: BLE001 - everything must reach the parent
        sync.error(e)
        os._exit(1)

    try:
        # Blocks until `start` opens the other end. The write end stays open
        # (close-on-exec) through execve: `start` sees EOF exactly when the
        # user's program has replaced us, which it waits for before poststart.
        fd = os.open(f"/proc/self/fd/{fifo}", os.O_WRONLY | os.O_CLOEXEC) if os.path.isdir("/proc/self/fd") \
            else os.open("exec.fifo", os.O_WRONLY | os.O_CLOEXEC, dir_fd=state_dir_fd)
        os.close(fifo)
        os.close(state_dir_fd)
        for name in TERMINATING_SIGNALS:
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        if "startContainer" in cfg.hooks:
            from hanok.runtime import hooks

            hooks.run("startContainer", cfg.hooks["startContainer"], dict(state_json, status="created"))
        os.write(fd, b"0")
        finish_and_exec(process, cfg.seccomp, executable)
    except BaseException as e:  # noqa: BLE001
        _die(e)


def _die(exc: BaseException) -> None:
    code = getattr(exc, "exit_code", 1)
    text = str(exc) if isinstance(exc, HanokError) else _describe(exc)
    try:
        os.write(2, f"hanok: {text}\n".encode())
    finally:
        os._exit(code if isinstance(code, int) and code > 0 else 1)


def finish_and_exec(process: dict, seccomp: dict | None, executable: str) -> None:
    """The last steps, in the order that keeps each one possible: user and
    capabilities, cwd, no_new_privs, seccomp, execve."""
    from hanok.runtime import security

    nnp = process.get("noNewPrivileges", False)
    if seccomp and not nnp:
        from hanok.runtime import seccomp as seccomp_mod

        seccomp_mod.load(seccomp)  # needs CAP_SYS_ADMIN: before dropping capabilities
    security.switch_user_and_capabilities(process)
    umask = (process.get("user") or {}).get("umask")
    if umask is not None:
        os.umask(umask)
    enter_cwd(process.get("cwd", "/"), create=False)  # again: now with the user's permissions
    if nnp:
        security.set_no_new_privs()
    if seccomp and nnp:
        from hanok.runtime import seccomp as seccomp_mod

        seccomp_mod.load(seccomp)
    env = {}
    for entry in process.get("env") or []:
        key, _, value = entry.partition("=")
        env[key] = value
    explain.step(f"exec {explain.quote(process['args'])}" if explain.enabled() else "")
    try:
        os.execve(executable, process["args"], env)
    except OSError as e:
        code = 127 if e.errno == 2 else 126
        raise ContainerStartError(f'exec: "{process["args"][0]}": {e.strerror}', code) from None


def exec_process(cfg: Config, process: dict, init_pid: int, sync: Sync, *,
                 console_sock: int | None, preserve_fds: int, enter_cgroup: Manager | None = None) -> None:
    """A new process in a running container (`exec`): join its namespaces, exec.

    `enter_cgroup`: it moves itself into the container's cgroup before joining
    anything (else the parent moves it before its "ok").
    """
    try:
        os.setsid()
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        if enter_cgroup is not None:
            enter_cgroup.enter_self()
        ours = {sync.to_parent, sync.from_parent}
        close_other_fds(2 + preserve_fds, ours | ({console_sock} if console_sock is not None else set()))
        ns_paths = {kind: f"/proc/{init_pid}/ns/{NS_PROC_NAME[kind]}" for kind in cfg.namespaces}
        join_namespaces(ns_paths, skip=("pid", "time"))  # pid/time were joined by the parent
        set_rlimits(process)
        if process.get("terminal"):
            if console_sock is None:
                raise HanokError("a terminal was requested but no --console-socket was given")
            setup_terminal(console_sock)
        env = process.get("env") or []
        try:
            enter_cwd(process.get("cwd", "/"), create=False)
        except HanokError as e:  # `docker exec -w /missing` exits 126: the command could not be invoked
            raise ContainerStartError(str(e), 126) from None
        executable = find_executable(process["args"], env, process.get("cwd", "/"))
        sync.wait_ok()  # the parent has moved us into the container's cgroup (or we did: enter_cgroup)
        finish_and_exec(process, cfg.seccomp, executable)
    except BaseException as e:  # noqa: BLE001
        sync.error(e)
        os._exit(getattr(e, "exit_code", 1) if isinstance(getattr(e, "exit_code", 1), int) else 1)
