"""Device rules on cgroup v2: an eBPF program attached to the container's cgroup, driven through hanok-oci.

One container, because every command costs seconds in the emulated VM. It has
CAP_MKNOD, so it can make device nodes; whether it can open them is the eBPF
filter's verdict. The default rules (deny all, then runc's defaults) let it
use /dev/null and mknod anything, but opening b 8:0 or c 1:11 (/dev/kmsg) is
refused with EPERM. `update` with an extra allow rule for c 1:11 w makes kmsg
writable live; a later update that appends a deny for c 1:3 w (after its
allow) takes /dev/null away. Exactly one program is attached at each step
(the replaced one is detached), and after `delete` the program is freed.
Runs natively on a v2 host or in the VM (see conftest.py).
"""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

TIMEOUT = 120
DENIED = "Operation not permitted"

# Each probe prints "<name> ok" or "<name> <the shell's error>"; the nodes are made in a fresh tmpfs.
PROBES = """
probe() { if sh -c "$2" 2>/tmp/err; then echo "$1 ok"; else echo "$1 $(cat /tmp/err)"; fi; }
[ -e /tmp/sda ] || { mknod /tmp/sda b 8 0 && mknod /tmp/mem c 1 1 && mknod /tmp/kmsg c 1 11 || exit 9; }
probe null 'echo x > /dev/null'
probe sda 'cat /tmp/sda'
probe mem 'cat /tmp/mem'
probe kmsg ': > /tmp/kmsg'
"""


def _freed(prog_id: int, timeout: float = 30.0) -> bool:
    """Whether the program with that id is gone, waiting for the kernel to release it if need be."""
    import os

    from hanok.cgroups import devices_bpf

    deadline = time.monotonic() + timeout
    while True:
        fd = devices_bpf.open_program(prog_id)
        if fd is None:
            return True
        os.close(fd)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def test_device_rules_enforced_updated_and_freed_on_cgroup_v2(
    tmpfs_dir: Path, hanok_bin: str, hanok_oci_bin: str
) -> None:
    from hanok.cgroups import devices_bpf
    from hanok.runtime.spec import DEFAULT_DEVICE_RULES

    bundle = tmpfs_dir / "bundle"
    state = tmpfs_dir / "state"
    state.mkdir(mode=0o700)
    subprocess.run([hanok_bin, "bundle", "busybox", str(bundle), "--", "sleep", "600"],
                   check=True, capture_output=True, timeout=TIMEOUT)
    config = json.loads((bundle / "config.json").read_text())
    caps = config["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        caps[kind] = sorted(set(caps.get(kind, [])) | {"CAP_MKNOD"})
    config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]})
    config["linux"]["resources"] = {"devices": [{"allow": False, "access": "rwm"}]}
    (bundle / "config.json").write_text(json.dumps(config))
    cid = f"vmtest-{uuid.uuid4().hex[:8]}"

    def oci(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        # output through files, not pipes: a detached container keeps its stdio open
        with open(tmpfs_dir / "out", "w+") as out, open(tmpfs_dir / "err", "w+") as err:
            done = subprocess.run([hanok_oci_bin, "--root", str(state), *args], input=input, stdout=out,
                                  stderr=err, check=False, text=True, timeout=TIMEOUT)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(done.args, done.returncode, out.read(), err.read())

    def probe() -> dict[str, str]:
        done = oci("exec", cid, "sh", "-c", PROBES)
        assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
        return dict(line.split(" ", 1) for line in done.stdout.splitlines())

    def update(*extra: dict) -> None:
        devices = [{"allow": False, "access": "rwm"}, *DEFAULT_DEVICE_RULES, *extra]
        done = oci("update", "--resources", "-", cid, input=json.dumps({"devices": devices}))
        assert done.returncode == 0, done.stderr

    try:
        ran = oci("run", "--detach", "--bundle", str(bundle), cid)
        assert ran.returncode == 0, ran.stderr
        pid = json.loads(oci("state", cid).stdout)["pid"]
        cgroup = "/sys/fs/cgroup" + Path(f"/proc/{pid}/cgroup").read_text().strip().split("::", 1)[1]
        first = devices_bpf.attached(cgroup)
        assert len(first) == 1, first

        got = probe()
        assert got["null"] == "ok", got
        for name in ("sda", "mem", "kmsg"):
            assert DENIED in got[name], (name, got)

        update({"allow": True, "type": "c", "major": 1, "minor": 11, "access": "w"})
        second = devices_bpf.attached(cgroup)
        assert len(second) == 1 and second != first, (first, second)
        assert _freed(first[0])  # detached, and no fd left open on it
        got = probe()
        assert got["kmsg"] == "ok", got
        assert got["null"] == "ok", got
        assert DENIED in got["sda"] and DENIED in got["mem"], got

        # a deny after the allow for c 1:3 (null) wins for w, not for r
        update({"allow": True, "type": "c", "major": 1, "minor": 11, "access": "w"},
               {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "w"})
        got = probe()
        assert DENIED in got["null"], got
        assert got["kmsg"] == "ok", got
        last = devices_bpf.attached(cgroup)
        assert len(last) == 1, last

        deleted = oci("delete", "--force", cid)
        assert deleted.returncode == 0, deleted.stderr
        assert not Path(cgroup).exists()
        # the kernel releases a removed cgroup's programs asynchronously
        assert _freed(last[0]), f"device program {last[0]} still loaded after delete"
    finally:
        if any(state.iterdir()):
            oci("delete", "--force", cid)
