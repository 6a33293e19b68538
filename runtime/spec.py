"""The OCI runtime-spec config.json: load, validate, defaults.

This is the only reader of config.json (runc's "specconv" boundary): everything
after it works on the validated `Config`, so a bad bundle fails here, before any
process, mount or state file exists. Messages name the offending field.

Kept import-light on purpose (json only): `create` and `run` are hot paths.
"""
from __future__ import annotations

import os

from hanok.runtime import jsonio
from hanok.runtime.errors import NotFound, NotSupported, SpecError
from hanok.runtime import syscalls as sc

NAMESPACE_FLAGS: dict[str, int] = {
    "pid": sc.CLONE_NEWPID,
    "network": sc.CLONE_NEWNET,
    "mount": sc.CLONE_NEWNS,
    "ipc": sc.CLONE_NEWIPC,
    "uts": sc.CLONE_NEWUTS,
    "user": sc.CLONE_NEWUSER,
    "cgroup": sc.CLONE_NEWCGROUP,
    "time": sc.CLONE_NEWTIME,
}
# /proc/<pid>/ns/<name> for each namespace type
NS_PROC_NAME = {"pid": "pid", "network": "net", "mount": "mnt", "ipc": "ipc", "uts": "uts",
                "user": "user", "cgroup": "cgroup", "time": "time"}

CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
CAP_NUMBER = {name: i for i, name in enumerate(CAPABILITIES)}
CAP_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")

RLIMITS = ("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE",
           "RLIMIT_RSS", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS",
           "RLIMIT_LOCKS", "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE",
           "RLIMIT_RTPRIO", "RLIMIT_RTTIME")
RLIMIT_NUMBER = {name: i for i, name in enumerate(RLIMITS)}

HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer",
              "poststart", "poststop")

# mount options that are flags: name -> (clear?, flag)
MOUNT_FLAGS: dict[str, tuple[bool, int]] = {
    "ro": (False, sc.MS_RDONLY), "rw": (True, sc.MS_RDONLY),
    "nosuid": (False, sc.MS_NOSUID), "suid": (True, sc.MS_NOSUID),
    "nodev": (False, sc.MS_NODEV), "dev": (True, sc.MS_NODEV),
    "noexec": (False, sc.MS_NOEXEC), "exec": (True, sc.MS_NOEXEC),
    "sync": (False, sc.MS_SYNCHRONOUS), "async": (True, sc.MS_SYNCHRONOUS),
    "dirsync": (False, sc.MS_DIRSYNC), "remount": (False, sc.MS_REMOUNT),
    "mand": (False, sc.MS_MANDLOCK), "nomand": (True, sc.MS_MANDLOCK),
    "noatime": (False, sc.MS_NOATIME), "atime": (True, sc.MS_NOATIME),
    "nodiratime": (False, sc.MS_NODIRATIME), "diratime": (True, sc.MS_NODIRATIME),
    "relatime": (False, sc.MS_RELATIME), "norelatime": (True, sc.MS_RELATIME),
    "strictatime": (False, sc.MS_STRICTATIME), "nostrictatime": (True, sc.MS_STRICTATIME),
    "nosymfollow": (False, sc.MS_NOSYMFOLLOW), "symfollow": (True, sc.MS_NOSYMFOLLOW),
    "bind": (False, sc.MS_BIND), "rbind": (False, sc.MS_BIND | sc.MS_REC),
}
PROPAGATION_FLAGS = {
    "private": sc.MS_PRIVATE, "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED, "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE, "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE, "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}
# accepted and ignored, as runc does: they concern other runtimes or the caller
IGNORED_MOUNT_OPTIONS = {"tmpcopyup", "defaults", "auto", "noauto", "nofail", "_netdev"}

