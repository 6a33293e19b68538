"""The OCI lifecycle through the runtime's command line, as runc's callers use it:
create, state, start, kill, delete, run, exec, list, ps."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    TEST_HOSTNAME,
    BundleFactory,
    ContainerIds,
    RunCapture,
    Runtime,
    default_config,
    describe,
    is_rfc3339,
    listing,
    ns_link,
    pid_alive,
    poll,
    proc_cmdline,
    sh,
)

SLEEPER = ["sleep", "100"]


def _create(
    oci: Runtime, bundle: BundleFactory, cid: str, config: dict[str, Any] | None = None
) -> int:
    """create a container (default: sleep 100); return its pid from state."""
    path = bundle(config or default_config(*SLEEPER))
    oci.ok("create", "--bundle", path, cid)
    pid: int = oci.state(cid)["pid"]
    return pid


def _running(
    oci: Runtime, bundle: BundleFactory, cid: str, config: dict[str, Any] | None = None
) -> int:
    pid = _create(oci, bundle, cid, config)
    oci.ok("start", cid)
    return pid


def _list(oci: Runtime) -> list[dict[str, Any]]:
    proc = oci.ok("list", "--format", "json")
    # runc prints `null` for no containers; `[]` is just as good.
    containers: list[dict[str, Any]] | None = json.loads(proc.stdout)
    return containers or []


# ------------------------------------------------------------------ create / state


def test_create_state_json(oci: Runtime, bundle: BundleFactory, cid: str) -> None:
    config = default_config(*SLEEPER)
    config["annotations"] = {"org.hanok.test": "yes", "k": "v"}
    path = bundle(config)
    pid_file = path.parent / f"{cid}.pid"
    # A relative --bundle: state must report it absolute.
    oci.ok("create", "--bundle", path.name, "--pid-file", pid_file, cid, cwd=path.parent)
    state = oci.state(cid)
    assert state["ociVersion"]
    assert state["id"] == cid
    assert state["status"] == "created"
    assert isinstance(state["pid"], int) and state["pid"] > 0
    assert state["bundle"] == str(path)
    assert os.path.isabs(state["bundle"])
    assert is_rfc3339(state["created"]), state["created"]
    assert state["annotations"] == {"org.hanok.test": "yes", "k": "v"}
    assert pid_file.read_text().strip() == str(state["pid"])
    assert pid_alive(state["pid"])


def test_created_container_has_not_run_the_user_command(
    oci: Runtime, bundle: BundleFactory, cid: str, host_dir: Path
) -> None:
    config = default_config(*sh("touch /h/started; exec sleep 100"))
    config["mounts"].append(
        {"destination": "/h", "type": "bind", "source": str(host_dir), "options": ["rbind", "rw"]}
    )
    pid = _create(oci, bundle, cid, config)
    assert proc_cmdline(pid) != config["process"]["args"]
    assert not (host_dir / "started").exists()
    oci.ok("start", cid)
    poll(lambda: (host_dir / "started").exists(), what="the user command to run after start")
    poll(lambda: proc_cmdline(pid) == SLEEPER, what="the init to become the user command")


def test_state_of_running_container_prints_only_json(
    oci: Runtime, bundle: BundleFactory, cid: str
) -> None:
    pid = _running(oci, bundle, cid)
    proc = oci.ok("state", cid)
    assert proc.stderr == ""
    state = json.loads(proc.stdout)
    assert state["status"] == "running"
    assert state["pid"] == pid
    assert state["id"] == cid


def test_full_lifecycle(oci: Runtime, bundle: BundleFactory, cid: str) -> None:
    pid = _create(oci, bundle, cid)
    assert oci.state(cid)["status"] == "created"
    oci.ok("start", cid)
    assert oci.state(cid)["status"] == "running"
    poll(lambda: proc_cmdline(pid) == SLEEPER, what="sleep to be the init")
    oci.ok("kill", cid, "KILL")
    oci.wait_status(cid, "stopped")
    assert not pid_alive(pid)
    oci.ok("delete", cid)
    proc = oci("state", cid)
    assert proc.returncode != 0
    assert "container does not exist" in proc.stderr, describe(proc)
    assert listing(oci.root / cid) == []
    assert not (oci.root / cid).exists()


def test_process_exiting_on_its_own_stops_the_container(
    oci: Runtime, bundle: BundleFactory, cid: str
) -> None:
    _running(oci, bundle, cid, default_config("true"))
    oci.wait_status(cid, "stopped")
    oci.ok("delete", cid)
    assert oci.status(cid) is None


@pytest.mark.parametrize("sig", ["KILL", "SIGKILL", "9"])
def test_kill_signal_spellings(oci: Runtime, bundle: BundleFactory, cid: str, sig: str) -> None:
    pid = _running(oci, bundle, cid)
    oci.ok("kill", cid, sig)
    oci.wait_status(cid, "stopped")
    assert not pid_alive(pid)


def test_kill_default_signal_is_term(
    oci: Runtime, bundle: BundleFactory, cid: str, host_dir: Path
) -> None:
    # PID 1 only gets signals it has a handler for: the trap proves TERM came.
    config = default_config(
        *sh("trap 'echo TERM > /h/got; exit 3' TERM; echo ready > /h/ready; sleep 100 & wait")
    )
    config["mounts"].append(
        {"destination": "/h", "type": "bind", "source": str(host_dir), "options": ["rbind", "rw"]}
    )
    _running(oci, bundle, cid, config)
    poll(lambda: (host_dir / "ready").exists(), what="the trap to be installed")
    oci.ok("kill", cid)
    oci.wait_status(cid, "stopped")
    assert (host_dir / "got").read_text() == "TERM\n"


def test_delete_force_kills_a_running_container(
    oci: Runtime, bundle: BundleFactory, cid: str
) -> None:
    pid = _running(oci, bundle, cid)
    oci.ok("delete", "--force", cid)
    assert oci.status(cid) is None
    poll(lambda: not pid_alive(pid), what="the init to die")


def test_delete_a_created_container(oci: Runtime, bundle: BundleFactory, cid: str) -> None:
    # (runc deletes a created container without --force: it was never started.)
    pid = _create(oci, bundle, cid)
    oci.ok("delete", cid)
    assert oci.status(cid) is None
    poll(lambda: not pid_alive(pid), what="the init to die")


# ------------------------------------------------------------------ list / ps


def test_list_shows_the_container_while_it_exists(
    oci: Runtime, bundle: BundleFactory, ids: ContainerIds
) -> None:
    first, second = ids.new(), ids.new()
    pid = _create(oci, bundle, first)
    _running(oci, bundle, second)
    listed = {c["id"]: c for c in _list(oci)}
    assert set(listed) == {first, second}
    assert listed[first]["status"] == "created"
    assert listed[first]["pid"] == pid
    assert listed[second]["status"] == "running"
    oci.ok("delete", "--force", first)
    assert [c["id"] for c in _list(oci)] == [second]
    oci.ok("delete", "--force", second)
    assert _list(oci) == []


def test_ps_json_lists_the_init_pid(oci: Runtime, bundle: BundleFactory, cid: str) -> None:
    pid = _running(oci, bundle, cid)
    proc = oci.ok("ps", "--format", "json", cid)
    pids = json.loads(proc.stdout)
    assert isinstance(pids, list) and all(isinstance(p, int) for p in pids), proc.stdout
    assert pid in pids


# ------------------------------------------------------------------ run


def test_run_detach(oci: Runtime, bundle: BundleFactory, cid: str) -> None:
    path = bundle(default_config(*SLEEPER))
    oci.ok("run", "--detach", "--bundle", path, cid, timeout=10)
    state = oci.state(cid)
    assert state["status"] == "running"
    assert pid_alive(state["pid"])


def test_run_forwards_stdin_and_removes_the_container(
    run_capture: RunCapture, oci: Runtime, ids: ContainerIds
) -> None:
    cid = ids.new()
    code, out, err = run_capture(default_config("cat"), cid=cid, input="through stdin\n")
    assert (code, out) == (0, "through stdin\n"), err
    assert oci.status(cid) is None
    assert not (oci.root / cid).exists()


def test_run_stdout_and_stderr_are_separate(run_capture: RunCapture) -> None:
    code, out, err = run_capture(default_config(*sh("echo to-out; echo to-err >&2")))
    assert (code, out, err) == (0, "to-out\n", "to-err\n")


# ------------------------------------------------------------------ exec


def test_exec_runs_in_the_container(oci: Runtime, bundle: BundleFactory, cid: str) -> None:
    pid = _running(oci, bundle, cid)
    proc = oci(
        "exec",
        cid,
        "sh",
        "-c",
        "echo hi; hostname; readlink /proc/self/ns/pid; readlink /proc/self/ns/mnt",
        pipes=True,
    )
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.splitlines() == [
        "hi",
        TEST_HOSTNAME,
        ns_link(pid, "pid"),
        ns_link(pid, "mnt"),
    ]


def test_exec_exit_code_propagates(oci: Runtime, bundle: BundleFactory, cid: str) -> None:
    _running(oci, bundle, cid)
    proc = oci("exec", cid, "sh", "-c", "exit 7", pipes=True)
    assert proc.returncode == 7, describe(proc)
    assert oci.state(cid)["status"] == "running"


def test_exec_process_json(oci: Runtime, bundle: BundleFactory, cid: str) -> None:
    path = bundle(default_config(*SLEEPER))
    oci.ok("create", "--bundle", path, cid)
    oci.ok("start", cid)
    process = {
        "terminal": False,
        "user": {"uid": 1000, "gid": 1000},
        "args": ["sh", "-c", "echo $GREETING; id -u; pwd"],
        "env": ["PATH=/bin", "GREETING=from-process-json"],
        "cwd": "/tmp",
    }
    process_file = path / "process.json"
    process_file.write_text(json.dumps(process))
    proc = oci("exec", "--process", process_file, cid, pipes=True)
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.splitlines() == ["from-process-json", "1000", "/tmp"]


def test_exec_into_stopped_container_fails(oci: Runtime, bundle: BundleFactory, cid: str) -> None:
    _running(oci, bundle, cid)
    oci.ok("kill", cid, "KILL")
    oci.wait_status(cid, "stopped")
    proc = oci("exec", cid, "true", pipes=True)
    # runc 1.1.5: `exec failed: cannot exec in a stopped container`
    assert proc.returncode != 0
    assert "stopped" in proc.stderr, describe(proc)
