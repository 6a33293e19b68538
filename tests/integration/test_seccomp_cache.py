"""The compiled seccomp program cache (runtime/seccomp.py: prepare/load) in real containers.

Each test points the cache at its own directory through $HANOK_SECCOMP_CACHE
(inherited by the runtime binary) and runs busybox containers with a profile
that refuses mkdir. The same container must behave the same whether its filter
was compiled by libseccomp (miss) or read from the cache (hit), and a cache
file that is not exactly what hanok wrote must be rebuilt, never loaded. The
--explain trace says which path was taken.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hanok.runtime import seccomp
from helpers import RunCapture, Runtime, default_config, describe, sh

NO_MKDIR = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
}
SCRIPT = "touch /tmp/f && echo touched; mkdir /tmp/x; echo mkdir=$?; [ -d /tmp/x ] || echo absent"
EXPECTED = ["touched", "mkdir=1", "absent"]


@pytest.fixture
def cache_dir(oci: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty, not yet created cache directory the runtime under test will use."""
    if "hanok" not in Path(oci.binary).name:
        pytest.skip("the seccomp program cache is hanok's own")
    path = tmp_path / "seccomp-cache"
    monkeypatch.setenv(seccomp.CACHE_DIR_ENV, str(path))
    yield path


def _config(nnp: bool) -> dict[str, Any]:
    config = default_config(*sh(SCRIPT))
    config["root"]["readonly"] = False
    config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                             "options": ["nosuid", "nodev", "mode=1777", "size=1m"]})
    config["process"]["noNewPrivileges"] = nnp
    config["linux"]["seccomp"] = json.loads(json.dumps(NO_MKDIR))
    return config


def _run_explained(oci: Runtime, run_capture: RunCapture, config: dict[str, Any]) -> tuple[list[str], str]:
    """Run with --explain; return the container's stdout lines and the seccomp trace line."""
    bundle = run_capture.bundles(config)
    proc = oci("--explain", "run", "--bundle", bundle, run_capture.ids.new(), pipes=True)
    assert proc.returncode == 0, describe(proc)
    assert "Operation not permitted" in proc.stderr, describe(proc)
    traced = [line for line in proc.stderr.splitlines() if line.startswith("+ # seccomp: ")]
    installs = [line for line in traced if "instructions)" in line]
    assert len(installs) == 1, describe(proc)
    return proc.stdout.splitlines(), installs[0]


def _key() -> str:
    return seccomp.cache_key(NO_MKDIR)


@pytest.mark.parametrize("nnp", [True, False], ids=["nnp", "no-nnp"])
def test_miss_then_hit_behave_the_same(oci: Runtime, run_capture: RunCapture, cache_dir: Path,
                                       nnp: bool) -> None:
    key = _key()
    out, trace = _run_explained(oci, run_capture, _config(nnp))
    assert out == EXPECTED
    assert trace.startswith(f"+ # seccomp: compiled filter {key[:16]} ("), trace
    assert sorted(os.listdir(cache_dir)) == [key]
    assert stat.S_IMODE(os.stat(cache_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cache_dir / key).st_mode) == 0o600
    written = (cache_dir / key).read_bytes()

    out, trace = _run_explained(oci, run_capture, _config(nnp))
    assert out == EXPECTED
    assert trace.startswith(f"+ # seccomp: cached filter {key[:16]} ("), trace
    assert (cache_dir / key).read_bytes() == written
    assert sorted(os.listdir(cache_dir)) == [key]


def test_filter_in_force_on_a_hit(run_capture: RunCapture, cache_dir: Path) -> None:
    config = _config(False)
    config["process"]["args"] = sh("grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status")
    for _ in range(2):
        assert run_capture.ok(config).splitlines() == ["NoNewPrivs:\t0", "Seccomp:\t2"]
    assert os.listdir(cache_dir) == [_key()]


def _allow_everything_program() -> bytes:
    """A well-formed program (one `ret ALLOW`) that is not the profile's."""
    return (0x06).to_bytes(2, "little") + bytes(2) + (0x7FFF0000).to_bytes(4, "little")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign-program"])
def test_a_corrupt_cache_file_is_replaced(oci: Runtime, run_capture: RunCapture, cache_dir: Path,
                                          damage: str) -> None:
    key = _key()
    out, _ = _run_explained(oci, run_capture, _config(True))
    assert out == EXPECTED
    good = (cache_dir / key).read_bytes()
    if damage == "garbage":
        bad = b"not a bpf program at all"
    elif damage == "truncated":
        bad = good[:-8]
    else:  # a valid file for another key, renamed: its header still names its own key
        bad = good[:8] + bytes(32) + (1).to_bytes(4, "little") + bytes(4) + _allow_everything_program()
    (cache_dir / key).write_bytes(bad)

    out, trace = _run_explained(oci, run_capture, _config(True))
    assert out == EXPECTED  # mkdir still refused: the damaged file was not loaded
    assert trace.startswith(f"+ # seccomp: compiled filter {key[:16]} ("), trace
    assert (cache_dir / key).read_bytes() == good
    assert stat.S_IMODE(os.stat(cache_dir / key).st_mode) == 0o600

    out, trace = _run_explained(oci, run_capture, _config(True))
    assert out == EXPECTED
    assert trace.startswith(f"+ # seccomp: cached filter {key[:16]} ("), trace


def test_an_unusable_cache_does_not_fail_the_container(run_capture: RunCapture, cache_dir: Path) -> None:
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    cache_dir.write_text("a file where the cache directory should be")
    for _ in range(2):
        result = run_capture(_config(True))
        assert result.code == 0, result
        assert result.out.splitlines() == EXPECTED, result
    assert cache_dir.read_text() == "a file where the cache directory should be"
