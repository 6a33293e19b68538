"""Command lines: `hanok-oci` (runc's interface, for engines) and `hanok` (for people).

Parse, call, print; no logic. `hanok-oci` is called once per container
operation by conmon and containerd-shim, so its parser is a small table-driven
one rather than click: importing click alone costs ~35 ms, more than runc takes
to run a whole container. `hanok`, the CLI for people and node agents, is
click; its per-container commands are also declared as data (FAST_COMMANDS),
from which their click commands are built and by which a click-free fast path
parses them, as the same ~35 ms would be a third of a `hanok run`.
"""
from __future__ import annotations

import os
import sys
import time

from hanok import __version__

if False:  # typing only
    from collections.abc import Callable, Mapping, Sequence
    from typing import NoReturn

    from hanok.runtime.errors import HanokError

OCI_DEFAULT_ROOT = "/run/hanok-oci"

# command -> (usage, summary, {flag: (dest, takes_value, help)}, positional names)
_O = dict[str, tuple[str, bool, str]]
OCI_COMMANDS: dict[str, tuple[str, str, _O, tuple[str, ...]]] = {
    "create": ("create [options] ID", "create a container from a bundle; `start` runs its process", {
        "--bundle": ("bundle", True, "path to the bundle directory (default: current directory)"),
        "-b": ("bundle", True, ""),
        "--pid-file": ("pid_file", True, "write the init's host pid to this file"),
        "--console-socket": ("console_socket", True, "AF_UNIX socket that receives the pty master"),
        "--no-pivot": ("no_pivot", False, "use MS_MOVE+chroot instead of pivot_root"),
        "--no-new-keyring": ("no_new_keyring", False, "keep the caller's session keyring"),
        "--preserve-fds": ("preserve_fds", True, "pass N extra fds (3..3+N-1) to the container"),
    }, ("ID",)),
    "run": ("run [options] ID", "create and start a container; in the foreground, wait and exit with its code", {
        "--bundle": ("bundle", True, "path to the bundle directory (default: current directory)"),
        "-b": ("bundle", True, ""),
        "--detach": ("detach", False, "return once the container runs"),
        "-d": ("detach", False, ""),
        "--pid-file": ("pid_file", True, "write the init's host pid to this file"),
        "--console-socket": ("console_socket", True, "AF_UNIX socket that receives the pty master"),
        "--no-pivot": ("no_pivot", False, "use MS_MOVE+chroot instead of pivot_root"),
        "--no-new-keyring": ("no_new_keyring", False, "keep the caller's session keyring"),
        "--preserve-fds": ("preserve_fds", True, "pass N extra fds (3..3+N-1) to the container"),
        "--keep": ("keep", False, "do not delete the container after it exits"),
    }, ("ID",)),
    "start": ("start ID", "run the user process of a created container", {}, ("ID",)),
    "state": ("state ID", "print the container's state as JSON", {}, ("ID",)),
    "kill": ("kill [--all] ID [SIGNAL]", "send a signal (default TERM) to the container", {
        "--all": ("all", False, "signal every process in the container"),
        "-a": ("all", False, ""),
    }, ("ID", "SIGNAL?")),
    "delete": ("delete [--force] ID", "remove a stopped container (--force: kill it first)", {
        "--force": ("force", False, "kill the container if it is still running"),
        "-f": ("force", False, ""),
    }, ("ID",)),
    "exec": ("exec [options] ID [COMMAND ARGS...]", "run another process in a container", {
        "--process": ("process", True, "JSON file with the process (runtime-spec `process`)"),
        "-p": ("process", True, ""),
        "--detach": ("detach", False, "do not wait for the process"),
        "-d": ("detach", False, ""),
        "--pid-file": ("pid_file", True, "write the process's host pid to this file"),
        "--console-socket": ("console_socket", True, "AF_UNIX socket that receives the pty master"),
        "--tty": ("tty", False, "allocate a pty"),
        "-t": ("tty", False, ""),
        "--env": ("env", "append", "set an environment variable K=V (repeatable)"),
        "-e": ("env", "append", ""),
        "--cwd": ("cwd", True, "working directory inside the container"),
        "--user": ("user", True, "UID[:GID] to run as"),
        "-u": ("user", True, ""),
        "--cap": ("cap", "append", "add a capability (repeatable)"),
        "-c": ("cap", "append", ""),
        "--no-new-privs": ("no_new_privs", False, "set no_new_privs"),
        "--preserve-fds": ("preserve_fds", True, "pass N extra fds to the process"),
    }, ("ID", "ARGS*")),
    "list": ("list [--format table|json] [--quiet]", "list containers", {
        "--format": ("format", True, "table or json"),
        "-f": ("format", True, ""),
        "--quiet": ("quiet", False, "print only the ids"),
        "-q": ("quiet", False, ""),
    }, ()),
    "ps": ("ps [--format table|json] ID", "list the container's processes", {
        "--format": ("format", True, "table or json (a JSON array of host pids)"),
        "-f": ("format", True, ""),
    }, ("ID", "PSARGS*")),
    "pause": ("pause ID", "freeze every process of the container", {}, ("ID",)),
    "resume": ("resume ID", "thaw a paused container", {}, ("ID",)),
    "update": ("update --resources FILE|- ID", "change the container's cgroup limits", {
        "--resources": ("resources", True, "JSON linux.resources, - for stdin"),
        "-r": ("resources", True, ""),
    }, ("ID",)),
    "spec": ("spec [--bundle B] [--rootless]", "write a default config.json", {
        "--bundle": ("bundle", True, "where to write config.json (default: current directory)"),
        "-b": ("bundle", True, ""),
        "--rootless": ("rootless", False, "a config for an unprivileged user (user namespace)"),
    }, ()),
    "features": ("features", "print the runtime-spec features this runtime supports, as JSON", {}, ()),
}
GLOBAL_FLAGS: _O = {
    "--root": ("root", True, f"state directory (default {OCI_DEFAULT_ROOT})"),
    "--log": ("log", True, "append log lines (and errors) to this file"),
    "--log-format": ("log_format", True, "text or json"),
    "--debug": ("debug", False, "log debug messages"),
    "--systemd-cgroup": ("systemd_cgroup", False, "use systemd to manage cgroups"),
    "--rootless": ("rootless", True, "true, false or auto"),
    "--criu": ("criu", True, "ignored (checkpointing is not supported)"),
    "--explain": ("explain", False, "print every kernel-level step as a shell command (stderr)"),
    "--help": ("help", False, ""),
    "-h": ("help", False, ""),
    "--version": ("version", False, ""),
    "-v": ("version", False, ""),
}
HELP_FLAGS: _O = {"--help": ("help", False, ""), "-h": ("help", False, "")}


class UsageError(Exception):
    """A malformed command line: one line on stderr and exit status 1, as runc does."""


def _parse_flags(argv: list[str], table: _O, stop_at_positional: bool) -> tuple[dict, list[str]]:
    values: dict = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i + 1:])
            break
        if arg.startswith("-") and arg != "-" and not (rest and stop_at_positional):
            name, eq, inline = arg.partition("=")
            if name not in table and arg.startswith("--") is False and len(name) > 2:
                name, inline, eq = name[:2], name[2:], "="  # -bDIR
            if name not in table:
                raise UsageError(f"flag provided but not defined: {name}")
            dest, kind, _ = table[name]
            if kind is False:
                values[dest] = (inline.lower() not in ("false", "0")) if eq else True
            else:
                if not eq:
                    i += 1
                    if i >= len(argv):
                        raise UsageError(f"flag needs an argument: {name}")
                    inline = argv[i]
                if kind == "append":
                    values.setdefault(dest, []).append(inline)
                else:
                    values[dest] = inline
        else:
            if stop_at_positional:
                rest.extend(argv[i:])
                break
            rest.append(arg)
        i += 1
    return values, rest


