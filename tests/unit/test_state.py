"""hanok.runtime.state: ids, the transition table, liveness, and the files on disk."""
from __future__ import annotations

import calendar
import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from hanok.runtime import state
from hanok.runtime.errors import BadState, Exists, InvalidArgument, NotFound

STATUSES = ("creating", "created", "running", "stopped", "paused")

# ------------------------------------------------------------ ids


@pytest.mark.parametrize("cid", [
    "a", "abc", "ABC123", "my-container_1.2+3", "0", "-x", "a" * 1024, "a..b", "...",
    "0123456789abcdef" * 4,
])
def test_validate_id_accepts(cid: str) -> None:
    state.validate_id(cid)
    assert state.container_dir("/run/x", cid) == "/run/x/" + cid


@pytest.mark.parametrize("cid", [
    "", ".", "..", "a/b", "../x", "/abs", "x/", "a" * 1025, "a b", " a", "a\n", "a\x00b", "é", "a:b",
    "a*", "a\\b",
])
def test_validate_id_rejects(cid: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        state.validate_id(cid)
    assert str(info.value).startswith("invalid id format")
    assert "\n" not in str(info.value)
    assert len(str(info.value)) < 120  # long ids are cut in the message
    with pytest.raises(InvalidArgument):
        state.container_dir("/run/x", cid)


# ------------------------------------------------------------ transitions

ALLOWED = {
    "start": {"created"},
    "kill": {"created", "running", "paused"},
    "exec": {"created", "running"},
    "pause": {"running"},
    "resume": {"paused"},
    "delete": {"stopped"},
}

REFUSED_MESSAGE = {
    ("start", "running"): "cannot start an already running container",
    ("start", "stopped"): "cannot start a container that has stopped",
    ("start", "paused"): "cannot start a paused container",
    ("start", "creating"): "cannot start a creating container",
    ("kill", "stopped"): "container not running",
    ("kill", "creating"): "container not running",
    ("exec", "stopped"): "cannot exec in a stopped container",
    ("exec", "paused"): "cannot exec in a paused container",
    ("exec", "creating"): "cannot exec in a creating container",
    ("pause", "created"): "container not running",
    ("pause", "stopped"): "container not running",
    ("pause", "paused"): "container not running",
    ("pause", "creating"): "container not running",
    ("resume", "created"): "container not paused",
    ("resume", "running"): "container not paused",
    ("resume", "stopped"): "container not paused",
    ("resume", "creating"): "container not paused",
    ("delete", "running"): "cannot delete container X that is not stopped: running",
    ("delete", "created"): "cannot delete container X that is not stopped: created",
    ("delete", "paused"): "cannot delete container X that is not stopped: paused",
    ("delete", "creating"): "cannot delete container X that is not stopped: creating",
}


def test_transition_table_covers_the_operations() -> None:
    assert set(state.TRANSITIONS) == set(ALLOWED)
    for op, (allowed, _message) in state.TRANSITIONS.items():
        assert set(allowed) == ALLOWED[op], op


def test_refusal_table_is_complete() -> None:
    """Every (op, status) pair is either allowed or has an expected message here."""
    for op in ALLOWED:
        for status in STATUSES:
            assert (status in ALLOWED[op]) != ((op, status) in REFUSED_MESSAGE), (op, status)


@pytest.mark.parametrize("op, status", [(op, s) for op in ALLOWED for s in STATUSES])
def test_check_transition(op: str, status: str) -> None:
    if status in ALLOWED[op]:
        state.check_transition(op, status, "X")
        return
    with pytest.raises(BadState) as info:
        state.check_transition(op, status, "X")
    assert type(info.value) is BadState
    assert str(info.value) == REFUSED_MESSAGE[(op, status)]


def test_check_transition_names_the_container() -> None:
    with pytest.raises(BadState, match=r"^cannot delete container my-ctr that is not stopped: running$"):
        state.check_transition("delete", "running", "my-ctr")


# ------------------------------------------------------------ liveness


def test_proc_start_time_self() -> None:
    first = state.proc_start_time(os.getpid())
    assert isinstance(first, int) and first > 0
    time.sleep(0.02)
    assert state.proc_start_time(os.getpid()) == first


def test_proc_start_time_matches_proc() -> None:
    with open(f"/proc/{os.getpid()}/stat", "rb") as f:
        data = f.read()
    assert state.proc_start_time(os.getpid()) == int(data[data.rindex(b")") + 2:].split()[19])


def test_proc_start_time_nonexistent() -> None:
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    assert state.proc_start_time(pid_max + 1) is None


def _fork_exit() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return pid


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2:].split()[0].decode()


