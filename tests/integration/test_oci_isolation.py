"""What a process sees inside an OCI container, observed with busybox from inside.

Each test writes a config.json, runs the container in the foreground
(`run --bundle B ID`, stdio pipes) and checks what busybox printed.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    DEFAULT_CAPS,
    DEFAULT_NAMESPACES,
    DEFAULT_READONLY_PATHS,
    TEST_HOSTNAME,
    BundleFactory,
    RunCapture,
    Runtime,
    cap_mask,
    chown_tree,
    default_config,
    mountinfo_mountpoints,
    ns_link,
    parse_status,
    path_in_its_filesystem,
    remove_namespace,
    set_namespace,
    sh,
)

# ------------------------------------------------------------------ namespaces


def test_hostname_is_the_configured_one(run_capture: RunCapture) -> None:
    config = default_config("hostname")
    assert run_capture.ok(config).strip() == TEST_HOSTNAME
    assert os.uname().nodename != TEST_HOSTNAME  # the host's is untouched


def test_hostname_and_domainname(run_capture: RunCapture) -> None:
    # FAILS ON runc 1.1.5: it ignores "domainname" (support came in runc 1.2)
    # and the container shows the kernel default "(none)". hanok sets it.
    config = default_config(*sh("hostname; cat /proc/sys/kernel/domainname"))
    config["hostname"] = "box1"
    config["domainname"] = "example.org"
    assert run_capture.ok(config).split() == ["box1", "example.org"]


def test_process_is_pid_1(run_capture: RunCapture) -> None:
    assert run_capture.ok(default_config(*sh("echo $$"))).strip() == "1"


def test_namespaces_differ_from_the_hosts(run_capture: RunCapture) -> None:
    kinds = ["ipc", "uts", "net", "mnt", "pid"]
    script = "; ".join(f"readlink /proc/self/ns/{k}" for k in kinds)
    inside = run_capture.ok(default_config(*sh(script))).split()
    host = [ns_link("self", k) for k in kinds]
    assert len(inside) == len(kinds)
    for kind, theirs, ours in zip(kinds, inside, host, strict=True):
        assert theirs.startswith(f"{kind}:["), theirs
        assert theirs != ours, f"{kind} namespace is the host's"


def test_unlisted_namespace_is_shared_with_the_host(run_capture: RunCapture) -> None:
    config = default_config("readlink", "/proc/self/ns/ipc")
    remove_namespace(config, "ipc")
    assert run_capture.ok(config).strip() == ns_link("self", "ipc")


def test_only_loopback_and_it_is_up(run_capture: RunCapture) -> None:
    script = "ls /sys/class/net; echo --; cat /sys/class/net/lo/flags; echo --; ip link show lo"
    out = run_capture.ok(default_config(*sh(script)))
    names, flags, link = out.split("--\n")
    assert names.split() == ["lo"]
    assert int(flags.strip(), 16) & 0x1, f"lo is down: flags {flags.strip()}"  # IFF_UP
    assert re.search(r"<[^>]*\bUP\b[^>]*>", link), link


def test_own_mount_table(run_capture: RunCapture, bundle: BundleFactory) -> None:
    path = bundle(default_config("cat", "/proc/self/mountinfo"))
    out = run_capture.ok(path)
    mountpoints = mountinfo_mountpoints(out)
    assert mountpoints.count("/") == 1, out
    root_line = next(line for line in out.splitlines() if line.split()[4] == "/")
    # The root field (4th) of the "/" mount is the bundle's rootfs directory.
    assert root_line.split()[3] == path_in_its_filesystem(path / "rootfs"), root_line
    allowed = ("/proc", "/dev", "/sys")
    strays = [
        mp
        for mp in mountpoints
        if mp != "/" and not any(mp == a or mp.startswith(a + "/") for a in allowed)
    ]
    assert not strays, f"host mounts visible inside: {strays}"
    for host_only in ("/work", "/sys/fs/cgroup", "/mnt/sandboxing"):
        assert not any(mp.startswith(host_only) for mp in mountpoints), out
    for expected in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"):
        assert expected in mountpoints, out


def test_user_namespace_mappings(run_capture: RunCapture, bundle: BundleFactory) -> None:
    config = default_config(
        *sh("cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c %u:%g /bin/busybox")
    )
    set_namespace(config, "user")
    config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    path = bundle(config)
    chown_tree(path / "rootfs", 100000, 100000)
    lines = [line.split() for line in run_capture.ok(path).splitlines()]
    assert lines == [
        ["0", "100000", "65536"],
        ["0", "100000", "65536"],
        ["0"],
        ["0:0"],
    ]


# ------------------------------------------------------------------ privileges


def _caps_of(run_capture: RunCapture, config: dict[str, Any]) -> dict[str, int]:
    fields = parse_status(run_capture.ok(config))
    return {k: int(fields[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}


@pytest.mark.parametrize(
    "caps",
    [DEFAULT_CAPS, ["CAP_NET_BIND_SERVICE"]],
    ids=["default-14", "net-bind-only"],
)
def test_capabilities_as_configured(run_capture: RunCapture, caps: list[str]) -> None:
    config = default_config("cat", "/proc/self/status")
    config["process"]["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
    got = _caps_of(run_capture, config)
    mask = cap_mask(caps)
    assert got == {"CapInh": 0, "CapPrm": mask, "CapEff": mask, "CapBnd": mask, "CapAmb": 0}, {
        k: hex(v) for k, v in got.items()
    }


def test_non_root_user_without_caps(run_capture: RunCapture) -> None:
    config = default_config("cat", "/proc/self/status")
    config["process"]["user"] = {"uid": 1000, "gid": 1000}
    config["process"]["capabilities"] = {"bounding": DEFAULT_CAPS, "effective": [], "permitted": []}
    got = _caps_of(run_capture, config)
    assert got["CapEff"] == 0
    assert got["CapPrm"] == 0
    assert got["CapBnd"] == cap_mask(DEFAULT_CAPS)


@pytest.mark.parametrize("nnp", [True, False])
def test_no_new_privileges(run_capture: RunCapture, nnp: bool) -> None:
    config = default_config("grep", "NoNewPrivs", "/proc/self/status")
    config["process"]["noNewPrivileges"] = nnp
    assert run_capture.ok(config).split() == ["NoNewPrivs:", "1" if nnp else "0"]


def test_user_group_and_additional_gids(run_capture: RunCapture) -> None:
    config = default_config(*sh("id -u; id -g; id -G"))
    config["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [10, 100]}
    uid, gid, groups = run_capture.ok(config).splitlines()
    assert (uid, gid) == ("1000", "1000")
    assert set(groups.split()) == {"1000", "10", "100"}


def test_env_and_cwd(run_capture: RunCapture) -> None:
    config = default_config(*sh("pwd; env"))
    config["process"]["env"] = [
        "PATH=/bin",
        "FOO=bar baz",
        "EMPTY=",
        "TERM=xterm",
    ]
    config["process"]["cwd"] = "/root"
    cwd, *env = run_capture.ok(config).splitlines()
    assert cwd == "/root"
    assert {"PATH=/bin", "FOO=bar baz", "EMPTY=", "TERM=xterm"} <= set(env)


def test_rlimits(run_capture: RunCapture) -> None:
    config = default_config(*sh("ulimit -n; ulimit -Hn; ulimit -c"))
    config["process"]["rlimits"] = [
        {"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512},
        {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
    ]
    assert run_capture.ok(config).split() == ["512", "1024", "0"]


# ------------------------------------------------------------------ filesystem


def test_masked_paths(run_capture: RunCapture) -> None:
    # /proc/kcore may not exist on the host at all; then `cat` fails, also fine.
    script = (
        "cat /proc/kcore 2>/dev/null | wc -c; echo --; "
        "cat /proc/keys /proc/timer_list | wc -c; echo --; "
        "ls -A /proc/acpi; echo --; ls -A /sys/firmware; echo --"
    )
    out = run_capture.ok(default_config(*sh(script)))
    kcore, keys_timer, acpi, firmware, _ = out.split("--\n")
    assert kcore.strip() == "0"
    assert keys_timer.strip() == "0"
    assert acpi.strip() == ""
    assert firmware.strip() == ""


@pytest.mark.parametrize(
    "command",
    [
        "echo x > /proc/sys/kernel/hostname",
        "touch /proc/sys/kernel/domainname",
        "echo 1 > /proc/sys/net/ipv4/ip_forward",
    ],
    ids=["write", "touch", "netns-sysctl"],
)
def test_readonly_proc_sys(run_capture: RunCapture, command: str) -> None:
    # EROFS (not EPERM/EACCES) shows the read-only mount is what stops it.
    # (`touch /proc/sys/x` is no test: procfs answers ENOENT before EROFS.)
    code, out, err = run_capture(default_config(*sh(command)))
    assert code != 0
    assert "Read-only file system" in err, err


def test_readonly_paths_are_read_only_mounts(run_capture: RunCapture) -> None:
    out = run_capture.ok(default_config("cat", "/proc/self/mountinfo"))
    options = {line.split()[4]: set(line.split()[5].split(",")) for line in out.splitlines()}
    # Only the paths this kernel has: runc and hanok skip absent ones.
    present = [p for p in DEFAULT_READONLY_PATHS if os.path.exists(p)]
    assert "/proc/sys" in present
    for path in present:
        assert path in options, f"{path} is not a mount point inside:\n{out}"
        assert "ro" in options[path], f"{path} is not read-only: {options[path]}"


def test_readonly_root(run_capture: RunCapture) -> None:
    code, out, err = run_capture(default_config("touch", "/x"))
    assert code != 0
    assert "Read-only file system" in err, err


def test_writable_root(run_capture: RunCapture, bundle: BundleFactory) -> None:
    config = default_config("touch", "/x")
    config["root"]["readonly"] = False
    path = bundle(config)
    run_capture.ok(path)
    assert (path / "rootfs" / "x").is_file()


def test_tmpfs_mount_with_options(run_capture: RunCapture) -> None:
    config = default_config(
        *sh(
            "grep ' /mnt/t ' /proc/self/mountinfo; stat -c %a /mnt/t; "
            "echo hi > /mnt/t/f && cat /mnt/t/f"
        )
    )
    config["mounts"].append(
        {
            "destination": "/mnt/t",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "noexec", "mode=750", "size=1m"],
        }
    )
    info, mode, content = run_capture.ok(config).splitlines()
    fields = info.split()
    mount_opts = set(fields[5].split(","))
    super_opts = set(info.split(" - ")[1].split()[2].split(","))
    assert fields[info.split().index("-") + 1] == "tmpfs", info
    assert {"nosuid", "nodev", "noexec"} <= mount_opts, info
    # (tmpfs shows mode= only when it is not the default 1777.)
    assert {"size=1024k", "mode=750"} <= super_opts, info
    assert mode == "750"
    assert content == "hi"


def test_bind_mount_read_only(run_capture: RunCapture, host_dir: Path) -> None:
    (host_dir / "f").write_text("from host\n")
    config = default_config(*sh("cat /mnt/h/f; touch /mnt/h/new"))
    config["mounts"].append(
        {
            "destination": "/mnt/h",
            "type": "bind",
            "source": str(host_dir),
            "options": ["rbind", "ro"],
        }
    )
    code, out, err = run_capture(config)
    assert out == "from host\n"
    assert code != 0
    assert "Read-only file system" in err, err
    assert sorted(os.listdir(host_dir)) == ["f"]


def test_bind_mount_read_write(run_capture: RunCapture, host_dir: Path) -> None:
    config = default_config(*sh("echo inside > /mnt/h/new"))
    config["mounts"].append(
        {
            "destination": "/mnt/h",
            "type": "bind",
            "source": str(host_dir),
            "options": ["rbind", "rw"],
        }
    )
    run_capture.ok(config)
    assert (host_dir / "new").read_text() == "inside\n"


def test_default_devices(run_capture: RunCapture) -> None:
    devices = {
        "null": "1:3",
        "zero": "1:5",
        "full": "1:7",
        "random": "1:8",
        "urandom": "1:9",
        "tty": "5:0",
    }
    script = (
        "for d in null zero full random urandom tty ptmx; do "
        '  if [ -c /dev/$d ]; then echo "$d char"; else echo "$d missing"; fi; done; '
        'for d in null zero full random urandom tty; do stat -c "%n %t:%T" /dev/$d; done; '
        'for l in fd stdin stdout stderr; do echo "$l $(readlink /dev/$l)"; done; '
        "echo x > /dev/null && echo null-writable; head -c 3 /dev/zero | od -An -tx1"
    )
    lines = run_capture.ok(default_config(*sh(script))).splitlines()
    names = [*devices, "ptmx"]
    assert lines[: len(names)] == [f"{d} char" for d in names]
    rest = lines[len(names) :]
    # stat's %t:%T prints major:minor in hex; all of these are < 10.
    assert rest[: len(devices)] == [f"/dev/{d} {mm}" for d, mm in devices.items()]
    rest = rest[len(devices) :]
    assert rest[:4] == [
        "fd /proc/self/fd",
        "stdin /proc/self/fd/0",
        "stdout /proc/self/fd/1",
        "stderr /proc/self/fd/2",
    ]
    assert rest[4] == "null-writable"
    assert rest[5].split() == ["00", "00", "00"]


def test_dev_pts_and_shm_are_mounted(run_capture: RunCapture) -> None:
    out = run_capture.ok(default_config("cat", "/proc/self/mountinfo"))
    fstype = {}
    for line in out.splitlines():
        fields = line.split()
        fstype[fields[4]] = fields[fields.index("-") + 1]
    assert fstype.get("/dev/pts") == "devpts", out
    assert fstype.get("/dev/shm") == "tmpfs", out
    assert fstype.get("/dev/mqueue") == "mqueue", out
    assert fstype.get("/dev") == "tmpfs", out


def test_only_stdio_fds_are_open(run_capture: RunCapture) -> None:
    # PID 1 is sh itself: `; true` keeps sh from exec'ing ls in its place, so
    # /proc/1/fd lists sh's fds, not the directory fd ls opens to list it.
    out = run_capture.ok(default_config(*sh("ls /proc/1/fd; true")))
    assert sorted(out.split(), key=int) == ["0", "1", "2"]


# ------------------------------------------------------------------ exit codes


def test_exit_code_propagates(run_capture: RunCapture) -> None:
    code, _, _ = run_capture(default_config(*sh("exit 42")))
    assert code == 42


def test_signal_killed_process_exits_128_plus_signal(run_capture: RunCapture) -> None:
    # As PID 1 of its own pid namespace, sh cannot SIGKILL itself (the kernel
    # drops signals a namespace's init sends itself), so this config keeps the
    # host's pid namespace: sh is an ordinary process there.
    config = default_config(*sh("kill -9 $$"))
    remove_namespace(config, "pid")
    code, _, _ = run_capture(config)
    assert code == 128 + signal.SIGKILL


def test_run_exits_137_when_killed_from_outside(
    oci: Runtime, bundle: BundleFactory, cid: str
) -> None:
    path = bundle(default_config("sleep", "100"))
    runner = oci.popen("run", "--bundle", path, cid)
    oci.wait_status(cid, "running")
    oci.ok("kill", cid, "KILL")
    code = runner.wait(timeout=10)
    assert code == 128 + signal.SIGKILL


def test_all_default_namespaces_are_configured() -> None:
    # Guard for the suite itself: the default config asks for what runc spec does.
    assert [ns["type"] for ns in default_config()["linux"]["namespaces"]] == DEFAULT_NAMESPACES
    assert "resources" not in default_config()["linux"]


def test_devices_are_denied_by_default_even_without_device_rules(run_capture: RunCapture) -> None:
    """runc's rule: no linux.resources.devices still means "deny all but the defaults" (with CAP_MKNOD a
    container could otherwise make and open a node for the host's disk)."""
    config = default_config(*sh("mknod /tmp/k c 10 229 && (true </tmp/k) 2>/dev/null && echo OPENED || echo denied; "
                                "echo x > /dev/null && echo null-ok"))
    config["linux"].pop("resources", None)
    caps = config["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        caps[kind] = sorted(set(caps.get(kind, [])) | {"CAP_MKNOD"})
    config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                             "options": ["nosuid", "mode=1777", "size=1m"]})
    assert run_capture.ok(config) == "denied\nnull-ok\n"
