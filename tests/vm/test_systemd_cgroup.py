"""hanok-oci --systemd-cgroup: the container's cgroup is a transient systemd scope (cgroup v2).

Needs systemd as PID 1: on a host that is not cgroup v2, conftest.py boots a
VM of its own for this file with `vng --systemd`. One container covers it all
(every command costs seconds in the emulated VM): `run` with cgroupsPath
`system.slice:hanok:<id>` and a memory limit puts the init in
/sys/fs/cgroup/system.slice/hanok-<id>.scope with MemoryMax set on the unit and
in memory.max; a second container asking for the same scope is refused
without harm to the first; `update` changes both; `delete --force` removes the
unit and its cgroup.
"""
from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

TIMEOUT = 180


def test_run_update_delete_in_a_transient_scope(tmpfs_dir: Path, hanok_bin: str, hanok_oci_bin: str) -> None:
    if not os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd is not PID 1 here (/run/systemd/system does not exist)")
    bundle = tmpfs_dir / "bundle"
    state = tmpfs_dir / "state"
    state.mkdir(mode=0o700)
    subprocess.run([hanok_bin, "bundle", "busybox", str(bundle), "--", "sleep", "600"],
                   check=True, capture_output=True, timeout=TIMEOUT)
    cid = f"vmtest-{uuid.uuid4().hex[:8]}"
    unit = f"hanok-{cid}.scope"
    config = json.loads((bundle / "config.json").read_text())
    config["linux"]["cgroupsPath"] = f"system.slice:hanok:{cid}"
    config["linux"]["resources"] = {"memory": {"limit": 48 << 20}}
    (bundle / "config.json").write_text(json.dumps(config))
    scope = Path("/sys/fs/cgroup/system.slice") / unit

    def oci(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        # output through files, not pipes: a detached container keeps its stdio open
        with open(tmpfs_dir / "out", "w+") as out, open(tmpfs_dir / "err", "w+") as err:
            done = subprocess.run([hanok_oci_bin, "--root", str(state), "--systemd-cgroup", *args], input=input,
                                  stdout=out, stderr=err, check=False, text=True, timeout=TIMEOUT)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(done.args, done.returncode, out.read(), err.read())

    def unit_property(name: str) -> str:
        return subprocess.run(["systemctl", "show", unit, "-p", name], check=True, capture_output=True,
                              text=True, timeout=TIMEOUT).stdout.strip()

    try:
        ran = oci("run", "--detach", "--bundle", str(bundle), cid)
        assert ran.returncode == 0, ran.stderr
        pid = json.loads(oci("state", cid).stdout)["pid"]
        assert Path(f"/proc/{pid}/cgroup").read_text() == f"0::/system.slice/{unit}\n"
        assert unit_property("MemoryMax") == f"MemoryMax={48 << 20}"
        assert unit_property("Delegate") == "Delegate=yes"
        assert (scope / "memory.max").read_text() == f"{48 << 20}\n"

        # a second container asking for the same scope is refused in one line, and the first one is untouched
        clash = oci("create", "--bundle", str(bundle), cid + "-b")
        assert clash.returncode == 1
        assert clash.stderr == (f"hanok-oci: D-Bus StartTransientUnit: org.freedesktop.systemd1.UnitExists: "
                                f"Unit {unit} was already loaded or has a fragment file.\n"), clash.stderr
        assert Path(f"/proc/{pid}/cgroup").read_text() == f"0::/system.slice/{unit}\n"
        assert (scope / "cgroup.procs").read_text() == f"{pid}\n"

        updated = oci("update", "--resources", "-", cid, input=json.dumps({"memory": {"limit": 32 << 20}}))
        assert updated.returncode == 0, updated.stderr
        assert unit_property("MemoryMax") == f"MemoryMax={32 << 20}"
        assert (scope / "memory.max").read_text() == f"{32 << 20}\n"

        deleted = oci("delete", "--force", cid)
        assert deleted.returncode == 0, deleted.stderr
        status = subprocess.run(["systemctl", "status", unit], capture_output=True, text=True, timeout=TIMEOUT)
        assert status.returncode == 4, status.stdout + status.stderr
        assert f"Unit {unit} could not be found." in status.stderr
        assert not scope.exists()
    finally:
        if any(state.iterdir()):
            oci("delete", "--force", cid)
        subprocess.run(["systemctl", "stop", unit], capture_output=True, timeout=TIMEOUT)
        subprocess.run(["systemctl", "reset-failed", unit], capture_output=True, timeout=TIMEOUT)
