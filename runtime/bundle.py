"""Bundles: the default config.json (`hanok-oci spec`) and the features document.

Later (images issue) this also turns an image config plus user options into a
bundle; for now it holds the defaults a bundle starts from.
"""
from __future__ import annotations

from hanok import OCI_VERSION, __version__

DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def default_spec(rootless: bool = False, args: list[str] | None = None) -> dict:
    """A config.json close to `runc spec`'s, so bundles move between the two."""
    spec: dict = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": args or ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: list(DEFAULT_CAPS) for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "hanok",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }
    if rootless:
        linux = spec["linux"]
        linux["namespaces"].append({"type": "user"})
        linux["uidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
        linux.pop("resources")
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/sys"] + [
            {"destination": "/sys", "type": "none", "source": "/sys",
             "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}]
    return spec


def features() -> dict:
    """The runtime-spec `features` document: what this runtime accepts."""
    from hanok.runtime.spec import CAPABILITIES, HOOK_KINDS, MOUNT_FLAGS, NAMESPACE_FLAGS, PROPAGATION_FLAGS

    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": list(HOOK_KINDS),
        "mountOptions": sorted(set(MOUNT_FLAGS) | set(PROPAGATION_FLAGS)),
        "linux": {
            "namespaces": list(NAMESPACE_FLAGS),
            "capabilities": list(CAPABILITIES),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {
                "enabled": True,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                            "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                              "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM", "SCMP_ARCH_X32", "SCMP_ARCH_X86",
                          "SCMP_ARCH_X86_64"],
            },
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {"org.opencontainers.runtime-spec.features": OCI_VERSION,
                        "io.github.hanok.version": __version__},
    }


BUSYBOX = "/bin/busybox"


def busybox_bundle(path: str, args: list[str] | None = None, busybox: str = BUSYBOX,
                   hostname: str = "hanok") -> str:
    """Make a runnable bundle from a static busybox: the no-internet default.

    The rootfs holds busybox and one symlink per applet; config.json is the
    default spec without a terminal, so it runs in any caller's stdio.
    """
    import os
    import shutil
    import subprocess

    from hanok.runtime import jsonio
    from hanok.runtime.errors import Exists, NotFound

    if not os.path.isfile(busybox):
        raise NotFound(f"{busybox} not found: install Debian's busybox-static (apt-get install busybox-static)")
    config_path = os.path.join(path, "config.json")
    if os.path.exists(config_path):
        raise Exists(f"{config_path} exists; choose an empty directory")
    rootfs = os.path.join(path, "rootfs")
    bin_dir = os.path.join(rootfs, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    for d in ("proc", "sys", "dev", "tmp", "etc", "root", "var", "run"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    shutil.copy2(busybox, os.path.join(bin_dir, "busybox"))
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = os.path.join(bin_dir, applet)
        if applet != "busybox" and not os.path.lexists(link):
            os.symlink("busybox", link)
    with open(os.path.join(rootfs, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    with open(os.path.join(rootfs, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")
    spec = default_spec(args=args or ["sh", "-c", "echo hello from $(hostname), pid $$; id"])
    spec["process"]["terminal"] = False
    spec["hostname"] = hostname
    with open(config_path, "w") as f:
        f.write(jsonio.dumps(spec, indent=2) + "\n")
    return path
