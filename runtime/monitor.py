"""The per-container monitor of detached containers (`hanok run -d`, `hanok start`).

No daemon: each detached container gets one small process that

  * is the container init's parent (it calls `launch`, and is a child
    subreaper, so the init and every orphan of the container come to it and
    are reaped: no zombies);
  * owns the container's stdout and stderr (two pipes, or the master of its pty
    with a terminal) and writes them to a CRI log (`logs.py` describes the
    format), rotated to `<log>.1` at a size limit;
  * when the init exits, drains the pipes (until EOF, or GRACE_SECONDS when
    another process still holds them), then records
    `{"exitCode": N, "finishedAt": "<RFC3339Nano>", "signal": S|null}` at
    exit_path (tmp + fsync + rename). So exit.json present means the log is
    complete: `hanok logs -f` may stop on it without losing lines;
  * then becomes the exit command, if one was given (conmon's --exit-command:
    the engine's cleanup of a stopped container), or exits 0.

It is paid per container, so after starting the container it execve()s a fresh
interpreter (`python -S -I -c "...import monitor; monitor._loop(...)"`, see
_LOOP_MAIN) that imports this file alone and runs only `_loop` below with the C
modules posix, _signal, select and time: no hanok package, no `os`, no json, no
site. PR_SET_CHILD_SUBREAPER and the kept fds (passed by number) survive execve.
Memory figures (tests/bench/bench_monitor.py) head the loop's section below.

Signals: the monitor ignores SIGINT, SIGHUP, SIGQUIT, SIGPIPE, SIGTERM,
SIGUSR1/2 and the tty signals, as conmon does: it must outlive a closed
terminal or a ^C in the session that started it, and stopping a container is
done by signalling the container (`hanok stop`), after which the monitor exits
by itself. SIGTERM to the monitor therefore forwards nothing and leaves the
container running. Only SIGKILL ends it early: the container keeps running,
its output is no longer read (once a pipe fills, its writes block; a pty hangs
up) and exit_path is never written. The engine recognises that case as "monitor gone"
(the monitor pid is not alive, exit_path absent): while the init is alive it
reports the container running without a log; once it has stopped, it reports
it exited with an unknown exit code (docker's -1) rather than inventing one.
"""
import posix  # not os: the loop below does without it (os costs ~0.17 MiB per monitor)

if False:  # typing only: this file is also the monitor loop's only module
    from collections.abc import Callable

GRACE_SECONDS = 1.0       # after the init exits: how long to wait for EOF from other holders of the pipes
READ_SIZE = 8192          # bytes per read; a longer line is logged as P chunks
STDIN_FIFO = "stdin"      # name of the fifo, beside exit_path, that feeds the container's stdin
_IGNORED_SIGNALS = ("SIGINT", "SIGHUP", "SIGQUIT", "SIGPIPE", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGTTIN",
                    "SIGTTOU", "SIGTSTP")
_NOT_STARTED = "monitor exited before the container started"
_UNLESS_ALIVE = "@unless-alive="  # see spawn's exit_command_unless_alive
_LOG_FLAGS = posix.O_WRONLY | posix.O_APPEND | posix.O_CLOEXEC
# The loop's interpreter imports this file as a plain module `monitor`: imported, not run as a script,
# so it is loaded from its .pyc (written by pip at install, or by the first monitor) instead of being
# compiled in every monitor, which would cost ~1.3 MiB each (as it does where this directory is read-only
# and holds no fresh .pyc). Appended, not prepended, to sys.path: the
# standard library's modules (select) win over any namesake in this directory.
_LOOP_MAIN = "import sys; sys.path.append(sys.argv[1]); import monitor; monitor._loop(sys.argv[2:])"


class MonitorInfo:
    """What spawn reports: the monitor's pid, the container init's pid, and the stdin fifo if any."""

    __slots__ = ("pid", "container_pid", "stdin_path")

    def __init__(self, pid: int, container_pid: int, stdin_path: str | None = None):
        self.pid = pid
        self.container_pid = container_pid
        self.stdin_path = stdin_path

    def __repr__(self) -> str:
        return f"MonitorInfo(pid={self.pid}, container_pid={self.container_pid}, stdin_path={self.stdin_path!r})"


