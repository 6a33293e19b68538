"""Bundles: the default config.json (`hanok-oci spec`), the features document,
and the spec of an image-based container (image config + the user's options).

`image_spec()` is where docker's `run` flags become OCI: the image config maps
to `process` as docker and podman map it (images/overlay.py does that part),
then -v/--tmpfs become mounts, --memory/--cpus/--pids-limit become
linux.resources, --cap-add/--cap-drop edit docker's default capability set,
and the network the engine set up becomes the path of the network namespace.
"""
from __future__ import annotations

from hanok import OCI_VERSION, __version__
from hanok.runtime.errors import InvalidArgument, NotFound

if False:  # for type checkers only
    from collections.abc import Callable

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
            "cgroup": {"v1": True, "v2": True, "systemd": True, "systemdUser": False},
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

# docker's default capability set for containers made from images (runc's
# `spec` default above is deliberately smaller).
DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
               "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
               "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
CPU_PERIOD = 100_000  # docker's --cpus: quota = cpus * 100 ms per 100 ms


class Fields:
    """A lean dataclass: a keyword __init__, equality, repr, to_dict() and replace().

    The fields are the class's annotated attributes, their defaults the
    values (a list or dict default is copied for each instance). Not
    `dataclasses`: importing it costs ~10 ms here (it loads inspect, ast and
    re), a tenth of a whole `hanok run --rm IMAGE true`.
    """

    def __init__(self, **given: object):
        fields = type(self).__annotations__
        unknown = sorted(set(given) - set(fields))
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(unknown)}")
        for name in fields:
            if name in given:
                value = given[name]
            else:
                value = getattr(type(self), name)
                if isinstance(value, (list, dict)):
                    value = value.copy()
            setattr(self, name, value)

    def to_dict(self) -> dict:
        """The fields as a dict (lists and dicts copied), for JSON records."""
        return {name: _copied(getattr(self, name)) for name in type(self).__annotations__}

    def replace(self, **changes: object):  # -> the same class
        return type(self)(**{**self.to_dict(), **changes})

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # mutable, like a dataclass with eq

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"


def _copied(value: object) -> object:
    if isinstance(value, list):
        return [_copied(v) for v in value]
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    return value


class RunOptions(Fields):
    """What `hanok create/run` was asked for, beyond the image (docker's flag names).

    (The list and dict defaults below are copied for each instance: see Fields.)
    """

    image: str = ""
    command: list[str] = []
    entrypoint: list[str] | None = None
    env: list[str] = []
    workdir: str | None = None
    user: str | None = None
    name: str | None = None
    hostname: str | None = None
    volumes: list[str] = []                                # host:ctr[:ro|rw] or name:ctr
    tmpfs: list[str] = []                                  # ctr[:options]
    publish: list[str] = []                                # docker -p forms
    network: str = "bridge"                                # bridge | none | host | NAME | container:ID
    memory: str | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    read_only: bool = False
    cap_add: list[str] = []
    cap_drop: list[str] = []
    tty: bool = False
    interactive: bool = False
    auto_remove: bool = False
    labels: dict[str, str] = {}
    pod: str | None = None                                 # the pod whose namespaces and cgroup it joins
    memory_reservation: str | None = None                  # a soft limit (a Kubernetes memory request)
    cpu_shares: int | None = None                          # relative CPU weight (a Kubernetes cpu request)
    no_new_privileges: bool = False                        # allowPrivilegeEscalation: false
    security_opt: list[str] = []                           # seccomp=unconfined|PATH, no-new-privileges
    init: bool = False                                     # --init: a tiny init as pid 1 (tini/catatonit)
    annotations: dict[str, str] = {}


def parse_size(text: str, what: str) -> int:
    """docker's sizes: `512m`, `1g`, `100k`, plain bytes (binary units)."""
    value = text.strip().lower()
    number = value.rstrip("bkmgt")
    unit = value[len(number):]
    if unit.endswith("b") and len(unit) == 2:
        unit = unit[0]
    if not number or unit not in _SIZE_UNITS:
        raise InvalidArgument(f"{what} {text!r}: expected a size such as 512m or 1g")
    try:
        size = int(float(number) * _SIZE_UNITS[unit])
    except ValueError:
        raise InvalidArgument(f"{what} {text!r}: expected a size such as 512m or 1g") from None
    if size <= 0:
        raise InvalidArgument(f"{what} {text!r}: must be positive")
    return size


def _cap_name(cap: str) -> str:
    name = cap.strip().upper()
    return name if name.startswith("CAP_") else "CAP_" + name


