"""The cgroup v1 manager on this host (hybrid: v1 controllers + a hugetlb-only cgroup2).

Root on the host. Each test's cgroups live under a unique relative path
"hanok-test-<uuid>/..." (so, per OCI, under the caller's own cgroup in every
hierarchy: the memory hierarchy keeps the test processes inside the memory
cgroup this session already runs in). A fixture kills and removes them even
when a test fails, and a module-level check fails on any hanok-test-* left.
"""
from __future__ import annotations

import glob
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hanok import cgroups
from hanok.cgroups.v1 import V1Manager
from hanok.runtime.errors import CgroupError, SpecError

MB = 1 << 20


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    mode = cgroups.host_mode()
    if mode == cgroups.UNIFIED:
        return "cgroup v2 host: the v1 manager is not used here (tests/vm covers v2)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _bases() -> list[str]:
    """Where test cgroups can appear: each v1 hierarchy's root and the caller's cgroup in it."""
    out = set()
    for h in cgroups.hierarchies():
        if h.fstype == "cgroup":
            out.add(h.mountpoint)
            out.add(h.directory)
    return sorted(out)


def _leftovers(pattern: str = "hanok-test-*") -> list[str]:
    return sorted(p for base in _bases() for p in glob.glob(os.path.join(base, pattern)))


def _remove_tree(path: str) -> None:
    for directory, _dirs, _files in sorted(os.walk(path), key=lambda t: -t[0].count("/")):
        for pid in Path(directory, "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _ in range(100):
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)


@pytest.fixture(scope="module", autouse=True)
def no_leaked_cgroups() -> Iterator[None]:
    before = set(_leftovers())
    yield
    leaked = sorted(set(_leftovers()) - before)
    for path in leaked:
        _remove_tree(path)
    assert not leaked, f"cgroups left behind: {leaked}"