def _usage(command: str | None = None) -> str:
    if command:
        usage, summary, flags, _ = OCI_COMMANDS[command]
        lines = [f"usage: hanok-oci [global options] {usage}", "", summary, ""]
        seen = {}
        for flag, (dest, _kind, text) in flags.items():
            if text:
                seen[dest] = [flag, text]
            elif dest in seen:
                seen[dest][0] += f", {flag}"
        lines += [f"  {f:<28} {t}" for f, t in seen.values()]
        return "\n".join(lines) + "\n"
    lines = ["usage: hanok-oci [global options] COMMAND [options] ARGS", "",
             "An OCI runtime with runc's command line, for podman (conmon) and containerd.", "",
             "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary, _, _) in OCI_COMMANDS.items()]
    lines += ["", "global options:"]
    lines += [f"  {flag:<20} {text}" for flag, (_, _, text) in GLOBAL_FLAGS.items() if text]
    lines += ["  --version, -v        print the version", "  --help, -h           this help", "",
              "example: hanok-oci --root /run/hanok-oci run --bundle ./mybundle demo"]
    return "\n".join(lines) + "\n"


class _Logger:
    """Where errors go: stderr always; with --log also the log file (JSON with --log-format json)."""

    def __init__(self, path: str | None, fmt: str):
        self.path = path
        self.fmt = fmt

    def error(self, message: str) -> None:
        sys.stderr.write(f"hanok-oci: {message}\n" if self.fmt != "json" or not self.path else f"{message}\n")
        sys.stderr.flush()
        if self.path:
            self._append("error", message)

    def _append(self, level: str, message: str) -> None:
        if self.fmt == "json":
            from hanok.runtime import jsonio
            from hanok.runtime.state import rfc3339_now

            line = jsonio.dumps({"level": level, "msg": message, "time": rfc3339_now()})
        else:
            line = f"{level}: {message}"
        try:
            with open(self.path, "a") as f:  # type: ignore[arg-type]
                f.write(line + "\n")
        except OSError:
            pass


def oci_main(argv: list[str] | None = None) -> int:
    """Entry point of `hanok-oci`: returns the exit status.

    Run as the console script (argv None), it exits through os._exit once its
    output is flushed: interpreter teardown would add a few milliseconds to
    every per-container command and has nothing left to clean up.
    """
    if argv is None:
        code = _oci_main(sys.argv[1:])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return _oci_main(argv)


def _oci_main(argv: list[str]) -> int:
    log = _Logger(None, "text")
    gflags: dict = {}
    try:
        if not argv or argv[0] in ("-h", "--help", "help"):
            sys.stdout.write(_usage())
            return 0
        if argv[0] in ("-v", "--version", "version"):
            from hanok import OCI_VERSION

            sys.stdout.write(f"hanok-oci version {__version__}\nspec: {OCI_VERSION}\n")
            return 0
        # global flags come before the command: everything up to the first word
        # that names a command
        split = next((i for i, arg in enumerate(argv) if arg in OCI_COMMANDS
                      and (i == 0 or not _takes_value(argv[i - 1]))), len(argv))
        gflags, stray = _parse_flags(argv[:split], GLOBAL_FLAGS, False)
        if gflags.get("help"):
            sys.stdout.write(_usage())
            return 0
        if gflags.get("version"):
            return _oci_main(["--version"])
        log = _Logger(gflags.get("log"), gflags.get("log_format", "text"))
        if stray or split == len(argv):
            raise UsageError(f"no such command: {stray[0]}" if stray else "no command given")
        command, rest = argv[split], argv[split + 1:]
        if command not in OCI_COMMANDS:
            raise UsageError(f"no such command: {command}")
        _, _, table, positional = OCI_COMMANDS[command]
        # exec: everything after the ID is the command line, flags included
        opts, args = _parse_flags(rest, {**table, **HELP_FLAGS}, stop_at_positional=command == "exec")
        if opts.get("help"):
            sys.stdout.write(_usage(command))
            return 0
        need = [p for p in positional if not p.endswith(("?", "*"))]
        if len(args) < len(need):
            raise UsageError(f"{command} requires {' '.join(need)}")
        if not any(p.endswith("*") for p in positional) and len(args) > len(positional):
            raise UsageError(f"{command}: unexpected argument {args[len(positional)]!r}")
        if gflags.get("explain"):
            from hanok.runtime import explain

            explain.enable(2)
        root = gflags.get("root") or OCI_DEFAULT_ROOT
        return _OCI_HANDLERS[command](root, opts, args, gflags)
    except UsageError as e:
        log.error(f"{e} (see `hanok-oci --help`)")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - every failure becomes one line
        from hanok.runtime.errors import HanokError

        if isinstance(e, HanokError):
            log.error(str(e))
            return e.exit_code
        if isinstance(e, OSError):
            log.error(f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
            return 1
        if gflags.get("debug"):
            import traceback

            traceback.print_exc()
        log.error(f"internal error: {type(e).__name__}: {e} (rerun with --debug for a traceback)")
        return 1


def _takes_value(arg: str) -> bool:
    """True for a global flag written without `=` that consumes the next word."""
    spec = GLOBAL_FLAGS.get(arg)
    return spec is not None and spec[1] is not False


def _int_opt(opts: dict, name: str) -> int:
    value = opts.get(name, "0")
    if not str(value).isdigit():
        raise UsageError(f"--{name.replace('_', '-')} must be a non-negative integer")
    return int(value)


def _oci_create(root: str, opts: dict, args: list[str], g: dict) -> int:
    from hanok.runtime import container

    container.create(root, args[0], opts.get("bundle") or ".", pid_file=opts.get("pid_file"),
                     console_socket=opts.get("console_socket"), no_pivot=opts.get("no_pivot", False),
                     no_new_keyring=opts.get("no_new_keyring", False),
                     preserve_fds=_int_opt(opts, "preserve_fds"), systemd_cgroup=_check_systemd(g))
    return 0


def _oci_run(root: str, opts: dict, args: list[str], g: dict) -> int:
    from hanok.runtime import container

    return container.run(root, args[0], opts.get("bundle") or ".", detach=opts.get("detach", False),
                         pid_file=opts.get("pid_file"), console_socket=opts.get("console_socket"),
                         no_pivot=opts.get("no_pivot", False), no_new_keyring=opts.get("no_new_keyring", False),
                         preserve_fds=_int_opt(opts, "preserve_fds"), systemd_cgroup=_check_systemd(g))


def _check_systemd(g: dict) -> bool:
    """Whether --systemd-cgroup was given; NotSupported before any work where systemd is not PID 1."""
    if not g.get("systemd_cgroup"):
        return False
    if not os.path.isdir("/run/systemd/system"):
        from hanok.runtime.errors import NotSupported

        raise NotSupported("--systemd-cgroup: systemd is not running as PID 1 here (/run/systemd/system does "
                           "not exist); use the cgroupfs driver")
    return True


def _oci_start(root: str, opts: dict, args: list[str], g: dict) -> int:
    from hanok.runtime import container

    container.start(root, args[0])
    return 0


def _print_json(value: object) -> None:
    from hanok.runtime import jsonio

    sys.stdout.write(jsonio.dumps(value, indent=2) + "\n")


def _oci_state(root: str, opts: dict, args: list[str], g: dict) -> int:
    from hanok.runtime import container

    _print_json(container.get_state(root, args[0]))
    return 0


def _oci_kill(root: str, opts: dict, args: list[str], g: dict) -> int:
    from hanok.runtime import container

    container.kill(root, args[0], args[1] if len(args) > 1 else "TERM", opts.get("all", False))
    return 0


def _oci_delete(root: str, opts: dict, args: list[str], g: dict) -> int:
    from hanok.runtime import container

    container.delete(root, args[0], opts.get("force", False))
    return 0


def _oci_exec(root: str, opts: dict, args: list[str], g: dict) -> int:
    from hanok.runtime import container, jsonio
    from hanok.runtime.errors import SpecError
    from hanok.runtime.spec import validate_process

    cid = args[0]
    if opts.get("process"):
        try:
            process = validate_process(jsonio.load_file(opts["process"]))
        except ValueError as e:
            raise SpecError(f"--process {opts['process']}: invalid JSON: {e}") from None
    else:
        if len(args) < 2:
            raise UsageError("exec requires a command (or --process)")
        process = container.exec_spec(root, cid, args[1:], opts.get("env", []), opts.get("cwd"),
                                      opts.get("user"), opts.get("tty", False), opts.get("cap", []),
                                      True if opts.get("no_new_privs") else None)
    return container.exec_process(root, cid, process, detach=opts.get("detach", False),
                                  pid_file=opts.get("pid_file"), console_socket=opts.get("console_socket"),
                                  preserve_fds=_int_opt(opts, "preserve_fds"))


def _oci_list(root: str, opts: dict, args: list[str], g: dict) -> int:
    from hanok.runtime import container

    rows = container.list_containers(root)
    if opts.get("quiet"):
        sys.stdout.write("".join(r["id"] + "\n" for r in rows))
    elif opts.get("format", "table") == "json":
        _print_json(rows or None)  # runc prints null for no containers
    elif opts.get("format", "table") == "table":
        lines = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        lines += [(r["id"], str(r["pid"]), r["status"], r["bundle"], r["created"], "root") for r in rows]
        widths = [max(len(line[c]) for line in lines) for c in range(6)]
        for line in lines:
            sys.stdout.write("   ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() + "\n")
    else:
        raise UsageError(f"invalid format {opts['format']!r} (table or json)")
    return 0


def _oci_ps(root: str, opts: dict, args: list[str], g: dict) -> int:
    from hanok.runtime import container

    pids = container.pids(root, args[0])
    fmt = opts.get("format", "table")
    if fmt == "json":
        from hanok.runtime import jsonio

        sys.stdout.write(jsonio.dumps(pids) + "\n")
        return 0
    if fmt != "table":
        raise UsageError(f"invalid format {fmt!r} (table or json)")
    import subprocess

    if pids:
        ps_args = args[1:] or ["-f"]
        out = subprocess.run(["ps", *ps_args, "-p", ",".join(map(str, pids))], capture_output=True, text=True)
        sys.stdout.write(out.stdout)
    return 0


def _oci_pause(root: str, opts: dict, args: list[str], g: dict) -> int:
    from hanok.runtime import container

    container.pause(root, args[0])
    return 0


def _oci_resume(root: str, opts: dict, args: list[str], g: dict) -> int:
    from hanok.runtime import container

    container.resume(root, args[0])
    return 0


def _oci_update(root: str, opts: dict, args: list[str], g: dict) -> int:
    from hanok.runtime import container, jsonio
    from hanok.runtime.errors import SpecError

    source = opts.get("resources")
    if not source:
        raise UsageError("update requires --resources FILE|-")
    try:
        data = jsonio.loads(sys.stdin.read()) if source == "-" else jsonio.load_file(source)
    except ValueError as e:
        raise SpecError(f"--resources: invalid JSON: {e}") from None
    container.update(root, args[0], data)
    return 0


def _oci_spec(root: str, opts: dict, args: list[str], g: dict) -> int:
    from hanok.runtime import bundle
    from hanok.runtime.errors import Exists

    target = os.path.join(opts.get("bundle") or ".", "config.json")
    if os.path.exists(target):
        raise Exists(f"File {target} exists. Remove it first")
    from hanok.runtime import jsonio

    with open(target, "w") as f:
        f.write(jsonio.dumps(bundle.default_spec(rootless=opts.get("rootless", False)), indent=2) + "\n")
    return 0


def _oci_features(root: str, opts: dict, args: list[str], g: dict) -> int:
    from hanok.runtime import bundle

    _print_json(bundle.features())
    return 0


_OCI_HANDLERS = {
    "create": _oci_create, "run": _oci_run, "start": _oci_start, "state": _oci_state,
    "kill": _oci_kill, "delete": _oci_delete, "exec": _oci_exec, "list": _oci_list,
    "ps": _oci_ps, "pause": _oci_pause, "resume": _oci_resume, "update": _oci_update,
    "spec": _oci_spec, "features": _oci_features,
}


class Application:
    """What every `hanok` command shares (click's ctx.obj): where the store and run state live.

    Plain Python, no imports: the store (and requests, for pulls) and the
    container engine are loaded by the commands that use them, so
    `hanok --help` stays cheap.
    """

    def __init__(self, store_root: str, run_root: str = "/run/hanok"):
        self.store_root = store_root
        self.run_root = run_root
        self._store = None
        self._engine = None

    @property
    def store(self):  # -> hanok.images.store.Store
        return self.engine.store

    @property
    def engine(self):  # -> hanok.runtime.engine.Engine
        if self._engine is None:
            from hanok.runtime.engine import Engine

            self._engine = Engine(self.store_root, self.run_root)
        return self._engine


def _human_size(n: int) -> str:
    """docker's SIZE column: decimal units, three significant digits (`5.24MB`)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.3g}{unit}"
        value /= 1000
    return f"{n}B"


def _split_name(name: str) -> tuple[str, str]:
    """`docker.io/library/alpine:3` -> (`alpine`, `3`); a digest-only name has TAG `<none>`."""
    from hanok.images import reference

    from hanok.runtime.errors import HanokError

    try:
        ref = reference.parse(name)
    except HanokError:  # a hand-edited images.json entry: show it as it is
        return name, "<none>"
    repo = reference.Reference(ref.registry, ref.repository).familiar()
    return repo, ref.tag or "<none>"


def _short_id(image_id: str) -> str:
    return image_id[len("sha256:"):][:12] if image_id.startswith("sha256:") else image_id[:12]


def _table(rows: "Sequence[tuple[str, ...]]") -> str:
    """Columns left-aligned, three spaces apart (docker's tabwriter padding)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


class _PullProgress:
    """One status line on stderr while a pull runs (only on a terminal)."""

    def __init__(self, name: str):
        import threading

        self.name = name
        self.lock = threading.Lock()
        self.blobs: dict[str, tuple[int, int]] = {}

    def __call__(self, digest: str, done: int, total: int) -> None:
        with self.lock:
            self.blobs[digest] = (done, total)
            got = sum(d for d, _ in self.blobs.values())
            want = sum(t for _, t in self.blobs.values())
            sys.stderr.write(f"\r{self.name}: {_human_size(got)} / {_human_size(want)}\x1b[K")
            sys.stderr.flush()

    def finish(self) -> None:
        if self.blobs:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


# ---------------------------------------------------------------- the per-container commands, and their fast path
#
# What a node agent or a script runs once per container (`run`, `create`, `start`, `stop`, `kill`,
# `rm`, `wait`, `inspect`, `exec`, `logs`, `stats`, `ps`) is a hot path, and importing click costs ~27 ms
# here: half of a whole `hanok run --rm IMAGE true`, two thirds of a `hanok ps`. So these commands
# are declared once, as data (FAST_COMMANDS: flags, positional arguments, and a body that knows
# nothing of click): hanok_cli() builds their click commands from it, and _fast_main() parses a
# `hanok [--store S] [--state S] COMMAND ...` line with the same declarations and click's own rules
# (short clusters `-it`, `-eK=V`, `--name=x`, `--`, options between arguments unless the command
# stops at its first argument), then calls the same body. Whatever the fast parser is not sure of
# (--help, an unknown or malformed flag, a bad value, a missing argument, a bundle path, shell
# completion), or a usage error a body finds before doing anything, is left to click, which then
# prints its usual message: the fast path never produces an error of its own, and
# tests/unit/test_cli_fast.py checks it against click.

class Flag:
    """One option: click's declarations, and what the fast parser needs to know.

    names: as click.option takes them, the flags then the destination; kind: "flag" (is_flag),
    "value" (the last one given wins) or "multi" (repeatable, a tuple); convert: "int", "float",
    "choice" (one of `choices`), "file" (an existing readable file) or "nodir" (a path that is not a
    directory), as the click type says.
    (A plain class, not a NamedTuple: `typing` is not otherwise imported by hanok-oci's commands.)
    """

    __slots__ = ("choices", "convert", "default", "help", "kind", "metavar", "names", "show_default")

    def __init__(self, names: tuple[str, ...], kind: str, help: str, metavar: str | None = None,
                 default: object = None, convert: str | None = None, choices: tuple[str, ...] = (),
                 show_default: bool | None = None):
        self.names, self.kind, self.help, self.metavar = names, kind, help, metavar
        self.default, self.convert, self.choices = default, convert, choices
        self.show_default = default is not None if show_default is None else show_default

    @property
    def dest(self) -> str:
        return self.names[-1]


class Arg:
    """One positional argument: `nargs` 1, or -1 for all the rest (`required`: at least one)."""

    __slots__ = ("dest", "metavar", "nargs", "required")

    def __init__(self, dest: str, nargs: int = 1, required: bool = True, metavar: str | None = None):
        self.dest, self.nargs, self.required, self.metavar = dest, nargs, required, metavar


class FastCommand:
    """A command declared as data: its flags, its arguments (`interspersed`: may options follow
    an argument, as click's default; False: the first argument ends the options, as for `run`
    and `exec`, whose COMMAND keeps its own flags), and its body(app, params)."""

    __slots__ = ("args", "body", "flags", "interspersed", "name")

    def __init__(self, name: str, flags: tuple[Flag, ...], args: tuple[Arg, ...], body: Callable[..., None],
                 interspersed: bool = True):
        self.name, self.flags, self.args, self.body, self.interspersed = name, flags, args, body, interspersed


class _NotFast(Exception):
    """The fast path is not sure: click parses this command line (and reports any error)."""


class _Usage(Exception):
    """A usage error a body found before doing anything: click reports it (as click.UsageError, or
    BadParameter with `param_hint`); on the fast path it sends the line to click, which does so."""

    def __init__(self, message: str, param_hint: str | None = None):
        super().__init__(message)
        self.message, self.param_hint = message, param_hint


_ANSI_ESCAPE = r"\033\[[;?0-9]*[a-zA-Z]"  # what click.echo strips from output that is not a terminal


def _echo(text: str = "", err: bool = False) -> None:
    """click.echo's output for a str, without click: the text and a newline, flushed; nothing when the
    stream is closed (`>&-`); escape sequences stripped unless it is a terminal; UTF-8 (errors
    replaced) even where Python thinks the stream is ASCII."""
    stream = sys.stderr if err else sys.stdout
    if stream is None:
        return
    if "\033" in text and not stream.isatty():
        import re

        text = re.sub(_ANSI_ESCAPE, "", text)
    line = text + "\n"
    if (stream.encoding or "ascii").lower() in ("ascii", "us-ascii", "ansi_x3.4-1968"):
        stream.flush()
        stream.buffer.write(line.encode("utf-8", "replace"))
        stream.buffer.flush()
        return
    stream.write(line)
    stream.flush()


def _echo_json(value: object) -> None:
    """json.dumps(value, indent=2)'s text, by jsonio: `json` (with re and enum) costs ~2 ms to import."""
    from hanok.runtime import jsonio

    _echo(jsonio.dumps(value, indent=2))


def _each(refs: Sequence[str], action: Callable[[str], object]) -> None:
    """docker's multi-container verbs: try all, print each done ref, 125 if any failed."""
    from hanok.runtime.errors import HanokError

    failed = False
    for ref in refs:
        try:
            action(ref)
        except HanokError as e:
            _echo(f"hanok: {e}", err=True)
            failed = True
            continue
        except OSError as e:  # a library bug, but the other refs still get their turn
            _echo(f"hanok: {ref}: {e.strerror or e}", err=True)
            failed = True
            continue
        _echo(ref)
    if failed:
        sys.exit(125)


def _ago(stamp: str | None, suffix: str = " ago") -> str:
    import calendar

    if not stamp:
        return ""
    seconds = int(time.time() - calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size * (2 if unit != "minute" else 1):
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}{suffix}"
    if seconds < 1:
        return "Less than a second" + suffix
    return f"{seconds} second{'s' if seconds != 1 else ''}{suffix}"


def _status_text(s: dict) -> str:
    if s["state"] == "running":
        return "Up " + _ago(s["startedAt"], suffix="")
    if s["state"] == "paused":
        return "Up " + _ago(s["startedAt"], suffix="") + " (Paused)"
    if s["state"] == "exited":
        code = "?" if s["exitCode"] is None else s["exitCode"]
        return f"Exited ({code}) {_ago(s['finishedAt'])}" if s["finishedAt"] else f"Exited ({code})"
    return "Created"


def _published_on(port: dict, dual_stack: bool) -> list[str]:
    """Where one published port answers, as docker writes it: "0.0.0.0:8080", "[::]:8080", "[fd00::1]:8080".
    No hostIP means every address: of both families when the container has IPv6 (nat._families)."""
    host_ip = port.get("hostIP") or ""
    if not host_ip:
        wildcards = ["0.0.0.0", "[::]"] if dual_stack else ["0.0.0.0"]
        return [f"{address}:{port['hostPort']}" for address in wildcards]
    return [f"[{host_ip}]:{port['hostPort']}" if ":" in host_ip else f"{host_ip}:{port['hostPort']}"]


def _ports_text(ports: list[dict], dual_stack: bool) -> str:
    """The PORTS column of `ps`: every address each published port answers on."""
    return ", ".join(f"{address}->{p['containerPort']}/{p['protocol']}"
                     for p in ports for address in _published_on(p, dual_stack))


# ---- the bodies (their docstrings are the commands' --help)

def run_container(app: Application, params: dict[str, object]) -> None:
    """Run COMMAND in a new container of IMAGE (pulled when missing).

    Attached (no -d), its output is shown and hanok exits with its exit
    code; 125 means hanok itself failed, 126 the command could not be run,
    127 it was not found. IMAGE may also be the path of an OCI bundle
    directory (config.json + rootfs; written with a leading / or ./), run
    as it is in the foreground: only --name and --explain apply then.

    \b
    Example:
      hanok run --rm busybox:local echo hello
      hanok run -d --name web -p 8080:80 busybox:local httpd -f -p 80
      hanok run -it alpine sh
      hanok run --explain /tmp/demo
    """
    from hanok.runtime import explain as trace

    params = dict(params)
    image, command = str(params.pop("image")), tuple(params.pop("command"))  # type: ignore[call-overload]
    detach = bool(params.pop("detach"))
    if image.startswith(("/", "./", "../")):  # an OCI bundle: image names never start so
        _run_bundle(app, image, command, detach, params)
        return
    if params.pop("explain"):
        trace.enable(os.dup(2))
    pull = params["pull"] == "missing"
    c, code = app.engine.run(run_options_of(image, command, params), detach=detach, pull=pull)
    if detach:
        _echo(c.id)
        return
    sys.exit(code)


def _run_bundle(app: Application, bundle: str, command: tuple[str, ...], detach: bool, params: dict) -> None:
    """`hanok run ./bundle`: the OCI runtime's run, as config.json says (only --name and --explain apply)."""
    from hanok.runtime import container
    from hanok.runtime import explain as trace
    from hanok.runtime.errors import NotFound

    ignored = sorted(k for k, v in params.items()
                     if k not in ("name", "pull", "network", "explain") and v not in (None, False, ()))
    if detach or command or ignored or params["network"] != "bridge":
        raise _Usage("a bundle runs as its config.json says: only --name and --explain apply")
    if params["explain"]:
        trace.enable(os.dup(2))
    if not os.path.isfile(os.path.join(bundle, "config.json")):
        raise NotFound(f"{bundle}: not an OCI bundle (no config.json)")
    sys.exit(container.run(os.path.join(app.run_root, "bundles"), params.get("name") or f"hanok-{os.getpid()}",
                           bundle))


def run_options_of(image: str, command: tuple[str, ...], params: dict):  # -> hanok.runtime.bundle.RunOptions
    """RunOptions from the parameters of RUN_FLAGS (env files read here)."""
    from hanok.runtime.bundle import RunOptions

    kw = dict(params)
    env = []
    for path in kw.pop("env_file"):
        with open(path) as f:
            env += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    env += list(kw.pop("env"))
    labels = {}
    for item in kw.pop("label"):
        key, _, value = item.partition("=")
        labels[key] = value
    entrypoint = kw.pop("entrypoint")
    kw.pop("pull", None)
    return RunOptions(image=image, command=list(command), env=env, labels=labels,
                      entrypoint=None if entrypoint is None else ([entrypoint] if entrypoint else []),
                      volumes=list(kw.pop("volumes")), tmpfs=list(kw.pop("tmpfs")),
                      publish=list(kw.pop("publish")), cap_add=list(kw.pop("cap_add")),
                      cap_drop=list(kw.pop("cap_drop")), security_opt=list(kw.pop("security_opt")), **kw)


def _start(app: Application, p: dict) -> None:
    """Start created or exited containers.

    \b
    Example:
      hanok start web
      hanok start -a job
    """
    if p["attach"]:
        if len(p["containers"]) != 1:
            raise _Usage("--attach takes exactly one container")
        sys.exit(app.engine.start(p["containers"][0], attach=True))
    _each(p["containers"], lambda ref: app.engine.start(ref))


def _stop(app: Application, p: dict) -> None:
    """Stop containers: the image's stop signal (else SIGTERM), then SIGKILL.

    \b
    Example:
      hanok stop -t 2 web
    """
    if p["timeout"] != p["timeout"]:  # nan: no deadline would ever pass, SIGKILL never come
        raise _Usage("nan: the time must be a number of seconds", param_hint="'-t' / '--time'")
    _each(p["containers"], lambda ref: app.engine.stop(ref, p["timeout"]))


def _kill(app: Application, p: dict) -> None:
    """Send a signal to running containers.

    \b
    Example:
      hanok kill -s HUP web
    """
    _each(p["containers"], lambda ref: app.engine.kill(ref, p["signal_name"]))


def _rm(app: Application, p: dict) -> None:
    """Remove containers (their writable layer and logs too).

    \b
    Example:
      hanok rm -f web
    """
    _each(p["containers"], lambda ref: app.engine.remove(ref, force=p["force"]))


def _ps(app: Application, p: dict) -> None:
    """List containers (running ones unless -a).

    \b
    Example:
      hanok ps -a
      hanok ps --json
      hanok ps --pod web --json
    """
    from hanok.runtime.errors import HanokError, NotFound

    show_all, no_trunc = p["show_all"], p["no_trunc"]
    rows = []
    containers = app.engine.containers()
    if p["pod"] is not None:
        containers = app.engine.pods.get(p["pod"]).containers()
        show_all = True
    for c in containers:
        try:
            rows.append(app.engine.summary(c))
        except NotFound:  # removed while we looked
            continue
        except HanokError as e:  # a corrupt record: the others are still listed (JSON stays on stdout)
            _echo(f"hanok: {e}", err=True)
    if not show_all:
        rows = [r for r in rows if r["state"] in ("running", "paused")]
    rows.sort(key=lambda r: r["created"], reverse=True)
    if p["as_json"]:
        _echo_json(rows)
        return
    if p["quiet"]:
        for r in rows:
            _echo(r["id"] if no_trunc else r["id"][:12])
        return
    from hanok.runtime import explain  # shell quoting without shlex, which imports re (~5 ms)

    table = [("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")]
    for r in rows:
        cmd = explain.quote(r["command"])
        if not no_trunc and len(cmd) > 20:
            cmd = cmd[:19] + "…"
        table.append((r["id"] if no_trunc else r["id"][:12], r["image"], f'"{cmd}"', _ago(r["created"]),
                      _status_text(r), _ports_text(r["ports"], bool(r.get("ip6"))), r["name"]))
    _echo(_table(table))


def _inspect(app: Application, p: dict) -> None:
    """Print containers as a JSON array: options, state (exit code, OOM), network, paths.

    \b
    Example:
      hanok inspect web
    """
    _echo_json([app.engine.inspect(ref) for ref in p["containers"]])


def _wait(app: Application, p: dict) -> None:
    """Wait until containers exit; print each exit code.

    \b
    Example:
      hanok wait job
    """
    for ref in p["containers"]:
        _echo(str(app.engine.wait(ref)))


def _exec(app: Application, p: dict) -> None:
    """Run COMMAND in a running container; exit with its code.

    --sync is a node agent's ExecSync: stdout and stderr are passed
    through, hanok exits with the command's code; with --timeout a command
    still running after SECONDS is killed and hanok fails with
    `hanok: exec ... timed out after Ns and was killed`, exit 125.

    \b
    Example:
      hanok exec web cat /etc/hostname
      hanok exec -it web sh
      hanok exec --sync --timeout 5 web-app sh -c 'test -f /ready'
    """
    timeout, sync = p["timeout"], p["sync"]
    if timeout is not None and not sync:
        raise _Usage("--timeout needs --sync")
    if sync and (p["tty"] or p["interactive"] or p["detach"]):
        raise _Usage("--sync takes no -i, -t or -d")
    if timeout is not None and not timeout > 0:  # also nan
        raise _Usage(f"{timeout:g}: must be positive", param_hint="--timeout")
    sys.exit(app.engine.exec(p["container"], list(p["command"]), env=list(p["env"]), workdir=p["workdir"],
                             user=p["user"], tty=p["tty"], detach=p["detach"], timeout=timeout,
                             interactive=p["interactive"]))


def _create(app: Application, p: dict) -> None:
    """Create a container of IMAGE without starting it; prints its id.

    With --pod and --config, a node agent's CreateContainer: the container
    is described by a CRI ContainerConfig and joins the pod's network, IPC
    and UTS namespaces and its cgroup; `start`, `stop` and `rm` work on it.

    \b
    Example:
      hanok create --name job busybox:local sh -c 'echo done'
      hanok start -a job
      hanok create --pod web --config container.json
    """
    params = dict(p)
    image, command, pod, config_path = (params.pop(k) for k in ("image", "command", "pod", "config_path"))
    pull = params["pull"] == "missing"
    if config_path is not None:
        from hanok.runtime import pod as pods

        if pod is None or image is not None:
            raise _Usage("--config takes no IMAGE or COMMAND and needs --pod")
        target = app.engine.pods.get(pod)
        options, log_path = pods.container_from_cri_config(pods.load_document(config_path), target.record)
        _echo(app.engine.pods.create_container(target, options, pull=pull, log_path=log_path).id)
        return
    if image is None:
        raise _Usage("Missing argument 'IMAGE'.")
    options = run_options_of(image, command, params)
    if pod is not None:
        c = app.engine.pods.create_container(app.engine.pods.get(pod), options, pull=pull)
    else:
        c = app.engine.create(options, pull=pull)
    _echo(c.id)


def _logs(app: Application, p: dict) -> None:
    """Print a container's stdout and stderr (kept in the CRI log format).

    \b
    Example:
      hanok logs --tail 20 web
      hanok logs -f -t web
    """
    from hanok.runtime import logs

    c = app.engine.get(p["container"])
    tail = p["tail"]
    if tail != "all" and not tail.isdigit():
        raise _Usage(f"{tail!r}: expected a number or all", param_hint="--tail")
    logs.show(logs.read(c.path("ctr.log"), tail=None if tail == "all" else int(tail), since=p["since"],
                        timestamps=p["timestamps"], follow=p["follow"], stop=c.output_complete))


def _stats(app: Application, p: dict) -> None:
    """Memory, CPU, pids and I/O of running containers (from their cgroups).

    \b
    Example:
      hanok stats --no-stream --json web
    """
    while True:
        refs = p["containers"] or tuple(r["id"] for r in (app.engine.summary(c) for c in app.engine.containers())
                                        if r["state"] in ("running", "paused"))
        rows = [app.engine.stats(ref) for ref in refs]
        if p["as_json"]:
            _echo_json(rows)
        else:
            table = [("CONTAINER ID", "NAME", "MEM USAGE / LIMIT", "CPU TIME", "PIDS")]
            for r in rows:
                mem = r.get("memory") or {}
                limit = mem.get("limit")
                table.append((r["id"][:12], r["name"],
                              f"{_human_size(mem.get('current') or 0)} / "
                              f"{_human_size(limit) if limit else 'unlimited'}",
                              f"{((r.get('cpu') or {}).get('usageUsec') or 0) / 1e6:.2f}s",
                              str((r.get("pids") or {}).get("current") or 0)))
            _echo(_table(table))
        if p["no_stream"] or p["as_json"]:
            return
        time.sleep(2)


RUN_FLAGS: tuple[Flag, ...] = (
    Flag(("--name", "name"), "value", "container name (unique; default: a random one)"),
    Flag(("-e", "--env", "env"), "multi", "set an environment variable", "KEY=VALUE"),
    Flag(("--env-file", "env_file"), "multi", "read KEY=VALUE lines from a file", convert="file"),
    Flag(("-w", "--workdir", "workdir"), "value", "working directory inside the container"),
    Flag(("-u", "--user", "user"), "value", "USER[:GROUP] (names from the image's /etc/passwd)"),
    Flag(("-v", "--volume", "volumes"), "multi", "bind-mount a host path, or a named volume", "SRC:DEST[:ro]"),
    Flag(("--tmpfs", "tmpfs"), "multi", "mount a tmpfs", "DEST[:OPTS]"),
    Flag(("-p", "--publish", "publish"), "multi", "publish a container port on the host",
            "[IP:][HOST:]PORT[/PROTO]"),
    Flag(("--network", "--net", "network"), "value", "bridge, none, host, a network name, or container:NAME",
            default="bridge"),
    Flag(("-h", "--hostname", "hostname"), "value", "the container's host name (default: its short id)"),
    Flag(("-m", "--memory", "memory"), "value", "memory limit (e.g. 256m)"),
    Flag(("--cpus", "cpus"), "value", "CPU limit (e.g. 0.5)", convert="float"),
    Flag(("--pids-limit", "pids_limit"), "value", "most processes at once (-1: unlimited)", convert="int"),
    Flag(("--read-only", "read_only"), "flag", "mount the root read-only"),
    Flag(("--cap-add", "cap_add"), "multi", "add a capability (or ALL)"),
    Flag(("--cap-drop", "cap_drop"), "multi", "drop a capability (or ALL)"),
    Flag(("--security-opt", "security_opt"), "multi",
            "seccomp=unconfined|PATH (default: docker's profile), no-new-privileges", "OPT"),
    Flag(("--entrypoint", "entrypoint"), "value", "replace the image's entrypoint"),
    Flag(("--init", "init"), "flag", "run a tiny init (tini or catatonit) as pid 1"),
    Flag(("-l", "--label", "label"), "multi", "set a label", "KEY=VALUE"),
    Flag(("-t", "--tty", "tty"), "flag", "allocate a terminal"),
    Flag(("-i", "--interactive", "interactive"), "flag", "keep stdin open"),
    Flag(("--rm", "auto_remove"), "flag", "remove the container when it exits"),
    Flag(("--pull", "pull"), "value", "pull the image when it is not stored", default="missing",
            convert="choice", choices=("missing", "never")),
)
RUN_ONLY_FLAGS: tuple[Flag, ...] = (
    Flag(("-d", "--detach", "detach"), "flag", "run in the background and print the container id"),
    Flag(("--explain", "explain"), "flag", "print every kernel-level step as a shell command (stderr)"),
)
GLOBAL_DEFAULTS = {"store_root": ("HANOK_ROOT", "/var/lib/hanok"), "run_root": ("HANOK_STATE", "/run/hanok")}
_GLOBAL_NAMES = {"--store": "store_root", "--state": "run_root"}
_CONTAINERS = (Arg("containers", -1, metavar="CONTAINER..."),)
FAST_COMMANDS: dict[str, FastCommand] = {c.name: c for c in (
    FastCommand("run", RUN_FLAGS + RUN_ONLY_FLAGS, (Arg("image"), Arg("command", -1, required=False)),
                run_container, interspersed=False),
    FastCommand("create", RUN_FLAGS + (
        Flag(("--pod", "pod"), "value", "create it in this pod (its namespaces and cgroup)", "POD"),
        Flag(("-f", "--config", "config_path"), "value",
             "a CRI ContainerConfig (JSON or YAML, crictl's field names) instead of IMAGE and flags",
             convert="nodir"),
    ), (Arg("image", required=False), Arg("command", -1, required=False)), _create, interspersed=False),
    FastCommand("logs", (
        Flag(("-f", "--follow", "follow"), "flag", "keep printing new output until the container exits"),
        Flag(("-n", "--tail", "tail"), "value", "only the last N lines", default="all"),
        Flag(("-t", "--timestamps", "timestamps"), "flag", "prefix each line with its time"),
        Flag(("--since", "since"), "value", "only lines at or after this RFC 3339 time"),
    ), (Arg("container"),), _logs),
    FastCommand("stats", (
        Flag(("--no-stream", "no_stream"), "flag", "print once and exit"),
        Flag(("--json", "as_json"), "flag", "a JSON array of the raw numbers"),
    ), (Arg("containers", -1, required=False, metavar="[CONTAINER...]"),), _stats),
    FastCommand("start", (Flag(("-a", "--attach", "attach"), "flag",
                               "show the output and exit with the container's code"),), _CONTAINERS, _start),
    FastCommand("stop", (Flag(("-t", "--time", "timeout"), "value",
                              "seconds to wait after the stop signal before SIGKILL", default=10, convert="float"),),
                _CONTAINERS, _stop),
    FastCommand("kill", (Flag(("-s", "--signal", "signal_name"), "value", "signal name or number", default="KILL"),),
                _CONTAINERS, _kill),
    FastCommand("rm", (Flag(("-f", "--force", "force"), "flag", "kill a running container first"),), _CONTAINERS, _rm),
    FastCommand("ps", (
        Flag(("-a", "--all", "show_all"), "flag", "also containers that are not running"),
        Flag(("-q", "--quiet", "quiet"), "flag", "only ids"),
        Flag(("--json", "as_json"), "flag", "a JSON array (fields in the README)"),
        Flag(("--no-trunc", "no_trunc"), "flag", "full ids and commands"),
        Flag(("--pod", "pod"), "value", "only the containers of this pod (implies -a)", "POD"),
    ), (), _ps),
    FastCommand("inspect", (), _CONTAINERS, _inspect),
    FastCommand("wait", (), _CONTAINERS, _wait),
    FastCommand("exec", (
        Flag(("-i", "--interactive", "interactive"), "flag", "keep stdin open"),
        Flag(("-t", "--tty", "tty"), "flag", "allocate a terminal"),
        Flag(("-d", "--detach", "detach"), "flag", "do not wait for the command"),
        Flag(("-e", "--env", "env"), "multi", "set an environment variable", "KEY=VALUE"),
        Flag(("-w", "--workdir", "workdir"), "value", "working directory"),
        Flag(("-u", "--user", "user"), "value", "USER[:GROUP]"),
        Flag(("--sync", "sync"), "flag", "CRI ExecSync: no terminal, no stdin, run to completion"),
        Flag(("--timeout", "timeout"), "value", "with --sync: SIGKILL the command after this long and fail (exit 125)",
             "SECONDS", convert="float"),
    ), (Arg("container"), Arg("command", -1)), _exec, interspersed=False),
)}


def _fast_value(flag: Flag, raw: str) -> object:
    """`raw` converted as click's type for `flag` would, or _NotFast where click would refuse it."""
    try:
        if flag.convert == "int":
            return int(raw)
        if flag.convert == "float":
            return float(raw)
    except ValueError:
        raise _NotFast from None
    if flag.convert == "choice" and raw not in flag.choices:
        raise _NotFast
    if flag.convert == "file" and not (os.path.isfile(raw) and os.access(raw, os.R_OK)):
        raise _NotFast
    if flag.convert == "nodir" and os.path.isdir(raw):
        raise _NotFast
    return raw


def parse_fast(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[dict[str, str], str, dict[str, object]]:
    """(global options, command name, its parameters) for `[--store S] [--state S] COMMAND ...` of a
    command in FAST_COMMANDS, exactly as click would pass them; _NotFast for anything else (see the
    section's comment)."""
    if "_HANOK_COMPLETE" in environ:
        raise _NotFast
    roots = {dest: environ.get(var) or default for dest, (var, default) in GLOBAL_DEFAULTS.items()}
    i = 0
    while i < len(argv) and argv[i] not in FAST_COMMANDS:
        name, eq, value = argv[i].partition("=")
        if name not in _GLOBAL_NAMES:
            raise _NotFast
        if not eq:
            i += 1
            if i == len(argv):
                raise _NotFast
            value = argv[i]
        roots[_GLOBAL_NAMES[name]] = value
        i += 1
    if i == len(argv) or any(os.path.isfile(root) for root in roots.values()):  # click.Path(file_okay=False)
        raise _NotFast
    command = FAST_COMMANDS[argv[i]]
    return roots, command.name, _parse_command(command, argv[i + 1:])


def _parse_command(command: FastCommand, tokens: Sequence[str]) -> dict[str, object]:
    """The parameters click would give `command`'s callback for `tokens`, or _NotFast."""
    long_flags = {n: f for f in command.flags for n in f.names if n.startswith("--")}
    short_flags = {n: f for f in command.flags for n in f.names if len(n) == 2 and n[0] == "-"}
    params: dict[str, object] = {}
    for f in command.flags:
        default = f.default if f.default is None else _fast_value(f, str(f.default)) if f.convert else f.default
        params[f.dest] = () if f.kind == "multi" else False if f.kind == "flag" else default
    rest = list(tokens)
    positionals: list[str] = []

    def take(flag: Flag, attached: str | None) -> None:
        if flag.kind == "flag":
            if attached is not None:
                raise _NotFast
            params[flag.dest] = True
            return
        if attached is None:
            if not rest:
                raise _NotFast
            attached = rest.pop(0)
        value = _fast_value(flag, attached)
        params[flag.dest] = (*params[flag.dest], value) if flag.kind == "multi" else value  # type: ignore[misc]

    while rest:
        arg = rest.pop(0)
        if arg == "--":
            positionals += rest
            break
        if arg[:1] != "-" or len(arg) == 1:
            positionals.append(arg)
            if not command.interspersed:  # the first argument ends the options
                positionals += rest
                break
            continue
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name not in long_flags:
                raise _NotFast
            take(long_flags[name], value if eq else None)
            continue
        for position, char in enumerate(arg[1:], start=2):  # a cluster: -it, -eKEY=VALUE
            flag = short_flags.get("-" + char)
            if flag is None:
                raise _NotFast
            if flag.kind == "flag":
                take(flag, None)
                continue
            take(flag, arg[position:] or None)
            break
    for spec in command.args:
        if spec.nargs == 1:
            if not positionals and spec.required:
                raise _NotFast
            params[spec.dest] = positionals.pop(0) if positionals else None
        else:
            if spec.required and not positionals:
                raise _NotFast
            params[spec.dest], positionals = tuple(positionals), []
    if positionals:  # click: "Got unexpected extra argument"
        raise _NotFast
    return params


def _fast_main(argv: Sequence[str]) -> None:
    """Run a FAST_COMMANDS command without click when parse_fast is sure; return (to click) when not."""
    try:
        roots, name, params = parse_fast(argv, os.environ)
    except _NotFast:
        return
    from hanok.runtime.errors import HanokError

    app = Application(roots["store_root"], roots["run_root"])
    try:
        try:
            FAST_COMMANDS[name].body(app, params)
        except _Usage:
            return  # found before anything was done: click parses the line again and reports it
        except KeyboardInterrupt:  # as click's standalone mode does
            _echo("\nAborted!", err=True)
            sys.exit(1)
        except HanokError as e:
            _fail(e)
        except OSError as e:
            _fail_os(e)
    except SystemExit as e:
        _exit_now(e.code)
    _exit_now(0)


def _exit_now(code: object) -> NoReturn:
    """Leave as sys.exit(code) would, without the interpreter's teardown: freeing every module and arena
    costs a few milliseconds per command and cleans nothing (files are closed where they are written; the
    only exit hook frees libnftables' context). stdout and stderr are flushed first; a stdout that cannot
    take the rest (a closed pipe) makes the status 120, as CPython's own teardown does."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        _echo(str(code), err=True)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # EPIPE; ValueError: the stream was closed
            if stream is sys.stdout and status == 0:
                status = 120
    os._exit(status & 0xFF)


def _fail(error: HanokError) -> None:
    """`hanok: <message>` on stderr; exit 126/127 when the command could not run, else 125."""
    _echo(f"hanok: {error}", err=True)
    sys.exit(error.exit_code if error.exit_code in (126, 127) else 125)


def _fail_os(error: OSError) -> None:
    """An OSError reaching the CLI is a library bug (it should have been a HanokError): still one line."""
    from hanok.runtime.errors import HanokError

    where = f": {error.filename}" if error.filename else ""
    _fail(HanokError(f"{error.strerror or error}{where}"))


def hanok_main() -> None:
    """Entry point of `hanok`, the CLI for people and node agents (click).

    Exit codes as docker's: 125 when hanok itself fails, 126/127 when the
    command cannot be invoked / is not found, else the container's own code;
    2 for usage errors (click's). Shell completion is click's:
    `eval "$(_HANOK_COMPLETE=bash_source hanok)"`. The per-container
    commands are parsed without click when they can be (see FAST_COMMANDS).
    """
    _fast_main(sys.argv[1:])  # exits, unless click should parse this command line
    hanok_cli()(prog_name="hanok")


def hanok_cli():  # -> click.Group
    """The `hanok` click group with every command (built on call: click is imported only here)."""
    import click

    from hanok.runtime.errors import HanokError, NotFound

    fail = _fail

    class Group(click.Group):
        """Every HanokError a command lets through: `hanok: <message>`, one line, exit 125.

        An OSError reaching here is a library bug (it should have been a
        HanokError); it still gets one line rather than a traceback.
        """

        def invoke(self, ctx: click.Context) -> object:
            try:
                return super().invoke(ctx)
            except HanokError as e:
                fail(e)
            except OSError as e:
                _fail_os(e)

    @click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="hanok")
    @click.option("--store", "store_root", envvar="HANOK_ROOT", default="/var/lib/hanok", show_default=True,
                  type=click.Path(file_okay=False), help="images, containers, volumes, networks (env HANOK_ROOT)")
    @click.option("--state", "run_root", envvar="HANOK_STATE", default="/run/hanok", show_default=True,
                  type=click.Path(file_okay=False), help="volatile state: runtime state, netns (env HANOK_STATE)")
    @click.pass_context
    def hanok(ctx: click.Context, store_root: str, run_root: str) -> None:
        """hanok: a daemonless container runtime built on raw Linux primitives.

        \b
        Example:
          hanok bundle busybox /tmp/demo
          hanok run /tmp/demo
          hanok pull alpine && hanok images
        """
        ctx.obj = Application(store_root, run_root)

    pass_app = click.make_pass_decorator(Application)

    @hanok.group("bundle")
    def bundle_group() -> None:
        """Make OCI bundles (config.json + rootfs).

        \b
        Example:
          hanok bundle busybox /tmp/demo
        """

    @bundle_group.command("busybox")
    @click.argument("directory", type=click.Path(file_okay=False))
    @click.argument("command", nargs=-1)
    @click.option("--busybox", "busybox_path", default="/bin/busybox", show_default=True,
                  help="static busybox binary to build the rootfs from")
    def bundle_busybox(directory: str, command: tuple[str, ...], busybox_path: str) -> None:
        """Make a bundle in DIRECTORY from a static busybox (needs no internet).

        \b
        Example:
          hanok bundle busybox /tmp/demo -- sh -c 'echo hi from $(hostname)'
        """
        from hanok.runtime import bundle

        try:
            bundle.busybox_bundle(directory, list(command) or None, busybox=busybox_path)
        except HanokError as e:
            fail(e)
        click.echo(directory)

    # ------------------------------------------------------------------ containers

    def option_kwargs(flag: Flag) -> dict:
        """click.option's keywords for a Flag (the one declaration both parsers read)."""
        kw: dict = {"help": flag.help, "metavar": flag.metavar}
        if flag.kind == "flag":
            kw["is_flag"] = True
        elif flag.kind == "multi":
            kw["multiple"] = True
        else:
            kw["default"] = flag.default
            kw["show_default"] = flag.show_default
        kw["type"] = {"int": int, "float": float, "file": click.Path(exists=True, dir_okay=False),
                      "nodir": click.Path(dir_okay=False), "choice": click.Choice(flag.choices),
                      None: None}[flag.convert]
        return kw

    def click_command(command: FastCommand) -> click.Command:
        """The click command of a FAST_COMMANDS entry: same flags, arguments and body."""

        @pass_app
        def callback(app: Application, **params: object) -> None:
            try:
                command.body(app, params)
            except _Usage as e:
                if e.param_hint:
                    raise click.BadParameter(e.message, param_hint=e.param_hint) from None
                raise click.UsageError(e.message) from None

        params: list[click.Parameter] = [click.Argument([a.dest], nargs=a.nargs, required=a.required,
                                                        metavar=a.metavar) for a in command.args]
        params += [click.Option(list(f.names), **option_kwargs(f)) for f in command.flags]
        return click.Command(command.name, callback=callback, params=params, help=command.body.__doc__,
                             context_settings={"allow_interspersed_args": command.interspersed})

    for fast in FAST_COMMANDS.values():
        hanok.add_command(click_command(fast))

    @hanok.command("port")
    @click.argument("container")
    @pass_app
    def port_cmd(app: Application, container: str) -> None:
        """List a container's published ports.

        \b
        Example:
          hanok port web
        """
        net = app.engine.inspect(container).get("network") or {}
        for p in net.get("ports") or []:
            for address in _published_on(p, bool(net.get("ip6"))):
                click.echo(f"{p['containerPort']}/{p['protocol']} -> {address}")

    @hanok.group("container", cls=Group)
    def container_group() -> None:
        """Container housekeeping.

        \b
        Example:
          hanok container prune
        """

    @container_group.command("prune")
    @pass_app
    def container_prune_cmd(app: Application) -> None:
        """Remove every exited or created container.

        \b
        Example:
          hanok container prune
        """
        for c in app.engine.containers():
            try:
                if app.engine.summary(c)["state"] in ("exited", "created"):
                    app.engine.remove(c.id)
                    click.echo(c.id)
            except HanokError as e:
                click.echo(f"hanok: {e}", err=True)

    @container_group.command("cleanup", hidden=True)
    @click.argument("container")
    @pass_app
    def container_cleanup_cmd(app: Application, container: str) -> None:
        """Run by a container's monitor when its process exits (conmon's exit command)."""
        app.engine.cleanup(container)

    @hanok.command("gc")
    @click.option("--json", "as_json", is_flag=True, help="print what was removed as JSON")
    @click.option("--grace", type=float, default=60, show_default=True, metavar="SECONDS",
                  help="leave half-made containers younger than this (a create may be in progress)")
    @pass_app
    def gc_cmd(app: Application, as_json: bool, grace: float) -> None:
        """Finish what crashed commands left half-made, then prune unused images data.

        Releases mounts, runtime state, network endpoints and leases of
        containers that are no longer running, removes half-created
        containers and pods, then removes blobs and layers no image or
        container uses.

        \b
        Example:
          hanok gc --json
          hanok gc --grace 0
        """
        report = app.engine.gc(grace_seconds=grace)
        freed = app.store.gc(in_use_layers=app.engine.in_use_layers())
        report["images"] = freed
        if as_json:
            _echo_json(report)
            return
        for key, items in sorted(report.items()):
            if key != "images":
                for item in items:
                    click.echo(f"{key}: {item}")
        click.echo(f"Total reclaimed space: {_human_size(freed['bytes'])}")

    # ------------------------------------------------------------------ networks

    @hanok.group("network", cls=Group)
    def network_group() -> None:
        """Bridge networks containers attach to (`--network NAME`).

        \b
        Example:
          hanok network create --subnet 10.90.0.0/24 backend
          hanok network ls
        """

    def network_json(cfg) -> dict:  # type: ignore[no-untyped-def]
        return cfg.to_dict()

    @network_group.command("create")
    @click.argument("name")
    @click.option("--subnet", required=True, metavar="CIDR", help="IPv4 subnet, e.g. 10.90.0.0/24")
    @click.option("--gateway", default=None, help="gateway address (default: the subnet's first address)")
    @click.option("--ipv6-subnet", "subnet6", default=None, metavar="CIDR",
                  help="also IPv6 (dual stack) from this /64-/120 subnet, e.g. fd12:3456:789a:1::/64; "
                       "its gateway is ::1")
    @click.option("--bridge", default=None, help="bridge device name (default: derived from NAME)")
    @click.option("--mtu", type=int, default=1500, show_default=True)
    @pass_app
    def network_create_cmd(app: Application, name: str, subnet: str, gateway: str | None, subnet6: str | None,
                           bridge: str | None, mtu: int) -> None:
        """Define a bridge network; its bridge appears when a container first joins.

        IPv4 is always on; `--ipv6-subnet` adds IPv6 (docker's `--ipv6 --subnet
        V6`, in one option: the IPv6 subnet is the opt-in, and `--subnet` stays
        the one IPv4 subnet). Turning on IPv6 forwarding makes the host ignore
        router advertisements on interfaces whose accept_ra is not 2.

        \b
        Example:
          hanok network create --subnet 10.90.0.0/24 backend
          hanok network create --subnet 10.91.0.0/24 --ipv6-subnet fd12:3456:789a:1::/64 dual
          hanok run -d --network backend --name db busybox:local sleep 1000
        """
        from hanok.netns import network

        click.echo(network.create_network(app.store_root, name, subnet, bridge=bridge, gateway=gateway,
                                          mtu=mtu, subnet6=subnet6).name)

    @network_group.command("ls")
    @click.option("-q", "--quiet", is_flag=True, help="only names")
    @click.option("--json", "as_json", is_flag=True,
                  help="a JSON array of {name, bridge, subnet, gateway, mtu, masquerade, subnet6, gateway6}")
    @pass_app
    def network_ls_cmd(app: Application, quiet: bool, as_json: bool) -> None:
        """List networks (the default `hanok` network is always there).

        \b
        Example:
          hanok network ls
        """
        from hanok.netns import network

        nets = network.list_networks(app.store_root)
        if as_json:
            _echo_json([network_json(n) for n in nets])
        elif quiet:
            for n in nets:
                click.echo(n.name)
        else:
            click.echo(_table([("NAME", "BRIDGE", "SUBNET", "GATEWAY", "IPV6 SUBNET")]
                              + [(n.name, n.bridge, n.subnet, n.gateway, n.subnet6 or "-") for n in nets]))

    @network_group.command("inspect")
    @click.argument("name")
    @pass_app
    def network_inspect_cmd(app: Application, name: str) -> None:
        """Print a network as JSON.

        \b
        Example:
          hanok network inspect hanok
        """
        from hanok.netns import network

        _echo_json(network_json(network.get_network(app.store_root, name)))

    @network_group.command("rm")
    @click.argument("names", metavar="NAME...", nargs=-1, required=True)
    @pass_app
    def network_rm_cmd(app: Application, names: tuple[str, ...]) -> None:
        """Remove networks no container uses (their bridge and NAT rule too).

        \b
        Example:
          hanok network rm backend
        """
        from hanok.netns import network

        _each(names, lambda name: network.remove_network(app.store_root, app.run_root, name))

    # ------------------------------------------------------------------ pods

    @hanok.group("pod", cls=Group)
    def pod_group() -> None:
        """Pods for node agents: a sandbox of shared network, IPC and UTS namespaces, and its containers.

        A pod is named by its Kubernetes namespace and name. POD is its id (or
        a unique prefix), NAMESPACE/NAME, or NAME: the pod of that name in
        "default", else in the only namespace that has one.
        Pods of the namespace "default" are plain NAME and their containers
        NAME-CONTAINER; elsewhere the containers are NAMESPACE_NAME-CONTAINER.

        \b
        Example:
          hanok pod run -f pod.yaml --json
          hanok pod ls
          hanok pod rm -f web
          hanok pod inspect kube-system/dns
        """

    @pod_group.command("run")
    @click.option("-f", "--file", "manifest", default=None, type=click.Path(dir_okay=False),
                  help="a Kubernetes Pod manifest (YAML or JSON): sandbox and containers")
    @click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
                  help="a CRI PodSandboxConfig (JSON or YAML, crictl's field names): the sandbox only")
    @click.option("--network", "--net", "network", default="bridge", show_default=True,
                  help="bridge (the default network), none, or a network name")
    @click.option("--json", "as_json", is_flag=True,
                  help='print {"id", "name", "namespace", "ip", "ip6", "containers": [{"name", "id"}]}')
    @pass_app
    def pod_run_cmd(app: Application, manifest: str | None, config_path: str | None, network: str,
                    as_json: bool) -> None:
        """Run a pod: its sandbox, then (with -f) every container, detached; prints the pod id.

        Images missing from the store are pulled first. A failure half way
        removes everything made. An invalid manifest is refused with the
        offending field named (exit 125), before anything is made.

        \b
        Example:
          hanok pod run -f pod.yaml
          hanok pod run --network backend -f pod.yaml --json
          hanok pod run --config sandbox.json
        """
        from hanok.runtime import pod as pods

        if (manifest is None) == (config_path is None):
            raise click.UsageError("give exactly one of -f/--file and --config")
        if manifest is not None:
            plan = pods.pod_from_manifest(pods.load_document(manifest))
            target, containers = app.engine.pods.run(plan, network)
        else:
            plan = pods.pod_from_sandbox_config(pods.load_document(config_path))  # type: ignore[arg-type]
            target, containers = app.engine.pods.create_sandbox(plan, network), []
        if as_json:
            endpoint = target.record.get("network") or {}
            _echo_json({"id": target.id, "name": target.name, "namespace": target.namespace,
                       "ip": endpoint.get("ip"), "ip6": endpoint.get("ip6"),
                       "containers": [{"name": c.name, "id": c.id} for c in containers]})
        else:
            click.echo(target.id)

    @pod_group.command("ls")
    @click.option("-q", "--quiet", is_flag=True, help="only ids")
    @click.option("--json", "as_json", is_flag=True, help="a JSON array (fields in the README)")
    @click.option("--no-trunc", is_flag=True, help="full ids")
    @pass_app
    def pod_ls_cmd(app: Application, quiet: bool, as_json: bool, no_trunc: bool) -> None:
        """List pods: ready while their sandbox is up, notready after `pod stop`.

        \b
        Example:
          hanok pod ls
          hanok pod ls --json
        """
        rows = []
        for p in app.engine.pods.all():
            try:
                rows.append(app.engine.pods.summary(p))
            except NotFound:  # removed while we looked
                continue
        rows.sort(key=lambda r: r["created"], reverse=True)
        if as_json:
            _echo_json(rows)
            return
        if quiet:
            for r in rows:
                click.echo(r["id"] if no_trunc else r["id"][:12])
            return
        table = [("POD ID", "NAMESPACE", "NAME", "STATUS", "CREATED", "IP", "CONTAINERS")]
        for r in rows:
            running = sum(1 for c in r["containers"] if c["state"] == "running")
            table.append((r["id"] if no_trunc else r["id"][:12], r["namespace"], r["name"], r["state"].capitalize(),
                          _ago(r["created"]), r["ip"] or "", f"{running}/{len(r['containers'])}"))
        click.echo(_table(table))

    @pod_group.command("inspect")
    @click.argument("pods", metavar="POD...", nargs=-1, required=True)
    @pass_app
    def pod_inspect_cmd(app: Application, pods: tuple[str, ...]) -> None:
        """Print pods as a JSON array: state, containers, network, namespaces, cgroup, volumes.

        \b
        Example:
          hanok pod inspect web
          hanok pod inspect kube-system/dns
        """
        _echo_json([app.engine.pods.inspect(ref) for ref in pods])

    @pod_group.command("stop")
    @click.argument("pods", metavar="POD...", nargs=-1, required=True)
    @click.option("-t", "--time", "timeout", type=float, default=10, show_default=True,
                  help="seconds to wait after the stop signal before SIGKILL")
    @pass_app
    def pod_stop_cmd(app: Application, pods: tuple[str, ...], timeout: float) -> None:
        """Stop pods (StopPodSandbox): their containers, then their network and namespaces.

        \b
        Example:
          hanok pod stop -t 2 web
        """
        _each(pods, lambda ref: app.engine.pods.stop(ref, timeout))

    @pod_group.command("rm")
    @click.argument("pods", metavar="POD...", nargs=-1, required=True)
    @click.option("-f", "--force", is_flag=True, help="kill running containers first")
    @pass_app
    def pod_rm_cmd(app: Application, pods: tuple[str, ...], force: bool) -> None:
        """Remove pods: containers, namespaces, network endpoint, cgroup, volumes, record.

        \b
        Example:
          hanok pod rm -f web
        """
        _each(pods, lambda ref: app.engine.pods.remove(ref, force=force))

    @pod_group.command("logs")
    @click.argument("pod")
    @click.option("-c", "--container", default=None, help="the container's name in the pod")
    @click.option("-f", "--follow", is_flag=True, help="keep printing new output until the container exits")
    @click.option("-n", "--tail", default="all", show_default=True, help="only the last N lines")
    @click.option("-t", "--timestamps", is_flag=True, help="prefix each line with its time")
    @pass_app
    def pod_logs_cmd(app: Application, pod: str, container: str | None, follow: bool, tail: str,
                     timestamps: bool) -> None:
        """Print the stdout and stderr of a pod's container (-c NAME when it has several).

        \b
        Example:
          hanok pod logs web -c app --tail 20
        """
        from hanok.runtime import logs

        target = app.engine.pods.get(pod)
        if tail != "all" and not tail.isdigit():
            raise click.BadParameter(f"{tail!r}: expected a number or all", param_hint="--tail")
        if container is not None:
            c = target.member(container)
        else:
            members = target.containers()
            if len(members) != 1:
                names = ", ".join(sorted(target.short_name(m) for m in members)) or "none"
                raise click.UsageError(f"pod {target.ref} has {len(members)} containers ({names}): choose one with -c")
            c = members[0]

        logs.show(logs.read(c.path("ctr.log"), tail=None if tail == "all" else int(tail),
                            timestamps=timestamps, follow=follow, stop=c.output_complete))

    # ------------------------------------------------------------------ images

    @hanok.command("pull")
    @click.argument("ref")
    @click.option("--platform", default=None, metavar="OS/ARCH[/VARIANT]",
                  help="platform to pick from a multi-platform image (default: this host's)")
    @click.option("-q", "--quiet", is_flag=True, help="no progress display")
    @click.option("--json", "as_json", is_flag=True, help='print {"name", "digest", "id"} as JSON')
    @pass_app
    def pull_cmd(app: Application, ref: str, platform: str | None, quiet: bool, as_json: bool) -> None:
        """Pull the image REF from its registry; prints the stored name.

        REF is name[:tag][@digest] with Docker Hub's defaults (alpine =
        docker.io/library/alpine:latest). Credentials come from `hanok login`
        (docker's config.json); localhost and 127.0.0.1 are spoken to over
        plain http.

        \b
        Example:
          hanok pull alpine:3.19
          hanok pull --platform linux/arm64 --json localhost:5000/team/app:1
        """
        from hanok.images import registry

        progress = None
        if not (quiet or as_json) and sys.stderr.isatty():
            progress = _PullProgress(ref)
        try:
            name = registry.pull(app.store, ref, platform=platform, progress=progress)
        finally:
            if progress is not None:
                progress.finish()
        if as_json:
            image = app.store.image(name)
            _echo_json({"name": name, "digest": image.digest, "id": image.id})
        else:
            click.echo(name)

    @hanok.command("login")
    @click.argument("registry_name", metavar="REGISTRY")
    @click.option("-u", "--username", default=None, help="user name (asked for when missing)")
    @click.option("--password-stdin", is_flag=True, help="read the password from stdin")
    def login_cmd(registry_name: str, username: str | None, password_stdin: bool) -> None:
        """Log in to REGISTRY: check the credentials, then store them.

        They go to docker's config.json ($DOCKER_CONFIG/config.json, else
        ~/.docker/config.json, mode 0600), which `hanok pull` and docker read,
        or to the credential helper it names (credHelpers, credsStore).

        \b
        Example:
          echo "$TOKEN" | hanok login -u alice --password-stdin registry.example.com
        """
        from hanok.images import registry

        if password_stdin:
            if username is None:
                raise click.UsageError("--password-stdin needs --username")
            password = sys.stdin.read().rstrip("\r\n")
        else:
            if username is None:
                username = click.prompt("Username")
            password = click.prompt("Password", hide_input=True)
        if not password:
            raise click.UsageError("the password is empty")
        registry.login(registry_name, username, password)
        click.echo("Login Succeeded")

    @hanok.command("logout")
    @click.argument("registry_name", metavar="REGISTRY")
    def logout_cmd(registry_name: str) -> None:
        """Forget the credentials stored for REGISTRY (config.json and its credential helper).

        \b
        Example:
          hanok logout localhost:5000
        """
        from hanok.images import registry

        if registry.logout(registry_name):
            click.echo(f"Removing login credentials for {registry_name}")
        else:
            click.echo(f"Not logged in to {registry_name}")

    @hanok.command("load")
    @click.option("-i", "--input", "path", required=True, type=click.Path(),
                  help="OCI image layout (directory or tar) or docker save archive")
    @click.option("--json", "as_json", is_flag=True, help='print [{"name", "digest", "id"}] as JSON')
    @pass_app
    def load_cmd(app: Application, path: str, as_json: bool) -> None:
        """Load images from an OCI layout or a `docker save` archive.

        Prints the names of the loaded images, one per line.

        An image the archive gives no name is printed (and can be used) by
        its manifest digest.

        \b
        Example:
          hanok load -i busybox.tar
          skopeo copy docker://alpine oci:/tmp/alpine:3 && hanok load -i /tmp/alpine
        """
        from hanok.images import archive

        names = archive.load(app.store, path)
        if as_json:
            out = []
            for name in names:
                image = app.store.image(name)
                out.append({"name": None if name.startswith("sha256:") else name,
                            "digest": image.digest, "id": image.id})
            _echo_json(out)
        else:
            for name in names:
                click.echo(name)

    @hanok.command("save")
    @click.argument("names", metavar="NAME...", nargs=-1, required=True)
    @click.option("-o", "--output", "dest", required=True, type=click.Path(),
                  help="where to write the OCI layout: a directory, or a tar when it ends in .tar")
    @pass_app
    def save_cmd(app: Application, names: tuple[str, ...], dest: str) -> None:
        """Write images as an OCI image layout.

        skopeo, umoci and `hanok load` read it.

        \b
        Example:
          hanok save -o busybox.tar busybox:latest
          hanok save -o /tmp/layout alpine:3.19 alpine:3.20
        """
        from hanok.images import archive

        archive.save(app.store, list(names), dest)

    @hanok.command("import")
    @click.argument("source", metavar="DIR|TAR", type=click.Path())
    @click.argument("name")
    @pass_app
    def import_cmd(app: Application, source: str, name: str) -> None:
        """Make a one-layer image NAME from a root filesystem.

        Prints the image's name.

        DIR is a directory holding the root filesystem; TAR a tar archive of
        one (plain, gzip, or zstd when the zstandard module is installed).

        \b
        Example:
          hanok import /tmp/demo/rootfs localhost/demo:1
        """
        from hanok.images import archive

        click.echo(archive.import_rootfs(app.store, source, name))

    @hanok.command("images")
    @click.option("--json", "as_json", is_flag=True,
                  help="one object per name: name, digest, id, size, created")
    @click.option("-q", "--quiet", is_flag=True, help="only image ids (12 hex), each once")
    @pass_app
    def images_cmd(app: Application, as_json: bool, quiet: bool) -> None:
        """List stored images: one row per name.

        SIZE is the sum of the image's layer blobs as stored (compressed).

        \b
        Example:
          hanok images
          hanok rmi $(hanok images -q)
        """
        rows = []
        for entry in app.store.list_images():
            for name in entry["names"]:
                rows.append((name, entry))
        if as_json:
            out = []
            for name, entry in rows:
                item = {"name": name, "digest": entry["digest"], "id": entry.get("id"),
                        "size": entry.get("size"), "created": entry.get("created") or None}
                if "error" in entry:
                    item["error"] = entry["error"]
                out.append(item)
            _echo_json(out)
            return
        for name, entry in rows:
            if "error" in entry:
                click.echo(f"hanok: {name}: {entry['error']}", err=True)
        if quiet:
            seen: dict[str, None] = {}
            for _, entry in rows:
                if entry.get("id"):
                    seen.setdefault(_short_id(entry["id"]), None)
            for short in seen:
                click.echo(short)
            return
        table = [("REPOSITORY", "TAG", "IMAGE ID", "SIZE")]
        for name, entry in sorted(rows, key=lambda r: _split_name(r[0])):
            repo, tag = _split_name(name)
            if "error" in entry:
                table.append((repo, tag, "<corrupt>", "-"))
            else:
                table.append((repo, tag, _short_id(entry["id"]), _human_size(entry["size"])))
        click.echo(_table(table))

    @hanok.command("rmi")
    @click.argument("names", metavar="NAME...", nargs=-1, required=True)
    @click.option("-f", "--force", is_flag=True, help="untag even when containers use the image")
    @pass_app
    def rmi_cmd(app: Application, names: tuple[str, ...], force: bool) -> None:
        """Remove image names.

        A name removes that name; a digest or id removes every name of the image.

        The blobs and layers stay until `hanok image prune`, and as long as
        a container uses them. An image that containers use is kept unless
        -f is given. Every NAME is tried; the exit code is 125 when any of
        them failed.

        \b
        Example:
          hanok rmi alpine:3.19
          hanok rmi 3f57d9401f8d
        """
        failed = False
        for name in names:
            try:
                if not force:
                    users = app.engine.users_of_image(app.store.image(name).id)
                    if users:
                        raise HanokError(f"unable to remove {name}: container {users[0].name} uses it "
                                         f"(remove the container first, or use -f)")
                removed = app.store.remove(name)
            except HanokError as e:
                click.echo(f"hanok: {e}", err=True)
                failed = True
                continue
            for n in removed:
                click.echo(f"Untagged: {n}")
        if failed:
            sys.exit(125)

    @hanok.group("image", cls=Group)
    def image_group() -> None:
        """Inspect and clean up stored images.

        \b
        Example:
          hanok image inspect busybox:local
          hanok image prune
        """

    @image_group.command("inspect")
    @click.argument("name")
    @pass_app
    def image_inspect_cmd(app: Application, name: str) -> None:
        """Print an image as JSON.

        Names, digest, id, size, manifest, config and unpacked layer paths.

        NAME is a name, a digest, or an id prefix of at least 12 hex digits.

        \b
        Example:
          hanok image inspect alpine:3.19
        """
        _echo_json(app.store.inspect(name))

    @image_group.command("prune")
    @click.option("--json", "as_json", is_flag=True, help='print {"blobs", "layers", "bytes"} as JSON')
    @pass_app
    def image_prune_cmd(app: Application, as_json: bool) -> None:
        """Remove blobs and layers that no image and no container uses.

        Prints what was deleted and the space reclaimed.

        \b
        Example:
          hanok image prune
          hanok rmi alpine:3.19 && hanok image prune --json
        """
        freed = app.store.gc(in_use_layers=app.engine.in_use_layers())
        if as_json:
            _echo_json(freed)
            return
        for digest in sorted(freed["blobs"]):
            click.echo(f"deleted blob {digest}")
        for diff_id in sorted(freed["layers"]):
            click.echo(f"deleted layer {diff_id}")
        click.echo(f"Total reclaimed space: {_human_size(freed['bytes'])}")

    return hanok


if __name__ == "__main__":
    sys.exit(oci_main())
