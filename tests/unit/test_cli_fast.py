"""The per-container commands' fast path (cli.parse_fast) parses exactly as click does, or leaves the line to click.

Each command line is parsed twice: by the fast parser, and by the real click
group with the command's body (the code after parsing) replaced by a recorder.
The two must hand the same store, state and parameters on. Lines the fast
parser is unsure of must raise _NotFast, so click (and its error messages)
handle them; a usage error a body finds is reported by click either way.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import hanok
from hanok import cli


def click_parse(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                environ: dict[str, str]) -> tuple[dict[str, str], str, dict[str, object]]:
    seen: list[tuple[dict[str, str], str, dict[str, object]]] = []

    for name, command in cli.FAST_COMMANDS.items():
        def record(app: cli.Application, params: dict[str, object], name: str = name) -> None:
            seen.append(({"store_root": app.store_root, "run_root": app.run_root}, name, dict(params)))

        monkeypatch.setattr(command, "body", record)
    for var in ("HANOK_ROOT", "HANOK_STATE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in environ.items():
        monkeypatch.setenv(var, value)
    cli.hanok_cli().main(argv, prog_name="hanok", standalone_mode=False)
    assert len(seen) == 1
    return seen[0]


def cases(env_file: Path) -> list[list[str]]:
    return [
        ["run", "img"],
        ["run", "--rm", "-it", "img", "sh"],
        ["run", "-dit", "--name=web", "img"],
        ["run", "-eA=1", "-e", "B=2", "--env=C=3", "img", "echo", "-e", "x"],
        ["run", "-e=A", "img"],                       # a short flag keeps the "=": value "=A", as click does
        ["run", "-ti", "-e", "--rm", "img"],          # a value may look like a flag
        ["--store", "/tmp/s", "--state=/tmp/r", "run", "--network", "none", "--net=host", "img"],
        ["run", "--cpus", "0.5", "--pids-limit=-1", "-m", "256m", "img"],
        ["run", "--", "img", "--rm"],
        ["run", "img", "--rm", "-d"],                 # after IMAGE everything is the command
        ["run", "-p", "80:80", "-p8080:80/udp", "-v", "/a:/b:ro", "--tmpfs", "/t", "img"],
        ["run", "--pull", "never", "--entrypoint", "", "img", "-"],
        ["run", "-h", "myhost", "-u", "1:2", "-w", "/w", "img"],
        ["run", "--cap-add", "ALL", "--cap-drop=NET_RAW", "--security-opt", "seccomp=unconfined",
         "--read-only", "--init", "-l", "a=b", "--label", "c", "img"],
        ["run", "--env-file", str(env_file), "--explain", "img"],
        ["run", "--name", "a", "--name", "b", "img"],  # the last one wins
        ["run", "./bundle"],                          # a bundle: the body says whether the flags fit
        ["start", "web"], ["start", "-a", "job"], ["start", "a", "b", "-a"],
        ["stop", "web", "db"], ["stop", "-t", "2", "web"], ["stop", "--time=0.5", "web"], ["stop", "web", "-t3"],
        ["kill", "web"], ["kill", "-s", "HUP", "web"], ["kill", "--signal=9", "a", "b"],
        ["rm", "web"], ["rm", "-f", "web"], ["rm", "web", "--force", "db"], ["rm", "--", "-odd"],
        ["ps"], ["ps", "-a"], ["ps", "-aq", "--no-trunc"], ["ps", "--json", "--pod", "web"], ["ps", "--pod=ns/web"],
        ["inspect", "web"], ["inspect", "a", "b"], ["wait", "job"],
        ["exec", "web", "true"], ["exec", "-it", "web", "sh", "-c", "ls -l"],
        ["exec", "-e", "A=1", "-eB=2", "web", "env"],
        ["exec", "--sync", "--timeout", "5", "web-app", "cat", "/etc/hostname"],
        ["exec", "-w", "/tmp", "-u", "1:2", "web", "-d"],
        ["exec", "--timeout", "5", "web", "true"],      # a usage error the body finds (click reports it)
        ["--store", "/tmp/s", "ps", "-a"],
        ["create", "img"], ["create", "--name", "job", "-e", "A=1", "img", "sh", "-c", "echo done"],
        ["create", "--pod", "web", "--config", "/tmp/app.json"], ["create", "--pod", "web", "-f", "/tmp/app.json"],
        ["create", "--config", "/tmp/app.json", "img"],   # a usage error the body finds
        ["create", "--rm"],                               # no IMAGE: the body says so, as click did
        ["logs", "web"], ["logs", "-f", "-t", "--tail", "20", "web"],
        ["logs", "web", "-n3", "--since=2026-01-01T00:00:00Z"],
        ["logs", "--tail", "x", "web"],
        ["stats"], ["stats", "--no-stream", "--json", "web", "db"], ["stats", "web", "--json"],
    ]


def test_fast_parser_agrees_with_click(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("A=1\n")
    for environ in ({}, {"HANOK_ROOT": str(tmp_path / "store"), "HANOK_STATE": ""}):
        for argv in cases(env_file):
            fast = cli.parse_fast(argv, environ)
            assert fast == click_parse(argv, monkeypatch, environ), argv


@pytest.mark.parametrize("argv", [
    ["run"],
    ["stop"], ["stop", "-t", "soon", "web"], ["stop", "-t"], ["rm", "-x", "web"], ["ps", "web"],
    ["ps", "--help"], ["inspect"], ["exec", "web"], ["exec", "--timeout", "x", "web", "true"],
    ["start", "--attach=yes", "web"], ["kill", "-s"], ["pod", "ls"],
    ["create", "--config", "/tmp"], ["logs"], ["logs", "a", "b"], ["stats", "--stream"],
    ["run", "--help", "img"],
    ["run", "--bogus", "img"],
    ["run", "-z", "img"],
    ["run", "-it-", "img"],
    ["run", "--cpus", "half", "img"],
    ["run", "--pids-limit", "1.5", "img"],
    ["run", "--pull", "always", "img"],
    ["run", "--rm=yes", "img"],
    ["run", "--name"],
    ["run", "--env-file", "/nonexistent/env", "img"],
    ["--version", "run", "img"],
    ["--store", "/etc/hostname", "run", "img"],      # click.Path(file_okay=False)
    ["--store"],
    ["images", "run"],
])
def test_unsure_lines_go_to_click(argv: list[str]) -> None:
    with pytest.raises(cli._NotFast):
        cli.parse_fast(argv, {})


def test_completion_goes_to_click() -> None:
    with pytest.raises(cli._NotFast):
        cli.parse_fast(["run", "img"], {"_HANOK_COMPLETE": "bash_source"})


def _hanok(tmp_path: Path, code: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(hanok.__file__)))
    for var in ("HANOK_ROOT", "HANOK_STATE"):
        env.pop(var, None)
    # report at exit: through atexit on click's path, from os._exit on the fast path (which skips atexit)
    prelude = ("import atexit, os, sys\n"
               "def report():\n"
               "    sys.stderr.write('click loaded: %s\\n' % ('click' in sys.modules))\n"
               "    sys.stderr.flush()\n"
               "atexit.register(report)\n"
               "real_exit = os._exit\n"
               "os._exit = lambda status: (report(), real_exit(status))\n"
               f"sys.argv = ['hanok', *{argv!r}]\n")
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=60,
                          env=env, cwd=tmp_path)


def test_fast_run_loads_no_click_and_fails_as_click_does(tmp_path: Path) -> None:
    argv = ["--store", str(tmp_path / "store"), "--state", str(tmp_path / "state"),
            "run", "--rm", "--pull", "never", "no-such-image:1", "true"]
    fast = _hanok(tmp_path, "from hanok.cli import hanok_main; hanok_main()", argv)
    slow = _hanok(tmp_path, "from hanok.cli import hanok_cli; hanok_cli()(prog_name='hanok')", argv)
    assert fast.returncode == slow.returncode == 125
    assert fast.stderr.replace("click loaded: False", "click loaded: True") == slow.stderr
    assert fast.stderr.splitlines()[0].startswith("hanok: ") and "no-such-image" in fast.stderr
    assert "click loaded: False" in fast.stderr


@pytest.mark.parametrize("argv, code", [
    (["ps", "--json"], 0),
    (["rm", "-f", "nosuch"], 125),
    (["start", "-a", "a", "b"], 2),            # a usage error the body finds: click's message, click's exit code
    (["exec", "--timeout", "0", "--sync", "web", "true"], 2),
])
def test_fast_commands_answer_as_click_does(tmp_path: Path, argv: list[str], code: int) -> None:
    argv = ["--store", str(tmp_path / "store"), "--state", str(tmp_path / "state"), *argv]
    fast = _hanok(tmp_path, "from hanok.cli import hanok_main; hanok_main()", argv)
    slow = _hanok(tmp_path, "from hanok.cli import hanok_cli; hanok_cli()(prog_name='hanok')", argv)
    assert (fast.returncode, fast.stdout) == (slow.returncode, slow.stdout) and fast.returncode == code
    assert fast.stderr.replace("click loaded: False", "click loaded: True") == slow.stderr
    assert ("click loaded: False" in fast.stderr) == (code != 2)


@pytest.mark.parametrize("redirect, argv, code", [
    (">&-", ["ps"], 0),                          # a closed stdout: nothing printed, no traceback
    ("2>&-", ["rm", "nosuch"], 125),             # a closed stderr: the error is lost, the exit code is not
])
def test_a_closed_stdout_or_stderr_is_skipped_as_click_does(tmp_path: Path, redirect: str, argv: list[str],
                                                            code: int) -> None:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(hanok.__file__)))
    for main in ("from hanok.cli import hanok_main; hanok_main()",
                 "from hanok.cli import hanok_cli; hanok_cli()(prog_name='hanok')"):
        script = f'exec "$0" -c "$1" --store {tmp_path}/store --state {tmp_path}/state {" ".join(argv)} {redirect}'
        done = subprocess.run(["sh", "-c", script, sys.executable, f"import sys; sys.argv[0] = 'hanok'; {main}"],
                              capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == code, (main, done.stderr)
        assert "Traceback" not in done.stderr


def test_echo_writes_utf8_to_an_ascii_stream_and_strips_escapes_off_a_terminal() -> None:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(hanok.__file__)), PYTHONIOENCODING="ascii")
    done = subprocess.run([sys.executable, "-c", "from hanok.cli import _echo; _echo('\\x1b[1mup\\x1b[0m 1…')"],
                          capture_output=True, timeout=60, env=env)
    assert (done.returncode, done.stdout) == (0, "up 1…\n".encode())


def test_nan_times_are_usage_errors(tmp_path: Path) -> None:
    for argv in (["stop", "-t", "nan", "web"], ["exec", "--sync", "--timeout", "nan", "web", "true"]):
        done = _hanok(tmp_path, "from hanok.cli import hanok_main; hanok_main()",
                      ["--store", str(tmp_path / "store"), "--state", str(tmp_path / "state"), *argv])
        assert done.returncode == 2 and "nan" in done.stderr, done.stderr


@pytest.mark.parametrize("argv", [["ps", "--json"], ["inspect", "nosuch"], ["rm", "-f", "nosuch"]])
def test_the_fast_path_loads_none_of_the_heavy_modules(tmp_path: Path, argv: list[str]) -> None:
    """click ~27 ms, dataclasses ~10 ms (inspect, ast), typing, json and re ~2 ms each: none is needed here."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(hanok.__file__)))
    # the fast path leaves through os._exit (no teardown, no atexit): report from there
    code = ("import os, sys\n"
            "heavy = {'click', 'dataclasses', 'inspect', 'typing', 'json', 're', 'enum', 'hashlib', 'contextlib'}\n"
            "real_exit = os._exit\n"
            "def report_then_exit(status):\n"
            "    sys.stderr.write('heavy: %s\\n' % sorted(heavy & set(sys.modules)))\n"
            "    sys.stderr.flush()\n"
            "    real_exit(status)\n"
            "os._exit = report_then_exit\n"
            f"sys.argv = ['hanok', '--store', {str(tmp_path / 'store')!r}, '--state', {str(tmp_path / 'state')!r},"
            f" *{argv!r}]\n"
            "from hanok.cli import hanok_main; hanok_main()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.stderr.splitlines()[-1] == "heavy: []", done.stderr
