"""Fixtures for the integration tests: root on the host, real namespaces.

The OCI runtime tests (test_oci_*.py) drive the binary named by
$HANOK_TEST_RUNTIME (default: hanok-oci next to the interpreter, else on PATH)
as a black box, always as ``<runtime> --root <per-test state dir> <command>``.
Validate the suite itself against runc with

    HANOK_TEST_RUNTIME=$(which runc) /opt/hanok/bin/pytest -q tests/integration

A session-wide leak check compares the host's mounts, links and /run/netns
before and after the session and requires every per-test state dir to be empty
after its test's teardown; anything left fails the session (reported as an
error in the teardown of the last test).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import (
    BUSYBOX,
    BundleFactory,
    ContainerIds,
    RunCapture,
    Runtime,
    Untouched,
    find_runtime,
    host_links,
    host_mounts,
    host_netns,
    listing,
    mounts_under,
)

_HERE = Path(__file__).resolve().parent
_SKIP_REASONS: set[str] = set()

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
tester:x:1000:1000:tester:/home/tester:/bin/sh
"""
GROUP = """\
root:x:0:
wheel:x:10:
users:x:100:
tester:x:1000:
nogroup:x:65534:
"""


def _skip(reason: str) -> None:
    _SKIP_REASONS.add(reason)
    pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration needs root on the host."""
    if os.geteuid() == 0:
        return
    reason = f"integration tests need root (namespaces, mounts); running as uid {os.geteuid()}"
    marker = pytest.mark.skip(reason=reason)
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(marker)
            _SKIP_REASONS.add(reason)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for reason in sorted(_SKIP_REASONS):
        terminalreporter.write_line(f"integration tests skipped: {reason}", yellow=True)


# ------------------------------------------------------------------ session


@pytest.fixture(scope="session")
def session_dir() -> Iterator[Path]:
    """Bundles and state dirs of the whole session, under /tmp.

    Not pytest's tmp_path: that sits below a 0700 directory, which the
    container's root cannot traverse once it is mapped to an unprivileged host
    uid (user namespace tests). This one is 0755 all the way down.
    """
    path = Path(tempfile.mkdtemp(prefix="hanok-it-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    # Never rmtree across a mount: a leaked bind mount would have us delete
    # whatever it points at. The leak check reports such mounts.
    if not mounts_under(path):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def state_dirs() -> dict[Path, str]:
    """Every per-test state dir (--root) handed out, with the test that used it."""
    return {}


def _hanok_cgroups() -> set[str]:
    """Container cgroups under the default parent, in every hierarchy."""
    root = Path("/sys/fs/cgroup")
    return {str(p) for p in [*root.glob("*/hanok/*"), *root.glob("hanok/*")] if p.is_dir()}


def _nft_tables() -> set[str]:
    """`nft list tables` lines (hanok's NAT lives in its own table, removed with its last rule)."""
    try:
        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return {line.strip() for line in out.splitlines() if line.strip()}


@pytest.fixture(scope="session", autouse=True)
def leak_check(session_dir: Path, state_dirs: dict[Path, str]) -> Iterator[None]:
    mounts, links, netns, cgroups = host_mounts(), host_links(), host_netns(), _hanok_cgroups()
    tables = _nft_tables()
    yield
    problems: list[str] = []
    for table in sorted(_nft_tables() - tables):
        problems.append(f"new nft table: {table}")
    for path in sorted(_hanok_cgroups() - cgroups):
        problems.append(f"new container cgroup: {path}")
    for line in sorted(host_mounts() - mounts):
        problems.append(f"new mount: {line}")
    for name in sorted(host_links() - links):
        problems.append(f"new network link: {name}")
    for name in sorted(host_netns() - netns):
        problems.append(f"new /run/netns entry: {name}")
    for path, nodeid in state_dirs.items():
        left = listing(path)
        if left:
            problems.append(f"state dir of {nodeid} not empty after teardown: {path}: {left}")
    if problems:
        pytest.fail("the session leaked:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def runtime_binary() -> str:
    binary = find_runtime()
    if binary is None or not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        _skip(
            f"OCI runtime not found ({binary or 'hanok-oci'}); "
            "install hanok or set HANOK_TEST_RUNTIME"
        )
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def rootfs_template(session_dir: Path) -> Path:
    """A busybox root: /bin/busybox, one symlink per applet, a few dirs and users."""
    if not BUSYBOX.is_file():
        _skip(f"{BUSYBOX} missing (Debian: apt-get install busybox-static)")
    rootfs = session_dir / "template" / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    for name in ("proc", "sys", "dev", "tmp", "etc", "root", "home/tester", "mnt"):
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    os.chown(rootfs / "home" / "tester", 1000, 1000)
    (rootfs / "etc" / "passwd").write_text(PASSWD)
    (rootfs / "etc" / "group").write_text(GROUP)
    return rootfs


# ------------------------------------------------------------------ per test


@pytest.fixture
def state_root(
    session_dir: Path, state_dirs: dict[Path, str], request: pytest.FixtureRequest
) -> Path:
    """This test's runtime state dir (the global --root)."""
    path = session_dir / "state" / f"s{len(state_dirs) + 1}"
    path.mkdir(parents=True, mode=0o700)
    state_dirs[path] = request.node.nodeid
    return path


@pytest.fixture
def oci(runtime_binary: str, state_root: Path) -> Iterator[Runtime]:
    """``oci(*args, input=None, timeout=30)`` -> CompletedProcess[str]."""
    runtime = Runtime(runtime_binary, state_root)
    yield runtime
    runtime.reap()


@pytest.fixture
def ids(oci: Runtime) -> Iterator[ContainerIds]:
    """Container ids for this test; teardown runs `delete --force` on each."""
    made = ContainerIds()
    yield made
    # Foreground runs still going (a test failed midway) end first.
    oci.reap()
    for cid in made.used:
        oci("delete", "--force", cid, timeout=30)


@pytest.fixture
def cid(ids: ContainerIds) -> str:
    """A unique container id, deleted (--force) at teardown."""
    return ids.new()


@pytest.fixture
def bundle(rootfs_template: Path, session_dir: Path, state_root: Path) -> BundleFactory:
    """``bundle(config=None) -> Path``: a bundle dir with a private rootfs copy."""
    return BundleFactory(rootfs_template, session_dir / "bundles" / state_root.name)


@pytest.fixture
def run_capture(oci: Runtime, bundle: BundleFactory, ids: ContainerIds) -> RunCapture:
    """``run_capture(config_or_bundle) -> (code, out, err)`` of a foreground `run`."""
    return RunCapture(oci, bundle, ids)


@pytest.fixture
def host_dir(session_dir: Path, state_root: Path) -> Path:
    """An empty host directory (0755) for bind mounts and hook logs."""
    path = session_dir / "host" / state_root.name
    path.mkdir(parents=True)
    path.chmod(0o755)
    return path


@pytest.fixture
def untouched(state_root: Path) -> Iterator[Untouched]:
    """Snapshot/check pair for "a refused command leaves nothing behind"."""
    checker = Untouched(state_root)
    yield checker
    checker.close()
