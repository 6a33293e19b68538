"""Container state on disk, liveness, and the lifecycle's allowed transitions.

Layout under the state root (default /run/hanok-oci, a tmpfs: gone on reboot,
as container state should be):

    <root>/<id>/state.json   this module's record (written tmp+rename, no fsync: like runc's, it
                             describes processes, which a power loss ends anyway)
    <root>/<id>/config.json  the validated config, for exec and delete
    <root>/<id>/exec.fifo    present while the container is `created`
    <root>/<id>/lock         flock()ed by every command that changes the container

Status is derived, never trusted from disk alone: the init's pid plus its start
time (from /proc/<pid>/stat) says whether it is alive, which a reused pid cannot
fake; the exec fifo says whether `start` has happened.
"""
from __future__ import annotations

import os
import time

from hanok.runtime import jsonio
from hanok.runtime.errors import BadState, Exists, InvalidArgument, NotFound

CREATING = "creating"
CREATED = "created"
RUNNING = "running"
STOPPED = "stopped"
PAUSED = "paused"

# operation -> statuses it is allowed from, and runc's wording when it is not
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "start": (frozenset({CREATED}), "cannot start {what}"),
    "kill": (frozenset({CREATED, RUNNING, PAUSED}), "container not running"),
    "exec": (frozenset({CREATED, RUNNING}), "cannot exec in a {status} container"),
    "pause": (frozenset({RUNNING}), "container not running"),
    "resume": (frozenset({PAUSED}), "container not paused"),
    "delete": (frozenset({STOPPED}), "cannot delete container {id} that is not stopped: {status}"),
}
_START_WHAT = {RUNNING: "an already running container", STOPPED: "a container that has stopped",
               PAUSED: "a paused container"}

STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
FIFO = "exec.fifo"
MAX_ID_LENGTH = 1024
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.")


def check_transition(op: str, status: str, container_id: str) -> None:
    """Raise BadState unless `op` is allowed for a container in `status`."""
    allowed, message = TRANSITIONS[op]
    if status not in allowed:
        raise BadState(message.format(id=container_id, status=status,
                                      what=_START_WHAT.get(status, f"a {status} container")))


def validate_id(container_id: str) -> None:
    """Ids become directory names: no '/', no '..', bounded, runc's character set."""
    if (not container_id or len(container_id) > MAX_ID_LENGTH or container_id in (".", "..")
            or not _ID_CHARS.issuperset(container_id)):
        shown = container_id if len(container_id) <= 64 else container_id[:64] + "..."
        raise InvalidArgument(f"invalid id format: {shown!r}")


def container_dir(root: str, container_id: str) -> str:
    validate_id(container_id)
    return os.path.join(root, container_id)


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone.

    A zombie counts as gone: it will never run again, and waiting for its
    parent to reap it must not make a container look alive.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def is_alive(record: dict) -> bool:
    pid = record.get("pid") or 0
    return pid > 0 and proc_start_time(pid) == record.get("start_time")


def status_of(record: dict, cdir: str) -> str:
    """Derive the live status from the record, /proc and the exec fifo."""
    if not is_alive(record):
        return STOPPED
    if os.path.exists(os.path.join(cdir, FIFO)):
        return CREATED
    if record.get("paused"):
        return PAUSED
    return RUNNING


def rfc3339_now() -> str:
    """UTC time with nanoseconds, the format runc writes for `created`."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"


def write_atomic(path: str, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Write a file so that readers see the old or the new content, never half.

    `durable=False` skips the fsync (~1 ms on ext4, a third of `hanok-oci
    state`): for files rewritten on every start (a bundle's config.json,
    /etc/hosts) and for records of live processes (runtime state, pid files,
    run.json), which a power loss makes moot. A crash of the writer still never
    tears them.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def save(cdir: str, record: dict) -> None:
    write_atomic(os.path.join(cdir, STATE_FILE), jsonio.dumps(record).encode(), durable=False)


def load(root: str, container_id: str) -> tuple[str, dict]:
    """Return (container dir, record); NotFound with runc's text if absent."""
    cdir = container_dir(root, container_id)
    try:
        return cdir, jsonio.load_file(os.path.join(cdir, STATE_FILE))  # type: ignore[return-value]
    except FileNotFoundError:
        raise NotFound("container does not exist") from None
    except ValueError:
        raise NotFound(f"container {container_id} has a corrupt state file; `delete --force` removes it") from None


def load_config(cdir: str) -> dict:
    return jsonio.load_file(os.path.join(cdir, CONFIG_FILE))  # type: ignore[return-value]


def remove_dir(cdir: str) -> None:
    """Remove a container's state dir (flat: a few files, no subdirectories)."""
    try:
        names = os.listdir(cdir)
    except FileNotFoundError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(cdir, name))
        except FileNotFoundError:
            pass
    os.rmdir(cdir)


def make_dir(root: str, container_id: str) -> str:
    """Create the container's state dir; Exists if the id is taken."""
    cdir = container_dir(root, container_id)
    os.makedirs(root, mode=0o711, exist_ok=True)
    try:
        # 0711: a container root mapped to another uid must still reach its exec fifo
        os.mkdir(cdir, 0o711)
    except FileExistsError:
        raise Exists(f"container with id exists: {container_id}") from None
    return cdir


class Lock:
    """An exclusive flock on the container's lock file, released on close."""

    def __init__(self, cdir: str):
        import fcntl

        try:
            self.fd = os.open(os.path.join(cdir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise NotFound("container does not exist") from None
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def list_ids(root: str) -> list[str]:
    try:
        return sorted(e for e in os.listdir(root) if os.path.isfile(os.path.join(root, e, STATE_FILE)))
    except FileNotFoundError:
        return []


def oci_state(record: dict, status: str) -> dict:
    """The runtime-spec state object that `state` prints and hooks read on stdin."""
    out = {
        "ociVersion": record.get("ociVersion", "1.0.2"),
        "id": record["id"],
        "pid": record["pid"] if status != STOPPED else 0,
        "status": status,
        "bundle": record["bundle"],
        "rootfs": record["rootfs"],
        "created": record["created"],
        "owner": "",
    }
    if record.get("annotations"):
        out["annotations"] = record["annotations"]
    return out
