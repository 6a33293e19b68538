"""cgroup v2 tests: natively on a cgroup v2 host, else in one VM, else skipped.

Where the tests in tests/vm run is decided once per session:

* **here** -- the host is cgroup v2 (``/sys/fs/cgroup`` is a cgroup2 mount),
  or we are the pytest inside the VM (``HANOK_IN_VM=1``). The tests run for real
  and need root; without root, or with ``HANOK_IN_VM=1`` on a host that is not
  cgroup v2, they skip with the reason.
* **vm** -- the host is hybrid/legacy (the development machines) and virtme-ng,
  qemu and a kernel are installed. The selected tests are replaced by proxy
  items with the same node ids. The first proxy that runs boots ONE VM
  (run_in_vm.py) in which pytest runs all of them for real; each proxy then
  reports its own inner outcome: pass, skip (with the inner reason), xfail, or
  a failure carrying the inner traceback and captured output. If the VM run
  itself fails (timeout, crash), every proxy fails with the console's tail.
* **skip** -- neither: every test skips, and the reason is printed at the end.

Test files named in ``SYSTEMD_FILES`` need systemd as PID 1: in the vm mode
their proxies run in a second VM of their own, booted with ``vng --systemd``
(only when one of them is selected: systemd makes the boot slower).

``HANOK_VM=never`` forces skip instead of booting a VM on a host that is not
cgroup v2; ``HANOK_VM=always`` forces the VM even on a cgroup v2 host (to debug
the harness).

Rules for test modules here, so that they work in all three places: decide
about cgroup v2 through these fixtures, never with a module-level
``pytest.mark.skipif`` (the proxies carry the module's marks, so such a mark
would be judged on the host), and keep imports light (in the VM, python is
~100x slower than on the host: every import is felt).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
CGROUP_ROOT = Path("/sys/fs/cgroup")
IN_VM = os.environ.get("HANOK_IN_VM") == "1"
SYSTEMD_FILES = frozenset({"test_systemd_cgroup.py"})
_SKIP_REASONS: set[str] = set()
_RUN_KEY = pytest.StashKey[dict[bool, object]]()
_NOTES_KEY = pytest.StashKey[list[str]]()


def _fs_type(path: str) -> str | None:
    """The filesystem type of the mount at `path`, from /proc/self/mountinfo."""
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4] == path:
                    found = fields[fields.index("-") + 1]  # the last mount on top wins
    except OSError:
        return None
    return found


def host_is_cgroup2() -> bool:
    return _fs_type(str(CGROUP_ROOT)) == "cgroup2"


def _mode() -> tuple[str, str]:
    """("here" | "vm" | "skip", why)."""
    forced = os.environ.get("HANOK_VM", "")
    v2 = host_is_cgroup2()
    if IN_VM or (v2 and forced != "always"):
        if not v2:
            return "skip", f"HANOK_IN_VM=1 but {CGROUP_ROOT} is not a cgroup2 mount"
        if os.geteuid() != 0:
            return "skip", f"cgroup v2 tests need root; running as uid {os.geteuid()}"
        return "here", "the host is cgroup v2"
    if forced == "never":
        return "skip", f"{CGROUP_ROOT} is not cgroup v2 (hybrid/legacy host) and HANOK_VM=never"
    if os.geteuid() != 0:
        return "skip", (f"{CGROUP_ROOT} is not cgroup v2 and booting the test VM needs root "
                        f"(the kernel image is 0600); running as uid {os.geteuid()}")
    sys.path.insert(0, str(_HERE))
    import run_in_vm

    reason = run_in_vm.missing()
    if reason:
        return "skip", f"{CGROUP_ROOT} is not cgroup v2 (hybrid/legacy host) and no test VM: {reason}"
    return "vm", f"{CGROUP_ROOT} is not cgroup v2: running in a virtme-ng VM ({run_in_vm.find_kernel()})"


def _ours(item: pytest.Item) -> bool:
    return _HERE in Path(str(item.path)).resolve().parents


# ------------------------------------------------------------------ collection


def pytest_itemcollected(item: pytest.Item) -> None:
    if _ours(item):
        item.add_marker(pytest.mark.vm)


@pytest.hookimpl(trylast=True)  # after -k/-m/--deselect: the VM runs only what is selected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [i for i, item in enumerate(items) if _ours(item)]
    if not ours:
        return
    mode, why = _mode()
    if mode == "skip":
        for i in ours:
            items[i].add_marker(pytest.mark.skip(reason=why))
        _SKIP_REASONS.add(why)
    elif mode == "vm":
        for i in ours:
            parent = items[i].parent
            assert parent is not None
            items[i] = VMProxy.from_parent(parent, name=items[i].name, original=items[i])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    for reason in sorted(_SKIP_REASONS):
        terminalreporter.write_line(f"cgroup v2 tests (tests/vm) skipped: {reason}", yellow=True)
    for note in config.stash.get(_NOTES_KEY, []):
        terminalreporter.write_line(f"cgroup v2 tests (tests/vm): {note}")


# ------------------------------------------------------------------ the VM path (outer pytest)


class VMFailure(Exception):
    """An inner test failed, or the VM run did not report on it."""


class VMProxy(pytest.Item):
    """Stands for one test of tests/vm on the host; the test itself runs in the VM.

    It has no fixtures, so nothing of the real test runs on the host.
    """

    def __init__(self, *, original: pytest.Item, **kwargs) -> None:
        super().__init__(**kwargs)
        self.original = original
        self.keywords.update(original.keywords)

    def reportinfo(self):
        return self.original.reportinfo()

    def runtest(self) -> None:
        run = _vm_run(self.session, _needs_systemd(self.original))
        reports = run.results.get(self.nodeid)
        if not reports:
            raise VMFailure(_missing_text(run, self.nodeid))
        failed = [r for r in reports if r["outcome"] == "failed"]
        if failed:
            parts = []
            for r in failed:
                parts.append(f"---- inside the VM, {r['when']} failed:\n{r['longrepr']}")
                for title, content in r.get("sections", []):
                    parts.append(f"---- inside the VM, {title}:\n{content}")
            raise VMFailure("\n".join(parts))
        for r in reports:
            if r.get("wasxfail") is not None and r["outcome"] == "skipped":  # xpass: passed
                pytest.xfail(f"inside the VM: {r['wasxfail']}")
            if r["outcome"] == "skipped":
                reason = f"inside the VM: {r['longrepr']}"
                try:  # reported at the test's location, as a skip inside the test would be
                    raise pytest.skip.Exception(reason, _use_item_location=True)
                except TypeError:  # a pytest without that (private) argument
                    pytest.skip(reason)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, VMFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)


def _needs_systemd(item: pytest.Item) -> bool:
    return Path(str(item.path)).name in SYSTEMD_FILES


def _vm_run(session: pytest.Session, systemd: bool = False):
    """Boot the VM once for every selected proxy of the session (of one kind), and remember the outcome."""
    config = session.config
    runs = config.stash.setdefault(_RUN_KEY, {})
    run = runs.get(systemd)
    if run is not None:
        return run
    import tempfile

    import run_in_vm

    nodeids = [item.nodeid for item in session.items
               if isinstance(item, VMProxy) and _needs_systemd(item.original) == systemd]
    kind = "virtme-ng VM with systemd as PID 1" if systemd else "virtme-ng VM"
    for attempt in (1, 2):
        results = Path(tempfile.mkdtemp(prefix="hanok-vm-"))
        # node ids are relative to the rootdir: the inner pytest runs there, with the same one
        run = run_in_vm.run_pytest(nodeids, results, rootdir=config.rootpath, systemd=systemd)
        if not run.timed_out or attempt == 2:
            break
        # A guest that stops making progress under software emulation on a loaded host has
        # been seen once in many runs (no output for 15 min after a test's setup): one more
        # boot, with the first console kept for a look.
        config.stash.setdefault(_NOTES_KEY, []).append(
            f"the {kind} timed out ({run.summary()}); console log kept in {results}/console.log; booting again")
    runs[systemd] = run
    note = f"{len(nodeids)} test(s) ran in a {kind} ({run_in_vm.find_kernel()}): {run.summary()}"
    if run.returncode == 0 and not run.timed_out and run.error is None:
        import shutil

        shutil.rmtree(results, ignore_errors=True)  # everything passed: nothing to look at
    else:
        note += f"; console log kept in {results}/console.log"
    config.stash.setdefault(_NOTES_KEY, []).append(note)
    return run


def _missing_text(run, nodeid: str) -> str:
    lines = [f"the VM run did not report on {nodeid} ({run.summary()})"]
    if run.error:
        lines.append(run.error)
    for report in run.collect_errors:
        lines.append(f"---- inside the VM, collecting {report['nodeid'] or '<session>'} failed:\n"
                     f"{report['longrepr']}")
    lines.append("---- command: " + " ".join(run.command))
    lines.append("---- last lines of the VM console:")
    lines.append(run.log_tail())
    return "\n".join(lines)


# ------------------------------------------------------------------ the inner side (in the VM)


def _record(report) -> None:
    path = os.environ.get("HANOK_VM_RESULTS")
    if not (IN_VM and path):
        return
    if report.when == "collect" and report.outcome != "failed":
        return
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, lineno, reason)
        text = str(longrepr[2]).removeprefix("Skipped: ")
    else:
        text = report.longreprtext
    entry = {
        "nodeid": report.nodeid,
        "when": getattr(report, "when", None) or "collect",
        "outcome": report.outcome,
        "longrepr": text,
        "sections": [list(s) for s in getattr(report, "sections", [])],
        "duration": getattr(report, "duration", 0.0),
    }
    if hasattr(report, "wasxfail"):
        entry["wasxfail"] = report.wasxfail
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def pytest_runtest_logreport(report) -> None:
    _record(report)


def pytest_collectreport(report) -> None:
    if IN_VM and report.outcome == "failed":
        _record(report)


# ------------------------------------------------------------------ fixtures (real cgroup v2)


def _cgroup_dirs() -> set[str]:
    return {root for root, _, _ in os.walk(CGROUP_ROOT)}


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


@pytest.fixture(scope="session", autouse=True)
def vm_leak_check() -> Iterator[None]:
    """The cgroup tree and the mounts are back to what they were after the session.

    Where systemd is PID 1 it makes and removes cgroups of its own meanwhile
    (units still starting after boot, timers): only hanok's count there.
    """
    cgroups, mounts = _cgroup_dirs(), _mount_points()
    yield
    new = _cgroup_dirs() - cgroups
    if os.path.isdir("/run/systemd/system"):
        new = {d for d in new if "hanok" in d}
    problems = [f"new cgroup: {d}" for d in sorted(new)]
    problems += [f"new mount: {m}" for m in sorted(_mount_points() - mounts)]
    if problems:
        pytest.fail("the session leaked:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def cgroup2() -> Path:
    """The cgroup v2 root (the conftest only lets tests run where it is one)."""
    assert host_is_cgroup2(), f"{CGROUP_ROOT} is not cgroup2"
    return CGROUP_ROOT


def _controllers(path: Path, name: str) -> set[str]:
    return set((path / name).read_text().split())


def _kill_and_remove(path: Path) -> None:
    import time

    if not path.is_dir():
        return
    for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
        _kill_and_remove(child)
    kill = path / "cgroup.kill"
    deadline = time.monotonic() + 30
    while (path / "cgroup.procs").read_text().strip():
        if kill.exists():
            kill.write_text("1")
        else:
            for pid in (path / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes stay in {path}: {(path / 'cgroup.procs').read_text()}")
        time.sleep(0.05)
    while True:
        try:
            path.rmdir()
            return
        except OSError:  # EBUSY while the last process is being reaped
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def scratch_cgroup(cgroup2: Path) -> Iterator[Path]:
    """A fresh /sys/fs/cgroup/hanok-vmtest-<uuid> with memory, pids and cpu enabled in it.

    The controllers it had to enable in the root's cgroup.subtree_control are
    disabled again afterwards (on a native host, only if nothing else uses them).
    """
    wanted = {"memory", "pids", "cpu"}
    available = _controllers(cgroup2, "cgroup.controllers")
    missing = wanted - available
    assert not missing, f"controllers missing from {cgroup2}: {sorted(missing)} (have {sorted(available)})"
    enabled = wanted - _controllers(cgroup2, "cgroup.subtree_control")
    if enabled:
        (cgroup2 / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(enabled)))
    path = cgroup2 / f"hanok-vmtest-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    try:
        yield path
    finally:
        _kill_and_remove(path)
        for controller in sorted(enabled):
            try:
                (cgroup2 / "cgroup.subtree_control").write_text(f"-{controller}")
            except OSError:
                pass  # in use by another cgroup since: leave it on


@pytest.fixture
def tmpfs_dir() -> Iterator[Path]:
    """An empty directory on its own tmpfs (in the VM, /tmp is an overlay: no upper for overlayfs)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="hanok-vmtest-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "hanok-vmtest", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


def _console_script(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    import shutil

    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found next to {sys.executable} or on PATH: install hanok", pytrace=False)
    return found


@pytest.fixture(scope="session")
def hanok_bin() -> str:
    return _console_script("hanok")


@pytest.fixture(scope="session")
def hanok_oci_bin() -> str:
    return os.environ.get("HANOK_TEST_RUNTIME") or _console_script("hanok-oci")