def spawn(*, launch: "Callable[[], int]", log_path: str, exit_path: str, terminal: bool = False,
          log_max_bytes: int = 10 << 20, stdin: bool = False, console_socket_path: str | None = None,
          exit_command: list[str] | None = None, exit_command_unless_alive: int | None = None) -> MonitorInfo:
    """Start a container under a new monitor; return once it has started.

    `launch` runs in the monitor (so the container init is its child): it
    creates and starts the container and returns the init's pid, undoing its
    own half-made work if it fails. The container inherits fds 0, 1 and 2 of
    `launch` as its stdio: /dev/null or the stdin fifo, and the two log pipes.
    With `terminal`, the monitor listens on `console_socket_path` and `launch`
    must pass that path to container.create(console_socket=...); the pty's
    output is logged as stdout. With `stdin`, a fifo `stdin` beside exit_path
    feeds the container's stdin (through the pty with a terminal) and is held
    open by the monitor, so the container never reads EOF. `exit_command`
    (argv, the caller's environment, stdio /dev/null) replaces the monitor
    once exit_path is written: waiting for the monitor's pid to go away
    waits for it too. With `exit_command_unless_alive` (a pid, normally the
    caller's), the exit command is skipped if that very process (same start
    time) still lives then: an attached CLI cleans up itself, and the exit
    command only covers for it when it was killed.

    A HanokError raised by `launch` is raised here again: same class, message
    and exit_code. The call never hangs on a dead monitor.
    """
    import os.path

    from hanok.runtime import explain
    from hanok.runtime.errors import InvalidArgument, NotFound

    if terminal and not console_socket_path:
        raise InvalidArgument("a terminal needs console_socket_path: the monitor receives the pty there")
    if log_max_bytes < 1:
        raise InvalidArgument(f"log_max_bytes must be positive, not {log_max_bytes}")
    log_path, exit_path = os.path.abspath(log_path), os.path.abspath(exit_path)
    for given in (log_path, exit_path):
        if not os.path.isdir(os.path.dirname(given)):
            raise NotFound(f"directory of {given} does not exist")
    stdin_path = os.path.join(os.path.dirname(exit_path), STDIN_FIFO) if stdin else None
    if exit_command and exit_command_unless_alive is not None:
        # carried as a first word the loop strips (the exit command passes through four functions)
        exit_command = [f"{_UNLESS_ALIVE}{exit_command_unless_alive}:{_start_time(exit_command_unless_alive)}",
                        *exit_command]
    explain.step(f"setsid hanok-monitor --log {log_path} --exit {exit_path} &",
                 "a monitor per container: subreaper of its init, owner of its stdio and log")
    result_r, result_w = posix.pipe2(posix.O_CLOEXEC)
    try:
        intermediate = posix.fork()
        if intermediate == 0:
            _detach_and_monitor(result_w, launch, log_path, exit_path, terminal, log_max_bytes, stdin_path,
                                console_socket_path, exit_command or [])  # never returns
        posix.close(result_w)
        result_w = -1
        message = _read_message(result_r)
        if not message.startswith("ok "):
            _read_message(result_r)  # EOF: a monitor that failed has exited (closed its end) before we raise
    finally:
        posix.close(result_r)
        if result_w >= 0:
            posix.close(result_w)
    _reap(intermediate)
    return _parse_message(message, stdin_path)


def _detach_and_monitor(result_w: int, *args) -> None:
    """Intermediate: a new session, then the monitor as its child, then exit.

    The monitor is thus nobody's child in the caller (re-parented to the
    nearest subreaper or init when we exit): a long-lived caller never has
    to reap it, and it is no process group leader, so it never gets a
    controlling terminal.
    """
    try:
        posix.setsid()
        if posix.fork() == 0:
            _become_monitor(result_w, *args)
    except BaseException as e:  # noqa: BLE001 - must reach the caller, then exit
        _send(result_w, _error_message(e))
    finally:
        posix._exit(0)


