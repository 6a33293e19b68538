"""hanok.runtime.spec: config.json -> validated Config, and every refusal names its field.

No root needed: validation only reads the bundle directory (rootfs exists,
bind sources exist, namespace paths exist).
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from hanok.runtime import bundle, errors, spec
from hanok.runtime import syscalls as sc
from hanok.runtime.errors import HanokError, NotFound, NotSupported, SpecError

DEFAULT_NS = ("pid", "network", "ipc", "uts", "mount")


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    (tmp_path / "rootfs").mkdir()
    return tmp_path


def good() -> dict[str, Any]:
    return bundle.default_spec()


def mount_by_dest(cfg: spec.Config, dest: str) -> spec.Mount:
    found = [m for m in cfg.mounts if m.destination == dest]
    assert len(found) == 1, [m.destination for m in cfg.mounts]
    return found[0]


# ------------------------------------------------------------ the default spec


def test_default_spec_is_valid(bundle_dir: Path) -> None:
    raw = good()
    cfg = spec.from_dict(raw, str(bundle_dir))
    assert cfg.raw is raw
    assert cfg.bundle == str(bundle_dir)
    assert cfg.rootfs == os.path.realpath(bundle_dir / "rootfs")
    assert cfg.readonly_root is True
    assert cfg.hostname == "hanok"
    assert cfg.domainname is None
    assert cfg.namespaces == {kind: None for kind in DEFAULT_NS}
    assert cfg.new_namespace_flags() == (sc.CLONE_NEWPID | sc.CLONE_NEWNET | sc.CLONE_NEWIPC
                                         | sc.CLONE_NEWUTS | sc.CLONE_NEWNS)
    assert cfg.masked_paths == bundle.MASKED_PATHS
    assert cfg.readonly_paths == bundle.READONLY_PATHS
    assert cfg.uid_mappings == [] and cfg.gid_mappings == []
    assert cfg.devices == []
    assert cfg.sysctl == {}
    assert cfg.seccomp is None
    assert cfg.hooks == {}
    assert cfg.annotations == {}
    assert cfg.rootfs_propagation == sc.MS_SLAVE | sc.MS_REC
    assert cfg.process["args"] == ["sh"]
    assert cfg.process["cwd"] == "/"
    assert [m.destination for m in cfg.mounts] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"]


def test_default_spec_mount_flags_and_data(bundle_dir: Path) -> None:
    cfg = spec.from_dict(good(), str(bundle_dir))

    proc = mount_by_dest(cfg, "/proc")
    assert (proc.type, proc.source, proc.flags, proc.propagation, proc.data, proc.is_bind) == (
        "proc", "proc", 0, 0, "", False)

    dev = mount_by_dest(cfg, "/dev")
    assert dev.type == "tmpfs"
    assert dev.flags == sc.MS_NOSUID | sc.MS_STRICTATIME
    assert dev.data == "mode=755,size=65536k"

    pts = mount_by_dest(cfg, "/dev/pts")
    assert pts.type == "devpts"
    assert pts.flags == sc.MS_NOSUID | sc.MS_NOEXEC
    assert pts.data == "newinstance,ptmxmode=0666,mode=0620,gid=5"

    shm = mount_by_dest(cfg, "/dev/shm")
    assert shm.flags == sc.MS_NOSUID | sc.MS_NOEXEC | sc.MS_NODEV
    assert shm.data == "mode=1777,size=65536k"

    mq = mount_by_dest(cfg, "/dev/mqueue")
    assert (mq.type, mq.flags, mq.data) == ("mqueue", sc.MS_NOSUID | sc.MS_NOEXEC | sc.MS_NODEV, "")

    sys_ = mount_by_dest(cfg, "/sys")
    assert sys_.type == "sysfs"
    assert sys_.flags == sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NOEXEC | sc.MS_NODEV
    assert sys_.data == ""
    assert sys_.is_bind is False
    assert sys_.options == ["nosuid", "noexec", "nodev", "ro"]


def test_rootless_default_spec_is_valid(bundle_dir: Path) -> None:
    cfg = spec.from_dict(bundle.default_spec(rootless=True), str(bundle_dir))
    assert cfg.namespaces["user"] is None
    assert cfg.uid_mappings == [{"containerID": 0, "hostID": 1000, "size": 1}]
    assert cfg.gid_mappings == [{"containerID": 0, "hostID": 1000, "size": 1}]
    assert cfg.new_namespace_flags() & sc.CLONE_NEWUSER
    sys_ = mount_by_dest(cfg, "/sys")
    assert sys_.is_bind is True
    assert sys_.source == "/sys"
    assert sys_.flags == (sc.MS_BIND | sc.MS_REC | sc.MS_RDONLY | sc.MS_NOSUID
                          | sc.MS_NOEXEC | sc.MS_NODEV)


def test_default_spec_args(bundle_dir: Path) -> None:
    cfg = spec.from_dict(bundle.default_spec(args=["/bin/true", "x"]), str(bundle_dir))
    assert cfg.process["args"] == ["/bin/true", "x"]


def test_spec_survives_json_round_trip(bundle_dir: Path) -> None:
    """What `hanok-oci spec` writes (JSON text) must validate the same way."""
    raw = json.loads(json.dumps(good()))
    cfg = spec.from_dict(raw, str(bundle_dir))
    assert cfg.namespaces == {kind: None for kind in DEFAULT_NS}


def test_joined_namespace_path_and_bind_mount(bundle_dir: Path) -> None:
    raw = good()
    raw["linux"]["namespaces"] = [{"type": "mount"}, {"type": "network", "path": "/proc/self/ns/net"}]
    raw["linux"]["sysctl"] = {}
    raw["hostname"] = None
    (bundle_dir / "data").mkdir()
    raw["mounts"].append({"destination": "/data/", "type": "bind", "source": "data",
                          "options": ["rbind", "ro", "rprivate"]})
    cfg = spec.from_dict(raw, str(bundle_dir))
    assert cfg.namespaces == {"mount": None, "network": "/proc/self/ns/net"}
    assert cfg.new_namespace_flags() == sc.CLONE_NEWNS
    data = mount_by_dest(cfg, "/data")
    assert data.is_bind is True
    assert data.source == os.path.join(str(bundle_dir), "data")  # relative to the bundle
    assert data.flags == sc.MS_BIND | sc.MS_REC | sc.MS_RDONLY
    assert data.propagation == sc.MS_PRIVATE | sc.MS_REC


def test_resources_devices_alone_is_accepted(bundle_dir: Path) -> None:
    raw = good()
    raw["linux"]["resources"] = {"devices": [{"allow": False, "access": "rwm"},
                                             {"allow": True, "type": "c", "major": 1, "minor": 3,
                                              "access": "rwm"}]}
    spec.from_dict(raw, str(bundle_dir))


def test_resources_all_unset_is_accepted(bundle_dir: Path) -> None:
    """podman sends resource blocks full of nulls/zeros: they ask for nothing."""
    raw = good()
    raw["linux"]["resources"] = {"devices": [], "memory": {"limit": None, "swap": 0},
                                 "cpu": {}, "pids": None, "blockIO": {"weight": 0}}
    spec.from_dict(raw, str(bundle_dir))


def test_valid_extras(bundle_dir: Path) -> None:
    raw = good()
    raw["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1", "kernel.shmmax": "1024",
                              "fs.mqueue.msg_max": "10", "kernel.hostname": "x"}
    raw["linux"]["devices"] = [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                                "fileMode": 0o666, "uid": 0, "gid": 0},
                               {"path": "/dev/myfifo", "type": "p"}]
    raw["hooks"] = {"prestart": [{"path": "/bin/true", "args": ["true"], "env": ["A=1"], "timeout": 5}],
                    "poststop": []}
    raw["annotations"] = {"a": "b"}
    raw["linux"]["rootfsPropagation"] = "rshared"
    cfg = spec.from_dict(raw, str(bundle_dir))
    assert cfg.sysctl == raw["linux"]["sysctl"]
    assert [d["path"] for d in cfg.devices] == ["/dev/fuse", "/dev/myfifo"]
    assert list(cfg.hooks) == ["prestart"]  # empty lists are dropped
    assert cfg.annotations == {"a": "b"}
    assert cfg.rootfs_propagation == sc.MS_SHARED | sc.MS_REC


# ------------------------------------------------------------ parse_mount_options


@pytest.mark.parametrize("options, flags, propagation, data", [
    ([], 0, 0, []),
    (["ro"], sc.MS_RDONLY, 0, []),
    (["ro", "rw"], 0, 0, []),
    (["rw", "ro"], sc.MS_RDONLY, 0, []),
    (["nosuid", "nodev", "noexec"], sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, 0, []),
    (["nosuid", "suid"], 0, 0, []),
    (["noexec", "exec", "nodev", "dev"], 0, 0, []),
    (["strictatime", "noatime", "nodiratime", "relatime"],
     sc.MS_STRICTATIME | sc.MS_NOATIME | sc.MS_NODIRATIME | sc.MS_RELATIME, 0, []),
    (["noatime", "atime"], 0, 0, []),
    (["sync", "dirsync"], sc.MS_SYNCHRONOUS | sc.MS_DIRSYNC, 0, []),
    (["sync", "async"], 0, 0, []),
    (["nosymfollow"], sc.MS_NOSYMFOLLOW, 0, []),
    (["bind"], sc.MS_BIND, 0, []),
    (["rbind"], sc.MS_BIND | sc.MS_REC, 0, []),
    (["remount", "ro"], sc.MS_REMOUNT | sc.MS_RDONLY, 0, []),
    (["private"], 0, sc.MS_PRIVATE, []),
    (["rprivate"], 0, sc.MS_PRIVATE | sc.MS_REC, []),
    (["shared"], 0, sc.MS_SHARED, []),
    (["rshared"], 0, sc.MS_SHARED | sc.MS_REC, []),
    (["slave"], 0, sc.MS_SLAVE, []),
    (["rslave"], 0, sc.MS_SLAVE | sc.MS_REC, []),
    (["unbindable"], 0, sc.MS_UNBINDABLE, []),
    (["runbindable"], 0, sc.MS_UNBINDABLE | sc.MS_REC, []),
    (["rprivate", "rslave"], 0, sc.MS_SLAVE | sc.MS_REC, []),  # last one wins
    (["mode=755", "size=65536k"], 0, 0, ["mode=755", "size=65536k"]),
    (["defaults", "tmpcopyup", "nofail", "auto", "noauto", "_netdev"], 0, 0, []),
    (["nosuid", "mode=0620", "rprivate", "gid=5", "ro"],
     sc.MS_NOSUID | sc.MS_RDONLY, sc.MS_PRIVATE | sc.MS_REC, ["mode=0620", "gid=5"]),
    (["newinstance", "ptmxmode=0666"], 0, 0, ["newinstance", "ptmxmode=0666"]),
])
def test_parse_mount_options(options: list[str], flags: int, propagation: int, data: list[str]) -> None:
    assert spec.parse_mount_options(options, "mounts[0].options") == (flags, propagation, data)


@pytest.mark.parametrize("option", ["idmap", "ridmap", "rro", "rrw", "rnosuid", "rnodev", "rnoexec"])
def test_parse_mount_options_not_supported(option: str) -> None:
    with pytest.raises(NotSupported) as info:
        spec.parse_mount_options(["nosuid", option], "mounts[3].options")
    assert str(info.value).startswith("mounts[3].options: ")
    assert repr(option) in str(info.value)


# ------------------------------------------------------------ bad inputs

Mutation = Callable[[dict[str, Any], Path], Any]


def _set(path: str, value: Any) -> Mutation:
    """Mutation setting a dotted path (list indexes as numbers) to value."""
    def apply(raw: dict[str, Any], _bundle: Path) -> None:
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        target: Any = raw
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return apply


def _del(path: str) -> Mutation:
    def apply(raw: dict[str, Any], _bundle: Path) -> None:
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        target: Any = raw
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return apply


def _ns(*kinds: str) -> Mutation:
    return _set("linux.namespaces", [{"type": k} for k in kinds])


def _add_mount(m: dict[str, Any]) -> Mutation:
    def apply(raw: dict[str, Any], _bundle: Path) -> None:
        raw["mounts"].append(m)
    return apply


def _then(*steps: Mutation) -> Mutation:
    def apply(raw: dict[str, Any], bundle_dir: Path) -> None:
        for step in steps:
            step(raw, bundle_dir)
    return apply


# (id, mutation, exception type, text the message starts with, text it must contain)
BAD: list[tuple[str, Mutation, type[HanokError], str, str]] = [
    ("args-empty", _set("process.args", []), SpecError, "process.args", "at least one"),
    ("args-missing", _del("process.args"), SpecError, "process.args", "at least one"),
    ("args-not-list", _set("process.args", "sh"), SpecError, "process.args", "expected array"),
    ("args-item-not-str", _set("process.args", ["sh", 1]), SpecError, "process.args[1]", "string"),
    ("process-missing", _del("process"), SpecError, "process", "required"),
    ("env-not-str", _set("process.env", [1]), SpecError, "process.env[0]", "string"),
    ("cwd-relative", _set("process.cwd", "tmp"), SpecError, "process.cwd", "absolute"),
    ("cwd-not-str", _set("process.cwd", 5), SpecError, "process.cwd", "expected string"),
    ("terminal-not-bool", _set("process.terminal", "yes"), SpecError, "process.terminal", "boolean"),
    ("uid-negative", _set("process.user.uid", -1), SpecError, "process.user.uid", "-1"),
    ("uid-string", _set("process.user.uid", "0"), SpecError, "process.user.uid",
     "expected integer, got string"),
    ("uid-bool", _set("process.user.uid", True), SpecError, "process.user.uid", "boolean"),
    ("uid-too-big", _set("process.user.uid", 1 << 32), SpecError, "process.user.uid", "out of range"),
    ("gid-negative", _set("process.user.gid", -5), SpecError, "process.user.gid", "-5"),
    ("additional-gid", _set("process.user.additionalGids", [1, -2]), SpecError,
     "process.user.additionalGids[1]", "-2"),
    ("cap-unknown", _set("process.capabilities.bounding.0", "CAP_FOO"), SpecError,
     "process.capabilities.bounding[0]", "CAP_FOO"),
    ("cap-unknown-ambient", _set("process.capabilities.ambient", ["CAP_KILL", "KILL"]), SpecError,
     "process.capabilities.ambient[1]", "KILL"),
    ("cap-set-unknown", _set("process.capabilities.magic", []), SpecError,
     "process.capabilities.magic", "unknown capability set"),
    ("rlimit-type", _set("process.rlimits.0.type", "RLIMIT_FOO"), SpecError,
     "process.rlimits[0].type", "RLIMIT_FOO"),
    ("rlimit-soft-above-hard", _set("process.rlimits.0", {"type": "RLIMIT_NOFILE", "hard": 10, "soft": 11}),
     SpecError, "process.rlimits[0]", "soft"),
    ("rlimit-hard-missing", _set("process.rlimits.0", {"type": "RLIMIT_NOFILE", "soft": 11}),
     SpecError, "process.rlimits[0].hard", "null"),
    ("oom-score", _set("process.oomScoreAdj", 1001), SpecError, "process.oomScoreAdj", "-1000"),
    ("nnp-not-bool", _set("process.noNewPrivileges", 1), SpecError, "process.noNewPrivileges", "boolean"),
    ("apparmor", _set("process.apparmorProfile", "docker-default"), NotSupported,
     "process.apparmorProfile", "AppArmor"),
    ("ns-unknown", _then(_ns("mount"), lambda r, b: r["linux"]["namespaces"].append({"type": "foo"})),
     SpecError, "linux.namespaces[1].type", "'foo'"),
    ("ns-duplicate", _ns("mount", "pid", "pid"), SpecError, "linux.namespaces[2].type", "'pid'"),
    ("ns-path-missing", _set("linux.namespaces", [{"type": "mount"}, {"type": "network",
                                                                        "path": "/nonexistent/ns/net"}]),
     NotFound, "linux.namespaces[1].path", "/nonexistent/ns/net"),
    ("ns-no-mount", _ns("pid", "network", "ipc", "uts"), SpecError, "linux.namespaces", "mount"),
    ("ns-none", _del("linux.namespaces"), SpecError, "linux.namespaces", "mount"),
    ("hostname-without-uts", _ns("mount", "pid"), SpecError, "hostname", "UTS"),
    ("domainname-without-uts", _then(_ns("mount"), _set("hostname", None), _set("domainname", "d")),
     SpecError, "domainname", "UTS"),
    ("hostname-not-str", _set("hostname", 7), SpecError, "hostname", "string"),
    ("uidmap-without-userns", _set("linux.uidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}]),
     SpecError, "linux.uidMappings", "user namespace"),
    ("gidmap-without-userns", _set("linux.gidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}]),
     SpecError, "linux.uidMappings", "user namespace"),
    ("userns-without-maps", _ns("mount", "uts", "user"), SpecError, "linux.uidMappings", "mappings"),
    ("userns-only-uidmap", _then(_ns("mount", "uts", "user"),
                                 _set("linux.uidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}])),
     SpecError, "linux.uidMappings", "mappings"),
    ("uidmap-negative", _then(_ns("mount", "uts", "user"),
                              _set("linux.uidMappings", [{"containerID": 0, "hostID": -1, "size": 1}]),
                              _set("linux.gidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}])),
     SpecError, "linux.uidMappings[0].hostID", "-1"),
    ("mount-dest-relative", _set("mounts.0.destination", "proc"), SpecError, "mounts[0].destination",
     "absolute"),
    ("mount-dest-missing", _del("mounts.1.destination"), SpecError, "mounts[1].destination", "required"),
    ("mount-not-object", _set("mounts.2", "/dev/pts"), SpecError, "mounts[2]", "expected object"),
    ("mount-options-not-str", _set("mounts.5.options", ["ro", 1]), SpecError, "mounts[5].options[1]",
     "string"),
    ("bind-without-source", _add_mount({"destination": "/data", "type": "bind", "options": ["rbind"]}),
     SpecError, "mounts[6].source", "source"),
    ("bind-option-without-source", _add_mount({"destination": "/data", "options": ["bind"]}),
     SpecError, "mounts[6].source", "source"),
    ("bind-source-missing", _add_mount({"destination": "/data", "type": "bind", "source": "/nonexistent/x",
                                         "options": ["rbind"]}),
     NotFound, "mounts[6].source", "/nonexistent/x"),
    ("mount-type-missing", _add_mount({"destination": "/data", "source": "tmpfs"}), SpecError,
     "mounts[6].type", "required"),
    ("proc-as-tmpfs", _set("mounts.0.type", "tmpfs"), SpecError, "mounts[0]", "/proc"),
    ("proc-dotted-as-tmpfs", _then(_set("mounts.0.type", "tmpfs"), _set("mounts.0.destination", "/x/../proc/")),
     SpecError, "mounts[0]", "/proc"),
    ("mount-option-idmap", _set("mounts.1.options", ["idmap"]), NotSupported, "mounts[1].options", "idmap"),
    ("device-bad-type", _set("linux.devices", [{"path": "/dev/x", "type": "z", "major": 1, "minor": 1}]),
     SpecError, "linux.devices[0].type", "c, b, u, p"),
    ("device-bad-path", _set("linux.devices", [{"path": "/tmp/x", "type": "c", "major": 1, "minor": 1}]),
     SpecError, "linux.devices[0].path", "/dev"),
    ("device-no-major", _set("linux.devices", [{"path": "/dev/x", "type": "c", "minor": 1}]),
     SpecError, "linux.devices[0].major", "null"),
    ("masked-relative", _set("linux.maskedPaths", ["proc/kcore"]), SpecError, "linux.maskedPaths",
     "absolute"),
    ("readonly-not-str", _set("linux.readonlyPaths", [3]), SpecError, "linux.readonlyPaths[0]", "string"),
    ("propagation-unknown", _set("linux.rootfsPropagation", "sideways"), SpecError,
     "linux.rootfsPropagation", "sideways"),
    ("sysctl-not-namespaced", _set("linux.sysctl", {"vm.swappiness": "10"}), SpecError,
     "linux.sysctl.vm.swappiness", "not namespaced"),
    ("sysctl-kernel-not-namespaced", _set("linux.sysctl", {"kernel.panic": "1"}), SpecError,
     "linux.sysctl.kernel.panic", "not namespaced"),
    ("sysctl-net-without-netns", _then(_ns("mount", "uts"), _set("linux.sysctl", {"net.ipv4.ip_forward": "1"})),
     SpecError, "linux.sysctl.net.ipv4.ip_forward", "network"),
    ("sysctl-ipc-without-ipcns", _then(_ns("mount", "uts"), _set("linux.sysctl", {"kernel.shmmax": "1"})),
     SpecError, "linux.sysctl.kernel.shmmax", "ipc"),
    ("sysctl-value-not-str", _set("linux.sysctl", {"net.ipv4.ip_forward": 1}), SpecError,
     "linux.sysctl.net.ipv4.ip_forward", "string"),
    ("hook-kind-unknown", _set("hooks", {"preStart": [{"path": "/bin/true"}]}), SpecError,
     "hooks.preStart", "unknown hook kind"),
    ("hook-relative-path", _set("hooks", {"prestart": [{"path": "bin/true"}]}), SpecError,
     "hooks.prestart[0].path", "absolute"),
    ("hook-no-path", _set("hooks", {"poststop": [{"path": "/bin/true"}, {"args": ["x"]}]}), SpecError,
     "hooks.poststop[1].path", "absolute"),
    ("hook-negative-timeout", _set("hooks", {"createRuntime": [{"path": "/bin/true", "timeout": -1}]}),
     SpecError, "hooks.createRuntime[0].timeout", "positive"),
    ("hook-zero-timeout", _set("hooks", {"poststart": [{"path": "/bin/true", "timeout": 0}]}),
     SpecError, "hooks.poststart[0].timeout", "positive"),
    ("hook-timeout-str", _set("hooks", {"poststart": [{"path": "/bin/true", "timeout": "5"}]}),
     SpecError, "hooks.poststart[0].timeout", "integer"),
    ("hook-args-not-str", _set("hooks", {"prestart": [{"path": "/bin/true", "args": [1]}]}),
     SpecError, "hooks.prestart[0].args[0]", "string"),
    ("hooks-not-list", _set("hooks", {"prestart": {"path": "/bin/true"}}), SpecError,
     "hooks.prestart", "expected array"),
    ("oci-version-2", _set("ociVersion", "2.0"), SpecError, "ociVersion", "'2.0'"),
    ("oci-version-missing", _del("ociVersion"), SpecError, "ociVersion", "None"),
    ("oci-version-number", _set("ociVersion", 1.0), SpecError, "ociVersion", "1.0"),
    ("root-path-missing", _del("root.path"), SpecError, "root.path", "required"),
    ("root-missing", _del("root"), SpecError, "root.path", "required"),
    ("root-path-empty", _set("root.path", ""), SpecError, "root.path", "required"),
    ("rootfs-does-not-exist", _set("root.path", "nope"), NotFound, "root.path", "nope"),
    ("root-readonly-not-bool", _set("root.readonly", "true"), SpecError, "root.readonly", "boolean"),
    ("linux-not-object", _set("linux", []), SpecError, "linux", "expected object"),
    ("memory-limit-not-a-number", _set("linux.resources", {"devices": [], "memory": {"limit": "lots"}}),
     SpecError, "linux.resources.memory.limit", "lots"),
    ("pids-limit-negative", _set("linux.resources", {"pids": {"limit": -7}}), SpecError,
     "linux.resources.pids.limit", "-7"),
    ("resource-unknown", _set("linux.resources", {"gpu": {"count": 1}}), SpecError,
     "linux.resources.gpu", "unknown"),
    ("resource-devices-not-list", _set("linux.resources", {"devices": {}}), SpecError,
     "linux.resources.devices", "expected array"),
    ("time-offsets-without-timens", _set("linux.timeOffsets", {"monotonic": {"secs": 1}}), SpecError,
     "linux.timeOffsets", "time namespace"),
    ("annotation-not-str", _set("annotations", {"a": "ok", "n": 1}), SpecError, "annotations.n",
     "expected string, got integer"),
    ("annotations-not-object", _set("annotations", ["a"]), SpecError, "annotations", "expected object"),
]


@pytest.mark.parametrize("mutate, exc, prefix, contains", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config(bundle_dir: Path, mutate: Mutation, exc: type[HanokError], prefix: str,
                    contains: str) -> None:
    raw = good()
    mutate(raw, bundle_dir)
    before = copy.deepcopy(raw)
    with pytest.raises(HanokError) as info:
        spec.from_dict(raw, str(bundle_dir))
    assert type(info.value) is exc, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert message.startswith(prefix), message
    assert contains in message, message
    assert "\n" not in message
    assert raw == before  # validation never rewrites the caller's document


def test_bad_config_ids_are_unique() -> None:
    ids = [b[0] for b in BAD]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("raw, got", [([], "array"), ("{}", "string"), (None, "null"), (1, "integer")])
def test_non_dict_config(bundle_dir: Path, raw: object, got: str) -> None:
    with pytest.raises(SpecError) as info:
        spec.from_dict(raw, str(bundle_dir))
    assert type(info.value) is SpecError
    assert str(info.value) == f"config.json: expected object, got {got}"


@pytest.mark.parametrize("version", ["1.0.0", "1.0.2", "1.1.0", "1.2.0-rc.1"])
def test_oci_versions_accepted(bundle_dir: Path, version: str) -> None:
    raw = good()
    raw["ociVersion"] = version
    spec.from_dict(raw, str(bundle_dir))


# ------------------------------------------------------------ validate_process (exec --process)


def test_validate_process_ok() -> None:
    proc = {"args": ["ls"], "cwd": "/", "user": {"uid": 1, "gid": 1}}
    assert spec.validate_process(proc) is proc


@pytest.mark.parametrize("proc, exc, prefix", [
    ([], SpecError, "process: expected object"),
    ({}, SpecError, "process: required"),
    ({"args": []}, SpecError, "process.args"),
    ({"args": ["ls"], "cwd": "rel"}, SpecError, "process.cwd"),
])
def test_validate_process_bad(proc: object, exc: type[HanokError], prefix: str) -> None:
    with pytest.raises(HanokError) as info:
        spec.validate_process(proc)
    assert type(info.value) is exc
    assert str(info.value).startswith(prefix)


# ------------------------------------------------------------ spec.load


def test_load_ok(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (bundle_dir / "config.json").write_text(json.dumps(good(), indent=2))
    monkeypatch.chdir(bundle_dir.parent)
    cfg = spec.load(bundle_dir.name)  # relative bundle paths are made absolute
    assert cfg.bundle == str(bundle_dir)
    assert cfg.rootfs == os.path.realpath(bundle_dir / "rootfs")


def test_load_missing_bundle(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(NotFound) as info:
        spec.load(str(missing))
    assert type(info.value) is NotFound
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_load_without_config_json(bundle_dir: Path) -> None:
    with pytest.raises(NotFound) as info:
        spec.load(str(bundle_dir))
    assert type(info.value) is NotFound
    assert "config.json" in str(info.value)
    assert str(bundle_dir) in str(info.value)


@pytest.mark.parametrize("text", ["{", "", "not json", '{"ociVersion": "1.0.2",}', "[1] [2]"])
def test_load_invalid_json(bundle_dir: Path, text: str) -> None:
    (bundle_dir / "config.json").write_text(text)
    with pytest.raises(SpecError) as info:
        spec.load(str(bundle_dir))
    assert type(info.value) is SpecError
    assert "invalid JSON" in str(info.value)
    assert str(bundle_dir / "config.json") in str(info.value)


def test_load_invalid_utf8(bundle_dir: Path) -> None:
    (bundle_dir / "config.json").write_bytes(b'{"ociVersion": "\xff"}')
    with pytest.raises(SpecError) as info:
        spec.load(str(bundle_dir))
    assert "invalid JSON" in str(info.value)


def test_load_validates(bundle_dir: Path) -> None:
    raw = good()
    raw["process"]["args"] = []
    (bundle_dir / "config.json").write_text(json.dumps(raw))
    with pytest.raises(SpecError, match=r"^process\.args"):
        spec.load(str(bundle_dir))


def test_errors_are_hanok_errors() -> None:
    for cls in (SpecError, NotFound, NotSupported):
        assert issubclass(cls, errors.HanokError)
