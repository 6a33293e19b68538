"""The mount logic of runtime/rootfs.py, unit-tested without root.

rootfs.kernel is swapped for a recorder (youki's idea): every mount, mknod and
pivot_root is recorded instead of performed, while directory creation, symlink
resolution and the O_PATH checks run for real on a temporary rootfs. So these
tests pin down what is mounted where, with which flags and in which order.
"""
from __future__ import annotations

import os
import stat

import pytest

from hanok.runtime import bundle, rootfs, spec
from hanok.runtime import syscalls as sc
from hanok.runtime.errors import SpecError


class RecordingKernel:
    """Stands in for rootfs.Kernel: records calls, makes placeholder files for nodes."""

    def __init__(self, proc_is_procfs: bool = True) -> None:
        self.calls: list[tuple] = []
        self.proc_mounts: set[str] = set()
        self.proc_is_procfs = proc_is_procfs

    def mount(self, source, target, fstype, flags, data) -> None:
        # mounts through /proc/self/fd/N are recorded as the path the fd names
        real = os.readlink(target) if target.startswith("/proc/self/fd/") else target
        self.calls.append(("mount", source, real, fstype, flags, data))
        if fstype == "proc":
            self.proc_mounts.add(real)

    def umount2(self, target, flags) -> None:
        self.calls.append(("umount2", target, flags))

    def pivot_root(self, new_root, put_old) -> None:
        self.calls.append(("pivot_root", new_root, put_old))

    def chroot(self, path) -> None:
        self.calls.append(("chroot", path))

    def mknod(self, path, mode, device) -> None:
        self.calls.append(("mknod", path, stat.S_IFMT(mode), mode & 0o7777, os.major(device), os.minor(device)))
        open(path, "w").close()

    def chown(self, path, uid, gid) -> None:
        self.calls.append(("chown", path, uid, gid))

    def fs_type(self, path) -> int:
        if self.proc_is_procfs and os.path.realpath(path) in self.proc_mounts:
            return sc.PROC_SUPER_MAGIC
        return 0xEF53  # ext4

    def mounts(self) -> list[tuple]:
        return [c for c in self.calls if c[0] == "mount"]


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> RecordingKernel:
    recorder = RecordingKernel()
    monkeypatch.setattr(rootfs, "kernel", recorder)
    return recorder


def make_config(tmp_path, **changes) -> spec.Config:
    (tmp_path / "rootfs").mkdir(exist_ok=True)
    doc = bundle.default_spec()
    doc["process"]["terminal"] = False
    for key, value in changes.items():
        doc[key] = value
    return spec.from_dict(doc, str(tmp_path))


def test_default_spec_mounts_in_order_with_their_flags(tmp_path, kernel) -> None:
    cfg = make_config(tmp_path)
    root = cfg.rootfs
    rootfs.prepare(cfg, in_userns=False)
    mounts = kernel.mounts()
    assert mounts[0] == ("mount", None, "/", None, sc.MS_SLAVE | sc.MS_REC, None)
    assert mounts[1] == ("mount", root, root, None, sc.MS_BIND | sc.MS_REC, None)
    by_target = {m[2]: m for m in mounts[2:]}
    assert list(by_target) == [f"{root}/proc", f"{root}/dev", f"{root}/dev/pts", f"{root}/dev/shm",
                               f"{root}/dev/mqueue", f"{root}/sys"]
    assert by_target[f"{root}/proc"][1:] == ("proc", f"{root}/proc", "proc", 0, None)
    assert by_target[f"{root}/dev"][3:] == ("tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k")
    assert by_target[f"{root}/dev/pts"][5] == "newinstance,ptmxmode=0666,mode=0620,gid=5"
    assert by_target[f"{root}/sys"][4] == sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NOEXEC | sc.MS_NODEV


