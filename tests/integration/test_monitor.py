"""runtime/monitor.py with real busybox containers: logs, exit records, reaping, errors, terminals.

Each test starts containers through monitor.spawn() the way the engine does for
`hanok run -d`: launch() runs container.create + container.start inside the
monitor. The runtime state root, bundles, logs and exit files live in a
per-test directory; this process is a child subreaper for the test's duration
(set_child_subreaper), so monitors that exit come back here and are reaped, and
the fixture deletes every container and kills any monitor still alive.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hanok.runtime import bundle as bundles
from hanok.runtime import container, logs, monitor
from hanok.runtime.errors import ContainerStartError, NotFound
from helpers import children, mounts_under, parse_status, pid_alive, poll, reap, set_child_subreaper

SIGNALS_THE_MONITOR_IGNORES = (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGTERM, signal.SIGQUIT)


class Monitors:
    """Spawns containers under monitors in one test's directory, and removes them all afterwards."""

    def __init__(self, work: Path):
        self.work = work
        self.root = str(work / "state")
        self.ids: list[str] = []
        self.monitor_pids: list[int] = []

    def bundle(self, args: list[str], *, pid_namespace: bool = True, terminal: bool = False) -> str:
        path = self.work / f"bundle{len(self.ids)}"
        bundles.busybox_bundle(str(path), args=args)
        config = json.loads((path / "config.json").read_text())
        if not pid_namespace:
            config["linux"]["namespaces"] = [n for n in config["linux"]["namespaces"] if n["type"] != "pid"]
        config["process"]["terminal"] = terminal
        (path / "config.json").write_text(json.dumps(config))
        return str(path)

    def new_id(self) -> str:
        cid = f"mon-{os.getpid()}-{len(self.ids)}"
        self.ids.append(cid)
        (self.work / cid).mkdir()
        return cid

    def launcher(self, cid: str, bundle: str, console_socket: str | None = None):
        """The engine's launch(): create + start in the monitor, undone if start fails."""
        def launch() -> int:
            pid = container.create(self.root, cid, bundle, console_socket=console_socket)
            try:
                container.start(self.root, cid)
            except BaseException:
                container.delete(self.root, cid, force=True)
                raise
            return pid
        return launch

    def spawn(self, args: list[str], *, pid_namespace: bool = True, terminal: bool = False,
              **options) -> tuple[str, monitor.MonitorInfo]:
        bundle = self.bundle(args, pid_namespace=pid_namespace, terminal=terminal)
        cid = self.new_id()
        console = str(self.work / cid / "console.sock") if terminal else None
        info = monitor.spawn(launch=self.launcher(cid, bundle, console), log_path=str(self.log(cid)),
                             exit_path=str(self.exit_file(cid)), terminal=terminal, console_socket_path=console,
                             **options)
        self.monitor_pids.append(info.pid)
        return cid, info

    def log(self, cid: str) -> Path:
        return self.work / cid / "ctr.log"

    def exit_file(self, cid: str) -> Path:
        return self.work / cid / "exit.json"

    def wait_done(self, cid: str, info: monitor.MonitorInfo) -> dict:
        """Wait for the monitor to record the exit and go away; return exit.json."""
        def gone() -> bool:
            reap(children())
            return not pid_alive(info.pid)

        poll(gone, timeout=15, what=f"monitor {info.pid} to exit")
        return json.loads(self.exit_file(cid).read_text())

    def close(self) -> None:
        for cid in self.ids:
            try:
                container.delete(self.root, cid, force=True)
            except NotFound:
                pass
        for pid in self.monitor_pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)

        def all_reaped() -> bool:
            reap(children())
            return not any(pid_alive(pid) for pid in self.monitor_pids)

        poll(all_reaped, timeout=10, what="the monitors to exit")


@pytest.fixture
def monitors() -> Iterator[Monitors]:
    work = Path(tempfile.mkdtemp(prefix="hanok-monitor-", dir="/tmp"))
    work.chmod(0o755)
    set_child_subreaper(True)
    env = Monitors(work)
    try:
        yield env
    finally:
        try:
            env.close()
        finally:
            set_child_subreaper(False)
            if not mounts_under(work):
                shutil.rmtree(work, ignore_errors=True)


