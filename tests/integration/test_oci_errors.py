"""Refusals: each must exit non-zero, say why on stderr in runc's words, and
leave nothing behind (state dir unchanged, no new mount, no stray process).

The comment above each assertion quotes what runc 1.1.5 prints on stderr
(its logrus line is `time="..." level=error msg="<text>"`); hanok prints
`hanok: <text>`. The tests match substrings both share.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from helpers import (
    BundleFactory,
    ContainerIds,
    Runtime,
    Untouched,
    default_config,
    describe,
    sh,
)


def _refused(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0, describe(proc)
    for needle in needles:
        assert needle.lower() in proc.stderr.lower(), (
            f"expected {needle!r} on stderr\n{describe(proc)}"
        )


def _running(oci: Runtime, bundle: BundleFactory, cid: str, *args: str) -> int:
    path = bundle(default_config(*(args or ("sleep", "100"))))
    oci.ok("create", "--bundle", path, cid)
    oci.ok("start", cid)
    pid: int = oci.state(cid)["pid"]
    return pid


# ------------------------------------------------------------------ wrong state


def test_start_twice(oci: Runtime, bundle: BundleFactory, cid: str, untouched: Untouched) -> None:
    pid = _running(oci, bundle, cid)
    before = untouched()
    proc = oci("start", cid)
    # runc: cannot start an already running container
    _refused(proc, "already running")
    untouched.check(before)
    assert oci.state(cid)["status"] == "running"
    assert oci.state(cid)["pid"] == pid


def test_start_a_stopped_container(
    oci: Runtime, bundle: BundleFactory, cid: str, untouched: Untouched
) -> None:
    _running(oci, bundle, cid, "true")
    oci.wait_status(cid, "stopped")
    before = untouched()
    proc = oci("start", cid)
    # runc: cannot start a container that has stopped
    _refused(proc, "stopped")
    untouched.check(before)


def test_delete_running_without_force(
    oci: Runtime, bundle: BundleFactory, cid: str, untouched: Untouched
) -> None:
    pid = _running(oci, bundle, cid)
    before = untouched()
    proc = oci("delete", cid)
    # runc: cannot delete container <id> that is not stopped: running
    _refused(proc, "not stopped", "running")
    untouched.check(before)
    assert oci.state(cid)["status"] == "running"
    assert oci.state(cid)["pid"] == pid


def test_kill_a_stopped_container(
    oci: Runtime, bundle: BundleFactory, cid: str, untouched: Untouched
) -> None:
    _running(oci, bundle, cid, "true")
    oci.wait_status(cid, "stopped")
    before = untouched()
    proc = oci("kill", cid, "KILL")
    # runc: container not running
    _refused(proc, "container not running")
    untouched.check(before)
    assert oci.state(cid)["status"] == "stopped"


@pytest.mark.parametrize(
    "command",
    [
        ["state"],
        ["start"],
        ["kill"],
        ["kill", "{id}", "KILL"],
        ["delete"],
        ["ps"],
        ["exec", "{id}", "true"],
    ],
    ids=["state", "start", "kill", "kill-KILL", "delete", "ps", "exec"],
)
def test_unknown_id(
    oci: Runtime, ids: ContainerIds, untouched: Untouched, command: list[str]
) -> None:
    cid = ids.new()
    args = [a.format(id=cid) for a in command] if "{id}" in command else [*command, cid]
    before = untouched()
    proc = oci(*args)
    # runc: container does not exist   (exec: "exec failed: container does not exist")
    _refused(proc, "container does not exist")
    untouched.check(before)


def test_delete_force_of_unknown_id_succeeds(
    oci: Runtime, ids: ContainerIds, untouched: Untouched
) -> None:
    # runc exits 0 and prints nothing: --force makes delete idempotent, which
    # callers (containerd's shim, podman cleanup) rely on.
    before = untouched()
    proc = oci("delete", "--force", ids.new())
    assert proc.returncode == 0, describe(proc)
    untouched.check(before)


# ------------------------------------------------------------------ bad input to create


@pytest.mark.parametrize(
    ("bad_id", "needle"),
    [
        # runc: runc create failed: invalid container ID format
        ("../x", "invalid"),
        ("a/b", "invalid"),
        ("..", "invalid"),
        # runc: runc create failed: container id cannot be empty
        ("", "empty|invalid"),
        # runc has no length limit of its own: it fails with
        # `runc create failed: lstat <root>/aaaa...: file name too long`.
        # hanok: "invalid container ID" (or the same ENAMETOOLONG text).
        ("a" * 1025, "invalid|too long"),
    ],
    ids=["dotdot-slash", "slash", "dotdot", "empty", "1025-chars"],
)
def test_create_with_invalid_id(
    oci: Runtime,
    bundle: BundleFactory,
    ids: ContainerIds,
    untouched: Untouched,
    bad_id: str,
    needle: str,
) -> None:
    path = bundle(default_config("true"))
    if bad_id and "/" not in bad_id and bad_id != "..":
        ids.track(bad_id)  # teardown deletes it, should the runtime have taken it
    before = untouched()
    proc = oci("create", "--bundle", path, bad_id)
    assert proc.returncode != 0, describe(proc)
    assert any(n in proc.stderr.lower() for n in needle.split("|")), describe(proc)
    untouched.check(before)


def test_create_with_missing_bundle(
    oci: Runtime, cid: str, untouched: Untouched, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-bundle"
    before = untouched()
    proc = oci("create", "--bundle", missing, cid)
    # runc: runc create failed: chdir <bundle>: no such file or directory
    # Shared: the path, and ENOENT's text or "does not exist".
    _refused(proc, str(missing))
    assert re.search("no such file or directory|does not exist", proc.stderr, re.I), describe(proc)
    untouched.check(before)


def test_create_without_config_json(
    oci: Runtime, cid: str, untouched: Untouched, tmp_path: Path
) -> None:
    before = untouched()
    proc = oci("create", "--bundle", tmp_path, cid)
    # runc: runc create failed: JSON specification file config.json not found
    _refused(proc, "config.json")
    untouched.check(before)


def test_create_with_invalid_json(
    oci: Runtime, bundle: BundleFactory, cid: str, untouched: Untouched
) -> None:
    path = bundle()
    (path / "config.json").write_text('{"ociVersion": "1.0.2", bad')
    before = untouched()
    proc = oci("create", "--bundle", path, cid)
    # runc: runc create failed: invalid character 'b' looking for beginning of object key string
    # (hanok: say "config.json" and "invalid" too; only "invalid" is shared.)
    _refused(proc, "invalid")
    untouched.check(before)


def test_create_with_unknown_namespace(
    oci: Runtime, bundle: BundleFactory, cid: str, untouched: Untouched
) -> None:
    config = default_config("true")
    config["linux"]["namespaces"].append({"type": "foo"})
    path = bundle(config)
    before = untouched()
    proc = oci("create", "--bundle", path, cid)
    # runc: runc create failed: namespace {"foo" ""} does not exist
    _refused(proc, "namespace", "foo")
    untouched.check(before)


def test_create_with_missing_executable(
    oci: Runtime, bundle: BundleFactory, cid: str, untouched: Untouched
) -> None:
    path = bundle(default_config("/bin/no-such-program"))
    before = untouched()
    proc = oci("create", "--bundle", path, cid)
    # runc checks args[0] at create time, before the exec fifo:
    # runc create failed: unable to start container process: exec: "/bin/no-such-program":
    #   stat /bin/no-such-program: no such file or directory
    _refused(proc, "no-such-program")
    untouched.check(before)


def test_create_with_existing_id(
    oci: Runtime, bundle: BundleFactory, cid: str, untouched: Untouched
) -> None:
    first = bundle(default_config("sleep", "100"))
    oci.ok("create", "--bundle", first, cid)
    state = oci.state(cid)
    second = bundle(default_config("true"))
    before = untouched()
    proc = oci("create", "--bundle", second, cid)
    # runc: runc create failed: container with given ID already exists
    _refused(proc, "exists")
    untouched.check(before)
    assert oci.state(cid) == state


def test_kill_with_invalid_signal(
    oci: Runtime, bundle: BundleFactory, cid: str, untouched: Untouched
) -> None:
    _running(oci, bundle, cid)
    before = untouched()
    proc = oci("kill", cid, "NOSUCHSIG")
    # runc: unknown signal "NOSUCHSIG"
    _refused(proc, "signal")
    untouched.check(before)
    assert oci.state(cid)["status"] == "running"


def test_error_output_is_one_line(oci: Runtime, ids: ContainerIds) -> None:
    # Callers log stderr verbatim: one line, and stdout stays clean.
    proc = oci("state", ids.new())
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, describe(proc)


def test_state_json_of_refused_create_is_absent(
    oci: Runtime, bundle: BundleFactory, cid: str
) -> None:
    config = default_config(*sh("true"))
    config["linux"]["namespaces"].append({"type": "foo"})
    oci("create", "--bundle", bundle(config), cid)
    proc = oci("state", cid)
    _refused(proc, "container does not exist")
    assert json.loads(oci.ok("list", "--format", "json").stdout) in (None, [])