def capabilities(cap_add: list[str], cap_drop: list[str]) -> list[str]:
    """docker's default set with --cap-add/--cap-drop applied (`ALL` allowed in both)."""
    from hanok.runtime.spec import CAPABILITIES

    drop = {_cap_name(c) for c in cap_drop}
    add = {_cap_name(c) for c in cap_add}
    for cap in (drop | add) - {"CAP_ALL"}:
        if cap not in CAPABILITIES:
            raise InvalidArgument(f"unknown capability {cap!r}")
    caps = [] if "CAP_ALL" in drop else [c for c in DOCKER_CAPS if c not in drop]
    wanted = sorted(CAPABILITIES) if "CAP_ALL" in add else sorted(add)
    return caps + [c for c in wanted if c not in caps]


INIT_PATH = "/run/hanok-init"  # where --init's program appears in the container (podman: /run/podman-init)
# Statically linked inits, as packaged (the image's libc may be anything, or none).
INIT_CANDIDATES = ("/usr/bin/tini-static", "/usr/bin/catatonit", "/usr/libexec/podman/catatonit",
                   "/usr/bin/docker-init")


def init_program() -> str:
    """The host's static init for --init: it reaps zombies and forwards signals as pid 1."""
    import os

    for path in INIT_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    raise NotFound("--init needs a static init on the host: apt-get install tini (or catatonit)")


def security_options(items: list[str], caps: list[str]) -> tuple[dict | None, bool]:
    """docker's --security-opt: (the linux.seccomp to use or None, no_new_privileges).

    By default containers get docker's seccomp profile for their capability
    set (runtime/seccomp_default.py); `seccomp=unconfined` drops it and
    `seccomp=PATH` reads an OCI `linux.seccomp` object from a JSON file.
    """
    seccomp_choice = "default"
    no_new_privs = False
    for item in items:
        key, sep, value = item.partition("=")
        if key == "seccomp" and sep and value:
            seccomp_choice = value
        elif key == "no-new-privileges" and value in ("", "true", "false"):
            no_new_privs = value != "false"
        elif key.startswith("no-new-privileges:") and key.split(":", 1)[1] in ("true", "false"):
            no_new_privs = key.endswith("true")
        else:
            raise InvalidArgument(f"--security-opt {item!r}: expected seccomp=unconfined|PATH or no-new-privileges")
    if seccomp_choice == "unconfined":
        return None, no_new_privs
    if seccomp_choice == "default":
        from hanok.runtime.seccomp_default import default_profile

        return default_profile(list(caps)), no_new_privs
    from hanok.runtime import jsonio

    try:
        profile = jsonio.load_file(seccomp_choice)
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"--security-opt seccomp={seccomp_choice}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(profile, dict):
        raise InvalidArgument(f"--security-opt seccomp={seccomp_choice}: expected a JSON object")
    docker_only = sorted({"archMap", "includes", "excludes"} & set(profile)
                         | {k for r in profile.get("syscalls") or [] if isinstance(r, dict)
                            for k in ("includes", "excludes") if k in r})
    if docker_only:
        raise InvalidArgument(f"--security-opt seccomp={seccomp_choice}: a docker-format profile "
                              f"({', '.join(docker_only)}); give an OCI linux.seccomp object")
    from hanok.runtime import seccomp as seccomp_module

    seccomp_module.validate(profile)
    return profile, no_new_privs


def volume_mount(spec: str, named_volume_dir: "Callable[[str], str]") -> dict:
    """`-v host:ctr[:ro]` (a bind mount) or `-v name:ctr` (a named volume's directory)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidArgument(f"volume {spec!r}: expected SOURCE:DEST[:ro|rw]")
    source, dest = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise InvalidArgument(f"volume {spec!r}: mode must be ro or rw, not {mode!r}")
    if not dest.startswith("/"):
        raise InvalidArgument(f"volume {spec!r}: the destination must be an absolute path")
    if source.startswith("/"):
        import os

        if not os.path.exists(source):
            raise NotFound(f"volume {spec!r}: {source} does not exist on the host")
    else:
        source = named_volume_dir(source)
    return {"destination": dest, "type": "bind", "source": source,
            "options": ["rbind", "rprivate", mode]}


def tmpfs_mount(spec: str) -> dict:
    """`--tmpfs /run[:size=64m,mode=1777]`, docker's defaults (noexec, nosuid, nodev)."""
    dest, _, opts = spec.partition(":")
    if not dest.startswith("/"):
        raise InvalidArgument(f"tmpfs {spec!r}: the destination must be an absolute path")
    options = ["nosuid", "nodev", "noexec"] + [o for o in opts.split(",") if o]
    return {"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": options}


