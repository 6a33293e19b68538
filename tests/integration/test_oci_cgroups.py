"""Containers in their own cgroups (v1 on hybrid hosts like this one, v2 elsewhere):
limits hold, pause/resume freeze, update changes a live limit, ps and kill --all
see every process, and nothing is left in the cgroup tree after delete.

Observed from the host through /proc/<pid>/cgroup and the cgroup files, and
from inside through what the limits do to the container's processes.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from hanok import cgroups
from helpers import BundleFactory, ContainerIds, RunCapture, Runtime, default_config, sh


def cgroup_file(pid: int, controller: str, name: str) -> Path:
    """Where the cgroup file `name` of process `pid` lives on the host."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if cgroups.host_mode() == cgroups.UNIFIED and controllers == "":
            return Path("/sys/fs/cgroup" + path) / name
        if controller in controllers.split(","):
            return Path(f"/sys/fs/cgroup/{controller}{path}") / name
    raise AssertionError(f"no {controller} hierarchy for pid {pid}")


def leftover_cgroups(cid: str) -> list[str]:
    return [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/hanok/{cid}")] + \
        [str(p) for p in Path("/sys/fs/cgroup").glob(f"hanok/{cid}")]


def memory_limit_file() -> str:
    return "memory.max" if cgroups.host_mode() == cgroups.UNIFIED else "memory.limit_in_bytes"


def start_detached(oci: Runtime, bundle: BundleFactory, cid: str, config: dict) -> int:
    oci.ok("run", "--detach", "--bundle", bundle(config), cid)
    return int(oci.state(cid)["pid"])


def test_limits_are_written_and_the_cgroup_goes_with_delete(
    oci: Runtime, bundle: BundleFactory, ids: ContainerIds
) -> None:
    cid = ids.new()
    config = default_config("sleep", "30")
    config["linux"]["resources"] = {"memory": {"limit": 64 << 20}, "pids": {"limit": 50}}
    pid = start_detached(oci, bundle, cid, config)
    assert cgroup_file(pid, "memory", memory_limit_file()).read_text().strip() == str(64 << 20)
    assert cgroup_file(pid, "pids", "pids.max").read_text().strip() == "50"
    assert f"/hanok/{cid}" in Path(f"/proc/{pid}/cgroup").read_text()
    oci.ok("delete", "--force", cid)
    assert leftover_cgroups(cid) == []


def test_the_init_and_an_exec_are_in_every_hierarchy_of_the_container(
    oci: Runtime, bundle: BundleFactory, ids: ContainerIds, tmp_path: Path
) -> None:
    """On v1 both move themselves in (cgroups.V1Manager.enter_self); on v2 the parent moves them."""
    cid = ids.new()
    init = start_detached(oci, bundle, cid, default_config("sleep", "30"))
    oci.ok("exec", "--detach", "--pid-file", str(tmp_path / "exec.pid"), cid, "sleep", "30")
    for pid in (init, int((tmp_path / "exec.pid").read_text())):
        lines = [line.split(":", 2) for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()]
        outside = [line for line in lines if (line[1] or cgroups.host_mode() == cgroups.UNIFIED)
                   and not line[2].endswith(f"/hanok/{cid}")]
        assert lines and outside == [], lines
    oci.ok("delete", "--force", cid)
    assert leftover_cgroups(cid) == []


def test_pids_limit_stops_forks(run_capture: RunCapture) -> None:
    script = "for i in 1 2 3 4 5 6 7 8; do sleep 3 & done; echo done"
    unlimited = run_capture(default_config(*sh(script)))
    assert unlimited.code == 0 and unlimited.out.split() == ["done"], unlimited  # the control
    config = default_config(*sh(script))
    config["linux"]["resources"] = {"pids": {"limit": 4}}
    limited = run_capture(config)
    # busybox sh gives up on the first fork the pids controller refuses
    assert limited.code != 0 and "can't fork" in limited.err, limited
    assert "done" not in limited.out


def test_memory_limit_gets_the_hog_oom_killed(run_capture: RunCapture) -> None:
    # the shell holds a command substitution's whole output in memory
    config = default_config(*sh("a=$(head -c 200000000 /dev/zero | tr '\\0' x); echo survived ${#a}"))
    memory = {"limit": 32 << 20}
    if cgroups.host_mode() != cgroups.UNIFIED:
        memory["swap"] = 32 << 20  # v1: memsw = limit, so no swap to hide in
    config["linux"]["resources"] = {"memory": memory}
    result = run_capture(config)
    assert "survived" not in result.out
    assert result.code == 137, result  # SIGKILL from the OOM killer, not some other failure


def test_pause_freezes_and_resume_thaws(
    oci: Runtime, bundle: BundleFactory, ids: ContainerIds, host_dir: Path
) -> None:
    cid = ids.new()
    config = default_config(*sh("i=0; while true; do i=$((i+1)); echo $i > /out/count; sleep 0.05; done"))
    config["mounts"].append({"destination": "/out", "type": "bind", "source": str(host_dir),
                             "options": ["rbind", "rw"]})
    start_detached(oci, bundle, cid, config)
    count = host_dir / "count"

    def value() -> int:
        text = count.read_text().strip() if count.exists() else ""
        return int(text) if text else 0

    deadline = time.monotonic() + 5
    while value() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    oci.ok("pause", cid)
    assert oci.state(cid)["status"] == "paused"
    frozen_at = value()
    time.sleep(0.4)
    assert value() == frozen_at
    oci.ok("resume", cid)
    assert oci.state(cid)["status"] == "running"
    deadline = time.monotonic() + 5
    while value() <= frozen_at and time.monotonic() < deadline:
        time.sleep(0.05)
    assert value() > frozen_at
    oci.ok("delete", "--force", cid)
    assert leftover_cgroups(cid) == []


def test_pause_twice_and_resume_a_running_container_are_refused(
    oci: Runtime, bundle: BundleFactory, ids: ContainerIds
) -> None:
    cid = ids.new()
    start_detached(oci, bundle, cid, default_config("sleep", "30"))
    r = oci("resume", cid)
    assert r.returncode != 0 and "not paused" in r.stderr
    oci.ok("pause", cid)
    r = oci("pause", cid)
    assert r.returncode != 0 and "not running" in r.stderr
    oci.ok("delete", "--force", cid)  # a paused container is thawed and killed


def test_update_changes_a_live_limit(oci: Runtime, bundle: BundleFactory, ids: ContainerIds) -> None:
    cid = ids.new()
    config = default_config("sleep", "30")
    config["linux"]["resources"] = {"memory": {"limit": 64 << 20}, "pids": {"limit": 50}}
    pid = start_detached(oci, bundle, cid, config)
    oci.ok("update", "--resources", "-", cid, input='{"pids": {"limit": 77}}')
    assert cgroup_file(pid, "pids", "pids.max").read_text().strip() == "77"
    # the old memory limit is kept: update merges
    assert cgroup_file(pid, "memory", memory_limit_file()).read_text().strip() == str(64 << 20)
    r = oci("update", "--resources", "-", cid, input='{"pids": {"limit": "many"}}')
    assert r.returncode != 0 and "pids.limit" in r.stderr
    assert cgroup_file(pid, "pids", "pids.max").read_text().strip() == "77"
    oci.ok("delete", "--force", cid)


def test_kill_all_reaches_a_daemon_that_left_the_init(
    oci: Runtime, bundle: BundleFactory, ids: ContainerIds
) -> None:
    """No pid namespace: only the cgroup knows the double-forked daemon belongs here."""
    cid = ids.new()
    config = default_config(*sh("(setsid sleep 60 &); exec sleep 60"))
    config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"] if ns["type"] != "pid"]
    start_detached(oci, bundle, cid, config)
    deadline = time.monotonic() + 5
    pids: list[int] = []
    while len(pids) < 2 and time.monotonic() < deadline:
        import json

        pids = json.loads(oci.ok("ps", "--format", "json", cid).stdout)
        time.sleep(0.05)
    assert len(pids) >= 2, pids
    oci.ok("kill", "--all", cid, "KILL")
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{p}/stat").exists() and " Z " not in Path(f"/proc/{p}/stat").read_text()
              for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if Path(f"/proc/{p}/stat").exists()
                and " Z " not in Path(f"/proc/{p}/stat").read_text()]
    oci.ok("delete", "--force", cid)
    assert leftover_cgroups(cid) == []


@pytest.mark.parametrize("resources, field", [
    ({"memory": {"limit": "lots"}}, "linux.resources.memory.limit"),
    ({"cpu": {"quota": -5, "period": 100000}}, "linux.resources.cpu.quota"),
    ({"pids": {"limit": "x"}}, "linux.resources.pids.limit"),
])
def test_bad_limits_fail_create_and_leave_no_cgroup(
    oci: Runtime, bundle: BundleFactory, ids: ContainerIds, untouched, resources: dict, field: str
) -> None:
    cid = ids.new()
    config = default_config("true")
    config["linux"]["resources"] = resources
    path = bundle(config)
    snap = untouched()
    r = oci("create", "--bundle", path, cid)
    assert r.returncode != 0
    assert field in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    untouched.check(snap)
    assert leftover_cgroups(cid) == []