def raw_entries(path: Path) -> list[logs.LogEntry]:
    return [logs.parse_line(line) for line in path.read_bytes().splitlines(keepends=True)]


def texts(path: Path, stream: str) -> list[str]:
    return [e.text for e in raw_entries(path) if e.stream == stream]


def test_output_exit_code_and_cleanup(monitors: Monitors) -> None:
    cid, info = monitors.spawn(["sh", "-c", "echo out1; echo err1 >&2; echo out 2; echo; exit 3"])
    record = monitors.wait_done(cid, info)
    assert record["exitCode"] == 3
    assert record["signal"] is None
    logs.parse_time(record["finishedAt"])
    entries = raw_entries(monitors.log(cid))
    assert [(e.text, e.partial) for e in entries if e.stream == "stdout"] == [
        ("out1", False), ("out 2", False), ("", False)]
    assert [(e.text, e.partial) for e in entries if e.stream == "stderr"] == [("err1", False)]
    for entry in entries:
        assert len(entry.time) == len("2026-01-01T00:00:00.000000000Z") and entry.time.endswith("Z")
        logs.parse_time(entry.time)
    assert container.get_state(monitors.root, cid)["status"] == "stopped"
    assert not pid_alive(info.container_pid)
    assert sorted(os.listdir(monitors.work / cid)) == ["ctr.log", "exit.json"]


def test_killed_container_records_signal(monitors: Monitors) -> None:
    cid, info = monitors.spawn(["sleep", "1000"])
    assert container.get_state(monitors.root, cid)["status"] == "running"
    container.kill(monitors.root, cid, "KILL")
    record = monitors.wait_done(cid, info)
    assert (record["exitCode"], record["signal"]) == (137, 9)


def test_launch_failure_is_raised_in_the_caller_and_leaves_nothing(monitors: Monitors) -> None:
    bundle = monitors.bundle(["/nonexistent"])
    with pytest.raises(ContainerStartError) as direct:
        container.run(monitors.root, "mon-reference", bundle)
    assert direct.value.exit_code == 127
    before = children()
    cid = monitors.new_id()
    with pytest.raises(ContainerStartError) as raised:
        monitor.spawn(launch=monitors.launcher(cid, bundle), log_path=str(monitors.log(cid)),
                      exit_path=str(monitors.exit_file(cid)), stdin=True)
    assert raised.value.exit_code == 127
    assert str(raised.value) == str(direct.value)
    assert "executable file not found" in str(raised.value)

    def monitor_gone() -> bool:
        reap(children() - before)
        return not [pid for pid in children() - before if pid_alive(pid)]

    poll(monitor_gone, timeout=5, what="the monitor of the failed launch to exit")
    assert os.listdir(monitors.root) == []
    assert os.listdir(monitors.work / cid) == []  # no log, no stdin fifo


def test_monitor_dies_before_reporting(monitors: Monitors) -> None:
    """EOF on the result pipe is an error in the caller, never a hang."""
    cid = monitors.new_id()
    with pytest.raises(Exception) as raised:
        monitor.spawn(launch=lambda: os._exit(7), log_path=str(monitors.log(cid)),
                      exit_path=str(monitors.exit_file(cid)))
    assert type(raised.value).__name__ == "HanokError"
    assert str(raised.value) == "monitor exited before the container started"


def test_monitor_is_the_init_parent_and_outlives_its_caller(monitors: Monitors) -> None:
    bundle = monitors.bundle(["sleep", "1000"], pid_namespace=False)  # not pid 1: SIGTERM kills it
    cid = monitors.new_id()
    caller = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from hanok.runtime import container, monitor
def launch():
    pid = container.create({monitors.root!r}, {cid!r}, {bundle!r})
    container.start({monitors.root!r}, {cid!r})
    return pid
