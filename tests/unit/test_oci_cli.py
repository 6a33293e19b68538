"""hanok-oci's command line, in-process: exit codes and exact output.

Nothing here creates a namespace: containers are either missing or faked as a
state directory whose init is a plain child process (or a dead pid), which is
all `state`, `list`, `start`, `kill` and `delete` look at before acting.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

import hanok
from hanok import cli
from hanok.runtime import errors, spec, state
from hanok.runtime.container import parse_signal

COMMANDS = ["create", "run", "start", "state", "kill", "delete", "exec", "list", "ps", "pause",
            "resume", "update", "spec", "features"]


class Out:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"[exit {self.code}]\n--- stdout\n{self.out}--- stderr\n{self.err}"


@pytest.fixture
def oci(capsys: pytest.CaptureFixture[str]):
    def call(*argv: str) -> Out:
        capsys.readouterr()
        code = cli.oci_main(list(argv))
        captured = capsys.readouterr()
        return Out(code, captured.out, captured.err)
    return call


@pytest.fixture
def root(tmp_path: Path) -> str:
    return str(tmp_path / "state")


def usage_error(message: str) -> str:
    return f"hanok-oci: {message} (see `hanok-oci --help`)\n"


# ------------------------------------------------------------ version and help


@pytest.mark.parametrize("argv", [["--version"], ["-v"], ["version"], ["--root", "/x", "--version"]])
def test_version(oci, argv: list[str]) -> None:
    r = oci(*argv)
    assert (r.code, r.err) == (0, "")
    assert r.out == f"hanok-oci version {hanok.__version__}\nspec: {hanok.OCI_VERSION}\n"
    assert re.fullmatch(r"hanok-oci version \S+\nspec: 1\.\d+\.\d+\n", r.out)


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["help"], [], ["--root", "/x", "--help"]])
def test_help_lists_every_command(oci, argv: list[str]) -> None:
    r = oci(*argv)
    assert (r.code, r.err) == (0, "")
    assert r.out.startswith("usage: hanok-oci [global options] COMMAND")
    listed = [line.split()[0] for line in r.out.split("commands:\n")[1].split("\n\n")[0].splitlines()]
    assert listed == COMMANDS
    for flag in ("--root", "--log", "--log-format", "--debug", "--systemd-cgroup", "--version", "--help"):
        assert re.search(rf"^  {flag}[ ,]", r.out, re.M), flag


def test_command_table_matches() -> None:
    assert list(cli.OCI_COMMANDS) == COMMANDS
    assert set(cli._OCI_HANDLERS) == set(COMMANDS)


def test_create_help_shows_flags(oci) -> None:
    r = oci("create", "--help")
    assert (r.code, r.err) == (0, "")
    lines = r.out.splitlines()
    assert lines[0] == "usage: hanok-oci [global options] create [options] ID"
    assert lines[2] == "create a container from a bundle; `start` runs its process"
    flags = [line.split("  ")[1].strip() for line in lines[4:]]
    assert flags == ["--bundle, -b", "--pid-file", "--console-socket", "--no-pivot", "--no-new-keyring",
                     "--preserve-fds"]
    assert oci("create", "-h").out == r.out
    assert oci("--root", "/x", "create", "--bundle", "b", "--help").out == r.out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(oci, command: str) -> None:
    r = oci(command, "--help")
    assert (r.code, r.err) == (0, "")
    assert r.out.startswith(f"usage: hanok-oci [global options] {command}")


# ------------------------------------------------------------ usage errors


def test_unknown_command(oci) -> None:
    r = oci("frobnicate", "x")
    assert (r.code, r.out) == (1, "")
    assert r.err == usage_error("no such command: frobnicate")
    assert r.err.count("\n") == 1


def test_unknown_command_after_global_flags(oci, root: str) -> None:
    r = oci("--root", root, "nope")
    assert (r.code, r.out, r.err) == (1, "", usage_error("no such command: nope"))


def test_unknown_flag(oci, root: str) -> None:
    r = oci("--root", root, "state", "--nope", "x")
    assert (r.code, r.out, r.err) == (1, "", usage_error("flag provided but not defined: --nope"))


def test_unknown_global_flag(oci) -> None:
    r = oci("--nope", "state", "x")
    assert (r.code, r.out, r.err) == (1, "", usage_error("flag provided but not defined: --nope"))


def test_flag_needs_argument(oci, root: str) -> None:
    r = oci("--root", root, "create", "--bundle")
    assert (r.code, r.out, r.err) == (1, "", usage_error("flag needs an argument: --bundle"))
    r = oci("--root")
    assert (r.code, r.out, r.err) == (1, "", usage_error("flag needs an argument: --root"))


def test_no_command(oci, root: str) -> None:
    r = oci("--root", root)
    assert (r.code, r.out, r.err) == (1, "", usage_error("no command given"))


@pytest.mark.parametrize("command", ["create", "run", "start", "state", "kill", "delete", "exec", "ps",
                                     "pause", "resume", "update"])
def test_missing_id(oci, root: str, command: str) -> None:
    r = oci("--root", root, command)
    assert (r.code, r.out, r.err) == (1, "", usage_error(f"{command} requires ID"))


@pytest.mark.parametrize("argv, extra", [
    (["state", "a", "b"], "b"),
    (["start", "a", "b"], "b"),
    (["delete", "-f", "a", "b"], "b"),
    (["kill", "a", "KILL", "c"], "c"),
    (["create", "--bundle", "x", "a", "b"], "b"),
    (["list", "a"], "a"),
    (["features", "x"], "x"),
])
def test_too_many_args(oci, root: str, argv: list[str], extra: str) -> None:
    r = oci("--root", root, *argv)
    assert (r.code, r.out) == (1, "")
    assert r.err == usage_error(f"{argv[0]}: unexpected argument {extra!r}")


def test_exec_without_command_or_process(oci, root: str) -> None:
    r = oci("--root", root, "exec", "x")
    assert (r.code, r.out, r.err) == (1, "", usage_error("exec requires a command (or --process)"))


def test_exec_help_inside_the_command_is_not_hanoks_help(oci, root: str) -> None:
    """`exec ID ls --help` runs `ls --help` in the container (as runc does):
    flags after the ID belong to the command, so the ID lookup must fail here."""
    for argv in (["exec", "nope", "ls", "--help"], ["exec", "-t", "nope", "grep", "-h", "x"]):
        r = oci("--root", root, *argv)
        assert (r.code, r.out, r.err) == (1, "", "hanok-oci: container does not exist\n"), argv


def test_list_bad_format(oci, root: str) -> None:
    r = oci("--root", root, "list", "--format", "xml")
    assert (r.code, r.out, r.err) == (1, "", usage_error("invalid format 'xml' (table or json)"))


def test_bad_preserve_fds(oci, root: str, tmp_path: Path) -> None:
    r = oci("--root", root, "create", "--preserve-fds", "-1", "--bundle", str(tmp_path), "x")
    assert (r.code, r.out) == (1, "")
    assert r.err == usage_error("--preserve-fds must be a non-negative integer")
    assert not os.path.exists(root)


# ------------------------------------------------------------ missing containers


def test_state_unknown_id(oci, root: str) -> None:
    r = oci("--root", root, "state", "nope")
    assert (r.code, r.out, r.err) == (1, "", "hanok-oci: container does not exist\n")


def test_global_flags_with_equals(oci, root: str) -> None:
    r = oci(f"--root={root}", "state", "nope")
    assert (r.code, r.out, r.err) == (1, "", "hanok-oci: container does not exist\n")
    r = oci("--debug", f"--root={root}", "--log-format=text", "state", "nope")
    assert (r.code, r.out, r.err) == (1, "", "hanok-oci: container does not exist\n")


def test_global_root_is_used(oci, root: str) -> None:
    _fake(root, "c1", pid=0)
    assert oci(f"--root={root}", "list", "-q").out == "c1\n"
    assert oci("--root", root, "list", "-q").out == "c1\n"


@pytest.mark.parametrize("command", ["start", "state", "delete", "pause", "resume", "ps", "kill"])
def test_commands_on_unknown_id(oci, root: str, command: str) -> None:
    r = oci("--root", root, command, "nope")
    assert (r.code, r.out, r.err) == (1, "", "hanok-oci: container does not exist\n")


def test_delete_force_unknown_id_is_quiet(oci, root: str) -> None:
    r = oci("--root", root, "delete", "--force", "nope")
    assert (r.code, r.out, r.err) == (0, "", "")


def test_update_unknown_id(oci, root: str, tmp_path: Path) -> None:
    res = tmp_path / "r.json"
    res.write_text("{}")
    r = oci("--root", root, "update", "--resources", str(res), "nope")
    assert (r.code, r.out, r.err) == (1, "", "hanok-oci: container does not exist\n")


def test_invalid_id(oci, root: str) -> None:
    r = oci("--root", root, "state", "../etc")
    assert (r.code, r.out, r.err) == (1, "", "hanok-oci: invalid id format: '../etc'\n")


def test_kill_good_signal_unknown_id(oci, root: str) -> None:
    r = oci("--root", root, "kill", "nope", "KILL")
    assert (r.code, r.out, r.err) == (1, "", "hanok-oci: container does not exist\n")


def test_kill_bad_signal_unknown_id(oci, root: str) -> None:
    """As runc: the container is looked up before the signal is parsed, so an
    unknown id says "container does not exist" whatever the signal; one line,
    exit 1, and nothing is created."""
    r = oci("--root", root, "kill", "nope", "NOPE")
    assert (r.code, r.out) == (1, "")
    assert r.err == "hanok-oci: container does not exist\n"
    assert not os.path.exists(root)


def test_log_file_text(oci, root: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    r = oci("--root", root, "--log", str(log), "state", "nope")
    assert (r.code, r.out, r.err) == (1, "", "hanok-oci: container does not exist\n")
    assert log.read_text() == "error: container does not exist\n"


def test_log_file_json(oci, root: str, tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    r = oci("--root", root, "--log", str(log), "--log-format", "json", "state", "nope")
    assert (r.code, r.out) == (1, "")
    # as runc: with a log file the message goes to stderr bare, the file gets the JSON
    assert r.err == "container does not exist\n"
    lines = log.read_text().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert set(entry) == {"level", "msg", "time"}
    assert entry["level"] == "error"
    assert entry["msg"] == "container does not exist"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", entry["time"])
    # appends
    oci("--root", root, f"--log={log}", "--log-format=json", "nope")
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1])["msg"] == usage_error("no such command: nope")[len("hanok-oci: "):-1]


def test_log_format_json_without_log_file(oci, root: str) -> None:
    r = oci("--root", root, "--log-format", "json", "state", "nope")
    assert (r.code, r.out, r.err) == (1, "", "hanok-oci: container does not exist\n")


# ------------------------------------------------------------ list


@pytest.mark.parametrize("make_root", [False, True])
def test_list_json_empty(oci, root: str, make_root: bool) -> None:
    if make_root:
        os.makedirs(root)
    r = oci("--root", root, "list", "--format", "json")
    assert (r.code, r.out, r.err) == (0, "null\n", "")
    r = oci("--root", root, "list", "-f", "json")
    assert (r.code, r.out, r.err) == (0, "null\n", "")


def test_list_quiet_empty(oci, root: str) -> None:
    for flag in ("-q", "--quiet"):
        r = oci("--root", root, "list", flag)
        assert (r.code, r.out, r.err) == (0, "", "")


def test_list_table_empty(oci, root: str) -> None:
    r = oci("--root", root, "list")
    assert (r.code, r.err) == (0, "")
    assert r.out.split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]


# ------------------------------------------------------------ fake containers

CREATED_AT = "2024-01-02T03:04:05.123456789Z"


def _fake(root: str, cid: str, pid: int, start_time: int | None = 0, fifo: bool = False) -> str:
    cdir = state.make_dir(root, cid)
    state.save(cdir, {"ociVersion": "1.1.0", "id": cid, "pid": pid, "start_time": start_time,
                      "bundle": f"/bundles/{cid}", "rootfs": f"/bundles/{cid}/rootfs",
                      "created": CREATED_AT, "annotations": {"k": "v"}})
    state.write_atomic(os.path.join(cdir, state.CONFIG_FILE), json.dumps(
        {"process": {"args": ["sh"], "cwd": "/"}, "namespaces": {"mount": None}, "seccomp": None,
         "hooks": {}}).encode())
    if fifo:
        Path(cdir, state.FIFO).write_text("")  # status only checks that it exists
    return cdir


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "60"])
    yield child
    child.kill()
    child.wait()


def _running(root: str, cid: str, child: subprocess.Popen[bytes], fifo: bool = False) -> str:
    return _fake(root, cid, child.pid, state.proc_start_time(child.pid), fifo=fifo)


def test_state_of_stopped(oci, root: str) -> None:
    _fake(root, "c1", pid=0)
    r = oci("--root", root, "state", "c1")
    assert (r.code, r.err) == (0, "")
    assert r.out.endswith("}\n")
    assert json.loads(r.out) == {"ociVersion": "1.1.0", "id": "c1", "pid": 0, "status": "stopped",
                                 "bundle": "/bundles/c1", "rootfs": "/bundles/c1/rootfs",
                                 "created": CREATED_AT, "owner": "", "annotations": {"k": "v"}}
    assert r.out == json.dumps(json.loads(r.out), indent=2) + "\n"


def test_state_of_running_and_created(oci, root: str, sleeper: subprocess.Popen[bytes]) -> None:
    _running(root, "run1", sleeper)
    _running(root, "new1", sleeper, fifo=True)
    assert json.loads(oci("--root", root, "state", "run1").out)["status"] == "running"
    assert json.loads(oci("--root", root, "state", "run1").out)["pid"] == sleeper.pid
    assert json.loads(oci("--root", root, "state", "new1").out)["status"] == "created"


def test_list_with_containers(oci, root: str, sleeper: subprocess.Popen[bytes]) -> None:
    _fake(root, "b-stopped", pid=0)
    _running(root, "a-running", sleeper)
    r = oci("--root", root, "list", "-q")
    assert (r.code, r.out, r.err) == (0, "a-running\nb-stopped\n", "")
    rows = json.loads(oci("--root", root, "list", "--format", "json").out)
    assert [(row["id"], row["status"], row["pid"]) for row in rows] == [
        ("a-running", "running", sleeper.pid), ("b-stopped", "stopped", 0)]
    table = oci("--root", root, "list").out.splitlines()
    assert table[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    assert table[1].split() == ["a-running", str(sleeper.pid), "running", "/bundles/a-running", CREATED_AT,
                                "root"]
    assert table[2].split() == ["b-stopped", "0", "stopped", "/bundles/b-stopped", CREATED_AT, "root"]


def test_wrong_state_messages(oci, root: str, sleeper: subprocess.Popen[bytes]) -> None:
    _fake(root, "dead", pid=0)
    _running(root, "live", sleeper)
    cases = [
        (["start", "dead"], "cannot start a container that has stopped"),
        (["start", "live"], "cannot start an already running container"),
        (["kill", "dead", "KILL"], "container not running"),
        (["exec", "dead", "true"], "cannot exec in a stopped container"),
        (["delete", "live"], "cannot delete container live that is not stopped: running"),
    ]
    for argv, message in cases:
        r = oci("--root", root, *argv)
        assert (r.code, r.out, r.err) == (1, "", f"hanok-oci: {message}\n"), argv
    assert sleeper.poll() is None  # nothing was signalled
    assert sorted(os.listdir(root)) == ["dead", "live"]


def test_delete_stopped(oci, root: str) -> None:
    _fake(root, "c1", pid=0)
    r = oci("--root", root, "delete", "c1")
    assert (r.code, r.out, r.err) == (0, "", "")
    assert os.listdir(root) == []
    r = oci("--root", root, "delete", "c1")
    assert (r.code, r.out, r.err) == (1, "", "hanok-oci: container does not exist\n")


def test_delete_force_half_created(oci, root: str) -> None:
    state.make_dir(root, "half")  # a create that died before writing state.json
    r = oci("--root", root, "delete", "--force", "half")
    assert (r.code, r.out, r.err) == (0, "", "")
    assert os.listdir(root) == []


@pytest.mark.parametrize("command", ["pause", "resume"])
def test_pause_resume_not_supported(oci, root: str, command: str) -> None:
    _fake(root, "c1", pid=0)
    r = oci("--root", root, command, "c1")
    assert (r.code, r.out) == (1, "")
    assert r.err.startswith("hanok-oci: ") and "not" in r.err and r.err.count("\n") == 1


# ------------------------------------------------------------ spec, features, systemd


def test_spec_writes_a_valid_config(oci, root: str, tmp_path: Path) -> None:
    b = tmp_path / "bundle"
    b.mkdir()
    r = oci("--root", root, "spec", "--bundle", str(b))
    assert (r.code, r.out, r.err) == (0, "", "")
    text = (b / "config.json").read_text()
    assert text.endswith("}\n")
    raw = json.loads(text)
    (b / "rootfs").mkdir()
    cfg = spec.from_dict(raw, str(b))
    assert cfg.process["args"] == ["sh"]
    assert text == json.dumps(raw, indent=2) + "\n"

    again = oci("--root", root, "spec", "--bundle", str(b))
    assert (again.code, again.out) == (1, "")
    assert again.err.startswith("hanok-oci: ") and "exists" in again.err
    assert str(b / "config.json") in again.err
    assert (b / "config.json").read_text() == text  # untouched
    assert not os.path.exists(root)


def test_spec_rootless(oci, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = oci("spec", "--rootless")
    assert (r.code, r.out, r.err) == (0, "", "")
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "rootfs").mkdir()
    cfg = spec.from_dict(raw, str(tmp_path))
    assert "user" in cfg.namespaces


def test_spec_missing_bundle_dir(oci, tmp_path: Path) -> None:
    r = oci("spec", "-b", str(tmp_path / "missing"))
    assert (r.code, r.out) == (1, "")
    assert r.err.startswith("hanok-oci: ") and r.err.count("\n") == 1


def test_features(oci, root: str) -> None:
    r = oci("--root", root, "features")
    assert (r.code, r.err) == (0, "")
    doc = json.loads(r.out)
    assert doc["ociVersionMax"] == hanok.OCI_VERSION
    assert doc["ociVersionMin"] == "1.0.0"
    assert set(doc["linux"]["namespaces"]) >= {"pid", "network", "mount", "ipc", "uts", "user", "cgroup"}
    assert "CAP_SYS_ADMIN" in doc["linux"]["capabilities"]
    assert "rbind" in doc["mountOptions"]
    assert doc["hooks"] == list(spec.HOOK_KINDS)
    assert r.out == json.dumps(doc, indent=2) + "\n"


@pytest.mark.parametrize("command", ["create", "run"])
def test_systemd_cgroup_refused(oci, root: str, tmp_path: Path, command: str) -> None:
    b = tmp_path / "bundle"
    r = oci("--systemd-cgroup", "--root", root, command, "--bundle", str(b), "c1")
    assert (r.code, r.out) == (1, "")
    assert r.err.startswith("hanok-oci: ") and "systemd" in r.err and r.err.count("\n") == 1
    assert not os.path.exists(root)


def test_create_missing_bundle(oci, root: str, tmp_path: Path) -> None:
    r = oci("--root", root, "create", "--bundle", str(tmp_path / "nope"), "c1")
    assert (r.code, r.out) == (1, "")
    assert r.err == f"hanok-oci: bundle {tmp_path / 'nope'} does not exist\n"
    assert not os.path.exists(os.path.join(root, "c1"))


def test_create_bad_config_leaves_no_state(oci, root: str, tmp_path: Path) -> None:
    b = tmp_path / "bundle"
    (b / "rootfs").mkdir(parents=True)
    raw = json.loads(json.dumps(__import__("hanok.runtime.bundle", fromlist=["x"]).default_spec()))
    raw["process"]["args"] = []
    (b / "config.json").write_text(json.dumps(raw))
    r = oci("--root", root, "create", "-b", str(b), "c1")
    assert (r.code, r.out) == (1, "")
    assert r.err == "hanok-oci: process.args: at least one argument is required\n"
    assert not os.path.exists(os.path.join(root, "c1"))


def test_create_exists(oci, root: str, tmp_path: Path) -> None:
    _fake(root, "c1", pid=0)
    b = tmp_path / "bundle"
    (b / "rootfs").mkdir(parents=True)
    oci("spec", "-b", str(b))
    r = oci("--root", root, "create", "--bundle", str(b), "c1")
    assert (r.code, r.out, r.err) == (1, "", "hanok-oci: container with id exists: c1\n")


def test_exec_process_file_invalid_json(oci, root: str, tmp_path: Path) -> None:
    p = tmp_path / "process.json"
    p.write_text("{")
    r = oci("--root", root, "exec", "--process", str(p), "c1")
    assert (r.code, r.out) == (1, "")
    assert r.err.startswith(f"hanok-oci: --process {p}: invalid JSON")


def test_exec_process_file_invalid_process(oci, root: str, tmp_path: Path) -> None:
    p = tmp_path / "process.json"
    p.write_text(json.dumps({"args": [], "cwd": "/"}))
    r = oci("--root", root, "exec", "-p", str(p), "c1")
    assert (r.code, r.out) == (1, "")
    assert r.err == "hanok-oci: process.args: at least one argument is required\n"


# ------------------------------------------------------------ parse_signal


@pytest.mark.parametrize("text, number", [
    ("KILL", 9), ("SIGKILL", 9), ("kill", 9), ("sigkill", 9), ("9", 9), (" 9 ", 9),
    ("TERM", 15), ("SIGTERM", 15), ("15", 15), ("HUP", 1), ("1", 1), ("USR1", 10), ("WINCH", 28),
    ("CHLD", 17), ("SIGRTMIN", 34), ("SIGRTMIN+1", 35), ("rtmin+2", 36), ("SIGRTMAX", 64),
    ("SIGRTMAX-1", 63), ("64", 64),
])
def test_parse_signal_ok(text: str, number: int) -> None:
    assert parse_signal(text) == number


@pytest.mark.parametrize("text", [
    "0", "-1", "65", "1000", "", "NOPE", "SIGNOPE", "SIG", "SIG_DFL", "SIG_IGN", "DFL", "SIG_BLOCK",
    "NSIG", "9x", "K ILL", "SIGRTMIN+", "SIGRTMIN+x", "SIGRTMIN-1", "SIGRTMAX+1",
])
def test_parse_signal_rejected(text: str) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        parse_signal(text)
    assert str(info.value) == f"unknown signal {text!r}"


@pytest.mark.parametrize("text", ["SIGRTMIN+31", "SIGRTMIN+100", "SIGRTMAX-64", "SIGRTMAX-100"])
def test_parse_signal_realtime_out_of_range(text: str) -> None:
    """Real-time offsets must give a signal number in 1..NSIG-1, as plain numbers must."""
    with pytest.raises(errors.InvalidArgument):
        parse_signal(text)
