"""Container lifecycle: create, start, state, kill, delete, run, exec, list, ps.

The operations a caller runs per container are hot paths, so this module
imports only what each operation needs. Status transitions are checked against
the table in state.py. `create` makes things in one order (state dir, fifo,
init process) and its failure path undoes them all, so bad input leaves no
state directory, fifo or process behind.
"""
from __future__ import annotations

import os

from hanok import OCI_VERSION
from hanok.runtime import explain, jsonio, state
from hanok.runtime.errors import BadState, HanokError, NotFound, NotSupported

if False:  # typing only: keeps these imports off `state`, `start`, `kill` and `delete`
    from collections.abc import Callable
    from hanok.runtime.process import ParentSync
    from hanok.runtime.spec import Config

FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGCONT")


class _Saved:
    """What exec and delete need from the config, saved at create time."""

    def __init__(self, doc: dict):
        self.process: dict = doc["process"]
        self.namespaces: dict = doc["namespaces"]
        self.seccomp: dict | None = doc.get("seccomp")
        self.hooks: dict = doc.get("hooks") or {}


def create(root: str, container_id: str, bundle: str, *, pid_file: str | None = None,
           console_socket: str | None = None, no_pivot: bool = False, no_new_keyring: bool = False,
           preserve_fds: int = 0, config: "Config | None" = None, console_fd: int | None = None,
           systemd_cgroup: bool = False) -> int:
    """Set the container up and leave its init waiting for `start`; return the init's pid.

    `config` saves `run` from reading config.json twice; `console_fd` is an
    already connected console socket (how `run` gets the pty it relays).
    `systemd_cgroup` (--systemd-cgroup): the cgroup is a transient systemd
    scope; recorded, so later commands find it the same way.
    """
    from hanok import cgroups
    from hanok.runtime import init, spec
    from hanok.runtime.process import ParentSync

    state.validate_id(container_id)
    cfg = config or spec.load(bundle)
    cdir = state.make_dir(root, container_id)
    init_pid = 0
    our_child = False
    fds: list[int] = []
    sync: ParentSync | None = None
    cgroup = cgroup_setup = None
    try:
        if cfg.process.get("terminal") and not console_socket and console_fd is None:
            raise HanokError("process.terminal is true but no --console-socket was given to receive the terminal")
        cgroup = cgroups.manager(cfg.cgroups_path, container_id, systemd=systemd_cgroup)
        # the init moves itself in (fast) unless a user namespace makes us move its parent for it
        self_enter = cgroup.can_enter_self and "user" not in cfg.namespaces
        cgroup_setup = cgroups.BackgroundSetup(cgroup, cfg.resources,  # see there: hides ~10 ms
                                               inline="time" in cfg.namespaces, warm_up=not self_enter)
        saved = {"process": cfg.process, "namespaces": cfg.namespaces, "seccomp": cfg.seccomp,
                 "hooks": {k: v for k, v in cfg.hooks.items() if k in ("poststart", "poststop")}}
        state.write_atomic(os.path.join(cdir, state.CONFIG_FILE), jsonio.dumps(saved).encode(), durable=False)
        os.mkfifo(os.path.join(cdir, state.FIFO), 0o622)
        os.chmod(os.path.join(cdir, state.FIFO), 0o622)  # mkfifo's mode is umasked
        dir_fd = os.open(cdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        fds.append(dir_fd)
        if console_socket:
            from hanok.runtime.process import connect_console_socket

            console_fd = connect_console_socket(console_socket)
            fds.append(console_fd)
        created = state.rfc3339_now()
        hook_state = {"ociVersion": OCI_VERSION, "id": container_id, "status": state.CREATING, "pid": 0,
                      "bundle": cfg.bundle, "annotations": cfg.annotations}
        init.preload(cfg.process, cfg.seccomp, bool(cfg.hooks))
        sync = ParentSync()
        cgroup_setup.wait()
        hooks_in_parent = "prestart" in cfg.hooks or "createRuntime" in cfg.hooks
        init_args = dict(console_sock=console_fd, preserve_fds=preserve_fds, no_pivot=no_pivot,
                         no_new_keyring=no_new_keyring, hooks_in_parent=hooks_in_parent,
                         state_json=hook_state)
        if "user" in cfg.namespaces:
            init_pid = _fork_via_intermediate(cfg, sync, dir_fd, init_args, cgroup)
        elif self_enter:  # the init moves itself, first thing (see V1Manager.enter_self)
            init_pid = _fork_init(cfg, sync, dir_fd, dict(init_args, wait_for_cgroup=False, enter_cgroup=cgroup))
            our_child = True
        else:
            new_cgroupns = cfg.namespaces.get("cgroup", "") is None
            init_pid = _fork_init(cfg, sync, dir_fd, dict(init_args, wait_for_cgroup=new_cgroupns))
            our_child = True
            try:
                cgroup.enter(init_pid)  # while the init sets up: see container_init
            except HanokError:
                _raise_child_failure_first(sync)
                raise
            if new_cgroupns:
                sync.send_ok()
        sync.close_child_ends()
        hook_state["pid"] = init_pid
        _wait_ready(cfg, sync, hook_state)
        start_time = state.proc_start_time(init_pid)
        if start_time is None:
            raise HanokError("container init exited during setup")
        record = {"ociVersion": OCI_VERSION, "id": container_id, "pid": init_pid, "start_time": start_time,
                  "bundle": cfg.bundle, "rootfs": cfg.rootfs, "created": created,
                  "annotations": cfg.annotations, "cgroupsPath": cfg.cgroups_path,
                  "resources": cfg.resources}
        if systemd_cgroup:
            record["systemdCgroup"] = True
        state.save(cdir, record)
        if pid_file:
            from hanok.runtime.process import write_pid_file

            write_pid_file(pid_file, init_pid)
        return init_pid
    except BaseException:
        if init_pid:
            _kill_quietly(init_pid)
            if our_child:
                _reap(init_pid)
        if cgroup_setup is not None:
            try:
                cgroup_setup.wait()  # never remove the cgroup while the thread still makes it
            except BaseException:  # noqa: BLE001 - already being reported
                pass
        if cgroup is not None:
            _destroy_cgroup(cgroup)
        if "poststop" in cfg.hooks and init_pid:
            # runtime-spec: when a create-time hook fails the container is
            # stopped and the lifecycle continues with the poststop hooks
            from hanok.runtime import hooks

            hooks.run("poststop", cfg.hooks["poststop"], dict(hook_state, status=state.STOPPED))
        state.remove_dir(cdir)
        raise
    finally:
        if sync is not None:
            sync.close()
        for fd in fds:
            os.close(fd)


def _fork_init(cfg, sync: ParentSync, dir_fd: int, init_args: dict) -> int:
    """Fork the init directly (no user namespace): see process.py for why this works."""
    from hanok.runtime import init
    from hanok.runtime import syscalls as sc

    restore: list[tuple[int, int]] = []
    try:
        for kind, flag in (("pid", sc.CLONE_NEWPID), ("time", sc.CLONE_NEWTIME)):
            if kind not in cfg.namespaces:
                continue
            own = os.open(f"/proc/self/ns/{kind}_for_children", os.O_RDONLY | os.O_CLOEXEC)
            restore.append((own, flag))
            _enter_for_children(cfg, kind, flag)
        pid = os.fork()
        if pid == 0:
            try:
                init.container_init(cfg, init.Sync(*sync.child_ends()), dir_fd, in_userns=False, **init_args)
            finally:
                os._exit(1)
        return pid
    finally:
        for fd, flag in restore:
            sc.setns(fd, flag)  # our own later children (hooks) stay in the host's namespaces
            os.close(fd)


def _enter_for_children(cfg, kind: str, flag: int) -> None:
    from hanok.runtime import syscalls as sc

    path = cfg.namespaces[kind]
    if path is None:
        from hanok.runtime.init import UNSHARE_NAMES

        explain.step(f"unshare {UNSHARE_NAMES[kind]}", f"a new {kind} namespace for the container's init")
        sc.unshare(flag)
        if kind == "time" and cfg.time_offsets:
            with open("/proc/self/timens_offsets", "w") as f:
                for clock, off in cfg.time_offsets.items():
                    f.write(f"{clock} {off.get('secs', 0)} {off.get('nanosecs', 0)}\n")
    else:
        explain.step(f"nsenter --{kind}={path}", f"the init joins an existing {kind} namespace")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sc.setns(fd, flag)
        except OSError as e:
            raise HanokError(f"joining {kind} namespace {path}: {e.strerror}") from None
        finally:
            os.close(fd)


def _fork_via_intermediate(cfg, sync: ParentSync, dir_fd: int, init_args: dict, cgroup) -> int:
    """User namespace: an intermediate owns the user namespace first (process.py)."""
    from hanok.runtime import init
    from hanok.runtime import syscalls as sc
    from hanok.runtime.process import raise_child_error, write_id_maps

    child = os.fork()
    if child == 0:
        child_sync = init.Sync(*sync.child_ends())
        try:
            if cfg.namespaces["user"] is None:
                explain.step("unshare --user", "a new user namespace; the parent writes the id maps")
                sc.unshare(sc.CLONE_NEWUSER)
            child_sync.send("userns")
            child_sync.wait_ok()
            if cfg.namespaces["user"] is None:
                os.setresgid(0, 0, 0)
                os.setresuid(0, 0, 0)
            else:
                init.join_namespaces({"user": cfg.namespaces["user"]})
            for kind, flag in (("pid", sc.CLONE_NEWPID), ("time", sc.CLONE_NEWTIME)):
                if kind in cfg.namespaces:
                    _enter_for_children(cfg, kind, flag)
            pid = os.fork()
            if pid == 0:
                try:
                    init.container_init(cfg, child_sync, dir_fd, in_userns=True, wait_for_cgroup=False,
                                        **init_args)
                finally:
                    os._exit(1)
            child_sync.send(f"pid {pid}")
            os._exit(0)
        except BaseException as e:  # noqa: BLE001
            child_sync.error(e)
            os._exit(1)
    try:
        while True:
            message = sync.recv()
            if message == "userns":
                if cfg.namespaces["user"] is None:
                    write_id_maps(child, cfg.uid_mappings, cfg.gid_mappings)
                cgroup.enter(child)  # the init it forks inherits the cgroup
                sync.send_ok()
            elif message is not None and message.startswith("pid "):
                return int(message[4:])
            elif message is not None and message.startswith("error "):
                raise_child_error(message)
            else:
                raise HanokError("container setup failed before the init started")
    finally:
        _reap(child)


def _wait_ready(cfg, sync: ParentSync, hook_state: dict) -> None:
    from hanok.runtime.process import raise_child_error

    while True:
        message = sync.recv()
        if message == "ready":
            return
        if message == "hooks":
            from hanok.runtime import hooks

            for kind in ("prestart", "createRuntime"):
                if kind in cfg.hooks:
                    hooks.run(kind, cfg.hooks[kind], hook_state)
            sync.send_ok()
        elif message is not None and message.startswith("error "):
            raise_child_error(message)
        else:
            raise HanokError("container init exited during setup")


def _raise_child_failure_first(sync: "ParentSync") -> None:
    """If the child already died with a reason, raise that rather than our own error."""
    import select

    from hanok.runtime.process import raise_child_error

    sync.close_child_ends()
    if select.select([sync.from_child], [], [], 0.5)[0]:
        message = sync.recv()
        if message is not None and message.startswith("error "):
            raise_child_error(message)


def _cgroup_of(record: dict):
    """The container's cgroup manager, rebuilt from what create recorded."""
    from hanok import cgroups

    return cgroups.manager(record.get("cgroupsPath", ""), record["id"], systemd=record.get("systemdCgroup", False))


def _destroy_cgroup(cgroup) -> None:
    """Kill whatever is left in the cgroup and remove it (undo of create, and delete)."""
    try:
        if cgroup.exists() and cgroup.procs():
            cgroup.kill()
        cgroup.destroy()
    except HanokError as e:
        import sys

        sys.stderr.write(f"hanok-oci: warning: {e}\n")


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except OSError:
        pass


def _reap(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


def start(root: str, container_id: str) -> None:
    """Let a created container's init exec the user's program."""
    cdir, record = state.load(root, container_id)
    with state.Lock(cdir):
        status = state.status_of(record, cdir)
        state.check_transition("start", status, container_id)
        fifo_path = os.path.join(cdir, state.FIFO)
        fd = os.open(fifo_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            import select

            poller = select.poll()
            poller.register(fd, select.POLLIN)
            while not poller.poll(100):
                if not state.is_alive(record):
                    raise BadState("cannot start a container that has stopped")
            data = os.read(fd, 1)
            saved = _saved(cdir)
            if data == b"0" and "poststart" in saved.hooks:
                # poststart runs after the user's program has started: the
                # init's end of the fifo closes when execve replaces it
                while True:
                    if poller.poll(100):
                        try:
                            if not os.read(fd, 1):
                                break
                        except BlockingIOError:
                            continue
                    elif not state.is_alive(record):
                        break
        finally:
            os.close(fd)
        os.unlink(fifo_path)
        if data != b"0":
            raise BadState("cannot start an already running container")
    if "poststart" in saved.hooks:
        from hanok.runtime import hooks

        hooks.run("poststart", saved.hooks["poststart"], state.oci_state(record, state.RUNNING))


def _saved(cdir: str) -> _Saved:
    return _Saved(state.load_config(cdir))


def get_state(root: str, container_id: str) -> dict:
    cdir, record = state.load(root, container_id)
    return state.oci_state(record, state.status_of(record, cdir))


def parse_signal(value: str) -> int:
    """'KILL', 'SIGKILL', '9' and 'kill' are all SIGKILL, as runc accepts."""
    import _signal as signal  # the C module: `signal` would import enum

    text = value.strip()
    if text.isdigit():
        number = int(text)
        if 0 < number < signal.NSIG:
            return number
    else:
        name = text.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        number = getattr(signal, name, None)
        if isinstance(number, int) and name.startswith("SIG") and "_" not in name:
            return int(number)
        if name.startswith("SIGRTMIN+") or name.startswith("SIGRTMAX-"):
            base, _, off = name[3:].partition("+" if "+" in name else "-")
            if off.isdigit():
                number = int(getattr(signal, "SIG" + base)) + (int(off) if "+" in name else -int(off))
                if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
                    return number
    from hanok.runtime.errors import InvalidArgument

    raise InvalidArgument(f"unknown signal {value!r}")


def kill(root: str, container_id: str, signal_name: str | int, all_processes: bool = False) -> None:
    """Signal the init (or, with all_processes, every process) of the container.

    The container is looked up before the signal is parsed, so an unknown id
    reports "container does not exist" whatever the signal, as runc does.
    """
    cdir, record = state.load(root, container_id)
    signum = signal_name if isinstance(signal_name, int) else parse_signal(signal_name)
    status = state.status_of(record, cdir)
    state.check_transition("kill", status, container_id)
    targets = container_pids(record, cdir) if all_processes else [record["pid"]]
    explain.step(f"kill -{signum} {' '.join(map(str, targets))}")
    for pid in targets:
        _signal_pid(pid, signum, record["start_time"] if pid == record["pid"] else None)


def _signal_pid(pid: int, signum: int, start_time: int | None) -> None:
    """Signal through a pidfd: once opened, a reused pid cannot be hit by mistake."""
    import _signal

    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if start_time is not None and state.proc_start_time(pid) != start_time:
            return
        _signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def container_pids(record: dict, cdir: str) -> list[int]:
    """Host pids of every process in the container: its cgroup's cgroup.procs.

    A container created before it had a cgroup (an older hanok) falls back to
    the init's pid namespace, else the init and its descendants.
    """
    init_pid = record["pid"]
    if "cgroupsPath" in record:
        cgroup = _cgroup_of(record)
        return sorted(cgroup.procs()) if cgroup.exists() else []
    if not state.is_alive(record):
        return []
    saved = _saved(cdir)
    pids: list[int] = []
    if "pid" in saved.namespaces:
        try:
            target = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
        except OSError:
            return []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}/ns/pid").st_ino == target:
                        pids.append(int(entry))
                except OSError:
                    continue
        return sorted(pids)
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    data = f.read()
                ppid = int(data[data.rindex(b")") + 2:].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError):
                continue
    todo = [init_pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(pids)


def delete(root: str, container_id: str, force: bool = False) -> None:
    """Remove a stopped (or, with force, any) container and its state."""
    try:
        cdir, record = state.load(root, container_id)
    except NotFound:
        cdir = state.container_dir(root, container_id)
        if force and os.path.isdir(cdir):
            state.remove_dir(cdir)  # a create that crashed half way
            return
        if force:
            return
        raise
    with state.Lock(cdir):
        status = state.status_of(record, cdir)
        if status != state.STOPPED:
            if status != state.CREATED and not force:
                state.check_transition("delete", status, container_id)
            from hanok.runtime.process import wait_gone

            if status == state.PAUSED:
                _cgroup_of(record).thaw()  # a frozen process cannot act on SIGKILL
            for pid in container_pids(record, cdir) or [record["pid"]]:
                _signal_pid(pid, 9, record["start_time"] if pid == record["pid"] else None)
            if not wait_gone(record["pid"], record["start_time"]):
                raise HanokError(f"container {container_id} did not die after SIGKILL")
        if "cgroupsPath" in record:
            _destroy_cgroup(_cgroup_of(record))
        saved = _saved(cdir)
        if "poststop" in saved.hooks:
            from hanok.runtime import hooks

            hooks.run("poststop", saved.hooks["poststop"], state.oci_state(record, state.STOPPED))
        state.remove_dir(cdir)


def run(root: str, container_id: str, bundle: str, *, detach: bool = False, pid_file: str | None = None,
        console_socket: str | None = None, no_pivot: bool = False, no_new_keyring: bool = False,
        preserve_fds: int = 0, systemd_cgroup: bool = False) -> int:
    """create + start; in the foreground also wait, forward signals, delete, and
    return the container's exit code (128+N when a signal killed it)."""
    from hanok.runtime import spec
    from hanok.runtime.process import exit_status, set_subreaper

    state.validate_id(container_id)
    cfg = spec.load(bundle)
    relay_pty = bool(cfg.process.get("terminal")) and not console_socket
    if relay_pty and detach:
        raise HanokError("cannot allocate a terminal for a detached container without --console-socket")
    if not detach:
        # a user-namespace container's init is our grandchild: adopt it when the
        # intermediate exits, so we can wait for it
        set_subreaper()
    ours = theirs = master = -1
    if relay_pty:
        from hanok.runtime.process import console_pair

        ours, theirs = console_pair()
    try:
        pid = create(root, container_id, bundle, pid_file=pid_file, console_socket=console_socket,
                     no_pivot=no_pivot, no_new_keyring=no_new_keyring, preserve_fds=preserve_fds,
                     config=cfg, console_fd=theirs if relay_pty else None, systemd_cgroup=systemd_cgroup)
        if relay_pty:
            from hanok.runtime.process import receive_pty_master

            os.close(theirs)
            theirs = -1
            master = receive_pty_master(ours)
        try:
            start(root, container_id)
        except BaseException:
            delete(root, container_id, force=True)
            raise
        if detach:
            return 0
        if relay_pty:
            from hanok.runtime.process import relay_pty_until_exit

            status = relay_pty_until_exit(master, pid)
        else:
            status = _wait_forwarding_signals(pid)
    finally:
        for fd in (ours, theirs, master):
            if fd >= 0:
                os.close(fd)
    while True:  # reap anything else we adopted as subreaper
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    delete(root, container_id, force=True)
    return exit_status(status)


def _wait_forwarding_signals(pid: int) -> int:
    import _signal as signal

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except OSError:
            pass

    for name in FORWARDED_SIGNALS:
        signal.signal(getattr(signal, name), forward)
    return _reap(pid)


def exec_process(root: str, container_id: str, process: dict, *, detach: bool = False,
                 pid_file: str | None = None, console_socket: str | None = None,
                 preserve_fds: int = 0, console_fd: int | None = None,
                 wait: "Callable[[int], int] | None" = None) -> int:
    """Run another process in the container; return its exit code (0 when detached).

    `console_fd`: an already connected console socket (taken over and closed
    here). `wait`: how to wait for the started process (pid -> wait status),
    e.g. relaying its pty; default: wait, forwarding our signals to it.
    """
    from hanok.runtime import init
    from hanok.runtime import syscalls as sc
    from hanok.runtime.process import (ParentSync, connect_console_socket, exit_status, raise_child_error,
                                       write_pid_file)

    cdir, record = state.load(root, container_id)
    status = state.status_of(record, cdir)
    state.check_transition("exec", status, container_id)
    saved = _saved(cdir)
    init_pid = record["pid"]
    if process.get("terminal") and not console_socket and console_fd is None:
        raise HanokError("a terminal was requested but no --console-socket was given to receive it")
    init.preload(process, saved.seccomp, False)
    if console_socket:
        console_fd = connect_console_socket(console_socket)
    sync = ParentSync()
    try:
        for kind, flag in (("pid", sc.CLONE_NEWPID), ("time", sc.CLONE_NEWTIME)):
            if kind in saved.namespaces:
                fd = os.open(f"/proc/{init_pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    explain.step(f"nsenter --{kind}=/proc/{init_pid}/ns/{kind}")
                    sc.setns(fd, flag)
                finally:
                    os.close(fd)
        cgroup = _cgroup_of(record) if "cgroupsPath" in record else None
        self_enter = cgroup is not None and cgroup.can_enter_self
        pid = os.fork()
        if pid == 0:
            try:
                init.exec_process(saved, process, init_pid, init.Sync(*sync.child_ends()),
                                  console_sock=console_fd, preserve_fds=preserve_fds,
                                  enter_cgroup=cgroup if self_enter else None)
            finally:
                os._exit(1)
        sync.close_child_ends()
        entered: HanokError | None = None
        try:
            if cgroup is not None and not self_enter:
                cgroup.enter(pid)
            sync.send_ok()
        except HanokError as e:
            entered = e
            _kill_quietly(pid)  # it waits for our "ok": never leave it (or us) blocked
        except BrokenPipeError:
            pass
        message = sync.recv()
        if message is not None and message.startswith("error "):
            _reap(pid)
            raise_child_error(message)  # the child failed first: its reason is the one to report
        if entered is not None:
            _reap(pid)
            raise entered
    finally:
        sync.close()
        if console_fd is not None:
            os.close(console_fd)
    if pid_file:
        write_pid_file(pid_file, pid)
    if detach:
        return 0
    return exit_status(wait(pid) if wait is not None else _wait_forwarding_signals(pid))


def exec_spec(root: str, container_id: str, args: list[str], env: list[str], cwd: str | None,
              user: str | None, tty: bool, cap_add: list[str], no_new_privs: bool | None) -> dict:
    """Build an exec `process` from the container's own process and the flags, as runc does."""
    cdir, _ = state.load(root, container_id)
    base = _saved(cdir).process
    process = {k: v for k, v in base.items() if k not in ("args", "terminal", "consoleSize")}
    process["args"] = args
    merged = {e.split("=", 1)[0]: e for e in base.get("env") or []}
    for e in env:
        merged[e.split("=", 1)[0]] = e
    process["env"] = list(merged.values())
    if cwd:
        process["cwd"] = cwd
    if user:
        uid, _, gid = user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            from hanok.runtime.errors import InvalidArgument

            raise InvalidArgument(f"--user {user!r}: expected UID[:GID] as numbers")
        process["user"] = {"uid": int(uid), "gid": int(gid) if gid else 0}
    process["terminal"] = tty
    if cap_add:
        caps = {k: list(v) for k, v in (process.get("capabilities") or {}).items()}
        for cap in cap_add:
            cap = cap.upper() if cap.upper().startswith("CAP_") else "CAP_" + cap.upper()
            for kind in ("bounding", "effective", "permitted"):
                if cap not in caps.setdefault(kind, []):
                    caps[kind].append(cap)
        process["capabilities"] = caps
    if no_new_privs is not None:
        process["noNewPrivileges"] = no_new_privs
    from hanok.runtime.spec import validate_process

    return validate_process(process)


def list_containers(root: str) -> list[dict]:
    out = []
    for cid in state.list_ids(root):
        try:
            cdir, record = state.load(root, cid)
        except NotFound:
            continue
        out.append(state.oci_state(record, state.status_of(record, cdir)))
    return out


def pids(root: str, container_id: str) -> list[int]:
    cdir, record = state.load(root, container_id)
    return container_pids(record, cdir)


def pause(root: str, container_id: str) -> None:
    """Freeze every process of the container (cgroup.freeze / the v1 freezer)."""
    _set_frozen(root, container_id, "pause", True)


def resume(root: str, container_id: str) -> None:
    _set_frozen(root, container_id, "resume", False)


def _set_frozen(root: str, container_id: str, op: str, frozen: bool) -> None:
    cdir, record = state.load(root, container_id)
    with state.Lock(cdir):
        cdir, record = state.load(root, container_id)
        state.check_transition(op, state.status_of(record, cdir), container_id)
        if "cgroupsPath" not in record:
            raise NotSupported(f"container {container_id} has no cgroup to freeze")
        cgroup = _cgroup_of(record)
        cgroup.freeze() if frozen else cgroup.thaw()
        record["paused"] = frozen
        state.save(cdir, record)


def update(root: str, container_id: str, resources: dict) -> None:
    """Change the limits of a live container: the new values merged over the old."""
    from hanok.runtime.spec import validate_resources

    if not isinstance(resources, dict):
        from hanok.runtime.errors import SpecError

        raise SpecError("--resources: expected a JSON object (linux.resources)")
    cdir, record = state.load(root, container_id)
    with state.Lock(cdir):
        cdir, record = state.load(root, container_id)
        if state.status_of(record, cdir) == state.STOPPED:
            raise BadState("container not running")
        if "cgroupsPath" not in record:
            raise NotSupported(f"container {container_id} has no cgroup to update")
        merged = _merge(record.get("resources") or {}, resources)
        merged = validate_resources(merged, "resources")
        _cgroup_of(record).apply(merged)
        record["resources"] = merged
        state.save(cdir, record)


def _merge(old: dict, new: dict) -> dict:
    """Deep-merge `new` over `old` (lists are replaced, not appended)."""
    out = dict(old)
    for key, value in new.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def stats(root: str, container_id: str) -> dict:
    """Cheap numbers for node agents: memory, cpu, pids, io, OOM kills."""
    cdir, record = state.load(root, container_id)
    if "cgroupsPath" not in record:
        raise NotSupported(f"container {container_id} has no cgroup")
    return _cgroup_of(record).stats()