# sysctl prefixes that are namespaced, and the namespace that must be private for them
SYSCTL_NAMESPACED = {
    "kernel.msgmax": "ipc", "kernel.msgmnb": "ipc", "kernel.msgmni": "ipc",
    "kernel.sem": "ipc", "kernel.shmall": "ipc", "kernel.shmmax": "ipc",
    "kernel.shmmni": "ipc", "kernel.shm_rmid_forced": "ipc",
    "kernel.hostname": "uts", "kernel.domainname": "uts",
}
SYSCTL_PREFIXES = {"fs.mqueue.": "ipc", "net.": "network"}


class Mount:
    """One validated entry of config.json `mounts`."""

    __slots__ = ("destination", "source", "type", "flags", "propagation", "data",
                 "is_bind", "options")

    def __init__(self, destination: str, source: str | None, type_: str | None,
                 flags: int, propagation: int, data: str, is_bind: bool, options: list[str]):
        self.destination = destination
        self.source = source
        self.type = type_
        self.flags = flags
        self.propagation = propagation
        self.data = data
        self.is_bind = is_bind
        self.options = options


class Config:
    """The validated container configuration the rest of the runtime works on.

    `raw` keeps the original document (saved into the state dir, so `exec` and
    `delete` work even if the bundle changes or disappears).
    """

    def __init__(self, raw: dict, bundle: str):
        self.raw = raw
        self.bundle = bundle
        self.rootfs = ""
        self.readonly_root = False
        self.process: dict = {}
        self.hostname: str | None = None
        self.domainname: str | None = None
        self.mounts: list[Mount] = []
        self.namespaces: dict[str, str | None] = {}  # type -> path (None = new)
        self.uid_mappings: list[dict] = []
        self.gid_mappings: list[dict] = []
        self.devices: list[dict] = []
        self.masked_paths: list[str] = []
        self.readonly_paths: list[str] = []
        self.rootfs_propagation = sc.MS_SLAVE | sc.MS_REC
        self.sysctl: dict[str, str] = {}
        self.seccomp: dict | None = None
        self.hooks: dict[str, list[dict]] = {}
        self.annotations: dict[str, str] = {}
        self.resources: dict = {}
        self.cgroups_path = ""
        self.time_offsets: dict[str, dict] = {}

    def new_namespace_flags(self) -> int:
        flags = 0
        for kind, path in self.namespaces.items():
            if path is None:
                flags |= NAMESPACE_FLAGS[kind]
        return flags


def _type(value: object, expected: type | tuple, field: str) -> None:
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        name = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
        raise SpecError(f"{field}: expected {_json_type(name)}, got {_json_type(type(value).__name__)}")


def _json_type(pyname: str) -> str:
    return {"dict": "object", "list": "array", "str": "string", "int": "integer",
            "bool": "boolean", "NoneType": "null", "float": "number"}.get(pyname, pyname)


def _obj(parent: dict, key: str, field: str) -> dict:
    value = parent.get(key)
    if value is None:
        return {}
    _type(value, dict, field)
    return value


def _list(parent: dict, key: str, field: str) -> list:
    value = parent.get(key)
    if value is None:
        return []
    _type(value, list, field)
    return value


def _str_list(parent: dict, key: str, field: str) -> list[str]:
    items = _list(parent, key, field)
    for i, item in enumerate(items):
        _type(item, str, f"{field}[{i}]")
    return items


def _uint(value: object, field: str, bits: int = 32) -> int:
    _type(value, int, field)
    if value < 0 or value >= 1 << bits:
        raise SpecError(f"{field}: {value} is out of range")
    return value


def parse_mount_options(options: list[str], field: str) -> tuple[int, int, list[str]]:
    """Split mount options into (flags, propagation flags, filesystem data words)."""
    flags = 0
    propagation = 0
    data: list[str] = []
    for opt in options:
        known = MOUNT_FLAGS.get(opt)
        if known is not None:
            clear, bit = known
            flags = flags & ~bit if clear else flags | bit
        elif opt in PROPAGATION_FLAGS:
            propagation = PROPAGATION_FLAGS[opt]
        elif opt in IGNORED_MOUNT_OPTIONS:
            continue
        elif opt in ("idmap", "ridmap") or opt.startswith(("rro", "rrw", "rnosuid", "rnodev", "rnoexec")):
            raise NotSupported(f"{field}: mount option {opt!r} is not supported yet")
        else:
            data.append(opt)
    return flags, propagation, data


