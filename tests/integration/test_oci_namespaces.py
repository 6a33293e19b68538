"""Namespace features beyond the defaults: time offsets, cgroup namespaces,
joining another container's namespaces by path (how pods share a network),
namespaced sysctls, and process attributes (oomScoreAdj, umask).

Each test observes the effect from inside the container and compares it with
the host where that makes the point.
"""
from __future__ import annotations

import time
from pathlib import Path

from helpers import BundleFactory, ContainerIds, RunCapture, Runtime, default_config, ns_link, sh


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def test_time_namespace_offsets_shift_the_boottime_clock(run_capture: RunCapture) -> None:
    config = default_config(*sh("cat /proc/uptime"))
    config["linux"]["namespaces"].append({"type": "time"})
    config["linux"]["timeOffsets"] = {"boottime": {"secs": 86400, "nanosecs": 0}}
    before = _uptime()
    inside = float(run_capture.ok(config).split()[0])
    after = _uptime()
    assert before + 86400 - 1 <= inside <= after + 86400 + 1


def test_cgroup_namespace_roots_the_view_at_the_containers_cgroup(run_capture: RunCapture) -> None:
    config = default_config(*sh("readlink /proc/self/ns/cgroup; cat /proc/self/cgroup"))
    config["linux"]["namespaces"].append({"type": "cgroup"})
    out = run_capture.ok(config).split()
    assert out[0] != ns_link("self", "cgroup")
    # every hierarchy's path is "/" seen from inside a fresh cgroup namespace
    assert all(line.endswith(":/") for line in out[1:]), out


def test_a_second_container_joins_the_first_ones_network_namespace(
    oci: Runtime, bundle: BundleFactory, ids: ContainerIds, run_capture: RunCapture
) -> None:
    first = ids.new()
    oci.ok("run", "--detach", "--bundle", bundle(default_config("sleep", "30")), first)
    pid = oci.state(first)["pid"]
    config = default_config(*sh("readlink /proc/self/ns/net; readlink /proc/self/ns/uts"))
    config["linux"]["namespaces"] = [
        ns if ns["type"] != "network" else {"type": "network", "path": f"/proc/{pid}/ns/net"}
        for ns in config["linux"]["namespaces"]
    ]
    net, uts = run_capture.ok(config).split()
    assert net == ns_link(str(pid), "net")
    assert uts != ns_link(str(pid), "uts")
    oci.ok("delete", "--force", first)


def test_network_sysctl_applies_inside_only(run_capture: RunCapture) -> None:
    host = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text().strip()
    config = default_config(*sh("cat /proc/sys/net/ipv4/ip_unprivileged_port_start"))
    config["linux"]["sysctl"] = {"net.ipv4.ip_unprivileged_port_start": "77"}
    assert run_capture.ok(config).strip() == "77"
    assert Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text().strip() == host


def test_a_host_wide_sysctl_is_refused(run_capture: RunCapture) -> None:
    config = default_config("true")
    config["linux"]["sysctl"] = {"vm.swappiness": "10"}
    result = run_capture(config)
    assert result.code != 0
    assert "linux.sysctl.vm.swappiness" in result.err and "not namespaced" in result.err


def test_oom_score_adj_and_umask(run_capture: RunCapture) -> None:
    config = default_config(*sh("cat /proc/self/oom_score_adj; umask"))
    config["process"]["oomScoreAdj"] = 500
    config["process"]["user"]["umask"] = 0o27
    adj, mask = run_capture.ok(config).split()
    assert adj == "500"
    assert mask == "0027"


def test_state_reports_annotations_and_a_recent_creation_time(
    oci: Runtime, bundle: BundleFactory, ids: ContainerIds
) -> None:
    cid = ids.new()
    config = default_config("sleep", "30")
    config["annotations"] = {"org.example.team": "storage", "io.kubernetes.pod": "p1"}
    started = time.time()
    oci.ok("create", "--bundle", bundle(config), cid)
    state = oci.state(cid)
    assert state["annotations"] == config["annotations"]
    created = time.mktime(time.strptime(state["created"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert abs(created - started) < 60
    oci.ok("delete", "--force", cid)


def test_cgroup_mount_shows_each_hierarchy_read_only(run_capture: RunCapture) -> None:
    """On a v1/hybrid host a `cgroup` mount is runc's layout: a tmpfs with one
    bind of the process's own cgroup per hierarchy; on a v2 host, cgroup2."""
    from hanok import cgroups

    config = default_config(*sh("ls /sys/fs/cgroup; touch /sys/fs/cgroup/x 2>&1; echo end"))
    config["mounts"].append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]})
    out = run_capture.ok(config)
    assert "Read-only file system" in out
    listed = out.split("touch:")[0].split()
    if cgroups.host_mode() == cgroups.UNIFIED:
        assert "cgroup.controllers" in listed
    else:
        assert sorted(listed) == sorted(Path(h.mountpoint).name for h in cgroups.hierarchies())
