"""process.terminal and --console-socket, as conmon and containerd's shim use them.

The caller listens on an AF_UNIX stream socket and passes its path to `create`
(or `exec --tty`); the runtime connects and sends the pty master over it with
SCM_RIGHTS. The caller then reads and writes the container's terminal through
that master.
"""

from __future__ import annotations

import os
import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import (
    BundleFactory,
    Runtime,
    Untouched,
    default_config,
    children,
    describe,
    pid_alive,
    reap,
    set_child_subreaper,
    sh,
)


class ConsoleSocket:
    """A listening console socket and the pty masters received through it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.masters: list[int] = []

    def receive_master(self, timeout: float = 10.0) -> int:
        """Accept the runtime's connection and return the fd it sends."""
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(timeout)
            _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 4)
        assert len(fds) == 1, f"expected one fd over the console socket, got {fds}"
        self.masters.extend(fds)
        return fds[0]

    def close(self) -> None:
        for fd in self.masters:
            try:
                os.close(fd)
            except OSError:
                pass
        self.sock.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def console(host_dir: Path) -> Iterator[ConsoleSocket]:
    sock = ConsoleSocket(host_dir / "console.sock")
    yield sock
    sock.close()


def read_until(master: int, pattern: str, timeout: float = 10.0) -> str:
    """Read the pty master until ``pattern`` (a regex) matches what was read."""
    data = b""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, data.decode(errors="replace")):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {pattern!r} on the pty; got {data!r}")
        ready, _, _ = select.select([master], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: every slave end is closed
            chunk = b""
        if not chunk:
            raise AssertionError(f"pty closed before {pattern!r}; got {data!r}")
        data += chunk
    return data.decode(errors="replace")


def test_create_with_console_socket(
    oci: Runtime, bundle: BundleFactory, cid: str, console: ConsoleSocket
) -> None:
    config = default_config(*sh("tty; echo hi; sleep 1"))
    config["process"]["terminal"] = True
    path = bundle(config)
    oci.ok("create", "--console-socket", console.path, "--bundle", path, cid)
    master = console.receive_master()
    assert os.isatty(master)
    oci.ok("start", cid)
    out = read_until(master, r"\bhi\r?\n")
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    assert lines[0] in ("/dev/console", "/dev/pts/0"), out
    assert lines[1] == "hi", out


def test_terminal_is_the_controlling_tty_and_stdio(
    oci: Runtime, bundle: BundleFactory, cid: str, console: ConsoleSocket
) -> None:
    # stdin, stdout and stderr are all the pty; input typed on the master
    # reaches the process; the pty is its controlling terminal (/dev/tty opens).
    config = default_config(
        *sh(
            "for fd in 0 1 2; do [ -t $fd ] && echo tty$fd; done; "
            "echo ctty > /dev/tty && echo ok-ctty; "
            "read line; echo got:$line"
        )
    )
    config["process"]["terminal"] = True
    oci.ok("create", "--console-socket", console.path, "--bundle", bundle(config), cid)
    master = console.receive_master()
    oci.ok("start", cid)
    out = read_until(master, r"ok-ctty")
    assert re.findall(r"tty\d", out) == ["tty0", "tty1", "tty2"], out
    os.write(master, b"typed\n")
    out = read_until(master, r"got:typed")
    oci.wait_status(cid, "stopped")


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Make this process the child subreaper while the test runs.

    A detached exec'd process outlives `exec`; orphaned, it would go to the
    host's PID 1, and the container's init (PID 1 of its pid namespace) cannot
    finish dying until that zombie is reaped, which the host's init may take a
    second to do. As subreaper we get it and reap it ourselves, with its status.
    """
    known = children()
    set_child_subreaper(True)
    try:
        yield
    finally:
        set_child_subreaper(False)
        reap(children() - known)  # what already exited; never blocks


def test_exec_tty_with_console_socket(
    oci: Runtime,
    bundle: BundleFactory,
    cid: str,
    console: ConsoleSocket,
    host_dir: Path,
    subreaper: None,
) -> None:
    # As containerd's shim and conmon call it: --detach (runc ignores
    # --console-socket in the foreground and runs its own console copier).
    oci.ok("create", "--bundle", bundle(default_config("sleep", "100")), cid)
    oci.ok("start", cid)
    init_pid = oci.state(cid)["pid"]
    pid_file = host_dir / "exec.pid"
    # `read` keeps the process (and so the pty) alive until we have read its
    # output; the newline we type then lets it exit.
    oci.ok(
        "exec", "--detach", "--tty", "--console-socket", console.path,
        "--pid-file", pid_file, cid, *sh("tty; read x"),
    )
    master = console.receive_master()
    pid = int(pid_file.read_text())
    out = read_until(master, r"/dev/pts/\d+\r?\n")
    assert re.search(r"^/dev/pts/\d+\r?$", out, re.M), out
    assert pid_alive(pid)
    os.write(master, b"\n")
    assert pid in children(), "the detached exec'd process was not re-parented to us"
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert oci.state(cid)["status"] == "running"
    oci.ok("delete", "--force", cid)
    # The init was re-parented to us as well: reap it.
    if init_pid in children():
        os.waitpid(init_pid, 0)


def test_terminal_without_console_socket_fails_create(
    oci: Runtime, bundle: BundleFactory, cid: str, untouched: Untouched
) -> None:
    config = default_config("true")
    config["process"]["terminal"] = True
    path = bundle(config)
    before = untouched()
    proc = oci("create", "--bundle", path, cid)
    # runc: cannot allocate tty if runc will detach without setting console socket
    assert proc.returncode != 0, describe(proc)
    assert re.search(r"console.socket", proc.stderr, re.I), describe(proc)
    untouched.check(before)
    assert oci.status(cid) is None