class Cgroups:
    """Hands out managers under one unique test root; cleans everything up."""

    def __init__(self) -> None:
        self.top = f"hanok-test-{uuid.uuid4().hex[:12]}"
        self.managers: list[cgroups.Manager] = []
        self.children: list[subprocess.Popen] = []

    def manager(self, name: str = "c1") -> V1Manager:
        m = cgroups.manager(f"{self.top}/{name}", name)
        assert isinstance(m, V1Manager)
        self.managers.append(m)
        return m

    def spawn(self, args: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(args, **kw)
        self.children.append(p)
        return p

    def gated(self, code: str) -> subprocess.Popen:
        """A python child that waits for a line on stdin before running `code`."""
        return self.spawn([sys.executable, "-c", "import sys; sys.stdin.readline()\n" + code],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def cleanup(self) -> None:
        for p in self.children:
            if p.poll() is None:
                p.kill()
            p.wait()
        errors = []
        for m in reversed(self.managers):
            try:
                m.kill()
                m.destroy()
            except Exception as e:  # keep cleaning, report after
                errors.append(e)
        for path in _leftovers(self.top):
            _remove_tree(path)
        if errors:
            raise errors[0]


@pytest.fixture
def cg() -> Iterator[Cgroups]:
    c = Cgroups()
    try:
        yield c
    finally:
        c.cleanup()


def _read(directory: str, name: str) -> str:
    return Path(directory, name).read_text().strip()


def _go(p: subprocess.Popen) -> None:
    assert p.stdin is not None
    p.stdin.write("go\n")
    p.stdin.flush()


# ---------------------------------------------------------------- limits


def test_apply_writes_the_v1_files(cg: Cgroups) -> None:
    m = cg.manager()
    m.create()
    for directory in m.dirs:
        assert os.path.isdir(directory)
    m.apply({
        "memory": {"limit": 64 * MB, "reservation": 32 * MB, "swap": 64 * MB},
        "pids": {"limit": 10},
        "cpu": {"shares": 512, "quota": 20000, "period": 50000, "cpus": "0", "mems": "0"},
    })
    c = m.controllers
    assert _read(c["memory"], "memory.limit_in_bytes") == str(64 * MB)
    assert _read(c["memory"], "memory.memsw.limit_in_bytes") == str(64 * MB)
    assert _read(c["memory"], "memory.soft_limit_in_bytes") == str(32 * MB)
    assert _read(c["pids"], "pids.max") == "10"
    assert _read(c["cpu"], "cpu.shares") == "512"
    assert _read(c["cpu"], "cpu.cfs_quota_us") == "20000"
    assert _read(c["cpu"], "cpu.cfs_period_us") == "50000"
    assert _read(c["cpuset"], "cpuset.cpus") == "0"
    assert _read(c["cpuset"], "cpuset.mems") == "0"
    # live update: raise the memory limit above the old memsw (memsw must be written first)
    m.apply({"memory": {"limit": 128 * MB, "swap": 256 * MB}, "cpu": {"quota": -1}})
    assert _read(c["memory"], "memory.limit_in_bytes") == str(128 * MB)
    assert _read(c["memory"], "memory.memsw.limit_in_bytes") == str(256 * MB)
    assert _read(c["cpu"], "cpu.cfs_quota_us") == "-1"
    m.apply({"memory": {"limit": -1}})
    assert int(_read(c["memory"], "memory.limit_in_bytes")) >= 1 << 62
    s = m.stats()
    assert s["memory"]["limit"] is None and s["pids"]["limit"] == 10


def test_devices_rules(cg: Cgroups) -> None:
    m = cg.manager()
    m.create()
    m.apply({"devices": [{"allow": False, "access": "rwm"},
                         {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                         {"allow": True, "type": "c", "major": 136, "access": "rw"}]})
    assert _read(m.controllers["devices"], "devices.list").splitlines() == ["c 1:3 rwm", "c 136:* rw"]


def test_quota_without_period_gets_the_default_period(cg: Cgroups) -> None:
    m = cg.manager()
    m.create()
    m.apply({"cpu": {"quota": 25000}})
    assert _read(m.controllers["cpu"], "cpu.cfs_quota_us") == "25000"
    assert _read(m.controllers["cpu"], "cpu.cfs_period_us") == "100000"


@pytest.mark.parametrize("resources, exc, text", [
    ({"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]}, CgroupError,
     "linux.resources.hugepageLimits: needs the hugetlb controller"),
    ({"unified": {"memory.high": "1G"}}, CgroupError, "linux.resources.unified: needs cgroup v2"),
    ({"network": {"classID": 5}}, CgroupError, "linux.resources.network.classID: needs the net_cls controller"),
    ({"memory": {"limit": "lots"}}, SpecError, "linux.resources.memory.limit: must be a positive integer"),
    ({"pids": {"limit": -4}}, SpecError, "linux.resources.pids.limit:"),
])
def test_bad_or_unsupported_limits_name_the_setting(cg: Cgroups, resources: dict, exc: type, text: str) -> None:
    m = cg.manager()
    m.create()
    with pytest.raises(exc) as info:
        m.apply(resources)
    assert text in str(info.value)
    m.destroy()
    assert not m.exists()


def test_blkio_weight_without_cfq_or_bfq_is_a_clear_error(cg: Cgroups) -> None:
    m = cg.manager()
    m.create()
    blkio = m.controllers["blkio"]
    if os.path.exists(os.path.join(blkio, "blkio.weight")) or os.path.exists(os.path.join(blkio, "blkio.bfq.weight")):
        m.apply({"blockIO": {"weight": 500}})
        return
    with pytest.raises(CgroupError, match=r"linux.resources.blockIO.weight: .*blkio.weight does not exist"):
        m.apply({"blockIO": {"weight": 500}})


# ---------------------------------------------------------------- processes


def test_enter_and_procs(cg: Cgroups) -> None:
    m = cg.manager()
    m.create()
    p = cg.spawn(["sleep", "30"])
    m.enter(p.pid)
    assert m.procs() == [p.pid]
    membership = Path(f"/proc/{p.pid}/cgroup").read_text()
    for line in membership.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers:  # every v1 hierarchy, not the cgroup2 one
            assert path.endswith(m.path), line
    m.kill()
    assert p.wait(5) == -signal.SIGKILL
    assert m.procs() == []


def test_a_process_enters_itself_into_every_hierarchy(cg: Cgroups) -> None:
    """enter_self (how a container's init joins on v1): the caller, and only it, moves in everywhere."""
    m = cg.manager()
    m.create()
    assert m.can_enter_self
    spec = f"{cg.top}/c1"
    p = cg.gated(f"from hanok import cgroups; cgroups.manager({spec!r}, 'c1').enter_self(); "
                 "print('in', flush=True); import time; time.sleep(30)")
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.stdout.readline() == "in\n"
    assert m.procs() == [p.pid]
    hierarchies = [line.split(":", 2) for line in Path(f"/proc/{p.pid}/cgroup").read_text().splitlines()]
    assert [path for _, controllers, path in hierarchies if controllers and not path.endswith(m.path)] == []
    assert os.getpid() not in m.procs()
    m.kill()
    assert p.wait(5) == -signal.SIGKILL


def test_pids_limit_stops_forks(cg: Cgroups) -> None:
    m = cg.manager()
    m.create()
    m.apply({"pids": {"limit": 3}})
    p = cg.gated(
        "import os, time\n"
        "ok = 0\n"
        "for _ in range(5):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30); os._exit(0)\n"
        "        ok += 1\n"
        "    except OSError as e:\n"
        "        print('forked', ok, 'then', e.strerror, flush=True); break\n"
        "else:\n"
        "    print('forked', ok, flush=True)\n"
        "time.sleep(30)\n")
    m.enter(p.pid)
    _go(p)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "forked 2 then Resource temporarily unavailable"
    assert len(m.procs()) == 3
    assert m.stats()["pids"]["current"] == 3
    m.kill()
    assert m.procs() == []


def test_freeze_stops_progress_and_thaw_resumes(cg: Cgroups, tmp_path: Path) -> None:
    m = cg.manager()
    m.create()
    counter = tmp_path / "counter"
    p = cg.gated(
        "import os, time\n"
        f"n = 0\npath = {str(counter)!r}\n"
        "while True:\n"
        "    n += 1\n"
        "    with open(path + '.tmp', 'w') as f: f.write(str(n))\n"
        "    os.rename(path + '.tmp', path)\n"
        "    time.sleep(0.005)\n")
    m.enter(p.pid)
    _go(p)

    def value() -> int:
        for _ in range(200):
            try:
                return int(counter.read_text())
            except (FileNotFoundError, ValueError):
                time.sleep(0.01)
        raise AssertionError("counter never written")

    first = value()
    time.sleep(0.1)
    assert value() > first
    m.freeze()
    assert m.is_frozen()
    frozen_at = value()
    time.sleep(0.3)
    assert value() == frozen_at
    m.thaw()
    assert not m.is_frozen()
    time.sleep(0.2)
    assert value() > frozen_at


def test_kill_kills_every_process(cg: Cgroups) -> None:
    m = cg.manager()
    m.create()
    p = cg.spawn(["sh", "-c", "read x; sleep 30 & sleep 30 & sleep 30 & wait"],
                 stdin=subprocess.PIPE, text=True)
    m.enter(p.pid)
    p.stdin.write("go\n")
    p.stdin.flush()
    deadline = time.monotonic() + 5
    while len(m.procs()) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    pids = m.procs()
    assert len(pids) == 4
    m.kill()
    assert m.procs() == []
    assert p.wait(5) == -signal.SIGKILL
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_kill_a_frozen_cgroup(cg: Cgroups) -> None:
    m = cg.manager()
    m.create()
    p = cg.spawn(["sleep", "30"])
    m.enter(p.pid)
    m.freeze()
    m.kill()
    assert p.wait(5) == -signal.SIGKILL
    assert m.procs() == []


def test_memory_limit_oom_kills(cg: Cgroups) -> None:
    m = cg.manager()
    m.create()
    m.apply({"memory": {"limit": 20 * MB, "swap": 20 * MB}})  # memory+swap = memory: no swap to escape to
    p = cg.gated("x = b'x' * (100 << 20)\nprint('survived', flush=True)\n")
    m.enter(p.pid)
    _go(p)
    assert p.wait(30) == -signal.SIGKILL
    oom = dict(line.split() for line in Path(m.controllers["memory"], "memory.oom_control").read_text().splitlines())
    assert int(oom["oom_kill"]) >= 1
    s = m.stats()
    assert s["memory"]["oom_kill"] >= 1
    assert s["memory"]["limit"] == 20 * MB
    assert s["memory"]["peak"] <= 20 * MB


# ---------------------------------------------------------------- removal


def test_destroy_removes_every_directory_and_is_idempotent(cg: Cgroups) -> None:
    m = cg.manager()
    m.create()
    p = cg.spawn(["sleep", "30"])
    m.enter(p.pid)
    os.mkdir(os.path.join(m.controllers["memory"], "inner"))  # a child cgroup made from inside
    m.kill()
    p.wait()
    m.destroy()
    assert not m.exists()
    assert _leftovers(cg.top) == []
    m.destroy()


def test_destroy_waits_for_exiting_processes(cg: Cgroups) -> None:
    m = cg.manager()
    m.create()
    p = cg.spawn(["sleep", "30"])
    m.enter(p.pid)
    p.send_signal(signal.SIGTERM)
    m.destroy()  # EBUSY until the process is gone: retried
    assert not m.exists()


def test_destroy_refuses_while_processes_live(cg: Cgroups, monkeypatch: pytest.MonkeyPatch) -> None:
    import hanok.cgroups._io as io_mod

    m = cg.manager()
    m.create()
    p = cg.spawn(["sleep", "30"])
    m.enter(p.pid)
    real = io_mod.rmdir
    monkeypatch.setattr(io_mod, "rmdir", lambda path, timeout=2.0: real(path, 0.05))
    with pytest.raises(CgroupError, match=f"cannot remove cgroup .*processes still in it: {p.pid}"):
        m.destroy()


def test_siblings_share_the_parent(cg: Cgroups) -> None:
    a, b = cg.manager("a"), cg.manager("b")
    a.create()
    b.create()
    a.destroy()
    assert not a.exists() and b.exists()
    for directory in b.dirs:  # the shared parent stays while b is in it
        assert os.path.isdir(os.path.dirname(directory))
    b.destroy()
    assert not b.exists()
    # a made the parent, b did not: like runc, a manager removes its leaf and only the
    # parents it made itself (a could not: b was in it). The fixture removes the rest.
    assert len(_leftovers(cg.top)) == len(b.dirs)


def test_default_path_is_hanok_slash_id_at_the_root() -> None:
    cid = f"hanok-test-{uuid.uuid4().hex[:12]}"
    parents = [os.path.join(h.mountpoint, "hanok") for h in cgroups.hierarchies() if h.fstype == "cgroup"]
    existed = {p for p in parents if os.path.isdir(p)}
    m = cgroups.manager("", cid)
    try:
        assert m.path == f"/hanok/{cid}"
        m.create()
        assert all(d.endswith(f"/hanok/{cid}") and os.path.isdir(d) for d in m.dirs)
        # another process (fresh manager, nothing remembered) deletes it
        cgroups.manager("", cid).destroy()
        assert not m.exists()
        for p in parents:
            assert os.path.isdir(p) == (p in existed), p
    finally:
        for d in m.dirs:
            if os.path.isdir(d):
                _remove_tree(d)
        for p in set(parents) - existed:
            try:
                os.rmdir(p)
            except OSError:
                pass


# ---------------------------------------------------------------- cost


def test_timing_create_apply_enter_destroy(cg: Cgroups) -> None:
    """Prints the cost of one container's cgroup life (run with -s to see it)."""
    resources = {"memory": {"limit": 256 * MB}, "pids": {"limit": 100},
                 "cpu": {"shares": 512, "quota": 50000, "cpus": "0-1"}}
    assert sum(len(f) for f in cgroups.resources.to_v1(resources).values()) == 6  # 5 limits (+ default period)
    totals, setups, teardowns = [], [], []
    for i in range(50):
        p = subprocess.Popen(["sleep", "30"])
        cg.children.append(p)
        m = cg.manager(f"t{i}")
        t0 = time.perf_counter()
        m.create()
        m.apply(resources)
        m.enter(p.pid)
        t1 = time.perf_counter()
        p.kill()
        p.wait()
        t2 = time.perf_counter()
        m.destroy()
        t3 = time.perf_counter()
        setups.append(t1 - t0)
        teardowns.append(t3 - t2)
        totals.append(t1 - t0 + t3 - t2)
    ms = lambda xs: f"median {statistics.median(xs) * 1000:.2f} ms, mean {statistics.mean(xs) * 1000:.2f} ms"  # noqa: E731
    print(f"\nv1 cgroup ({len(m.dirs)} hierarchies), 50 iterations:\n"
          f"  create+apply(5 limits)+enter: {ms(setups)}\n  destroy: {ms(teardowns)}\n  total: {ms(totals)}")