def _become_monitor(result_w: int, launch: "Callable[[], int]", log_path: str, exit_path: str, terminal: bool,
                    log_max_bytes: int, stdin_path: str | None, console_socket_path: str | None,
                    exit_command: list[str]) -> None:
    """The monitor before execve: set up the container's stdio, launch it, report, exec the loop."""
    import stat

    from hanok.runtime import explain, process

    made: list[str] = []  # paths we created, removed if the launch fails
    container_pid = 0
    try:
        if explain.enabled():
            explain.enable(posix.dup(2))  # the steps of launch() go to the caller's stderr, not to the log
        process.set_subreaper()
        devnull = posix.open("/dev/null", posix.O_RDWR | posix.O_CLOEXEC)
        try:
            log_fd = posix.open(log_path, _LOG_FLAGS | posix.O_CREAT | posix.O_EXCL, 0o640)
            made.append(log_path)
        except FileExistsError:
            log_fd = posix.open(log_path, _LOG_FLAGS)  # `hanok start` again: the log goes on
        try:
            posix.unlink(exit_path)  # `hanok start` again: the last run's exit record would say "finished"
        except FileNotFoundError:
            pass
        keep = {"--log-fd": log_fd}
        listener = None
        if terminal:
            assert console_socket_path is not None
            listener = _listen(console_socket_path)
            made.append(console_socket_path)
            for fd in (0, 1, 2):
                posix.dup2(devnull, fd)  # the init replaces them with the pty's slave
        else:
            out_r, out_w = posix.pipe2(posix.O_CLOEXEC)
            err_r, err_w = posix.pipe2(posix.O_CLOEXEC)
            posix.dup2(devnull, 0)
            posix.dup2(out_w, 1)
            posix.dup2(err_w, 2)
            posix.close(out_w)
            posix.close(err_w)
            keep.update({"--stdout-fd": out_r, "--stderr-fd": err_r})
        if stdin_path is not None:
            explain.step(f"mkfifo -m 600 {stdin_path}", "the container's stdin, held open by the monitor")
            try:
                posix.mkfifo(stdin_path, 0o600)
                made.append(stdin_path)
            except FileExistsError:
                _require(stdin_path, stat.S_ISFIFO, "a fifo")  # `hanok start` again: the same fifo serves
            keep["--stdin-fd"] = posix.open(stdin_path, posix.O_RDWR | posix.O_CLOEXEC)  # a writer: no EOF, ever
            if not terminal:
                reader = posix.open(stdin_path, posix.O_RDONLY | posix.O_CLOEXEC)
                posix.dup2(reader, 0)
                posix.close(reader)
        container_pid = launch()
        for fd in (0, 1, 2):
            posix.dup2(devnull, fd)  # only the container may hold the write ends: EOF when it is gone
        if listener is not None:
            keep["--pty-fd"] = _receive_master(listener)
    except BaseException as e:  # noqa: BLE001 - everything must reach the caller
        if container_pid:  # started, but we cannot watch it (no pty): nothing may run unmonitored
            posix.kill(container_pid, 9)
            _reap(container_pid)
        for path in made:
            try:
                posix.unlink(path)
            except OSError:
                pass
        _send(result_w, _error_message(e))
        posix._exit(1)
    _ignore_signals()
    _send(result_w, f"ok {posix.getpid()} {container_pid}\n")
    _exec_loop(container_pid, log_path, exit_path, log_max_bytes, keep, exit_command)


def _ignore_signals() -> None:
    """From here on, for good: ignored dispositions survive execve (and the container is already running,
    so it does not inherit them). Python's startup leaves an ignored SIGINT alone."""
    import _signal

    for name in _IGNORED_SIGNALS:
        _signal.signal(getattr(_signal, name), _signal.SIG_IGN)


def _require(path: str, kind: "Callable[[int], bool]", what: str) -> None:
    """Exists unless the file at `path` is of `kind` (stat.S_ISFIFO, ...); FileNotFoundError if it is absent."""
    from hanok.runtime.errors import Exists

    if not kind(posix.lstat(path).st_mode):
        raise Exists(f"{path} exists and is not {what}")