def test_default_devices_and_links(tmp_path, kernel) -> None:
    cfg = make_config(tmp_path)
    rootfs.prepare(cfg, in_userns=False)
    dev = os.path.join(cfg.rootfs, "dev")
    nodes = {os.path.basename(c[1]): c[2:] for c in kernel.calls if c[0] == "mknod"}
    assert nodes == {
        "null": (stat.S_IFCHR, 0o666, 1, 3), "zero": (stat.S_IFCHR, 0o666, 1, 5),
        "full": (stat.S_IFCHR, 0o666, 1, 7), "random": (stat.S_IFCHR, 0o666, 1, 8),
        "urandom": (stat.S_IFCHR, 0o666, 1, 9), "tty": (stat.S_IFCHR, 0o666, 5, 0),
    }
    assert os.readlink(os.path.join(dev, "ptmx")) == "pts/ptmx"
    assert os.readlink(os.path.join(dev, "fd")) == "/proc/self/fd"
    assert os.readlink(os.path.join(dev, "stderr")) == "/proc/self/fd/2"


def test_user_namespace_binds_host_devices_instead_of_mknod(tmp_path, kernel) -> None:
    cfg = make_config(tmp_path)
    rootfs.prepare(cfg, in_userns=True)
    assert not [c for c in kernel.calls if c[0] == "mknod"]
    binds = {m[1]: m[2] for m in kernel.mounts() if m[4] == sc.MS_BIND}
    assert binds["/dev/null"] == os.path.join(cfg.rootfs, "dev/null")
    assert binds["/dev/tty"] == os.path.join(cfg.rootfs, "dev/tty")


@pytest.mark.parametrize("link_target", ["/etc", "../../../../../etc", "/../../etc"])
def test_mount_through_a_symlink_stays_inside_the_rootfs(tmp_path, kernel, link_target: str) -> None:
    cfg = make_config(tmp_path, mounts=[{"destination": "/evil/x", "type": "tmpfs", "source": "tmpfs"}])
    os.symlink(link_target, os.path.join(cfg.rootfs, "evil"))
    rootfs.prepare(cfg, in_userns=False)
    target = kernel.mounts()[2][2]
    assert target == os.path.join(cfg.rootfs, "etc/x")
    assert not os.path.exists("/etc/x")


def test_bind_mount_options_are_applied_by_a_remount_of_the_new_mount(tmp_path, kernel) -> None:
    source = tmp_path / "data"
    source.mkdir()
    cfg = make_config(tmp_path, mounts=[{"destination": "/data", "type": "bind", "source": str(source),
                                         "options": ["rbind", "ro", "nosuid", "rprivate"]}])
    rootfs.prepare(cfg, in_userns=False)
    target = os.path.join(cfg.rootfs, "data")
    bind, remount, propagation = kernel.mounts()[2:5]
    assert bind == ("mount", str(source), target, None, sc.MS_BIND | sc.MS_REC, None)
    assert remount[2] == target and remount[4] & (sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID) \
        == sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID
    assert propagation == ("mount", None, target, None, sc.MS_PRIVATE | sc.MS_REC, None)


def test_a_proc_that_is_not_procfs_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(rootfs, "kernel", RecordingKernel(proc_is_procfs=False))
    cfg = make_config(tmp_path)
    with pytest.raises(SpecError, match="/proc is not a procfs"):
        rootfs.prepare(cfg, in_userns=False)


def test_pivot_detaches_the_old_root_without_propagating(tmp_path, kernel) -> None:
    cfg = make_config(tmp_path)
    cwd = os.getcwd()
    try:
        rootfs.pivot(cfg, no_pivot=False)
    finally:
        os.chdir(cwd)
    assert kernel.calls == [
        ("pivot_root", ".", "."),
        ("mount", None, ".", None, sc.MS_SLAVE | sc.MS_REC, None),
        ("umount2", ".", sc.MNT_DETACH),
    ]


def test_no_pivot_moves_and_chroots(tmp_path, kernel) -> None:
    cfg = make_config(tmp_path)
    cwd = os.getcwd()
    try:
        rootfs.pivot(cfg, no_pivot=True)
    finally:
        os.chdir(cwd)
    assert kernel.calls == [("mount", cfg.rootfs, "/", None, sc.MS_MOVE, None), ("chroot", ".")]
