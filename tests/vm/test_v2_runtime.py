"""hanok's own cgroup v2 manager, driven through hanok-oci on a pure v2 host.

One container exercises it all, because every command costs seconds in the
emulated VM: limits land in memory.max / pids.max / cpu.max, `update` changes
one live, `pause` sets cgroup.freeze (and `state` says paused), `resume`
clears it, `kill --all` empties the cgroup through cgroup.kill, and `delete`
removes the cgroup directory. Runs natively on a v2 host or in the VM (see
conftest.py); never decide "is this v2?" at module level here.
"""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

TIMEOUT = 120


def test_limits_update_freeze_kill_and_delete_on_cgroup_v2(
    tmpfs_dir: Path, hanok_bin: str, hanok_oci_bin: str
) -> None:
    bundle = tmpfs_dir / "bundle"
    state = tmpfs_dir / "state"
    state.mkdir(mode=0o700)
    subprocess.run([hanok_bin, "bundle", "busybox", str(bundle), "--", "sleep", "600"],
                   check=True, capture_output=True, timeout=TIMEOUT)
    config = json.loads((bundle / "config.json").read_text())
    config["linux"]["resources"] = {"memory": {"limit": 48 << 20}, "pids": {"limit": 20},
                                    "cpu": {"quota": 50000, "period": 100000}}
    (bundle / "config.json").write_text(json.dumps(config))
    cid = f"vmtest-{uuid.uuid4().hex[:8]}"

    def oci(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        # output through files, not pipes: a detached container keeps its stdio
        # open, and a pipe would never reach EOF
        with open(tmpfs_dir / "out", "w+") as out, open(tmpfs_dir / "err", "w+") as err:
            done = subprocess.run([hanok_oci_bin, "--root", str(state), *args], input=input, stdout=out,
                                  stderr=err, check=False, text=True, timeout=TIMEOUT)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(done.args, done.returncode, out.read(), err.read())

    try:
        ran = oci("run", "--detach", "--bundle", str(bundle), cid)
        assert ran.returncode == 0, ran.stderr
        pid = json.loads(oci("state", cid).stdout)["pid"]
        rel = Path(f"/proc/{pid}/cgroup").read_text().strip().split("::", 1)[1]
        cgroup = Path("/sys/fs/cgroup" + rel)
        assert rel.endswith(f"/hanok/{cid}"), rel
        assert (cgroup / "memory.max").read_text().strip() == str(48 << 20)
        assert (cgroup / "pids.max").read_text().strip() == "20"
        assert (cgroup / "cpu.max").read_text().strip() == "50000 100000"

        assert oci("update", "--resources", "-", cid, input='{"pids": {"limit": 9}}').returncode == 0
        assert (cgroup / "pids.max").read_text().strip() == "9"
        assert (cgroup / "memory.max").read_text().strip() == str(48 << 20)

        assert oci("pause", cid).returncode == 0
        assert (cgroup / "cgroup.freeze").read_text().strip() == "1"
        assert "frozen 1" in (cgroup / "cgroup.events").read_text()
        assert json.loads(oci("state", cid).stdout)["status"] == "paused"
        assert oci("resume", cid).returncode == 0
        assert (cgroup / "cgroup.freeze").read_text().strip() == "0"

        assert oci("kill", "--all", cid, "KILL").returncode == 0
        deadline = time.monotonic() + 30
        while (cgroup / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (cgroup / "cgroup.procs").read_text().strip() == ""
        deleted = oci("delete", cid)
        assert deleted.returncode == 0, deleted.stderr
        assert not cgroup.exists()
        assert not (cgroup.parent / "hanok").exists() or not any(cgroup.parent.iterdir())
    finally:
        if any(state.iterdir()):
            oci("delete", "--force", cid)