def image_spec(image_config: dict, layer_dirs_top_first: list[str], opts: RunOptions, *, hostname: str,
               netns_path: str | None, etc_files: dict[str, str],
               named_volume_dir: "Callable[[str], str]", annotations: dict[str, str],
               joined_namespaces: dict[str, str] | None = None, cgroups_path: str | None = None) -> dict:
    """config.json for a container of this image with these options.

    `netns_path`: the network namespace the engine set up (None: the host's
    network, `--network host`). `etc_files`: container path -> host file to
    bind-mount (/etc/hosts, /etc/resolv.conf, /etc/hostname), as docker does.
    `joined_namespaces`: OCI namespace type -> path of one to join instead of
    a new one (a pod's ipc and uts). `cgroups_path`: linux.cgroupsPath (a pod
    puts its containers under its own cgroup); None: the runtime's default.
    """
    from hanok.images import overlay

    process = overlay.image_config_to_process(
        image_config, args=opts.command or None, entrypoint=opts.entrypoint, env=opts.env,
        cwd=opts.workdir, user=opts.user, rootfs=layer_dirs_top_first, terminal=opts.tty)
    init_binary = init_program() if opts.init else None
    if init_binary is not None:
        process["args"] = [INIT_PATH, "--", *process["args"]]
    spec = default_spec(args=process["args"])
    caps = capabilities(opts.cap_add, opts.cap_drop)
    process["capabilities"] = {k: list(caps) for k in ("bounding", "effective", "permitted")}
    import resource

    # docker's 1048576 open files, but never above our own hard limit: raising
    # it needs CAP_SYS_RESOURCE, which not every root has (podman does the same)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 1048576 if hard == resource.RLIM_INFINITY else min(1048576, hard)
    process["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}]
    seccomp, no_new_privs = security_options(opts.security_opt, caps)
    # docker's default is False: setuid binaries in images keep working
    process["noNewPrivileges"] = bool(opts.no_new_privileges or no_new_privs)
    spec["process"] = process
    spec["root"] = {"path": "rootfs", "readonly": bool(opts.read_only)}
    spec["hostname"] = hostname
    linux = spec["linux"]
    namespaces = [ns for ns in linux["namespaces"] if ns["type"] != "network"]
    if netns_path is not None:
        namespaces.append({"type": "network", "path": netns_path})
    for ns in namespaces:
        if ns["type"] in (joined_namespaces or {}):
            ns["path"] = joined_namespaces[ns["type"]]  # type: ignore[index]
    linux["namespaces"] = namespaces
    if cgroups_path is not None:
        linux["cgroupsPath"] = cgroups_path
    if seccomp is not None:
        linux["seccomp"] = seccomp
    resources: dict = {"devices": [{"allow": False, "access": "rwm"}]}
    if opts.memory:
        resources["memory"] = {"limit": parse_size(opts.memory, "--memory")}
    if opts.memory_reservation:
        resources.setdefault("memory", {})["reservation"] = parse_size(opts.memory_reservation,
                                                                       "--memory-reservation")
    if opts.cpus is not None:
        if not 0 < opts.cpus < float("inf"):  # also refuses nan, which fails every comparison
            raise InvalidArgument(f"--cpus {opts.cpus}: must be a positive number")
        resources["cpu"] = {"quota": int(opts.cpus * CPU_PERIOD), "period": CPU_PERIOD}
    if opts.cpu_shares is not None:
        if not 2 <= opts.cpu_shares <= 262144:
            raise InvalidArgument(f"--cpu-shares {opts.cpu_shares}: must be 2-262144")
        resources.setdefault("cpu", {})["shares"] = opts.cpu_shares
    if opts.pids_limit is not None:
        if opts.pids_limit == 0 or opts.pids_limit < -1:
            raise InvalidArgument(f"--pids-limit {opts.pids_limit}: must be positive (or -1 for unlimited)")
        resources["pids"] = {"limit": opts.pids_limit}
    linux["resources"] = resources
    mounts = list(spec["mounts"])
    for dest, source in sorted(etc_files.items()):
        mounts.append({"destination": dest, "type": "bind", "source": source,
                       "options": ["rbind", "rprivate", "ro" if opts.read_only else "rw"]})
    if init_binary is not None:
        mounts.append({"destination": INIT_PATH, "type": "bind", "source": init_binary,
                       "options": ["bind", "ro", "nosuid", "nodev"]})
    for volume in opts.volumes:
        mounts.append(volume_mount(volume, named_volume_dir))
    for item in opts.tmpfs:
        mounts.append(tmpfs_mount(item))
    taken: set[str] = set()
    for m in reversed(mounts):  # a later mount on the same destination wins, as in docker
        if m["destination"] in taken:
            raise InvalidArgument(f"duplicate mount point: {m['destination']}")
        taken.add(m["destination"])
    spec["mounts"] = mounts
    extras = overlay.image_config_extras(image_config)
    spec["annotations"] = {**extras["annotations"], **opts.labels, **opts.annotations, **annotations}
    return spec


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
    from hanok.runtime.errors import Exists

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