def test_proc_start_time_reaped_child() -> None:
    pid = _fork_exit()
    os.waitpid(pid, 0)
    assert state.proc_start_time(pid) is None


def test_proc_start_time_zombie_child() -> None:
    pid = _fork_exit()
    try:
        deadline = time.monotonic() + 5
        while _proc_state(pid) != "Z":
            assert time.monotonic() < deadline, "child did not become a zombie"
            time.sleep(0.005)
        assert state.proc_start_time(pid) is None
        assert not state.is_alive({"pid": pid, "start_time": 0})
    finally:
        os.waitpid(pid, 0)


def test_proc_start_time_strange_comm(tmp_path: Path) -> None:
    """comm may hold spaces and ')' : the parse must start after the last ')'."""
    exe = tmp_path / "a) b ) c"
    os.symlink("/bin/sleep", exe)
    child = subprocess.Popen([str(exe), "30"])
    try:
        deadline = time.monotonic() + 5
        while True:
            with open(f"/proc/{child.pid}/stat", "rb") as f:
                if b"a) b ) c" in f.read():
                    break
            assert time.monotonic() < deadline
            time.sleep(0.005)
        value = state.proc_start_time(child.pid)
        assert isinstance(value, int)
        assert value >= state.proc_start_time(os.getpid())  # type: ignore[operator]
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "60"])
    yield child
    child.kill()
    child.wait()


def _record(pid: int, start_time: int | None, **extra: object) -> dict:
    rec = {"id": "c1", "pid": pid, "start_time": start_time, "bundle": "/b", "rootfs": "/b/rootfs",
           "created": "2024-01-01T00:00:00.000000000Z"}
    rec.update(extra)
    return rec