def _clean_abs(path: str, field: str) -> str:
    if not path.startswith("/"):
        raise SpecError(f"{field}: {path!r} must be an absolute path")
    return os.path.normpath(path).replace("//", "/")


def load(bundle: str) -> Config:
    """Read and validate `<bundle>/config.json`."""
    bundle = os.path.abspath(bundle)
    path = os.path.join(bundle, "config.json")
    try:
        raw = jsonio.load_file(path)
    except FileNotFoundError:
        if not os.path.isdir(bundle):
            raise NotFound(f"bundle {bundle} does not exist") from None
        raise NotFound(f"bundle {bundle} has no config.json") from None
    except ValueError as e:
        raise SpecError(f"{path}: invalid JSON: {e}") from None
    return from_dict(raw, bundle)


def from_dict(raw: object, bundle: str) -> Config:
    """Validate a parsed config.json document and build the internal Config."""
    _type(raw, dict, "config.json")
    assert isinstance(raw, dict)
    version = raw.get("ociVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise SpecError(f"ociVersion: unsupported version {version!r} (want 1.x)")
    cfg = Config(raw, bundle)

    root = _obj(raw, "root", "root")
    root_path = root.get("path")
    if not isinstance(root_path, str) or not root_path:
        raise SpecError("root.path: required")
    cfg.rootfs = os.path.realpath(os.path.join(bundle, root_path))
    if not os.path.isdir(cfg.rootfs):
        raise NotFound(f"root.path: rootfs {cfg.rootfs} does not exist")
    readonly = root.get("readonly", False)
    _type(readonly, bool, "root.readonly")
    cfg.readonly_root = readonly

    cfg.process = _validate_process(_obj(raw, "process", "process"), "process", require_args=True)

    for key in ("hostname", "domainname"):
        if key in raw and raw[key] is not None:
            _type(raw[key], str, key)
            setattr(cfg, key, raw[key])

    for i, m in enumerate(_list(raw, "mounts", "mounts")):
        cfg.mounts.append(_validate_mount(m, f"mounts[{i}]", bundle))

    linux = _obj(raw, "linux", "linux")
    for i, ns in enumerate(_list(linux, "namespaces", "linux.namespaces")):
        field = f"linux.namespaces[{i}]"
        _type(ns, dict, field)
        kind = ns.get("type")
        if kind not in NAMESPACE_FLAGS:
            raise SpecError(f"{field}.type: unknown namespace type {kind!r}")
        if kind in cfg.namespaces:
            raise SpecError(f"{field}.type: namespace {kind!r} listed twice")
        ns_path = ns.get("path") or None
        if ns_path is not None:
            _type(ns_path, str, f"{field}.path")
            if not os.path.exists(ns_path):
                raise NotFound(f"{field}.path: {ns_path} does not exist")
        cfg.namespaces[kind] = ns_path
    if "mount" not in cfg.namespaces:
        raise SpecError("linux.namespaces: a mount namespace is required")
    if cfg.hostname and "uts" not in cfg.namespaces:
        raise SpecError("hostname: unable to set hostname without a private UTS namespace")
    if cfg.domainname and "uts" not in cfg.namespaces:
        raise SpecError("domainname: unable to set domainname without a private UTS namespace")

    for key, target in (("uidMappings", cfg.uid_mappings), ("gidMappings", cfg.gid_mappings)):
        for i, mapping in enumerate(_list(linux, key, f"linux.{key}")):
            field = f"linux.{key}[{i}]"
            _type(mapping, dict, field)
            target.append({k: _uint(mapping.get(k), f"{field}.{k}") for k in ("containerID", "hostID", "size")})
    if "user" in cfg.namespaces and cfg.namespaces["user"] is None:
        if not cfg.uid_mappings or not cfg.gid_mappings:
            raise SpecError("linux.uidMappings: a new user namespace needs uid and gid mappings")
    elif cfg.uid_mappings or cfg.gid_mappings:
        raise SpecError("linux.uidMappings: mappings need a new user namespace")

    for i, dev in enumerate(_list(linux, "devices", "linux.devices")):
        cfg.devices.append(_validate_device(dev, f"linux.devices[{i}]"))
    cfg.masked_paths = [_clean_abs(p, "linux.maskedPaths") for p in _str_list(linux, "maskedPaths", "linux.maskedPaths")]
    cfg.readonly_paths = [_clean_abs(p, "linux.readonlyPaths") for p in _str_list(linux, "readonlyPaths", "linux.readonlyPaths")]

    propagation = linux.get("rootfsPropagation")
    if propagation:
        if propagation not in PROPAGATION_FLAGS:
            raise SpecError(f"linux.rootfsPropagation: unknown propagation {propagation!r}")
        cfg.rootfs_propagation = PROPAGATION_FLAGS[propagation]

    sysctl = _obj(linux, "sysctl", "linux.sysctl")
    for key, value in sysctl.items():
        _type(value, str, f"linux.sysctl.{key}")
        ns = SYSCTL_NAMESPACED.get(key) or next(
            (kind for prefix, kind in SYSCTL_PREFIXES.items() if key.startswith(prefix)), None)
        if ns is None:
            raise SpecError(f"linux.sysctl.{key}: sysctl is not namespaced, refusing to change the host's")
        if ns not in cfg.namespaces:
            raise SpecError(f"linux.sysctl.{key}: needs a private {ns} namespace, not the host's")
        cfg.sysctl[key] = value

    if linux.get("seccomp") is not None:
        _type(linux["seccomp"], dict, "linux.seccomp")
        from hanok.runtime import seccomp

        seccomp.validate(linux["seccomp"])
        cfg.seccomp = linux["seccomp"]

    cfg.resources = validate_resources(_obj(linux, "resources", "linux.resources"))
    # runc's rule: device access starts from "deny all" whether or not the bundle lists
    # rules (a container with CAP_MKNOD could otherwise open the host's disks), then the
    # bundle's rules, then the default devices and the bundle's own nodes
    given = cfg.resources.get("devices") or [{"allow": False, "access": "rwm"}]
    cfg.resources["devices"] = given + device_rules_for(cfg.devices)
    if linux.get("cgroupsPath"):
        _type(linux["cgroupsPath"], str, "linux.cgroupsPath")
        cfg.cgroups_path = linux["cgroupsPath"]

    offsets = _obj(linux, "timeOffsets", "linux.timeOffsets")
    if offsets:
        if cfg.namespaces.get("time", "host") is not None:
            raise SpecError("linux.timeOffsets: needs a new time namespace")
        for clock, off in offsets.items():
            if clock not in ("monotonic", "boottime"):
                raise SpecError(f"linux.timeOffsets.{clock}: unknown clock")
            _type(off, dict, f"linux.timeOffsets.{clock}")
        cfg.time_offsets = offsets

    hooks = _obj(raw, "hooks", "hooks")
    for kind, entries in hooks.items():
        if kind not in HOOK_KINDS:
            raise SpecError(f"hooks.{kind}: unknown hook kind")
        checked = []
        for i, hook in enumerate(entries if isinstance(entries, list) else _list(hooks, kind, f"hooks.{kind}")):
            field = f"hooks.{kind}[{i}]"
            _type(hook, dict, field)
            if not isinstance(hook.get("path"), str) or not hook["path"].startswith("/"):
                raise SpecError(f"{field}.path: must be an absolute path")
            _str_list(hook, "args", f"{field}.args")
            _str_list(hook, "env", f"{field}.env")
            if "timeout" in hook and hook["timeout"] is not None:
                _type(hook["timeout"], int, f"{field}.timeout")
                if hook["timeout"] <= 0:
                    raise SpecError(f"{field}.timeout: must be positive")
            checked.append(hook)
        if checked:
            cfg.hooks[kind] = checked

    annotations = _obj(raw, "annotations", "annotations")
    for key, value in annotations.items():
        _type(value, str, f"annotations.{key}")
    cfg.annotations = annotations
    return cfg


def _validate_process(proc: dict, field: str, require_args: bool) -> dict:
    """Check a `process` object (config.json's, or `exec --process`'s)."""
    if not proc:
        raise SpecError(f"{field}: required")
    args = _str_list(proc, "args", f"{field}.args")
    if require_args and not args:
        raise SpecError(f"{field}.args: at least one argument is required")
    _str_list(proc, "env", f"{field}.env")
    cwd = proc.get("cwd", "/")
    _type(cwd, str, f"{field}.cwd")
    if not cwd.startswith("/"):
        raise SpecError(f"{field}.cwd: {cwd!r} must be an absolute path")
    terminal = proc.get("terminal", False)
    _type(terminal, bool, f"{field}.terminal")
    user = _obj(proc, "user", f"{field}.user")
    _uint(user.get("uid", 0), f"{field}.user.uid")
    _uint(user.get("gid", 0), f"{field}.user.gid")
    for i, gid in enumerate(_list(user, "additionalGids", f"{field}.user.additionalGids")):
        _uint(gid, f"{field}.user.additionalGids[{i}]")
    if user.get("umask") is not None:
        _uint(user["umask"], f"{field}.user.umask")
    caps = _obj(proc, "capabilities", f"{field}.capabilities")
    for kind, names in caps.items():
        if kind not in CAP_SETS:
            raise SpecError(f"{field}.capabilities.{kind}: unknown capability set")
        for i, name in enumerate(_str_list(caps, kind, f"{field}.capabilities.{kind}")):
            if name not in CAP_NUMBER:
                raise SpecError(f"{field}.capabilities.{kind}[{i}]: unknown capability {name!r}")
    for i, rl in enumerate(_list(proc, "rlimits", f"{field}.rlimits")):
        rfield = f"{field}.rlimits[{i}]"
        _type(rl, dict, rfield)
        if rl.get("type") not in RLIMIT_NUMBER:
            raise SpecError(f"{rfield}.type: unknown rlimit {rl.get('type')!r}")
        hard = _uint(rl.get("hard"), f"{rfield}.hard", 64)
        soft = _uint(rl.get("soft"), f"{rfield}.soft", 64)
        if soft > hard:
            raise SpecError(f"{rfield}: soft limit {soft} is above hard limit {hard}")
    nnp = proc.get("noNewPrivileges", False)
    _type(nnp, bool, f"{field}.noNewPrivileges")
    if proc.get("oomScoreAdj") is not None:
        _type(proc["oomScoreAdj"], int, f"{field}.oomScoreAdj")
        if not -1000 <= proc["oomScoreAdj"] <= 1000:
            raise SpecError(f"{field}.oomScoreAdj: must be between -1000 and 1000")
    for key in ("apparmorProfile", "selinuxLabel"):
        if proc.get(key):
            raise NotSupported(f"{field}.{key}: this host has no AppArmor/SELinux support in hanok yet")
    return proc


def validate_process(proc: object, field: str = "process") -> dict:
    """Public entry for `exec --process`: same rules as config.json's process."""
    _type(proc, dict, field)
    assert isinstance(proc, dict)
    return _validate_process(proc, field, require_args=True)


def _validate_mount(m: object, field: str, bundle: str) -> Mount:
    _type(m, dict, field)
    assert isinstance(m, dict)
    dest = m.get("destination")
    if not isinstance(dest, str) or not dest:
        raise SpecError(f"{field}.destination: required")
    dest = _clean_abs(dest, f"{field}.destination")
    options = _str_list(m, "options", f"{field}.options")
    type_ = m.get("type") or None
    if type_ is not None:
        _type(type_, str, f"{field}.type")
    source = m.get("source") or None
    if source is not None:
        _type(source, str, f"{field}.source")
    flags, propagation, data = parse_mount_options(options, f"{field}.options")
    is_bind = type_ == "bind" or bool(flags & sc.MS_BIND)
    if is_bind:
        if not source:
            raise SpecError(f"{field}.source: a bind mount needs a source")
        flags |= sc.MS_BIND
        source = os.path.join(bundle, source) if not source.startswith("/") else source
        if not os.path.exists(source):
            raise NotFound(f"{field}.source: {source} does not exist")
    elif type_ is None:
        raise SpecError(f"{field}.type: required for a mount that is not a bind mount")
    if dest == "/proc" and type_ != "proc":
        raise SpecError(f"{field}: /proc must be a procfs mount (type \"proc\"), got {type_ or 'bind'!r}")
    return Mount(dest, source, type_, flags, propagation, ",".join(data), is_bind, options)


def _validate_device(dev: object, field: str) -> dict:
    _type(dev, dict, field)
    assert isinstance(dev, dict)
    path = dev.get("path")
    if not isinstance(path, str) or not path.startswith("/dev/"):
        raise SpecError(f"{field}.path: must be an absolute path under /dev")
    if dev.get("type") not in ("c", "b", "u", "p"):
        raise SpecError(f"{field}.type: must be one of c, b, u, p")
    if dev["type"] != "p":
        _uint(dev.get("major"), f"{field}.major")
        _uint(dev.get("minor"), f"{field}.minor")
    if dev.get("fileMode") is not None:
        _uint(dev["fileMode"], f"{field}.fileMode")
    for k in ("uid", "gid"):
        if dev.get(k) is not None:
            _uint(dev[k], f"{field}.{k}")
    return dev


# What every container may use whatever its device rules say (runc's AllowedDevices):
# mknod of anything, and the default devices, ptys and the console.
DEFAULT_DEVICE_RULES = (
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    *({"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}
      for major, minor in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (10, 200))),
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},
)