def _listen(path: str):
    """A listening console socket at `path` (a stale socket from a crash is replaced)."""
    import socket
    import stat

    try:
        _require(path, stat.S_ISSOCK, "a socket")
        posix.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    return listener


def _receive_master(listener) -> int:
    """The pty master the container's init sent (it is queued: create() returned after sending it)."""
    from hanok.runtime.errors import HanokError
    from hanok.runtime.process import receive_pty_master

    path = listener.getsockname()
    listener.settimeout(10)
    try:
        connection, _ = listener.accept()
    except OSError as e:
        raise HanokError(f"console socket {path}: the container did not connect: {e}") from None
    finally:
        listener.close()
        posix.unlink(path)
    with connection:
        return receive_pty_master(connection.fileno())


def _exec_loop(container_pid: int, log_path: str, exit_path: str, log_max_bytes: int, keep: dict[str, int],
               exit_command: list[str]) -> None:
    """Replace this (big) process with a minimal interpreter running `_loop`, keeping only `keep`'s fds."""
    import os.path
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    for name in posix.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep.values():
            try:
                posix.close(fd)
            except OSError:
                pass  # the directory fd listdir itself used
    for fd in keep.values():
        posix.set_inheritable(fd, True)
    args = ["--pid", str(container_pid), "--log", log_path, "--exit", exit_path, "--max", str(log_max_bytes)]
    for flag, fd in keep.items():
        args += [flag, str(fd)]
    args += ["--", *exit_command]
    posix.chdir("/")  # hold no directory (and so no mount) busy
    try:
        # the caller's environment, for the exit command: -I keeps PYTHON* variables from the loop itself
        posix.execv(sys.executable, [sys.executable, "-S", "-I", "-c", _LOOP_MAIN, here, *args])
    except OSError:
        _loop(args)  # no interpreter to exec (deleted under us?): the same loop, in this bigger process
        posix._exit(0)


