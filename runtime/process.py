"""Parent side: the fork chain, the sync protocol, pid files and console sockets.

Fork chain for `create` (no hanok process stays between the caller and the
container once `create` returns):

  * without a new user namespace: the parent (hanok-oci create) prepares the
    pid and time namespaces for its children (unshare/setns affect only
    children for those two), then forks the init directly; the init unshares
    or joins the rest itself. When `create` exits the init is re-parented to
    the caller's subreaper (conmon, containerd-shim, or `run` itself).
  * with a new user namespace: the other namespaces must be owned by it, so
    the parent forks an intermediate that unshares the user namespace, waits
    for the parent to write uid_map/gid_map, unshares pid/time, forks the init,
    reports its pid and exits.

Sync protocol: two pipes, newline-terminated text messages.

  child -> parent        parent -> child     meaning
  -                      "ok"                (first) the child may go on: it is in the container's
                                             cgroup (init without a user namespace and a new
                                             cgroup namespace, exec). Where the cgroup manager
                                             can_enter_self (cgroup v1) the child moves itself
                                             first thing instead, much faster (see V1Manager), and
                                             the init gets no "ok" (exec still does)
  "userns"               "ok"                intermediate: id maps please (when the user namespace
                                             is new), and into the cgroup
  "pid <n>"              -                   intermediate: the init's host pid
  "hooks"                "ok"                init: mounts done, run prestart/createRuntime now
  "ready"                -                   init: set up, blocked on the exec fifo
  "error <code> <text>"  -                   any stage failed; <text> is the one-line reason
  EOF before "ready"     -                   the child died: report what we know

For `exec` the child execs directly; EOF without "error" means execve succeeded
(the pipe is close-on-exec).
"""
from __future__ import annotations

import os

from hanok.runtime import explain
from hanok.runtime import syscalls as sc
from hanok.runtime.errors import ContainerStartError, HanokError


class ParentSync:
    """The parent's end of the protocol described in the module docstring."""

    def __init__(self) -> None:
        self.from_child, self.child_w = os.pipe2(os.O_CLOEXEC)
        self.child_r, self.to_child = os.pipe2(os.O_CLOEXEC)
        self._buffer = b""

    def child_ends(self) -> tuple[int, int]:
        return self.child_w, self.child_r

    def close_child_ends(self) -> None:
        for fd in (self.child_w, self.child_r):
            try:
                os.close(fd)
            except OSError:
                pass

    def recv(self) -> str | None:
        """Next message, or None at EOF (every child end closed)."""
        while b"\n" not in self._buffer:
            chunk = os.read(self.from_child, 4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace")

    def send_ok(self) -> None:
        os.write(self.to_child, b"ok\n")

    def close(self) -> None:
        for fd in (self.from_child, self.to_child, self.child_w, self.child_r):
            try:
                os.close(fd)
            except OSError:
                pass


def raise_child_error(message: str) -> None:
    """Turn an "error <code> <text>" message into the matching exception."""
    _, code, text = (message.split(" ", 2) + ["", ""])[:3]
    exit_code = int(code) if code.isdigit() else 1
    if exit_code in (126, 127):
        raise ContainerStartError(text, exit_code)
    raise HanokError(text)


def write_id_maps(pid: int, uid_mappings: list[dict], gid_mappings: list[dict]) -> None:
    """Write /proc/<pid>/{uid,gid}_map for a process that just unshared its user namespace."""
    for name, maps in (("uid_map", uid_mappings), ("gid_map", gid_mappings)):
        text = "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in maps)
        explain.step(f"printf '{text.strip()}' > /proc/{pid}/{name}")
        try:
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(text)
        except OSError as e:
            raise HanokError(f"writing {name}: {e.strerror}") from None


def write_pid_file(path: str, pid: int) -> None:
    """Atomically, as containerd and conmon read it while we may still be writing."""
    from hanok.runtime.state import write_atomic

    path = os.path.abspath(path)
    write_atomic(path, str(pid).encode(), 0o644, durable=False)


def connect_console_socket(path: str) -> int:
    """Connect to the caller's console socket; the init sends the pty master over it."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise HanokError(f"console socket {path}: {e.strerror}") from None
    fd = sock.detach()
    os.set_inheritable(fd, False)
    return fd


def console_pair() -> tuple[int, int]:
    """A connected socket pair standing in for a console socket (`run` in a terminal)."""
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return ours.detach(), theirs.detach()


def receive_pty_master(sock_fd: int) -> int:
    """Receive the pty master fd the init sends over the console socket."""
    import socket

    sock = socket.socket(fileno=os.dup(sock_fd))
    try:
        _, fds, _, _ = socket.recv_fds(sock, 4096, 1)
    finally:
        sock.close()
    if not fds:
        raise HanokError("the container did not send its terminal")
    os.set_inheritable(fds[0], False)
    return fds[0]


def relay_pty_until_exit(master: int, pid: int) -> int:
    """Copy our terminal to the container's pty and back until `pid` exits.

    Our terminal goes raw so that ^C, ^Z and the like reach the container's
    line discipline instead of killing us; window size changes are copied.
    Returns the wait status.
    """
    import fcntl
    import select
    import signal
    import termios

    interactive = os.isatty(0)
    saved = termios.tcgetattr(0) if interactive else None

    def copy_winsize(*_: object) -> None:
        if interactive:
            size = fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(master, termios.TIOCSWINSZ, size)

    copy_winsize()
    signal.signal(signal.SIGWINCH, copy_winsize)
    if interactive:
        import tty

        tty.setraw(0)
    readers = [master, 0]
    status = None
    try:
        while status is None:
            ready, _, _ = select.select(readers, [], [], 0.2)
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every slave fd is closed, the process is gone
                    data = b""
                if data:
                    os.write(1, data)
                else:
                    readers.remove(master)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    os.write(master, data)
                else:
                    readers.remove(0)
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                status = wait_status
        while True:  # drain what the process wrote last
            ready, _, _ = select.select([master], [], [], 0)
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            os.write(1, data)
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
    return status


def wait_gone(pid: int, start_time: int | None, timeout: float = 10.0) -> bool:
    """Wait until a process (not necessarily our child) has exited."""
    from hanok.runtime.state import proc_start_time

    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return True
    try:
        import select

        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        deadline = timeout * 1000
        while deadline > 0:
            if proc_start_time(pid) != start_time:
                return True
            if poller.poll(min(100, deadline)):
                return True
            deadline -= 100
        return False
    finally:
        os.close(pidfd)


def exit_status(status: int) -> int:
    """A wait status as a shell would report it: the code, or 128+signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def set_subreaper() -> None:
    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