def device_rules_for(devices: list[dict]) -> list[dict]:
    """Allow rules for the default devices and for every node in linux.devices.

    Callers such as podman send only `deny all` and rely on the runtime to allow
    what it creates, as runc does; without these the container could not even
    open /dev/null.
    """
    rules = [dict(r) for r in DEFAULT_DEVICE_RULES]
    for dev in devices:
        if dev["type"] in ("c", "b", "u"):
            rules.append({"allow": True, "type": "c" if dev["type"] == "u" else dev["type"],
                          "major": dev["major"], "minor": dev["minor"], "access": "rwm"})
    return rules


RESOURCE_KINDS = ("devices", "memory", "cpu", "pids", "blockIO", "hugepageLimits", "network", "rdma", "unified")
# zero means "not set" for these, as in runc (podman and ctr send zero-filled blocks)
_ZERO_IS_UNSET = frozenset({"shares", "quota", "period", "realtimeRuntime", "realtimePeriod", "weight",
                            "leafWeight", "limit", "reservation", "swap", "kernel", "kernelTCP"})


def validate_resources(res: dict, field: str = "linux.resources") -> dict:
    """Check `linux.resources` against what this host's cgroups can do.

    Returns the resources with unset values (nulls, and zeros where runc reads
    zero as "not set") removed, so they are written to no file. The mapping to
    cgroup files (cgroups/resources.py) does the value checks, so config.json
    fails at create time, before any process or cgroup exists.
    """
    for key in res:
        if key not in RESOURCE_KINDS:
            raise SpecError(f"{field}.{key}: unknown resource")
    if res.get("devices") is not None:
        _type(res["devices"], list, f"{field}.devices")
    pruned = _prune(res)
    if not isinstance(pruned, dict) or not pruned:
        return {}
    from hanok import cgroups
    from hanok.cgroups import resources

    if cgroups.host_mode() == cgroups.UNIFIED:
        resources.to_v2(pruned)
    else:
        resources.to_v1(pruned)
    return pruned


def _prune(value: object, key: str = "") -> object:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = _prune(v, k)
            if v is None or v == {} or (k in _ZERO_IS_UNSET and v == 0 and not isinstance(v, bool)):
                continue
            out[k] = v
        return out
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value