def _read_message(fd: int) -> str:
    """One newline-terminated message, or "" if the writer closed first."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = posix.read(fd, 4096)
        if not chunk:
            return ""
        data += chunk
    return data.decode(errors="replace")


def _send(fd: int, message: str) -> None:
    try:
        posix.write(fd, message.encode(errors="replace"))
    except OSError:
        pass  # the caller is gone: nobody to tell


def _error_message(e: BaseException) -> str:
    """"error <exit_code> <class> <one-line message>" for a HanokError; anything else as a HanokError."""
    from hanok.runtime.errors import HanokError

    if isinstance(e, HanokError):
        name, code, text = type(e).__name__, e.exit_code, str(e)
    else:
        name, code, text = "HanokError", HanokError.exit_code, f"monitor: {type(e).__name__}: {e}"
    return f"error {code} {name} {' '.join(text.splitlines())}\n"


def _parse_message(message: str, stdin_path: str | None) -> MonitorInfo:
    from hanok.runtime import errors

    words = message.rstrip("\n").split(" ", 3)
    if words[0] == "ok" and len(words) == 3:
        return MonitorInfo(int(words[1]), int(words[2]), stdin_path)
    if words[0] == "error" and len(words) == 4 and words[1].lstrip("-").isdigit():
        kind = getattr(errors, words[2], None)
        if not (isinstance(kind, type) and issubclass(kind, errors.HanokError)):
            kind = errors.HanokError
        error = kind(words[3])
        error.exit_code = int(words[1])
        raise error
    raise errors.HanokError(_NOT_STARTED)


def _reap(pid: int) -> None:
    try:
        posix.waitpid(pid, 0)
    except ChildProcessError:
        pass  # a SIGCHLD handler of the caller's reaped it already


# ---------------------------------------------------------------- the monitor loop
# Runs in the minimal interpreter: only posix, _signal, select and time from here on.
#
# Memory (tests/bench/bench_monitor.py, 50 idle containers, this machine): 2.79 MiB PSS per monitor
# (2.68 MiB of it Private_Dirty: ~1.2 MiB libpython's relocated and written .data, ~0.8 MiB obmalloc
# arena, ~0.45 MiB malloc heap), conmon 0.36 MiB. What was measured on the way there:
#   run as a script (compiled in every monitor)     4.34 MiB PSS; imported from its .pyc: 2.79
#   `import os` in the loop                         +0.17 MiB Private_Dirty (hence posix)
#   ctypes for malloc_trim(0)                       +0.43 MiB (ctypes costs more than trimming saves)
#   -X frozen_modules=off                           +0.1 to +0.3 MiB
#   PYTHONMALLOC=malloc, MALLOC_ARENA_MAX=1, -OO,
#   gc.freeze()/gc.disable()                        no measurable change
#   Debian's non-PIE /usr/bin/python3.11            2.54 MiB PSS (fewer relocated pages), not used:
#                                                   the monitor runs hanok's own interpreter


def _loop(argv: list[str]) -> None:
    """Log the container's output, reap children, record the exit, and return once all is drained."""
    import _signal
    import select
    import time

    split = argv.index("--")
    options, exit_command = dict(zip(argv[:split:2], argv[1:split:2])), argv[split + 1:]
    container_pid = int(options["--pid"])
    exit_path = options["--exit"]
    log = _LogWriter(options["--log"], int(options["--log-fd"]), int(options["--max"]))
    wake_r, wake_w = posix.pipe2(posix.O_CLOEXEC | posix.O_NONBLOCK)
    _signal.signal(_signal.SIGCHLD, _on_sigchld)  # a handler, not SIG_IGN: that would discard exit statuses
    _signal.set_wakeup_fd(wake_w)
    streams = {int(options[flag]): name for flag, name in
               (("--stdout-fd", "stdout"), ("--stderr-fd", "stderr"), ("--pty-fd", "stdout")) if flag in options}
    pty = int(options.get("--pty-fd", -1))
    stdin = int(options.get("--stdin-fd", -1))
    watched = [wake_r, *streams] + ([stdin] if pty >= 0 and stdin >= 0 else [])
    status = _reap_children(container_pid)  # it may have exited before this process existed
    finished_ns, drain_until = time.time_ns(), time.monotonic() + GRACE_SECONDS
    while streams or status is None:
        timeout = None if status is None else drain_until - time.monotonic()
        if timeout is not None and timeout <= 0:
            break
        for fd in select.select(watched, [], [], timeout)[0]:
            if fd == wake_r:
                while _read_or_empty(wake_r):
                    pass
                reaped = _reap_children(container_pid)
                if status is None and reaped is not None:
                    status, finished_ns, drain_until = reaped, time.time_ns(), time.monotonic() + GRACE_SECONDS
            elif fd == stdin:
                data = _read_or_empty(stdin)
                try:
                    posix.write(pty, data)
                except OSError:
                    pass  # the pty is closing: input nobody can read any more
            else:
                data = _read_or_empty(fd)
                if data:
                    log.write(streams[fd], data, time.time_ns())
                else:  # EOF (EIO on a pty whose every slave is closed)
                    del streams[fd]
                    watched.remove(fd)
                    posix.close(fd)
    assert status is not None  # the loop ends only once the init was reaped
    _write_exit(exit_path, status, finished_ns)
    if exit_command and exit_command[0].startswith(_UNLESS_ALIVE):
        pid, _, start = exit_command.pop(0)[len(_UNLESS_ALIVE):].partition(":")
        if _start_time(int(pid)) == start:
            return  # the process that would have run it is alive and does the work itself
    if exit_command:
        _become_exit_command(exit_command)


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat (start time in ticks), or "" when the process is gone."""
    try:
        fd = posix.open(f"/proc/{pid}/stat", posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError:
        return ""
    try:
        data = posix.read(fd, 4096)
    finally:
        posix.close(fd)
    fields = data[data.rindex(b")") + 2:].split()
    return fields[19].decode() if len(fields) > 19 else ""


def _become_exit_command(command: list[str]) -> None:
    """execve the exit command in place: no extra process, and our parent reaps it as it would reap us.

    It gets default signal dispositions and no fd beyond stdio (/dev/null);
    if it cannot be executed, the exit is recorded all the same.
    """
    import _signal

    for name in _IGNORED_SIGNALS:
        _signal.signal(getattr(_signal, name), _signal.SIG_DFL)
    for name in posix.listdir("/proc/self/fd"):
        if int(name) > 2:
            try:
                posix.close(int(name))
            except OSError:
                pass  # the directory fd listdir itself used
    try:
        posix.execv(command[0], command)
    except OSError:
        pass


def _on_sigchld(signum: int, frame: object) -> None:
    """Nothing to do here: the wakeup fd tells the loop, which reaps."""


def _read_or_empty(fd: int) -> bytes:
    """Up to READ_SIZE bytes; b"" at EOF, when nothing is there (the wakeup pipe) or on EIO (a closed pty)."""
    try:
        return posix.read(fd, READ_SIZE)
    except OSError:
        return b""


def _reap_children(container_pid: int) -> int | None:
    """Reap every exited child (orphans of the container come to us too); the init's wait status if it was one.

    When we have no child at all the init was never ours to wait for: its
    status is unknown, reported as -1.
    """
    status = None
    while True:
        try:
            pid, wait_status = posix.waitpid(-1, posix.WNOHANG)
        except ChildProcessError:
            return -1 if status is None else status
        if pid == 0:
            return status
        if pid == container_pid:
            status = wait_status


class _LogWriter:
    """Appends CRI lines to the log, rotating it to `<log>.1` before it would exceed max_bytes.

    Each read becomes one write(2) of whole lines (O_APPEND), so a reader never
    sees half a line unless it races that one write. The line format is
    logs.format_line's, written here without importing it (see the module docstring).
    """

    def __init__(self, path: str, fd: int, max_bytes: int):
        self.path = path
        self.fd = fd
        self.max_bytes = max_bytes
        self.size = posix.fstat(fd).st_size

    def write(self, stream: str, data: bytes, when_ns: int) -> None:
        prefix = b"%s %s " % (_rfc3339_nano(when_ns), stream.encode())
        lines = data.split(b"\n")
        last = lines.pop()
        out = b"".join([b"%sF %s\n" % (prefix, line) for line in lines]
                       + ([b"%sP %s\n" % (prefix, last)] if last else []))
        try:
            if self.size and self.size + len(out) > self.max_bytes:
                self._rotate()
            posix.write(self.fd, out)
            self.size += len(out)
        except OSError:
            pass  # a full disk must not stop the draining: the container would block on its pipe

    def _rotate(self) -> None:
        posix.rename(self.path, self.path + ".1")
        fd = posix.open(self.path, _LOG_FLAGS | posix.O_CREAT, 0o640)
        posix.close(self.fd)
        self.fd, self.size = fd, 0


def _rfc3339_nano(when_ns: int) -> bytes:
    import time

    seconds, nanos = divmod(when_ns, 1_000_000_000)
    return b"%s.%09dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)).encode(), nanos)


def _write_exit(exit_path: str, wait_status: int, finished_ns: int) -> None:
    """exit.json, atomically; exitCode is 128+N when signal N killed the init, as docker reports it."""
    if wait_status == -1:
        code, signal = -1, "null"
    elif posix.WIFSIGNALED(wait_status):
        code, signal = 128 + posix.WTERMSIG(wait_status), str(posix.WTERMSIG(wait_status))
    else:
        code, signal = posix.WEXITSTATUS(wait_status), "null"
    record = b'{"exitCode": %d, "finishedAt": "%s", "signal": %s}\n' % (code, _rfc3339_nano(finished_ns),
                                                                        signal.encode())
    tmp = exit_path + ".tmp"
    fd = posix.open(tmp, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_CLOEXEC, 0o644)
    try:
        posix.write(fd, record)
        posix.fsync(fd)
    finally:
        posix.close(fd)
    posix.rename(tmp, exit_path)