def test_status_of(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    pid = sleeper.pid
    start = state.proc_start_time(pid)
    assert start is not None
    # live pid but a different start time: the pid was reused, the container is gone
    assert state.status_of(_record(pid, start + 1), str(tmp_path)) == "stopped"
    assert state.status_of(_record(pid, None), str(tmp_path)) == "stopped"
    # live, no fifo: started
    assert state.status_of(_record(pid, start), str(tmp_path)) == "running"
    assert state.status_of(_record(pid, start, paused=True), str(tmp_path)) == "paused"
    # live, fifo present: created
    (tmp_path / state.FIFO).write_text("")
    assert state.status_of(_record(pid, start), str(tmp_path)) == "created"
    # not alive wins over everything
    assert state.status_of(_record(0, start), str(tmp_path)) == "stopped"
    assert state.status_of({"id": "c1"}, str(tmp_path)) == "stopped"


def test_status_of_dead_pid(tmp_path: Path) -> None:
    pid = _fork_exit()
    os.waitpid(pid, 0)
    assert state.status_of(_record(pid, 12345), str(tmp_path)) == "stopped"


def test_is_alive(sleeper: subprocess.Popen[bytes]) -> None:
    start = state.proc_start_time(sleeper.pid)
    assert state.is_alive({"pid": sleeper.pid, "start_time": start})
    assert not state.is_alive({"pid": sleeper.pid, "start_time": (start or 0) + 1})
    assert not state.is_alive({"pid": 0, "start_time": start})
    assert not state.is_alive({"pid": -1, "start_time": start})
    assert not state.is_alive({"pid": None})
    assert not state.is_alive({})


# ------------------------------------------------------------ time


def test_rfc3339_now() -> None:
    before = time.time()
    value = state.rfc3339_now()
    after = time.time()
    m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{9})Z", value)
    assert m, value
    seconds = calendar.timegm(time.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")) + int(m.group(7)) / 1e9
    assert before - 1 <= seconds <= after + 1


def test_rfc3339_now_increases() -> None:
    values = [state.rfc3339_now() for _ in range(50)]
    assert values == sorted(values)


# ------------------------------------------------------------ files


def test_write_atomic(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    state.write_atomic(str(target), b"one")
    assert target.read_bytes() == b"one"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    state.write_atomic(str(target), b"two, longer")
    assert target.read_bytes() == b"two, longer"
    state.write_atomic(str(target), b"3")  # shorter: no leftover bytes from before
    assert target.read_bytes() == b"3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_write_atomic_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    state.write_atomic(str(target), b"x", mode=0o644)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_write_atomic_missing_dir_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        state.write_atomic(str(tmp_path / "missing" / "f"), b"x")
    assert list(tmp_path.iterdir()) == []


def test_make_dir(tmp_path: Path) -> None:
    root = tmp_path / "root"  # created on demand
    cdir = state.make_dir(str(root), "c1")
    assert cdir == str(root / "c1")
    assert os.path.isdir(cdir)
    assert stat.S_IMODE(os.stat(cdir).st_mode) & 0o711 == 0o711
    with pytest.raises(Exists) as info:
        state.make_dir(str(root), "c1")
    assert type(info.value) is Exists
    assert str(info.value) == "container with id exists: c1"
    assert os.listdir(root) == ["c1"]


@pytest.mark.parametrize("cid", ["..", "../x", "a/b", ""])
def test_make_dir_bad_id_creates_nothing(tmp_path: Path, cid: str) -> None:
    root = tmp_path / "root"
    with pytest.raises(InvalidArgument):
        state.make_dir(str(root), cid)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_save_load_round_trip(tmp_path: Path) -> None:
    cdir = state.make_dir(str(tmp_path), "c1")
    rec = _record(123, 456, annotations={"k": "v"})
    state.save(cdir, rec)
    assert json.loads(Path(cdir, state.STATE_FILE).read_text()) == rec
    got_dir, got = state.load(str(tmp_path), "c1")
    assert got_dir == cdir
    assert got == rec
    assert state.list_ids(str(tmp_path)) == ["c1"]


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        state.load(str(tmp_path), "nope")
    assert str(info.value) == "container does not exist"
    state.make_dir(str(tmp_path), "half")  # a dir without state.json: a create in progress
    with pytest.raises(NotFound, match="^container does not exist$"):
        state.load(str(tmp_path), "half")


def test_load_corrupt(tmp_path: Path) -> None:
    cdir = state.make_dir(str(tmp_path), "c1")
    Path(cdir, state.STATE_FILE).write_text('{"id": ')
    with pytest.raises(NotFound) as info:
        state.load(str(tmp_path), "c1")
    assert "c1" in str(info.value) and "corrupt" in str(info.value)


def test_load_bad_id(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        state.load(str(tmp_path), "../etc")


def test_list_ids(tmp_path: Path) -> None:
    assert state.list_ids(str(tmp_path / "missing")) == []
    for cid in ("b", "a", "c"):
        state.save(state.make_dir(str(tmp_path), cid), _record(0, 0, id=cid))
    state.make_dir(str(tmp_path), "half")  # no state.json: not listed
    (tmp_path / "stray-file").write_text("")
    assert state.list_ids(str(tmp_path)) == ["a", "b", "c"]


def test_remove_dir(tmp_path: Path) -> None:
    cdir = state.make_dir(str(tmp_path), "c1")
    state.save(cdir, _record(0, 0))
    Path(cdir, state.CONFIG_FILE).write_text("{}")
    os.mkfifo(os.path.join(cdir, state.FIFO))
    Path(cdir, "lock").write_text("")
    state.remove_dir(cdir)
    assert not os.path.exists(cdir)
    assert os.listdir(tmp_path) == []
    state.remove_dir(cdir)  # already gone: no error


def test_lock(tmp_path: Path) -> None:
    cdir = state.make_dir(str(tmp_path), "c1")
    with state.Lock(cdir) as lock:
        assert lock.fd >= 0
        assert os.path.exists(os.path.join(cdir, "lock"))
    with pytest.raises(NotFound, match="^container does not exist$"):
        state.Lock(str(tmp_path / "gone"))


# ------------------------------------------------------------ oci_state


def test_oci_state_running() -> None:
    rec = _record(42, 7, ociVersion="1.1.0", annotations={"a": "b"})
    out = state.oci_state(rec, "running")
    assert out == {"ociVersion": "1.1.0", "id": "c1", "pid": 42, "status": "running", "bundle": "/b",
                   "rootfs": "/b/rootfs", "created": "2024-01-01T00:00:00.000000000Z", "owner": "",
                   "annotations": {"a": "b"}}
    assert list(out)[:4] == ["ociVersion", "id", "pid", "status"]


def test_oci_state_stopped_has_pid_zero_and_no_empty_annotations() -> None:
    out = state.oci_state(_record(42, 7, annotations={}), "stopped")
    assert out["pid"] == 0
    assert out["status"] == "stopped"
    assert out["ociVersion"] == "1.0.2"  # records from before the field existed
    assert "annotations" not in out
    assert set(out) == {"ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "owner"}


@pytest.mark.parametrize("status", ["created", "running", "paused"])
def test_oci_state_keeps_pid_while_alive(status: str) -> None:
    assert state.oci_state(_record(42, 7), status)["pid"] == 42