info = monitor.spawn(launch=launch, log_path={str(monitors.log(cid))!r}, exit_path={str(monitors.exit_file(cid))!r})
print(json.dumps([info.pid, info.container_pid]))
"""
    done = subprocess.run([sys.executable, "-c", caller], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert done.returncode == 0, done.stderr
    monitor_pid, init_pid = json.loads(done.stdout)
    monitors.monitor_pids.append(monitor_pid)
    # the CLI is gone; the monitor and the container are not
    assert pid_alive(monitor_pid)
    status = parse_status(Path(f"/proc/{init_pid}/status").read_text())
    assert int(status["PPid"]) == monitor_pid
    assert container.get_state(monitors.root, cid)["status"] == "running"
    monitor_status = parse_status(Path(f"/proc/{monitor_pid}/status").read_text())
    ignored = int(monitor_status["SigIgn"], 16)
    for signum in SIGNALS_THE_MONITOR_IGNORES:
        assert ignored & (1 << (signum - 1)), f"the monitor does not ignore {signal.Signals(signum).name}"
        os.kill(monitor_pid, signum)
    assert Path(f"/proc/{monitor_pid}/cmdline").read_bytes().split(b"\0")[:3] == [
        sys.executable.encode(), b"-S", b"-I"]  # the small interpreter, not a copy of the caller
    container.kill(monitors.root, cid, "TERM")
    record = monitors.wait_done(cid, monitor.MonitorInfo(monitor_pid, init_pid))
    assert (record["exitCode"], record["signal"]) == (143, 15)


def test_log_rotation(monitors: Monitors) -> None:
    """200 kB of output arrives in many reads of at most READ_SIZE, so the 20 kB log rotates many times."""
    script = 'awk \'BEGIN { for (i = 10000; i < 12000; i++) printf "%d%s\\n", i, sprintf("%95s", "x") }\''
    cid, info = monitors.spawn(["sh", "-c", script], log_max_bytes=20_000)
    assert monitors.wait_done(cid, info)["exitCode"] == 0
    log = monitors.log(cid)
    rotated = Path(f"{log}.1")
    assert rotated.exists()
    assert log.stat().st_size <= 20_000 and rotated.stat().st_size <= 20_000
    kept = [text for _, text in logs.read(str(log))]
    # the oldest kept entry may be the end of a line whose first chunks (P) were rotated away
    numbers = [int(text[:5]) for text in kept[1:]]
    assert numbers == list(range(numbers[0], 12000)), "the kept lines are not the contiguous end of the output"
    assert numbers[0] > 10001, "nothing was rotated away"
    line = "{}{:>95}\n"
    assert kept[1:] == [line.format(n, "x").encode() for n in numbers]
    assert line.format(numbers[0] - 1, "x").encode().endswith(kept[0])


def test_long_line_is_logged_as_partial_chunks(monitors: Monitors) -> None:
    cid, info = monitors.spawn(["sh", "-c", "head -c 20000 /dev/zero | tr '\\0' a; echo; printf tail"])
    assert monitors.wait_done(cid, info)["exitCode"] == 0
    entries = raw_entries(monitors.log(cid))
    tags = "".join("P" if e.partial else "F" for e in entries)
    assert tags[-2:] in ("FP",), tags
    long_line = entries[:-1]
    assert len(long_line) >= 3  # at most READ_SIZE (8192) bytes per chunk
    assert all(e.partial for e in long_line[:-1]) and not long_line[-1].partial
    assert "".join(e.text for e in long_line) == "a" * 20000
    assert (entries[-1].text, entries[-1].partial) == ("tail", True)
    assert list(logs.read(str(monitors.log(cid)))) == [("stdout", b"a" * 20000 + b"\n"), ("stdout", b"tail")]


def test_orphans_are_reaped(monitors: Monitors) -> None:
    """Without a pid namespace, an orphan of the container is re-parented to the monitor, which reaps it."""
    cid, info = monitors.spawn(["sh", "-c", "(sleep 2 &); echo started; exec sleep 1000"], pid_namespace=False)

    def orphan() -> int | None:
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != info.container_pid:
                try:
                    status = parse_status(Path(f"/proc/{entry}/status").read_text())
                except OSError:
                    continue
                if int(status["PPid"]) == info.pid:
                    return int(entry)
        return None

    pid = poll(orphan, timeout=10, what="the orphaned sleep to be adopted by the monitor")
    poll(lambda: not Path(f"/proc/{pid}").exists(), timeout=15, what=f"orphan {pid} to be reaped (not a zombie)")
    assert pid_alive(info.pid) and pid_alive(info.container_pid)
    container.kill(monitors.root, cid, "KILL")
    assert monitors.wait_done(cid, info)["exitCode"] == 137
    assert texts(monitors.log(cid), "stdout") == ["started"]


def test_stdin_fifo(monitors: Monitors) -> None:
    cid, info = monitors.spawn(["sh", "-c", "read line; echo got $line"], stdin=True)
    assert info.stdin_path == str(monitors.work / cid / "stdin")
    fd = os.open(info.stdin_path, os.O_WRONLY)
    try:
        os.write(fd, b"ping\n")
    finally:
        os.close(fd)
    assert monitors.wait_done(cid, info)["exitCode"] == 0
    assert texts(monitors.log(cid), "stdout") == ["got ping"]


def test_terminal(monitors: Monitors) -> None:
    cid, info = monitors.spawn(["sh", "-c", "tty; echo hello from tty; read line; echo got $line; exit 5"],
                               terminal=True, stdin=True)
    assert not (monitors.work / cid / "console.sock").exists()
    poll(lambda: monitors.log(cid).exists() and b"hello from tty" in monitors.log(cid).read_bytes(),
         timeout=10, what="the greeting in the log")
    fd = os.open(str(info.stdin_path), os.O_WRONLY)
    try:
        os.write(fd, b"ping\n")  # through the pty: the terminal echoes it
    finally:
        os.close(fd)
    assert monitors.wait_done(cid, info)["exitCode"] == 5
    entries = raw_entries(monitors.log(cid))
    assert {e.stream for e in entries} == {"stdout"}
    joined = [text.decode() for _, text in logs.read(str(monitors.log(cid)))]
    assert joined == ["/dev/pts/0\r\n", "hello from tty\r\n", "ping\r\n", "got ping\r\n"]


def test_start_again_appends_to_the_log(monitors: Monitors) -> None:
    """`hanok start` of a stopped container: same log, same stdin fifo, and a fresh exit record."""
    bundle = monitors.bundle(["sh", "-c", "read n; echo run $n; exit $n"])
    cid = monitors.new_id()
    for run in (1, 2):
        info = monitor.spawn(launch=monitors.launcher(cid, bundle), log_path=str(monitors.log(cid)),
                             exit_path=str(monitors.exit_file(cid)), stdin=True)
        monitors.monitor_pids.append(info.pid)
        assert not monitors.exit_file(cid).exists()
        fd = os.open(str(info.stdin_path), os.O_WRONLY)
        try:
            os.write(fd, b"%d\n" % run)
        finally:
            os.close(fd)
        assert monitors.wait_done(cid, info)["exitCode"] == run
        container.delete(monitors.root, cid)
    assert texts(monitors.log(cid), "stdout") == ["run 1", "run 2"]


def test_exit_command_runs_after_the_exit_is_recorded(monitors: Monitors, monkeypatch: pytest.MonkeyPatch) -> None:
    """conmon's --exit-command: the engine's cleanup runs once exit.json exists, in the caller's environment."""
    monkeypatch.setenv("HANOK_TEST_CANARY", "from the caller")
    bundle = monitors.bundle(["sh", "-c", "exit 4"])
    cid = monitors.new_id()
    seen = monitors.work / cid / "seen-by-exit-command"
    script = 'cat "$1" > "$2"; echo "$HANOK_TEST_CANARY" >> "$2"; ls /proc/self/fd >> "$2"'
    info = monitor.spawn(launch=monitors.launcher(cid, bundle), log_path=str(monitors.log(cid)),
                         exit_path=str(monitors.exit_file(cid)),
                         exit_command=["/bin/sh", "-c", script, "sh", str(monitors.exit_file(cid)), str(seen)])
    monitors.monitor_pids.append(info.pid)
    record = monitors.wait_done(cid, info)  # the monitor's pid ends with the exit command
    assert record["exitCode"] == 4
    recorded, canary, *fds = seen.read_text().splitlines()
    assert json.loads(recorded) == record
    assert canary == "from the caller"
    assert sorted(int(fd) for fd in fds) == [0, 1, 2, 3]  # stdio and ls's own directory fd: nothing of ours
