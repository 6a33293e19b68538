"""hanok.cgroups.resources (pure: OCI linux.resources -> cgroup files) and the managers'
path and file logic against fake cgroup trees in a temp dir (no root, no cgroup v2 needed).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hanok.cgroups import Hierarchy, resolve
from hanok.cgroups import resources as r
from hanok.cgroups.v1 import V1Manager
from hanok.cgroups.v2 import V2Manager
from hanok.runtime import explain
from hanok.runtime.errors import CgroupError, SpecError

MB = 1 << 20


# ---------------------------------------------------------------- conversions


@pytest.mark.parametrize("shares, weight", [
    (2, 1), (1, 1), (3, 2), (256, 35), (512, 59), (1024, 100), (2048, 174),
    (100000, 4340), (262143, 10000), (262144, 10000),
])
def test_shares_to_weight_is_runc_quadratic(shares: int, weight: int) -> None:
    assert r.shares_to_weight(shares) == weight


@pytest.mark.parametrize("blkio, io", [(10, 1), (500, 4950), (1000, 10000)])
def test_blkio_weight_to_io_weight(blkio: int, io: int) -> None:
    assert r.blkio_to_io_weight(blkio) == io


# ---------------------------------------------------------------- v2 tables

V2_CASES = [
    ({}, {}),
    (None, {}),
    ({"memory": {"limit": 100 * MB}}, {"memory.max": str(100 * MB)}),
    ({"memory": {"limit": -1}}, {"memory.max": "max", "memory.swap.max": "max"}),
    ({"memory": {"limit": 0, "reservation": 0, "swap": 0}}, {}),  # podman's zeros mean unset
    ({"memory": {"reservation": 50 * MB}}, {"memory.low": str(50 * MB)}),
    ({"memory": {"reservation": -1}}, {"memory.low": "max"}),
    ({"memory": {"limit": 100 * MB, "swap": 300 * MB}},
     {"memory.max": str(100 * MB), "memory.swap.max": str(200 * MB)}),
    ({"memory": {"limit": 100 * MB, "swap": 100 * MB}},
     {"memory.max": str(100 * MB), "memory.swap.max": "0"}),
    ({"memory": {"limit": 100 * MB, "swap": -1}}, {"memory.max": str(100 * MB), "memory.swap.max": "max"}),
    ({"memory": {"swappiness": 10, "kernel": 5, "kernelTCP": 5, "disableOOMKiller": False}}, {}),
    ({"cpu": {"shares": 1024}}, {"cpu.weight": "100"}),
    ({"cpu": {"shares": 0}}, {}),
    ({"cpu": {"quota": 50000, "period": 100000}}, {"cpu.max": "50000 100000"}),
    ({"cpu": {"quota": 50000}}, {"cpu.max": "50000 100000"}),
    ({"cpu": {"quota": 20000, "period": 50000}}, {"cpu.max": "20000 50000"}),
    ({"cpu": {"period": 50000}}, {"cpu.max": "max 50000"}),
    ({"cpu": {"quota": -1}}, {"cpu.max": "max 100000"}),
    ({"cpu": {"quota": 0, "period": 0}}, {}),
    ({"cpu": {"burst": 1000}}, {"cpu.max.burst": "1000"}),
    ({"cpu": {"idle": 1}}, {"cpu.idle": "1"}),
    ({"cpu": {"cpus": "0-3,5", "mems": "0"}}, {"cpuset.cpus": "0-3,5", "cpuset.mems": "0"}),
    ({"cpu": {"cpus": ""}}, {}),
    ({"pids": {"limit": 3}}, {"pids.max": "3"}),
    ({"pids": {"limit": 0}}, {"pids.max": "max"}),
    ({"pids": {"limit": -1}}, {"pids.max": "max"}),
    ({"blockIO": {"weight": 500}}, {"io.weight": "default 4950"}),
    ({"blockIO": {"weight": 10, "weightDevice": [{"major": 8, "minor": 0, "weight": 1000}]}},
     {"io.weight": "default 1\n8:0 10000"}),
    ({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                  "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 0}],
                  "throttleReadIOPSDevice": [{"major": 8, "minor": 16, "rate": 100}],
                  "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 10}]}},
     {"io.max": "8:0 rbps=1048576 wbps=max wiops=10\n8:16 riops=100"}),
    ({"hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MB}, {"pageSize": "1GB", "limit": 0}]},
     {"hugetlb.2MB.max": str(4 * MB), "hugetlb.1GB.max": "0"}),
    ({"rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000}}},
     {"rdma.max": "mlx5_1 hca_handle=3 hca_object=10000"}),
    # device rules need eBPF on v2: validated, not written
    ({"devices": [{"allow": False, "access": "rwm"},
                  {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]}, {}),
    ({"unified": {"memory.high": "50M", "io.bfq.weight": "100"}},
     {"memory.high": "50M", "io.bfq.weight": "100"}),
    # unified overrides the mapped value and is written last
    ({"memory": {"limit": 100 * MB}, "pids": {"limit": 5}, "unified": {"memory.max": "1G"}},
     {"pids.max": "5", "memory.max": "1G"}),
]


@pytest.mark.parametrize("resources, files", V2_CASES)
def test_to_v2(resources: dict, files: dict) -> None:
    got = r.to_v2(resources)
    assert got == files
    assert list(got) == list(files)  # write order


def test_to_v2_order_is_stable() -> None:
    got = r.to_v2({"unified": {"cpu.weight": "7"}, "pids": {"limit": 2}, "memory": {"limit": MB},
                   "cpu": {"quota": 10000}})
    assert list(got) == ["memory.max", "cpu.max", "pids.max", "cpu.weight"]


# ---------------------------------------------------------------- v1 tables

V1_CASES = [
    ({}, {}),
    ({"memory": {"limit": 100 * MB}}, {"memory": {"memory.limit_in_bytes": str(100 * MB)}}),
    ({"memory": {"limit": -1}}, {"memory": {"memory.limit_in_bytes": "-1", "memory.memsw.limit_in_bytes": "-1"}}),
    ({"memory": {"limit": 100 * MB, "swap": 300 * MB, "reservation": 50 * MB, "swappiness": 0,
                 "disableOOMKiller": True}},
     {"memory": {"memory.limit_in_bytes": str(100 * MB), "memory.memsw.limit_in_bytes": str(300 * MB),
                 "memory.soft_limit_in_bytes": str(50 * MB), "memory.swappiness": "0",
                 "memory.oom_control": "1"}}),
    ({"cpu": {"shares": 512}}, {"cpu": {"cpu.shares": "512"}}),
    ({"cpu": {"quota": 50000}}, {"cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"}}),
    ({"cpu": {"quota": 20000, "period": 50000}},
     {"cpu": {"cpu.cfs_period_us": "50000", "cpu.cfs_quota_us": "20000"}}),
    ({"cpu": {"period": 50000}}, {"cpu": {"cpu.cfs_period_us": "50000", "cpu.cfs_quota_us": "-1"}}),
    ({"cpu": {"quota": -1}}, {"cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1"}}),
    ({"cpu": {"realtimePeriod": 1000000, "realtimeRuntime": 950000}},
     {"cpu": {"cpu.rt_period_us": "1000000", "cpu.rt_runtime_us": "950000"}}),
    ({"cpu": {"cpus": "0", "mems": "0"}}, {"cpuset": {"cpuset.cpus": "0", "cpuset.mems": "0"}}),
    ({"pids": {"limit": 3}}, {"pids": {"pids.max": "3"}}),
    ({"pids": {"limit": -1}}, {"pids": {"pids.max": "max"}}),
    ({"blockIO": {"weight": 500, "leafWeight": 300,
                  "weightDevice": [{"major": 8, "minor": 0, "weight": 600, "leafWeight": 700}],
                  "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1000},
                                            {"major": 8, "minor": 16, "rate": 2000}],
                  "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 10}]}},
     {"blkio": {"blkio.weight": "500", "blkio.leaf_weight": "300", "blkio.weight_device": "8:0 600",
                "blkio.leaf_weight_device": "8:0 700",
                "blkio.throttle.read_bps_device": "8:0 1000\n8:16 2000",
                "blkio.throttle.write_iops_device": "8:0 10"}}),
    ({"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]},
     {"hugetlb": {"hugetlb.2MB.limit_in_bytes": "0"}}),
    ({"network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 5}]}},
     {"net_cls": {"net_cls.classid": "1048577"}, "net_prio": {"net_prio.ifpriomap": "eth0 5"}}),
    ({"devices": [{"allow": False, "access": "rwm"},
                  {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                  {"allow": True, "type": "c", "major": 136, "access": "rw"},
                  {"allow": True, "type": "b", "major": -1, "minor": -1, "access": "m"}]},
     {"devices": {"devices.deny": "a *:* rwm",
                  "devices.allow": "c 1:3 rwm\nc 136:* rw\nb *:* m"}}),
    ({"devices": [{"allow": True, "access": "rwm"}]}, {"devices": {"devices.allow": "a *:* rwm"}}),
]


@pytest.mark.parametrize("resources, files", V1_CASES)
def test_to_v1(resources: dict, files: dict) -> None:
    got = r.to_v1(resources)
    assert got == files
    for controller in files:
        assert list(got[controller]) == list(files[controller])  # write order


def test_v1_memory_before_swap_in_mapping_and_deny_before_allow() -> None:
    got = r.to_v1({"devices": [{"allow": False}, {"allow": True, "type": "c", "major": 5, "minor": 1}],
                   "memory": {"limit": MB, "swap": 2 * MB}})
    assert list(got["devices"]) == ["devices.deny", "devices.allow"]
    assert list(got["memory"]) == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]


# ---------------------------------------------------------------- bad input

P = "linux.resources"
BAD = [
    # (resources, versions it fails on, exception, text the message must contain)
    ({"memory": {"limit": "lots"}}, "12", SpecError,
     f'{P}.memory.limit: must be a positive integer or -1 (unlimited), got "lots"'),
    ({"memory": {"limit": -5}}, "12", SpecError, f"{P}.memory.limit: must be a positive integer"),
    ({"memory": {"limit": 1.5}}, "12", SpecError, f"{P}.memory.limit:"),
    ({"memory": {"limit": True}}, "12", SpecError, f"{P}.memory.limit: must be a positive integer or -1 "
                                                   "(unlimited), got true"),
    ({"memory": {"reservation": -2}}, "12", SpecError, f"{P}.memory.reservation:"),
    ({"memory": {"swap": "x"}}, "12", SpecError, f"{P}.memory.swap:"),
    ({"memory": {"swap": 100 * MB}}, "12", SpecError, f"{P}.memory.swap: needs memory.limit"),
    ({"memory": {"limit": 200 * MB, "swap": 100 * MB}}, "12", SpecError,
     f"{P}.memory.swap: must be at least memory.limit"),
    ({"memory": {"swappiness": 101}}, "12", SpecError, f"{P}.memory.swappiness: must be an integer between 0 and 100"),
    ({"memory": {"disableOOMKiller": "yes"}}, "12", SpecError, f"{P}.memory.disableOOMKiller: must be true or false"),
    ({"memory": {"disableOOMKiller": True}}, "2", CgroupError,
     f"{P}.memory.disableOOMKiller: cgroup v2 has no way to disable the OOM killer"),
    ({"memory": "1G"}, "12", SpecError, f'{P}.memory: expected an object, got "1G"'),
    ({"cpu": {"shares": -1}}, "12", SpecError, f"{P}.cpu.shares:"),
    ({"cpu": {"shares": 1}}, "12", SpecError, f"{P}.cpu.shares: must be an integer between 2 and 262144, got 1"),
    ({"cpu": {"shares": 300000}}, "12", SpecError, f"{P}.cpu.shares:"),
    ({"cpu": {"quota": -2}}, "12", SpecError, f"{P}.cpu.quota: must be an integer of at least 1000"),
    ({"cpu": {"quota": 500}}, "12", SpecError, f"{P}.cpu.quota:"),
    ({"cpu": {"quota": "half"}}, "12", SpecError, f'{P}.cpu.quota: must be an integer of at least 1000 '
                                                  '(microseconds) or -1 (unlimited), got "half"'),
    ({"cpu": {"period": -100000}}, "12", SpecError, f"{P}.cpu.period: must be a non-negative integer"),
    ({"cpu": {"quota": 50000, "period": 100}}, "12", SpecError, f"{P}.cpu.period: must be an integer between 1000"),
    ({"cpu": {"period": 2000000}}, "12", SpecError, f"{P}.cpu.period:"),
    ({"cpu": {"cpus": "0-"}}, "12", SpecError, f'{P}.cpu.cpus: must be a list like "0-3,5", got "0-"'),
    ({"cpu": {"cpus": "3-1"}}, "12", SpecError, f"{P}.cpu.cpus:"),
    ({"cpu": {"cpus": "a"}}, "12", SpecError, f"{P}.cpu.cpus:"),
    ({"cpu": {"mems": 0}}, "12", SpecError, f"{P}.cpu.mems:"),
    ({"cpu": {"idle": 2}}, "12", SpecError, f"{P}.cpu.idle: must be 0 or 1"),
    ({"cpu": {"realtimeRuntime": 1000}}, "2", CgroupError, f"{P}.cpu.realtimeRuntime: cgroup v2 has no realtime"),
    ({"pids": {"limit": -2}}, "12", SpecError, f"{P}.pids.limit: must be a positive integer, or 0 or -1"),
    ({"pids": {"limit": "many"}}, "12", SpecError, f'{P}.pids.limit:'),
    ({"blockIO": {"weight": 5}}, "12", SpecError, f"{P}.blockIO.weight: must be an integer between 10 and 1000, got 5"),
    ({"blockIO": {"weight": 2000}}, "12", SpecError, f"{P}.blockIO.weight:"),
    ({"blockIO": {"weightDevice": [{"major": 8, "weight": 100}]}}, "12", SpecError,
     f"{P}.blockIO.weightDevice[0]: major and minor are required"),
    ({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": -1}]}}, "12", SpecError,
     f"{P}.blockIO.throttleReadBpsDevice[0].rate: must be a non-negative integer"),
    ({"blockIO": {"throttleWriteIOPSDevice": [{"major": 8, "minor": 0}]}}, "12", SpecError,
     f"{P}.blockIO.throttleWriteIOPSDevice[0].rate: required"),
    ({"blockIO": {"throttleReadBpsDevice": {"major": 8}}}, "12", SpecError,
     f"{P}.blockIO.throttleReadBpsDevice: expected an array"),
    ({"hugepageLimits": [{"pageSize": "2M", "limit": 1}]}, "12", SpecError,
     f'{P}.hugepageLimits[0].pageSize: must be a size like "2MB" or "1GB", got "2M"'),
    ({"hugepageLimits": [{"pageSize": "2MB", "limit": -1}]}, "12", SpecError, f"{P}.hugepageLimits[0].limit:"),
    ({"hugepageLimits": [{"pageSize": "2MB"}]}, "12", SpecError, f"{P}.hugepageLimits[0].limit: required"),
    ({"network": {"classID": 1}}, "2", CgroupError, f"{P}.network: cgroup v2 has no net_cls/net_prio"),
    ({"network": {"classID": -1}}, "12", (SpecError, CgroupError), f"{P}.network"),
    ({"rdma": {"mlx5_1": {"hcaHandles": -3}}}, "12", SpecError, f"{P}.rdma.mlx5_1.hcaHandles:"),
    ({"unified": {"memory.high": "1G"}}, "1", CgroupError, f"{P}.unified: needs cgroup v2"),
    ({"unified": {"bogus.file": "1"}}, "12", SpecError, f'{P}.unified.bogus.file: unknown controller "bogus"'),
    ({"unified": {"memory": "1"}}, "12", SpecError, f"{P}.unified.memory: not a cgroup file name"),
    ({"unified": {"../memory.max": "1"}}, "12", SpecError, f"{P}.unified.../memory.max: must be a plain cgroup file name"),
    ({"unified": {"cgroup.procs": "1"}}, "12", SpecError, f"{P}.unified.cgroup.procs: cgroup.* files are managed"),
    ({"unified": {"memory.max": 5}}, "12", SpecError, f"{P}.unified.memory.max: must be a string, got 5"),
    ({"devices": [{"access": "rwm"}]}, "12", SpecError, f"{P}.devices[0].allow: must be true or false, got null"),
    ({"devices": [{"allow": True, "type": "x"}]}, "12", SpecError, f'{P}.devices[0].type: must be "a", "c" or "b"'),
    ({"devices": [{"allow": True, "type": "c", "major": -7}]}, "12", SpecError, f"{P}.devices[0].major:"),
    ({"devices": [{"allow": True, "access": "rwx"}]}, "12", SpecError, f'{P}.devices[0].access: must be made of'),
    ({"devices": [{"allow": True, "type": "c", "major": 1, "minor": 3}, {"allow": False, "type": "c"}]},
     "1", CgroupError, f"{P}.devices[1]: a deny rule after an allow rule"),
    ("lots", "12", SpecError, f'{P}: expected an object, got "lots"'),
]


@pytest.mark.parametrize("resources, versions, exc, text", BAD,
                         ids=[f"{i}-{b[3].split(':')[0]}" for i, b in enumerate(BAD)])
def test_bad_input_names_the_setting(resources: dict, versions: str, exc: type, text: str) -> None:
    for version, fn in (("1", r.to_v1), ("2", r.to_v2)):
        if version in versions:
            with pytest.raises(exc) as info:
                fn(resources)
            message = str(info.value)
            assert text in message, (version, message)
            assert "\n" not in message
        else:
            fn(resources)  # valid on the other version


def test_setting_of() -> None:
    assert r.setting_of("memory.max") == "linux.resources.memory.limit"
    assert r.setting_of("cpu.cfs_period_us") == "linux.resources.cpu.period"
    assert r.setting_of("hugetlb.2MB.max") == "linux.resources.hugepageLimits"
    assert r.setting_of("memory.high") == "linux.resources.unified.memory.high"


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize("path, absolute, inner", [
    ("", True, "/hanok/abc"),
    ("/kubepods/pod1/abc", True, "/kubepods/pod1/abc"),
    ("/a//b/./c/", True, "/a/b/c"),
    ("a/b", False, "/a/b"),
    ("a/../b", False, "/b"),
])
def test_resolve(path: str, absolute: bool, inner: str) -> None:
    assert resolve(path, "abc") == (absolute, inner)


@pytest.mark.parametrize("path, cid", [("..", "x"), ("../x", "x"), ("/", "x"), ("", "a/b"), ("", ".."),
                                       ("a\nb", "x")])
def test_resolve_rejects(path: str, cid: str) -> None:
    with pytest.raises(CgroupError):
        resolve(path, cid)


@pytest.mark.parametrize("path, own, expect", [
    ("", "/user.slice/session-1.scope", "/hanok/c1"),
    ("/x/y", "/user.slice/session-1.scope", "/x/y"),
    ("x/y", "/user.slice/session-1.scope", "/user.slice/x/y"),   # next to the caller (runc)
    ("x/y", "/", "/x/y"),
    ("x", "/a", "/x"),
])
def test_v2_paths(path: str, own: str, expect: str) -> None:
    m = V2Manager(path, "c1", mountpoint="/fake", own=own)
    assert m.path == expect
    assert m.dir == "/fake" + expect


def _hier(root: Path, name: str, own: str = "/") -> Hierarchy:
    mp = root / name
    return Hierarchy(str(mp), "/", "cgroup", (name,), own)


def test_v1_paths(tmp_path: Path) -> None:
    hs = [_hier(tmp_path, "memory", own="/process_api/x"), _hier(tmp_path, "pids"),
          Hierarchy(str(tmp_path / "cpu,cpuacct"), "/", "cgroup", ("cpu", "cpuacct"), "/")]
    m = V1Manager("", "c1", hs)
    assert m.controllers == {"memory": f"{tmp_path}/memory/hanok/c1", "pids": f"{tmp_path}/pids/hanok/c1",
                             "cpu": f"{tmp_path}/cpu,cpuacct/hanok/c1", "cpuacct": f"{tmp_path}/cpu,cpuacct/hanok/c1"}
    assert m.primary == f"{tmp_path}/pids/hanok/c1"
    rel = V1Manager("t/c1", "c1", hs)
    assert rel.controllers["memory"] == f"{tmp_path}/memory/process_api/x/t/c1"  # under the caller's cgroup
    assert rel.controllers["pids"] == f"{tmp_path}/pids/t/c1"


# ---------------------------------------------------------------- v2 against a fake tree


def _fake_cgroup(directory: Path, controllers: str, subtree: str = "") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cgroup.controllers").write_text(controllers + "\n")
    (directory / "cgroup.subtree_control").write_text(subtree + "\n")


class Trace:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
        self.path = tmp_path / "trace"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        explain.enable(self.fd)

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines()

    def close(self) -> None:
        explain.disable()
        os.close(self.fd)


@pytest.fixture
def trace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    t = Trace(monkeypatch, tmp_path)
    yield t
    t.close()


def test_v2_create_enables_controllers_along_the_path(tmp_path: Path, trace: Trace) -> None:
    root = tmp_path / "cg"
    _fake_cgroup(root, "cpuset cpu io memory pids", "memory")
    m = V2Manager("", "c1", mountpoint=str(root))
    # imitate the kernel: a new directory gets cgroup.controllers from its parent's subtree_control
    real_mkdir = os.mkdir

    def kernel_mkdir(path, mode=0o777):
        real_mkdir(path, mode)
        parent = os.path.dirname(path)
        enabled = open(os.path.join(parent, "cgroup.subtree_control")).read().replace("+", "")
        _fake_cgroup(Path(path), enabled.strip())

    import hanok.cgroups._io as io_mod
    io_mod.os.mkdir = kernel_mkdir
    try:
        m.create()
    finally:
        io_mod.os.mkdir = real_mkdir
    assert (root / "cgroup.subtree_control").read_text() == "+cpuset +cpu +io +pids"
    assert (root / "hanok" / "cgroup.subtree_control").read_text() == "+cpuset +cpu +io +pids"
    assert (root / "hanok" / "c1").is_dir()
    assert m.created == [f"{root}/hanok", f"{root}/hanok/c1"]
    assert trace.lines() == [
        f"+ echo '+cpuset +cpu +io +pids' > {root}/cgroup.subtree_control",
        f"+ mkdir {root}/hanok",
        f"+ echo '+cpuset +cpu +io +pids' > {root}/hanok/cgroup.subtree_control",
        f"+ mkdir {root}/hanok/c1",
    ]


def test_v2_apply_writes_files_and_explains(tmp_path: Path, trace: Trace) -> None:
    leaf = tmp_path / "hanok" / "c1"
    _fake_cgroup(leaf, "cpu memory pids io")
    for name in ("memory.max", "cpu.max", "pids.max", "cpu.weight", "io.max"):
        (leaf / name).write_text("")
    m = V2Manager("", "c1", mountpoint=str(tmp_path))
    m.apply({"memory": {"limit": 100 * MB}, "cpu": {"quota": 50000, "shares": 2048}, "pids": {"limit": 3},
             "blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 10}]}})
    assert (leaf / "memory.max").read_text() == str(100 * MB)
    assert (leaf / "cpu.max").read_text() == "50000 100000"
    assert (leaf / "cpu.weight").read_text() == "174"
    assert (leaf / "pids.max").read_text() == "3"
    assert (leaf / "io.max").read_text() == "8:0 rbps=10"
    assert f"+ echo 104857600 > {leaf}/memory.max" in trace.lines()
    assert f"+ echo '50000 100000' > {leaf}/cpu.max" in trace.lines()


def test_v2_apply_missing_controller_names_setting(tmp_path: Path) -> None:
    leaf = tmp_path / "hanok" / "c1"
    _fake_cgroup(leaf, "memory pids")
    (leaf / "memory.max").write_text("")
    m = V2Manager("", "c1", mountpoint=str(tmp_path))
    with pytest.raises(CgroupError, match=r"linux.resources.hugepageLimits: needs the hugetlb controller, "
                                          r"which is not available in .* \(available: memory pids\)"):
        m.apply({"memory": {"limit": MB}, "hugepageLimits": [{"pageSize": "2MB", "limit": 0}]})
    assert (leaf / "memory.max").read_text() == ""  # nothing written before the check


def test_v2_apply_missing_file_for_max_is_skipped(tmp_path: Path) -> None:
    leaf = tmp_path / "hanok" / "c1"
    _fake_cgroup(leaf, "memory")
    (leaf / "memory.max").write_text("")
    m = V2Manager("", "c1", mountpoint=str(tmp_path))
    m.apply({"memory": {"limit": -1}})  # memory.swap.max "max" on a host without swap accounting
    assert (leaf / "memory.max").read_text() == "max"
    with pytest.raises(CgroupError, match="linux.resources.memory.swap: .*memory.swap.max does not exist"):
        m.apply({"memory": {"limit": MB, "swap": 2 * MB}})


def test_v2_freeze_reads_events_and_destroy_is_idempotent(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    leaf = root / "hanok" / "c1"
    _fake_cgroup(leaf, "")
    (leaf / "cgroup.freeze").write_text("0")
    (leaf / "cgroup.events").write_text("populated 0\nfrozen 1\n")  # a fake kernel that froze at once
    m = V2Manager("", "c1", mountpoint=str(root))
    m.freeze()
    assert (leaf / "cgroup.freeze").read_text() == "1"
    assert m.is_frozen()
    (leaf / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    m.thaw()
    assert not m.is_frozen()
    assert m.procs() == []
    for name in os.listdir(leaf):
        os.unlink(leaf / name)
    for name in os.listdir(root / "hanok"):
        if name != "c1":
            os.unlink(root / "hanok" / name)
    m.destroy()
    assert not (root / "hanok").exists()  # the default parent goes when empty
    m.destroy()  # idempotent


def test_v2_stats_reads_the_files(tmp_path: Path) -> None:
    leaf = tmp_path / "hanok" / "c1"
    _fake_cgroup(leaf, "")
    (leaf / "memory.current").write_text("1000\n")
    (leaf / "memory.peak").write_text("2000\n")
    (leaf / "memory.max").write_text("max\n")
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\n")
    (leaf / "cpu.stat").write_text("usage_usec 50\nuser_usec 30\nsystem_usec 20\nnr_periods 9\n"
                                   "nr_throttled 3\nthrottled_usec 700\n")
    (leaf / "pids.current").write_text("4\n")
    (leaf / "pids.max").write_text("10\n")
    (leaf / "io.stat").write_text("8:0 rbytes=100 wbytes=20 rios=1 wios=2\n8:16 rbytes=1 wbytes=2\n")
    s = V2Manager("", "c1", mountpoint=str(tmp_path)).stats()
    assert s == {
        "memory": {"current": 1000, "peak": 2000, "limit": None, "swap_current": None, "oom_kill": 1, "oom": 2},
        "cpu": {"usage_usec": 50, "user_usec": 30, "system_usec": 20, "nr_periods": 9, "nr_throttled": 3,
                "throttled_usec": 700},
        "pids": {"current": 4, "limit": 10},
        "io": {"read_bytes": 101, "write_bytes": 22},
    }


def test_v1_apply_missing_controller(tmp_path: Path) -> None:
    m = V1Manager("", "c1", [_hier(tmp_path, "memory"), _hier(tmp_path, "pids")])
    with pytest.raises(CgroupError, match=r"linux.resources.cpu.quota: needs the cpu controller, which this "
                                          r"host does not have as cgroup v1 \(mounted: memory pids\)"):
        m.apply({"pids": {"limit": 4}, "cpu": {"quota": 10000}})
    with pytest.raises(CgroupError, match="linux.resources.unified: needs cgroup v2"):
        m.apply({"unified": {"memory.high": "1"}})


def test_cgroups_modules_stay_off_the_hot_import_list() -> None:
    import subprocess
    import sys

    import hanok

    code = ("import sys; b=set(sys.modules); import hanok.cgroups.v1, hanok.cgroups.v2, hanok.cgroups.resources;"
            "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules)-b})))")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(hanok.__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    new = set(out.stdout.split())
    assert not new & {"re", "json", "subprocess", "enum", "typing", "shutil", "signal", "click"}, new
